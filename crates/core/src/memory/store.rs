//! An in-memory message store (`memory://`): history for the life of the process only.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};
use crate::model::{RoomBatch, RoomMsg};
use crate::ports::{MessageStore, Partition, StoreError, StoredRoom};

pub struct MemoryStore {
    keep: usize,
    rooms: Mutex<HashMap<RoomId, Kept>>,
    /// Per bus partition: its owner and whether it released the partition cleanly.
    owners: Mutex<HashMap<Partition, (NodeId, bool)>>,
}

/// A room's epoch, last seq and last messages.
type Kept = (u32, u64, VecDeque<RoomMsg>);

impl MemoryStore {
    /// Keeps the last `keep` messages of each room.
    pub fn new(keep: usize) -> Self {
        MemoryStore {
            keep,
            rooms: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
        }
    }
}

impl MessageStore for MemoryStore {
    fn append(&self, batch: Arc<RoomBatch>) -> BoxFut<'_, Result<(), StoreError>> {
        let mut rooms = self.rooms.lock();
        let entry = rooms
            .entry(batch.room.clone())
            .or_insert_with(|| (batch.epoch, 0, VecDeque::new()));
        entry.0 = batch.epoch;
        entry.1 = batch.last_seq();
        for m in &batch.msgs {
            if entry.2.len() == self.keep {
                entry.2.pop_front();
            }
            entry.2.push_back((**m).clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn load_room(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> BoxFut<'_, Result<Option<StoredRoom>, StoreError>> {
        let found = self
            .rooms
            .lock()
            .get(room)
            .map(|(epoch, last_seq, msgs)| StoredRoom {
                epoch: *epoch,
                last_seq: *last_seq,
                recent: msgs
                    .iter()
                    .skip(msgs.len().saturating_sub(limit))
                    .cloned()
                    .collect(),
            });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn flush(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn previous_shutdown_clean(&self) -> bool {
        true
    }

    fn close(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn claim_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<Vec<Partition>, StoreError>> {
        let mut owners = self.owners.lock();
        let unclean = partitions
            .iter()
            .filter(|&&p| {
                let prev = owners.insert(p, (owner.clone(), false));
                prev.is_some_and(|(_, clean)| !clean)
            })
            .copied()
            .collect();
        Box::pin(std::future::ready(Ok(unclean)))
    }

    fn release_partitions<'a>(
        &'a self,
        owner: &'a NodeId,
        partitions: &'a [Partition],
    ) -> BoxFut<'a, Result<(), StoreError>> {
        let mut owners = self.owners.lock();
        for p in partitions {
            if let Some((o, clean)) = owners.get_mut(p)
                && o == owner
            {
                *clean = true;
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
