//! Ids for the suites of ports that live in a shared service (routes, presence, discovery): each
//! case takes a random prefix, so runs sharing a Redis or an etcd never see each other's keys.
//!
//! Leases and TTLs are checked by waiting with `tokio::time::sleep`: the memory adapters run the
//! suites under tokio's paused clock (the waits take no real time), a networked adapter with a
//! short real `ttl` (its service keeps the time).

use crate::ids::{NodeId, RoomId};

/// A prefix that keeps one run's ids apart from another's in a shared service.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

pub(crate) fn room_id(prefix: &str, name: &str) -> RoomId {
    RoomId::parse(&format!("{prefix}-{name}")).expect("valid room id")
}

pub(crate) fn node_id(prefix: &str, name: &str) -> NodeId {
    NodeId::new(&format!("{prefix}-{name}"))
}
