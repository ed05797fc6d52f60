//! The node's room → connections registry, and each room's fan-out queue.
//!
//! Sharded by room, so joins in different rooms never contend. A room's member list is copied
//! into an immutable snapshot the first time a fan-out needs it after a change, and reused
//! until the next join or leave — steady-state fan-out takes no lock per connection and clones
//! nothing. The fan-out queue keeps one room's frames in order for every member even when a big
//! room is written by several tasks at once: a batch starts only after the previous one is done,
//! and batches that arrive meanwhile are merged into one frame, written in the next pass.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::conn::Conn;
use super::outgoing::Outgoing;
use crate::ids::RoomId;
use crate::shard::Sharded;

pub type Snapshot = Arc<[Arc<Conn>]>;

#[derive(Default)]
struct Members {
    list: Vec<Arc<Conn>>,
    snapshot: Option<Snapshot>,
}

#[derive(Default)]
pub(crate) struct FanoutQueue {
    pub busy: bool,
    pub pending: Vec<Arc<Outgoing>>,
    /// Told when the pass that writes `pending` is done.
    pub written: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub struct Room {
    pub id: RoomId,
    members: Mutex<Members>,
    pub(crate) fanout: Mutex<FanoutQueue>,
}

impl Room {
    pub fn len(&self) -> usize {
        self.members.lock().list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut m = self.members.lock();
        if let Some(s) = &m.snapshot {
            return s.clone();
        }
        let s: Snapshot = m.list.iter().cloned().collect();
        m.snapshot = Some(s.clone());
        s
    }
}

pub struct Registry {
    rooms: Sharded<HashMap<RoomId, Arc<Room>>>,
}

/// The effect of a join or leave on this node's view of the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The room went from 0 to 1 local members (join) or from 1 to 0 (leave).
    pub edge: bool,
    pub members: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            rooms: Sharded::new(256),
        }
    }
}

impl Registry {
    pub fn get(&self, room: &RoomId) -> Option<Arc<Room>> {
        self.rooms.for_key(room).lock().get(room).cloned()
    }

    /// Adds a member (callers make sure a connection joins a room once).
    pub fn add(&self, room: &RoomId, conn: &Arc<Conn>) -> Change {
        let mut shard = self.rooms.for_key(room).lock();
        let r = shard.entry(room.clone()).or_insert_with(|| {
            Arc::new(Room {
                id: room.clone(),
                members: Mutex::default(),
                fanout: Mutex::default(),
            })
        });
        let mut m = r.members.lock();
        m.list.push(conn.clone());
        m.snapshot = None;
        Change {
            edge: m.list.len() == 1,
            members: m.list.len(),
        }
    }

    /// Removes a member; `None` when it was not one.
    pub fn remove(&self, room: &RoomId, conn: &Conn) -> Option<Change> {
        let mut shard = self.rooms.for_key(room).lock();
        let r = shard.get(room)?;
        let mut m = r.members.lock();
        let i = m.list.iter().position(|c| c.id == conn.id)?;
        m.list.swap_remove(i);
        m.snapshot = None;
        let members = m.list.len();
        drop(m);
        if members == 0 {
            shard.remove(room);
        }
        Some(Change {
            edge: members == 0,
            members,
        })
    }

    pub fn members(&self, room: &RoomId) -> usize {
        self.get(room).map(|r| r.len()).unwrap_or(0)
    }

    /// Local rooms and their member counts, largest first.
    pub fn top(&self, n: usize) -> Vec<(RoomId, usize)> {
        let mut all: Vec<(RoomId, usize)> = self
            .rooms
            .iter()
            .flat_map(|s| {
                s.lock()
                    .iter()
                    .map(|(id, r)| (id.clone(), r.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Every local room with at least one member (in no particular order).
    pub fn rooms(&self) -> Vec<RoomId> {
        self.rooms
            .iter()
            .flat_map(|s| s.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.iter().map(|s| s.lock().len()).sum()
    }
}
