//! Discovery: which nodes exist, by role, and where to reach them — registered under a lease
//! with keep-alive, listed and watched.

use std::time::Duration;

use crate::BoxFut;
use crate::ids::NodeId;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("discovery unavailable: {0}")]
    Unavailable(String),
    #[error("lease of node {0} expired; register again")]
    Expired(NodeId),
    #[error("node {0} is already registered under a live lease")]
    Taken(NodeId),
}

/// What a process does in the distributed mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeRole {
    Gateway,
    Ingest,
    Worker,
}

/// A registered node: its id, role, and where to reach it (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    pub role: NodeRole,
    pub addr: String,
    /// Where clients connect (a gateway's `ws://…/ws` URL): handed to clients of a draining
    /// gateway so they reconnect to another one.
    pub public_url: Option<String>,
}

/// A node came or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    Up(NodeInfo),
    /// Revoked, or its lease expired.
    Down(NodeId),
    /// Events were missed: list again.
    Lagged,
}

/// A node's registration; dropping it does not end it (the lease expires unless revoked).
pub trait NodeLease: Send + Sync {
    /// Extends the lease by its ttl from now; `Expired` when it has already run out (the node
    /// must register again).
    fn keep_alive(&self) -> BoxFut<'_, Result<(), DiscoveryError>>;
    /// Ends the registration at once (drain).
    fn revoke(&self) -> BoxFut<'_, Result<(), DiscoveryError>>;
    /// Every how often to call `keep_alive` (a third of the ttl).
    fn keep_alive_every(&self) -> Duration;
}

/// Changes of one role's nodes (events are sent with their node's role): first an `Up` for every node registered when the watch began,
/// then every change after it.
pub struct NodeWatch {
    role: NodeRole,
    initial: std::collections::VecDeque<NodeInfo>,
    rx: tokio::sync::broadcast::Receiver<(NodeRole, NodeEvent)>,
}

impl NodeWatch {
    pub fn new(
        role: NodeRole,
        initial: Vec<NodeInfo>,
        rx: tokio::sync::broadcast::Receiver<(NodeRole, NodeEvent)>,
    ) -> Self {
        NodeWatch {
            role,
            initial: initial.into(),
            rx,
        }
    }

    /// Waits for the next event of this role; `None` once discovery is gone.
    pub async fn next(&mut self) -> Option<NodeEvent> {
        use tokio::sync::broadcast::error::RecvError;
        if let Some(n) = self.initial.pop_front() {
            return Some(NodeEvent::Up(n));
        }
        loop {
            match self.rx.recv().await {
                Ok((role, ev)) if role == self.role => return Some(ev),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => return Some(NodeEvent::Lagged),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// A number claimed with [`Discovery::claim_number`] and the lease that keeps it.
pub type NumberClaim = (u16, Box<dyn NodeLease>);

/// `R23`: which nodes exist and where to reach them (etcd in the distributed mode: a key per
/// node under a lease with keep-alive).
pub trait Discovery: Send + Sync {
    /// Registers the node for `ttl`; `Taken` while another live registration holds the id.
    fn register(
        &self,
        node: NodeInfo,
        ttl: Duration,
    ) -> BoxFut<'_, Result<Box<dyn NodeLease>, DiscoveryError>>;
    /// Live nodes of a role, sorted by id.
    fn list(&self, role: NodeRole) -> BoxFut<'_, Result<Vec<NodeInfo>, DiscoveryError>>;
    /// Changes of a role's nodes (see [`NodeWatch`]).
    fn watch(&self, role: NodeRole) -> BoxFut<'_, Result<NodeWatch, DiscoveryError>>;
    /// Claims a number in `0..count` within `scope` for `holder`, under a lease of its own
    /// (`ttl`): `wanted` exactly, or else the lowest one no live claim holds. Two live claims
    /// of a scope never hold one number; a holder's own live claim (a restart right after a
    /// crash) is taken over. `Taken` when `wanted` is held by another holder, or every number
    /// is. Message ids carry such a number (`ingest.node_number`), so two nodes left at the
    /// defaults cannot issue the same id.
    fn claim_number<'a>(
        &'a self,
        scope: &'a str,
        holder: &'a NodeId,
        wanted: Option<u16>,
        count: u16,
        ttl: Duration,
    ) -> BoxFut<'a, Result<NumberClaim, DiscoveryError>>;
}
