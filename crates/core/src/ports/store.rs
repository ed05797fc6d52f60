//! The message store (`room_chat_message`): stored messages, each room's stream position, and
//! which worker owns which bus partition. Its error type is also the other stores' (acks, outbox,
//! the recent-messages cache).

use std::sync::Arc;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};
use crate::model::{RoomBatch, RoomMsg};

use super::bus::Partition;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

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
    /// The room's stored messages of `epoch` after `after_seq`, in `seq` order, at most
    /// `limit`: recovery of a gap the recent messages cannot prove they cover.
    fn read_after(
        &self,
        room: &RoomId,
        epoch: u32,
        after_seq: u64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<RoomMsg>, StoreError>>;
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
