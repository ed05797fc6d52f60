//! The roomcast domain: everything that decides what happens to a connection or a message, and
//! nothing that decides *where* state lives.
//!
//! The pipeline is gateway → [`ingest`] → bus → [`worker`] → delivery → gateway. Every arrow that
//! could cross a process is a port (an object-safe trait in [`ports`]); [`memory`] holds the
//! in-process adapters used by the standalone mode and by tests. Real adapters (Kafka, Redis,
//! SQL, gRPC, etcd) live in `roomcast-backends`; only the composition root in the server picks
//! one. This crate must not know which adapter it runs on.

pub mod auth;
pub mod client_error;
pub mod clock;
pub mod config;
#[cfg(any(test, feature = "testkit"))]
pub mod fault_proxy;
pub mod gateway;
pub mod history;
pub mod ids;
pub mod ingest;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod ports;
pub mod recovery;
pub mod remote_history;
pub mod route_cache;
pub mod shard;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit_limits;
pub mod text;
pub mod worker;

/// A boxed future, the return type of port methods (object-safe async).
pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
