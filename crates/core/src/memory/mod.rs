//! In-process adapters for every port: what the standalone mode runs on, and the reference the
//! real adapters are tested against.

mod acks;
mod bus;
mod discovery;
mod moderation;
mod online;
mod presence;
mod ratelimit;
mod recent;
mod routes;
mod store;

pub use acks::MemoryAckStore;
pub use bus::{MemoryBus, MemoryConsumer, partition_of, partition_of_key};
pub use discovery::MemoryDiscovery;
pub use moderation::MemoryModeration;
pub use online::MemoryRoomCounts;
pub use presence::MemoryPresence;
pub use ratelimit::MemoryRateLimiter;
pub use recent::MemoryRecent;
pub use routes::MemoryRoutes;
pub use store::MemoryStore;
