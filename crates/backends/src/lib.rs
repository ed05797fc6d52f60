//! Adapters that talk to real services, each behind a cargo feature, each implementing a port
//! of `roomcast-core`. Nothing here decides behaviour; every adapter must pass the same
//! port test-suite as its in-memory counterpart.

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
pub mod sqlite_acks;
#[cfg(feature = "sqlite")]
pub mod sqlite_outbox;
#[cfg(feature = "sqlite")]
mod sqlite_shared;
#[cfg(any(feature = "sqlite", feature = "mysql"))]
mod writer;
