//! Room-wide online counts (B2): each gateway node reports how many connections it has in each
//! of its rooms, and reads the rooms' sums over every live node. Its errors are the route
//! table's ([`RouteError`]): both live in the same service.

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};

pub use super::routes::RouteError;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

/// `room:online:{roomId}`: the room's connections per gateway node.
///
/// Contract (every adapter): [`report`](Self::report) replaces the named node's count of each
/// listed room (0 removes its entry) and touches no other node's; [`totals`](Self::totals)
/// sums each room over the nodes that reported it. An adapter that shares the route table's
/// node leases (Redis) leaves out nodes whose lease has run out, so a crashed gateway's viewers
/// stop counting within its lease; the route table's `collect_dead` deletes their entries.
pub trait RoomCounts: Send + Sync {
    fn report<'a>(
        &'a self,
        node: &'a NodeId,
        counts: &'a [(RoomId, u64)],
    ) -> BoxFut<'a, Result<(), RouteError>>;
    /// One sum per room of `rooms`, in their order.
    fn totals<'a>(&'a self, rooms: &'a [RoomId]) -> BoxFut<'a, Result<Vec<u64>, RouteError>>;
}
