//! In-memory route table (`room:subs:{roomId}`) with node leases.
//!
//! Rooms map to node ids; a separate lease table maps each node to its deadline. Reads filter
//! by the lease, so a node that stops renewing disappears from every room at once without a
//! write; [`MemoryRoutes::sweep`] later deletes the dead entries and tells watchers. Changes go
//! to watchers through a bounded broadcast channel (a slow watcher gets `Lagged`). Time is
//! tokio's clock, so tests can pause it. Locks are never held across an `.await`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::BoxFut;
use crate::ids::{NodeId, RoomId};
use crate::ports::{Reconciled, RouteChange, RouteError, RouteTable, RouteWatch};
use crate::shard::Sharded;

/// Changes a watcher may fall behind by before it gets `Lagged`.
const WATCH_CAPACITY: usize = 4096;

pub struct MemoryRoutes {
    rooms: Sharded<HashMap<RoomId, Vec<NodeId>>>,
    leases: Mutex<HashMap<NodeId, Instant>>,
    changes: broadcast::Sender<RouteChange>,
}

impl Default for MemoryRoutes {
    fn default() -> Self {
        MemoryRoutes {
            rooms: Sharded::new(64),
            leases: Mutex::new(HashMap::new()),
            changes: broadcast::channel(WATCH_CAPACITY).0,
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, T> {
    Box::pin(std::future::ready(v))
}

impl MemoryRoutes {
    fn notify(&self, change: RouteChange) {
        // No watcher is not an error.
        let _ = self.changes.send(change);
    }

    fn alive(&self, node: &NodeId, now: Instant) -> bool {
        self.leases
            .lock()
            .get(node)
            .is_some_and(|until| *until > now)
    }

    /// Removes every route of `node`; returns in how many rooms it was.
    fn remove_all(&self, node: &NodeId) -> usize {
        let mut n = 0;
        for shard in self.rooms.iter() {
            shard.lock().retain(|_, nodes| {
                let before = nodes.len();
                nodes.retain(|x| x != node);
                n += before - nodes.len();
                !nodes.is_empty()
            });
        }
        n
    }

    /// Deletes the routes of nodes whose lease has expired and tells watchers; call
    /// periodically. Returns the nodes dropped.
    pub fn sweep(&self) -> Vec<NodeId> {
        let now = Instant::now();
        let dead: Vec<NodeId> = {
            let mut leases = self.leases.lock();
            let dead = leases
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>();
            for n in &dead {
                leases.remove(n);
            }
            dead
        };
        for node in &dead {
            let rooms = self.remove_all(node);
            tracing::info!(node = %node, rooms, "route lease expired; routes removed");
            self.notify(RouteChange::Node(node.clone()));
        }
        dead
    }
}

impl RouteTable for MemoryRoutes {
    fn add(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let added = {
            let mut shard = self.rooms.for_key(room).lock();
            let nodes = shard.entry(room.clone()).or_default();
            if nodes.contains(node) {
                false
            } else {
                nodes.push(node.clone());
                nodes.sort();
                true
            }
        };
        if added {
            self.notify(RouteChange::Room(room.clone()));
        }
        ready(Ok(()))
    }

    fn remove(&self, room: &RoomId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let removed = {
            let mut shard = self.rooms.for_key(room).lock();
            match shard.get_mut(room) {
                Some(nodes) => {
                    let before = nodes.len();
                    nodes.retain(|n| n != node);
                    let removed = nodes.len() < before;
                    if nodes.is_empty() {
                        shard.remove(room);
                    }
                    removed
                }
                None => false,
            }
        };
        if removed {
            self.notify(RouteChange::Room(room.clone()));
        }
        ready(Ok(()))
    }

    fn nodes(&self, room: &RoomId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        let now = Instant::now();
        let nodes = self
            .rooms
            .for_key(room)
            .lock()
            .get(room)
            .cloned()
            .unwrap_or_default();
        let nodes = nodes.into_iter().filter(|n| self.alive(n, now)).collect();
        ready(Ok(nodes))
    }

    fn renew(&self, node: &NodeId, ttl: Duration) -> BoxFut<'_, Result<bool, RouteError>> {
        let now = Instant::now();
        let revived = {
            let mut leases = self.leases.lock();
            let was_alive = leases.get(node).is_some_and(|until| *until > now);
            leases.insert(node.clone(), now + ttl);
            !was_alive
        };
        if revived {
            // Routes it kept while its lease was out are visible again.
            self.notify(RouteChange::Node(node.clone()));
        }
        ready(Ok(revived))
    }

    fn reconcile<'a>(
        &'a self,
        node: &'a NodeId,
        rooms: &'a [RoomId],
        ttl: Duration,
    ) -> BoxFut<'a, Result<Reconciled, RouteError>> {
        let now = Instant::now();
        self.leases.lock().insert(node.clone(), now + ttl);
        let want: HashSet<&RoomId> = rooms.iter().collect();
        let mut done = Reconciled::default();
        for shard in self.rooms.iter() {
            shard.lock().retain(|room, nodes| {
                if !want.contains(room) {
                    let before = nodes.len();
                    nodes.retain(|x| x != node);
                    done.removed += before - nodes.len();
                }
                !nodes.is_empty()
            });
        }
        for room in rooms {
            let mut shard = self.rooms.for_key(room).lock();
            let nodes = shard.entry(room.clone()).or_default();
            if !nodes.contains(node) {
                nodes.push(node.clone());
                nodes.sort();
                done.added += 1;
            }
        }
        if done != Reconciled::default() {
            self.notify(RouteChange::Node(node.clone()));
        }
        ready(Ok(done))
    }

    fn collect_dead(&self) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        ready(Ok(self.sweep()))
    }

    fn drop_node(&self, node: &NodeId) -> BoxFut<'_, Result<usize, RouteError>> {
        self.leases.lock().remove(node);
        let n = self.remove_all(node);
        self.notify(RouteChange::Node(node.clone()));
        ready(Ok(n))
    }

    fn watch(&self) -> RouteWatch {
        RouteWatch::new(self.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_the_route_table_suite() {
        crate::testkit::route_table_suite(&MemoryRoutes::default(), Duration::from_secs(10)).await;
    }

    /// The sweep deletes what an expired lease hid, and says so.
    #[tokio::test(start_paused = true)]
    async fn sweep_deletes_routes_of_expired_leases() {
        let routes = MemoryRoutes::default();
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        let room = RoomId::parse("r").unwrap();
        routes.renew(&a, Duration::from_secs(3)).await.unwrap();
        routes.renew(&b, Duration::from_secs(30)).await.unwrap();
        routes.add(&room, &a).await.unwrap();
        routes.add(&room, &b).await.unwrap();
        let mut watch = routes.watch();
        assert!(routes.sweep().is_empty(), "nothing expired yet");
        assert_eq!(watch.try_next(), None);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(routes.sweep(), vec![a.clone()]);
        assert_eq!(watch.try_next(), Some(RouteChange::Node(a.clone())));
        // Gone for good: a renewal does not bring the swept routes back.
        routes.renew(&a, Duration::from_secs(30)).await.unwrap();
        assert_eq!(routes.nodes(&room).await.unwrap(), vec![b]);
    }
}
