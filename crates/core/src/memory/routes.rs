//! In-memory route table (`room:subs:{roomId}`).

use std::collections::HashMap;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};
use crate::ports::{RouteError, RouteTable};
use crate::shard::Sharded;

pub struct MemoryRoutes {
    rooms: Sharded<HashMap<RoomId, Vec<NodeId>>>,
}

impl Default for MemoryRoutes {
    fn default() -> Self {
        MemoryRoutes {
            rooms: Sharded::new(64),
        }
    }
}

impl RouteTable for MemoryRoutes {
    fn add(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let mut shard = self.rooms.for_key(room).lock();
        let nodes = shard.entry(room.clone()).or_default();
        if !nodes.contains(node) {
            nodes.push(node.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let mut shard = self.rooms.for_key(room).lock();
        if let Some(nodes) = shard.get_mut(room) {
            nodes.retain(|n| n != node);
            if nodes.is_empty() {
                shard.remove(room);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn nodes(&self, room: &RoomId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        let nodes = self
            .rooms
            .for_key(room)
            .lock()
            .get(room)
            .cloned()
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(nodes)))
    }
}
