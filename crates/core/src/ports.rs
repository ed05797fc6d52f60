//! Ports: the boundaries where the standalone and the distributed mode differ.
//!
//! Each port is an object-safe trait used as `Arc<dyn Port>`. The in-memory adapters are in
//! [`crate::memory`], the real ones in `roomcast-backends`; the composition root in the server is
//! the only code that knows which is in use. Methods return [`BoxFut`] so that an adapter may do
//! I/O; in-memory adapters return ready futures.

use std::sync::Arc;
use std::time::Duration;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId, UserId};
use crate::model::{InboundMessage, RoomBatch, RoomMsg};

// ---- bus ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus is closed")]
    Closed,
    #[error("bus is unavailable: {0}")]
    Unavailable(String),
    #[error("partition {0} is not assigned to this consumer")]
    NotAssigned(Partition),
}

/// A partition of the bus (Kafka's partition number).
pub type Partition = u32;

/// A record's place in its partition: 0, 1, 2, … in publication order (Kafka's offset).
pub type Offset = u64;

/// One message as a consumer read it: where it sits in the log, and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct BusRecord {
    pub partition: Partition,
    pub offset: Offset,
    pub msg: InboundMessage,
}

/// What a consumer hands out, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// These partitions are now this consumer's. Their records follow, starting after the
    /// group's last commit: records processed by an earlier owner but not committed come again.
    Assigned(Vec<Partition>),
    /// These partitions are no longer this consumer's; no more of their records follow. Before it
    /// calls [`BusConsumer::next`] again, the consumer's user finishes what it holds of them and
    /// commits: the next owner starts after that commit, and an adapter may hold the group's
    /// rebalance until that call.
    Revoked(Vec<Partition>),
    Record(BusRecord),
}

impl BusEvent {
    /// The message of a record event.
    pub fn into_message(self) -> Option<InboundMessage> {
        match self {
            BusEvent::Record(r) => Some(r.msg),
            _ => None,
        }
    }
}

/// The ordered, partitioned log between ingest and room workers (Kafka's shape: a key always
/// maps to the same partition, so one room's messages stay in order). The key is
/// [`InboundMessage::bus_key`], today the room id (topic `room_chat`, key = room id).
pub trait Bus: Send + Sync {
    fn publish(&self, msg: InboundMessage) -> BoxFut<'_, Result<(), BusError>>;
}

/// One member of the bus's consumer group; a room worker owns one.
///
/// Delivery is at least once: records after the last commit of a partition are handed out again
/// to its next owner (after a crash, a restart or a rebalance), and a broker may repeat records
/// around a rebalance even to the same owner. Users drop records at or below the offset they
/// processed and commit only what is done.
pub trait BusConsumer: Send {
    /// Waits for something to happen and appends at least one event to `out`: records, in order
    /// per partition, and assignment changes in the order they took effect. The first events
    /// of a new consumer are its `Assigned` partitions. `Err(Closed)` once the bus is closed
    /// and this consumer's partitions are drained (a networked bus may never close).
    fn next<'a>(&'a mut self, out: &'a mut Vec<BusEvent>) -> BoxFut<'a, Result<(), BusError>>;
    /// Marks every record of `partition` at or below `through` processed: the partition's next
    /// owner starts at `through + 1`. Commits never move back (a lower one is ignored). Allowed
    /// for assigned partitions, and for revoked ones until the next call to `next`.
    fn commit(&mut self, partition: Partition, through: Offset)
    -> BoxFut<'_, Result<(), BusError>>;
    /// The partition a bus key ([`InboundMessage::bus_key`]) maps to, as the publishers map it.
    fn partition_of(&self, key: &str) -> Partition;
}

// ---- routes and presence -----------------------------------------------------------------------

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
    fn renew(&self, node: &NodeId, ttl: Duration) -> BoxFut<'_, Result<(), RouteError>>;
    /// Removes every route of the node and its lease; returns how many rooms it was in.
    fn drop_node(&self, node: &NodeId) -> BoxFut<'_, Result<usize, RouteError>>;
    /// Changes from now on.
    fn watch(&self) -> RouteWatch;
}

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

// ---- control: commands for the gateways ----------------------------------------------------------

#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("control channel unavailable: {0}")]
    Unavailable(String),
    #[error("node {node} failed the command: {reason}")]
    Failed { node: NodeId, reason: String },
}

/// Which gateway nodes a [`Command`] goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlTarget {
    /// The nodes that hold the user's connections ([`Presence::nodes`]).
    User(UserId),
    /// Every gateway node.
    AllNodes,
}

/// A critical message before it is addressed to a user (see [`PendingCritical`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalMsg {
    pub msg_id: u64,
    pub kind: String,
    pub room: Option<RoomId>,
    pub text: Option<String>,
    /// JSON text.
    pub payload: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

impl CriticalMsg {
    /// The pending entry of this message for one user, not sent yet.
    pub fn for_user(&self, user: &UserId) -> PendingCritical {
        PendingCritical {
            user: user.clone(),
            msg_id: self.msg_id,
            kind: self.kind.clone(),
            room: self.room.clone(),
            text: self.text.clone(),
            payload: self.payload.clone(),
            ts: self.ts,
            attempts: 0,
            next_retry_ms: 0,
        }
    }
}

/// What a gateway node does on behalf of the server API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the user's connections with a `kicked` notice (`code`) and `close_code`: kicks and
    /// ban disconnects. Counts closed connections.
    Kick {
        user: UserId,
        close_code: u16,
        code: String,
        reason: String,
    },
    /// Record a critical message for the user and push it to the user's connections. Counts
    /// connections written to.
    Critical { user: UserId, msg: CriticalMsg },
    /// A critical message for every user connected to the node. Counts users.
    Broadcast { msg: CriticalMsg },
    /// A critical message for every user in the room on the node. Counts users.
    RoomCritical { room: RoomId, msg: CriticalMsg },
}

/// What a command did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlReport {
    /// Nodes that ran it.
    pub nodes: usize,
    /// The sum of what each node counted (see [`Command`]).
    pub count: usize,
}

/// API → gateway nodes: runs a command on the nodes of a target.
///
/// Contract: a [`Command::Critical`] is recorded for its user (the `AckStore`) even when no
/// node holds the user, so it waits for the next login; the other commands do nothing for a
/// user no node holds. A node that cannot be reached makes the call fail only when it is the
/// only node of the target; otherwise it is logged and left out of the report.
pub trait Control: Send + Sync {
    fn send(
        &self,
        target: ControlTarget,
        command: Command,
    ) -> BoxFut<'_, Result<ControlReport, ControlError>>;
}

// ---- discovery ---------------------------------------------------------------------------------

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
}

// ---- delivery ----------------------------------------------------------------------------------

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    #[error("gateway node {0} is unknown")]
    UnknownNode(NodeId),
    #[error("delivery to {node} failed: {reason}")]
    Failed { node: NodeId, reason: String },
}

/// Room worker → gateway node: one call per node per batch (`PushRoomMessage`).
pub trait Delivery: Send + Sync {
    fn deliver(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<(), DeliveryError>>;
}

// ---- storage -----------------------------------------------------------------------------------

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    #[error("message store is closed")]
    Closed,
}

/// What the store knows of a room when it is first touched after a start.
#[derive(Debug, Clone, Default)]
pub struct StoredRoom {
    pub epoch: u32,
    pub last_seq: u64,
    /// The most recent messages, oldest first.
    pub recent: Vec<RoomMsg>,
}

/// `room_chat_message` and the per-room stream position.
///
/// Durability contract (every adapter): a batch is written in one transaction with the room's
/// position; a message is stored once per room and `msg_id`, whatever its position (the bus
/// redelivers a message after a crash, and the next owner gives it a new epoch and seq), and
/// the rest of its batch is stored; a batch with no messages records a new epoch (`last_seq`
/// 0); a store that holds the outbox marks the rows of the batch's `outbox_ids` sent in that
/// same transaction and never stores a message whose outbox row is already marked (a
/// re-published copy); a write that fails is retried, never dropped while the process lives.
pub trait MessageStore: Send + Sync {
    /// Queues a batch for writing (in order per room). Returns once it is queued, which may wait
    /// when the store falls behind.
    fn append(&self, batch: Arc<RoomBatch>) -> BoxFut<'_, Result<(), StoreError>>;
    /// The room's stream position and last `limit` messages, or `None` for a room never seen.
    fn load_room(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> BoxFut<'_, Result<Option<StoredRoom>, StoreError>>;
    /// Waits until everything appended so far is durable.
    fn flush(&self) -> BoxFut<'_, Result<(), StoreError>>;
    /// Whether the previous run shut down cleanly (all its messages were written). When it did
    /// not, stream positions cannot be trusted and rooms start new epochs.
    fn previous_shutdown_clean(&self) -> bool;
    /// Flushes and records a clean shutdown.
    fn close(&self) -> BoxFut<'_, Result<(), StoreError>>;
    /// Records `owner` as the owner of these bus partitions (a worker that was just assigned
    /// them) and returns those whose previous owner did not release them cleanly — it crashed
    /// or lost its store before everything it handed out was durable. The rooms of those
    /// partitions must start new epochs: their stored positions may be behind what clients saw.
    /// A partition never claimed before counts as released cleanly when
    /// [`previous_shutdown_clean`](Self::previous_shutdown_clean) says so.
    fn claim_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<Vec<Partition>, StoreError>>;
    /// Marks these partitions released cleanly by `owner`: everything it handed out for their
    /// rooms is durable (the caller flushed first). A partition claimed by another owner since
    /// is left alone.
    fn release_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<(), StoreError>>;
    /// Why the store cannot write right now (its writes are being retried), or `None` while it
    /// writes normally. `/readyz` fails while this is `Some`.
    fn write_error(&self) -> Option<String> {
        None
    }
}

/// A capped list of each room's latest messages, kept where every gateway can read it (Redis
/// `room:recent:{room}` in the distributed mode): a join's history without a database read. A
/// cache, not a store — the database stays the record; a room the cache lost (evicted, expired,
/// a Redis that restarted without persistence) answers empty and the reader falls back to the
/// message store.
pub trait RecentMessages: Send + Sync {
    /// Appends a batch's messages in order and drops the oldest beyond `cap`; `ttl` after the
    /// last push the room's list expires (an idle room costs nothing).
    fn push<'a>(
        &'a self,
        batch: &'a RoomBatch,
        cap: usize,
        ttl: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>>;
    /// The room's last `limit` messages, oldest first (empty when unknown).
    fn recent<'a>(
        &'a self,
        room: &'a RoomId,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<RoomMsg>, StoreError>>;
}

// ---- limits and moderation ---------------------------------------------------------------------

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("rate limited on {key} for {retry_after:?}")]
pub struct Limited {
    /// Index into the keys passed to [`RateLimiter::acquire`].
    pub index: usize,
    pub key: String,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

pub trait RateLimiter: Send + Sync {
    /// Takes one token from every bucket, or from none of them.
    fn acquire<'a>(&'a self, keys: &'a [(String, Limit)]) -> BoxFut<'a, Result<(), LimitError>>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("moderation store unavailable: {0}")]
pub struct ModerationError(pub String);

/// A ban or mute: until when (ms since the Unix epoch; `None` = indefinitely) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sanction {
    pub until_ms: Option<u64>,
    pub reason: String,
}

/// Bans (global) and mutes (per room), with expiry.
pub trait Moderation: Send + Sync {
    fn ban(&self, user: &UserId, sanction: Sanction) -> BoxFut<'_, Result<(), ModerationError>>;
    fn unban(&self, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>>;
    fn banned(&self, user: &UserId) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>>;
    fn mute(
        &self,
        room: &RoomId,
        user: &UserId,
        sanction: Sanction,
    ) -> BoxFut<'_, Result<(), ModerationError>>;
    fn unmute(&self, room: &RoomId, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>>;
    fn muted(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>>;
}

// ---- critical messages: the per-user ack store ---------------------------------------------------

/// A critical message waiting for one user's `ack` (`ack:pending:{user}` in the design: msg_id →
/// next-retry deadline, with the message stored beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCritical {
    pub user: UserId,
    pub msg_id: u64,
    pub kind: String,
    pub room: Option<RoomId>,
    pub text: Option<String>,
    /// JSON text.
    pub payload: Option<String>,
    /// Milliseconds since the Unix epoch when it was created.
    pub ts: u64,
    /// How many times it has been sent.
    pub attempts: u32,
    /// When to send it again (ms since the Unix epoch) if still unacknowledged.
    pub next_retry_ms: u64,
}

/// Pending critical messages per user. Must survive a restart in every mode but tests.
pub trait AckStore: Send + Sync {
    /// Inserts or replaces (same user and msg_id) an entry.
    fn put(&self, p: PendingCritical) -> BoxFut<'_, Result<(), StoreError>>;
    /// Removes an entry; whether it was there.
    fn remove<'a>(&'a self, user: &'a UserId, msg_id: u64) -> BoxFut<'a, Result<bool, StoreError>>;
    /// The user's pending entries, oldest first.
    fn pending<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingCritical>, StoreError>>;
    /// Records another attempt of an existing entry (`attempts`, `next_retry_ms`); false when
    /// the entry is gone (acknowledged meanwhile) — it is never re-created.
    fn update(&self, p: &PendingCritical) -> BoxFut<'_, Result<bool, StoreError>>;
    /// Entries of all users, for metrics and tests.
    fn count(&self) -> BoxFut<'_, Result<u64, StoreError>>;
}
