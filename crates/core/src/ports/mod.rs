//! Ports: the boundaries where the standalone and the distributed mode differ.
//!
//! Each port is an object-safe trait used as `Arc<dyn Port>`. The in-memory adapters are in
//! [`crate::memory`], the real ones in `roomcast-backends`; the composition root in the server is
//! the only code that knows which is in use. Methods return [`BoxFut`](crate::BoxFut) so that an
//! adapter may do I/O; in-memory adapters return ready futures.
//!
//! One file per port, with its error type; a port whose adapters must agree has its conformance
//! suite beside it (`<port>/suite.rs`, compiled for this crate's tests and under the `testkit`
//! feature, and also reachable as `crate::testkit::…`). Every item is re-exported here, so code
//! names `ports::RouteTable`, not `ports::routes::RouteTable`.

pub mod acks;
pub mod bus;
pub mod control;
pub mod delivery;
pub mod discovery;
pub mod ingest;
pub mod limits;
pub mod moderation;
pub mod online;
pub mod outbox;
pub mod presence;
pub mod recent;
pub mod routes;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
mod suite_ids;

pub use acks::{AckStore, PendingCritical};
pub use bus::{Bus, BusConsumer, BusError, BusEvent, BusRecord, Offset, Partition};
pub use control::{Command, Control, ControlError, ControlReport, ControlTarget, CriticalMsg};
pub use delivery::{Delivery, DeliveryError, Written};
pub use discovery::{
    Discovery, DiscoveryError, NodeEvent, NodeInfo, NodeLease, NodeRole, NodeWatch, NumberClaim,
};
pub use ingest::{Accepted, ChatRequest, Ingest, IngestError};
pub use limits::{Limit, LimitError, Limited, RateLimiter};
pub use moderation::{Moderation, ModerationError, Sanction};
pub use online::RoomCounts;
pub use outbox::{NewOutboxRow, OutboxRow, OutboxStore};
pub use presence::Presence;
pub use recent::RecentMessages;
pub use routes::{Reconciled, RouteChange, RouteError, RouteTable, RouteWatch};
pub use store::{MessageStore, StoreError, StoredRoom};
