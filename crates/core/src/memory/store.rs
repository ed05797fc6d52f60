//! An in-memory message store (`memory://`): history for the life of the process only.

use std::collections::{HashMap, HashSet, VecDeque};
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

/// A room's epoch, last seq and last messages, with their `msg_id`s: a message redelivered
/// under a new position (a new epoch after a crash) is kept once, as far as this store remembers.
#[derive(Default)]
struct Kept {
    epoch: u32,
    last_seq: u64,
    msgs: VecDeque<RoomMsg>,
    ids: HashSet<u64>,
}

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
        let kept = rooms.entry(batch.room.clone()).or_default();
        kept.epoch = batch.epoch;
        kept.last_seq = batch.last_seq();
        for m in &batch.msgs {
            if self.keep == 0 || !kept.ids.insert(m.msg_id) {
                continue;
            }
            if kept.msgs.len() >= self.keep
                && let Some(old) = kept.msgs.pop_front()
            {
                kept.ids.remove(&old.msg_id);
            }
            kept.msgs.push_back((**m).clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn load_room(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> BoxFut<'_, Result<Option<StoredRoom>, StoreError>> {
        let found = self.rooms.lock().get(room).map(|kept| StoredRoom {
            epoch: kept.epoch,
            last_seq: kept.last_seq,
            recent: kept
                .msgs
                .iter()
                .skip(kept.msgs.len().saturating_sub(limit))
                .cloned()
                .collect(),
        });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn read_after(
        &self,
        room: &RoomId,
        epoch: u32,
        after_seq: u64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<RoomMsg>, StoreError>> {
        let mut found: Vec<RoomMsg> = self
            .rooms
            .lock()
            .get(room)
            .map(|kept| {
                kept.msgs
                    .iter()
                    .filter(|m| m.epoch == epoch && m.seq > after_seq)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by_key(|m| m.seq);
        found.truncate(limit);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_message_store_suite() {
        crate::testkit::message_store_suite(&MemoryStore::new(100)).await;
    }

    /// Ids are forgotten with their messages, so a room's memory stays bounded.
    #[tokio::test]
    async fn keeps_at_most_keep_messages_and_their_ids() {
        let store = MemoryStore::new(2);
        store
            .append(Arc::new(crate::testkit::batch("r", 1, 1..=5)))
            .await
            .unwrap();
        let rooms = store.rooms.lock();
        let kept = &rooms[&RoomId::parse("r").unwrap()];
        assert_eq!(kept.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(kept.ids.len(), 2);
    }
}
