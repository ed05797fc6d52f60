//! Presence (`presence:{userId}`): which gateway nodes hold a user's connections. Its errors
//! are the route table's ([`RouteError`]): both live in the same service.

use std::time::Duration;

use crate::BoxFut;
use crate::ids::{NodeId, UserId};

pub use super::routes::RouteError;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

/// `presence:{userId}`: which gateway nodes hold a user's connections, each entry with its own
/// TTL (2 × the heartbeat period), so a crashed node's entries expire on their own.
pub trait Presence: Send + Sync {
    /// The user is connected on `node`, for `ttl` from now.
    fn touch(
        &self,
        user: &UserId,
        node: &NodeId,
        ttl: Duration,
    ) -> BoxFut<'_, Result<(), RouteError>>;
    /// The user's last connection on `node` ended; other nodes' entries stay.
    fn remove(&self, user: &UserId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>>;
    /// The nodes whose entry for the user has not expired, sorted.
    fn nodes(&self, user: &UserId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>>;
    /// Whether any node holds the user.
    fn is_online(&self, user: &UserId) -> BoxFut<'_, Result<bool, RouteError>>;
}
