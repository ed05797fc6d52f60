//! In-memory room counts: room → node → connections. Standalone has one node, so there is no
//! lease to filter by. Locks are never held across an `.await`.

use std::collections::HashMap;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};
use crate::ports::{RoomCounts, RouteError};
use crate::shard::Sharded;

pub struct MemoryRoomCounts {
    rooms: Sharded<HashMap<RoomId, HashMap<NodeId, u64>>>,
}

impl Default for MemoryRoomCounts {
    fn default() -> Self {
        MemoryRoomCounts {
            rooms: Sharded::new(16),
        }
    }
}

impl RoomCounts for MemoryRoomCounts {
    fn report<'a>(
        &'a self,
        node: &'a NodeId,
        counts: &'a [(RoomId, u64)],
    ) -> BoxFut<'a, Result<(), RouteError>> {
        for (room, n) in counts {
            let mut shard = self.rooms.for_key(room).lock();
            if *n == 0 {
                if let Some(nodes) = shard.get_mut(room) {
                    nodes.remove(node);
                    if nodes.is_empty() {
                        shard.remove(room);
                    }
                }
            } else {
                shard
                    .entry(room.clone())
                    .or_default()
                    .insert(node.clone(), *n);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn totals<'a>(&'a self, rooms: &'a [RoomId]) -> BoxFut<'a, Result<Vec<u64>, RouteError>> {
        let sums = rooms
            .iter()
            .map(|r| {
                self.rooms
                    .for_key(r)
                    .lock()
                    .get(r)
                    .map(|nodes| nodes.values().sum())
                    .unwrap_or(0)
            })
            .collect();
        Box::pin(std::future::ready(Ok(sums)))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_room_counts_suite() {
        crate::testkit::room_counts_suite(&super::MemoryRoomCounts::default(), None).await;
    }
}
