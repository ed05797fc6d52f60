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

/// `room:subs:{roomId}`: which gateway nodes have members of a room.
pub trait RouteTable: Send + Sync {
    fn add(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>>;
    fn remove(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>>;
    fn nodes(&self, room: &RoomId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>>;
}

/// `presence:{userId}` with a TTL: who is online.
pub trait Presence: Send + Sync {
    fn touch(&self, user: &UserId, ttl: Duration) -> BoxFut<'_, Result<(), RouteError>>;
    fn remove(&self, user: &UserId) -> BoxFut<'_, Result<(), RouteError>>;
    fn is_online(&self, user: &UserId) -> BoxFut<'_, Result<bool, RouteError>>;
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
/// position; a batch with no messages records a new epoch (`last_seq` 0); a store that holds the
/// outbox marks the rows of the batch's `outbox_ids` sent in that same transaction and never
/// stores a message whose outbox row is already marked (a re-published copy); a write that fails
/// is retried, never dropped while the process lives.
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
    /// Why the store cannot write right now (its writes are being retried), or `None` while it
    /// writes normally. `/readyz` fails while this is `Some`.
    fn write_error(&self) -> Option<String> {
        None
    }
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
