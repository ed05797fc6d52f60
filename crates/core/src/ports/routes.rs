//! The route table (`room:subs:{roomId}`): which gateway nodes have members of a room, owned
//! under each node's lease, and the watch through which a room worker's cache learns of changes.

use std::time::Duration;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

#[derive(Debug, Clone, thiserror::Error)]
#[error("route table unavailable: {0}")]
pub struct RouteError(pub String);

/// What changed in a [`RouteTable`], as seen through [`RouteTable::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// The room's set of nodes may have changed (a route added or removed).
    Room(RoomId),
    /// Every route of this node may have changed at once: dropped, expired with its lease, or
    /// visible again after a lease was renewed past its expiry.
    Node(NodeId),
    /// Changes were missed (a slow watcher, a reconnect): forget everything cached.
    Lagged,
}

/// A subscription to a route table's changes. Every change made after the subscription is
/// reported, or a [`RouteChange::Lagged`] stands in for those that were missed. Built on a tokio
/// broadcast channel: the memory adapter sends into it directly, a networked adapter from the
/// task that reads its service's change feed (and sends `Lagged` after a reconnect).
pub struct RouteWatch {
    rx: tokio::sync::broadcast::Receiver<RouteChange>,
}

impl RouteWatch {
    pub fn new(rx: tokio::sync::broadcast::Receiver<RouteChange>) -> Self {
        RouteWatch { rx }
    }

    /// The next change if one is waiting (never waits); `Lagged` after missed changes or when
    /// the table is gone.
    pub fn try_next(&mut self) -> Option<RouteChange> {
        use tokio::sync::broadcast::error::TryRecvError;
        match self.rx.try_recv() {
            Ok(c) => Some(c),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Lagged(_)) => Some(RouteChange::Lagged),
            Err(TryRecvError::Closed) => None,
        }
    }

    /// Waits for the next change; `None` once the table is gone.
    pub async fn next(&mut self) -> Option<RouteChange> {
        use tokio::sync::broadcast::error::RecvError;
        match self.rx.recv().await {
            Ok(c) => Some(c),
            Err(RecvError::Lagged(_)) => Some(RouteChange::Lagged),
            Err(RecvError::Closed) => None,
        }
    }
}

/// What a [`RouteTable::reconcile`] repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Routes that were missing (lost writes, a flushed or failed-over service).
    pub added: usize,
    /// Routes of rooms the node no longer has members in (left over from before a restart).
    pub removed: usize,
}

/// `room:subs:{roomId}`: which gateway nodes have members of a room.
///
/// Contract (every adapter): a node's routes are owned under the node's lease. [`nodes`]
/// returns only nodes whose lease is alive — a node that never renewed, or stopped renewing
/// (crashed), is invisible, whatever routes it left. [`renew`] starts or extends the lease.
/// [`drop_node`] removes all of a node's routes in one call (drain, or clean-up of a dead node).
/// `add` and `remove` are idempotent and touch only the named node's entry. Every change is
/// reported to [`watch`]ers before the call that made it returns, so a cache that drains its
/// watch before reading never serves a route older than the last completed change.
///
/// [`nodes`]: RouteTable::nodes
/// [`renew`]: RouteTable::renew
/// [`drop_node`]: RouteTable::drop_node
/// [`watch`]: RouteTable::watch
pub trait RouteTable: Send + Sync {
    fn add(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>>;
    fn remove(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>>;
    /// The room's nodes whose lease is alive, sorted.
    fn nodes(&self, room: &RoomId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>>;
    /// Keeps the node's routes alive for `ttl` from now (a node renews every `ttl / 3`).
    /// Returns whether the lease had lapsed (expired, never taken, or lost with the service's
    /// data): the node's routes may be gone too, and it should [`reconcile`](Self::reconcile).
    fn renew(&self, node: &NodeId, ttl: Duration) -> BoxFut<'_, Result<bool, RouteError>>;
    /// Makes the node's routes exactly `rooms` — adds the missing ones, removes every other
    /// route of the node — and renews its lease for `ttl`, in one step. State that lives in
    /// another service is re-asserted, not written once: a gateway calls this after a failed
    /// route write, when its lease had lapsed, and every so often. Changes are reported to
    /// watchers (as [`RouteChange::Node`]) when anything was repaired.
    fn reconcile<'a>(
        &'a self,
        node: &'a NodeId,
        rooms: &'a [RoomId],
        ttl: Duration,
    ) -> BoxFut<'a, Result<Reconciled, RouteError>>;
    /// Deletes the routes of every node whose lease has run out (crashed nodes: their routes
    /// are invisible to [`nodes`](Self::nodes) already, this frees them). Returns those nodes.
    fn collect_dead(&self) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>>;
    /// Removes every route of the node and its lease; returns how many rooms it was in.
    fn drop_node(&self, node: &NodeId) -> BoxFut<'_, Result<usize, RouteError>>;
    /// Changes from now on.
    fn watch(&self) -> RouteWatch;
}
