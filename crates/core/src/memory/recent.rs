//! The recent-messages cache in memory: for tests and one-process setups (standalone serves
//! joins from its `History` ring instead).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::BoxFut;
use crate::ids::RoomId;
use crate::model::{RoomBatch, RoomMsg};
use crate::ports::{RecentMessages, StoreError};

#[derive(Default)]
pub struct MemoryRecent {
    rooms: Mutex<HashMap<RoomId, (VecDeque<RoomMsg>, Instant)>>,
}

impl RecentMessages for MemoryRecent {
    fn push<'a>(
        &'a self,
        batch: &'a RoomBatch,
        cap: usize,
        ttl: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock();
        // Expired lists go when anything is pushed: the map stays bounded by live rooms.
        rooms.retain(|_, (_, until)| *until > now);
        let (list, until) = rooms
            .entry(batch.room.clone())
            .or_insert_with(|| (VecDeque::new(), now));
        list.extend(batch.msgs.iter().map(|m| (**m).clone()));
        while list.len() > cap {
            list.pop_front();
        }
        *until = now + ttl;
        Box::pin(std::future::ready(Ok(())))
    }

    fn recent<'a>(
        &'a self,
        room: &'a RoomId,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<RoomMsg>, StoreError>> {
        let now = Instant::now();
        let found = match self.rooms.lock().get(room) {
            Some((list, until)) if *until > now => list
                .iter()
                .skip(list.len().saturating_sub(limit))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Box::pin(std::future::ready(Ok(found)))
    }
}
