//! A room worker's cache of the route table: `nodes(room)` answered from memory, refreshed when
//! the table's watch reports a change to the room (or to a node, or missed changes), and at the
//! latest `max_age` after it was read — the safety net for a watch that loses a change.
//!
//! With Redis behind the route table this keeps the per-batch round trip off the hot path: a
//! busy room costs one read per `max_age`, not one per flush. It never holds its lock across an
//! `.await`, and it never caches a read that a change may have overtaken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::ids::{NodeId, RoomId};
use crate::metrics::Metrics;
use crate::ports::{RouteChange, RouteError, RouteTable, RouteWatch};

/// Rooms cached at most; past it, entries older than `max_age` are dropped (and if that is not
/// enough, all of them).
const MAX_ROOMS: usize = 100_000;

struct Inner {
    watch: RouteWatch,
    rooms: HashMap<RoomId, (Arc<[NodeId]>, Instant)>,
    /// Bumped by every change applied; a read overtaken by a change is not cached.
    generation: u64,
}

impl Inner {
    fn drain(&mut self) {
        while let Some(change) = self.watch.try_next() {
            self.generation += 1;
            match change {
                RouteChange::Room(room) => {
                    self.rooms.remove(&room);
                }
                RouteChange::Node(_) | RouteChange::Lagged => self.rooms.clear(),
            }
        }
    }
}

pub struct RouteCache {
    table: Arc<dyn RouteTable>,
    max_age: Duration,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    hits: std::sync::atomic::AtomicU64,
    reads: std::sync::atomic::AtomicU64,
}

impl RouteCache {
    /// `max_age` zero: no caching, every call reads the table.
    pub fn new(table: Arc<dyn RouteTable>, max_age: Duration, metrics: Arc<Metrics>) -> Self {
        RouteCache {
            inner: Mutex::new(Inner {
                watch: table.watch(),
                rooms: HashMap::new(),
                generation: 0,
            }),
            table,
            max_age,
            metrics,
            hits: Default::default(),
            reads: Default::default(),
        }
    }

    /// The room's live nodes, as [`RouteTable::nodes`] would say.
    pub async fn nodes(&self, room: &RoomId) -> Result<Arc<[NodeId]>, RouteError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.max_age.is_zero() {
            self.reads.fetch_add(1, Relaxed);
            self.metrics.route_reads.inc();
            return Ok(self.table.nodes(room).await?.into());
        }
        let generation = {
            let mut inner = self.inner.lock();
            inner.drain();
            if let Some((nodes, at)) = inner.rooms.get(room)
                && at.elapsed() < self.max_age
            {
                self.hits.fetch_add(1, Relaxed);
                return Ok(nodes.clone());
            }
            inner.generation
        };
        let read_at = Instant::now();
        self.reads.fetch_add(1, Relaxed);
        self.metrics.route_reads.inc();
        let nodes: Arc<[NodeId]> = self.table.nodes(room).await?.into();
        let mut inner = self.inner.lock();
        inner.drain();
        if inner.generation == generation {
            if inner.rooms.len() >= MAX_ROOMS {
                let max_age = self.max_age;
                inner.rooms.retain(|_, (_, at)| at.elapsed() < max_age);
                if inner.rooms.len() >= MAX_ROOMS {
                    inner.rooms.clear();
                }
            }
            inner.rooms.insert(room.clone(), (nodes.clone(), read_at));
        }
        Ok(nodes)
    }

    /// (answers from the cache, reads of the table) so far.
    pub fn stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.reads.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryRoutes;

    struct Setup {
        table: Arc<MemoryRoutes>,
        cache: RouteCache,
        room: RoomId,
        a: NodeId,
        b: NodeId,
    }

    async fn setup(max_age: Duration) -> Setup {
        let table = Arc::new(MemoryRoutes::default());
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        for n in [&a, &b] {
            table.renew(n, Duration::from_secs(3600)).await.unwrap();
        }
        let room = RoomId::parse("r").unwrap();
        table.add(&room, &a).await.unwrap();
        Setup {
            cache: RouteCache::new(table.clone(), max_age, Arc::default()),
            table,
            room,
            a,
            b,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_reads_hit_the_cache_and_changes_refresh_it() {
        let s = setup(Duration::from_secs(60)).await;
        for _ in 0..10 {
            assert_eq!(
                &*s.cache.nodes(&s.room).await.unwrap(),
                std::slice::from_ref(&s.a)
            );
        }
        assert_eq!(s.cache.stats(), (9, 1), "one read for ten flushes");

        s.table.add(&s.room, &s.b).await.unwrap();
        assert_eq!(
            &*s.cache.nodes(&s.room).await.unwrap(),
            [s.a.clone(), s.b.clone()],
            "an add is seen at the next read"
        );
        s.table.remove(&s.room, &s.a).await.unwrap();
        assert_eq!(
            &*s.cache.nodes(&s.room).await.unwrap(),
            std::slice::from_ref(&s.b)
        );
        s.table.drop_node(&s.b).await.unwrap();
        assert!(
            s.cache.nodes(&s.room).await.unwrap().is_empty(),
            "a drop too"
        );
        assert_eq!(s.cache.stats(), (9, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unannounced_expiry_shows_after_max_age() {
        let s = setup(Duration::from_secs(1)).await;
        let short = NodeId::new("short");
        s.table
            .renew(&short, Duration::from_millis(500))
            .await
            .unwrap();
        s.table.add(&s.room, &short).await.unwrap();
        assert_eq!(s.cache.nodes(&s.room).await.unwrap().len(), 2);
        // The lease runs out; nobody sweeps, so no change is announced.
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(s.cache.nodes(&s.room).await.unwrap().len(), 2, "cached");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            &*s.cache.nodes(&s.room).await.unwrap(),
            std::slice::from_ref(&s.a),
            "re-read after max_age"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_age_reads_every_time() {
        let s = setup(Duration::ZERO).await;
        for _ in 0..3 {
            s.cache.nodes(&s.room).await.unwrap();
        }
        assert_eq!(s.cache.stats(), (0, 3));
    }

    /// A table whose first read is overtaken by a change (made while the read is in flight).
    struct Racing {
        inner: Arc<MemoryRoutes>,
        change: (RoomId, NodeId),
        raced: std::sync::atomic::AtomicBool,
    }

    impl RouteTable for Racing {
        fn add(&self, room: &RoomId, node: &NodeId) -> crate::BoxFut<'_, Result<(), RouteError>> {
            self.inner.add(room, node)
        }
        fn remove(
            &self,
            room: &RoomId,
            node: &NodeId,
        ) -> crate::BoxFut<'_, Result<(), RouteError>> {
            self.inner.remove(room, node)
        }
        fn nodes(&self, room: &RoomId) -> crate::BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
            let room = room.clone();
            Box::pin(async move {
                let read = self.inner.nodes(&room).await;
                if !self.raced.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    self.inner.add(&self.change.0, &self.change.1).await?;
                }
                read
            })
        }
        fn renew(
            &self,
            node: &NodeId,
            ttl: Duration,
        ) -> crate::BoxFut<'_, Result<bool, RouteError>> {
            self.inner.renew(node, ttl)
        }
        fn reconcile<'a>(
            &'a self,
            node: &'a NodeId,
            rooms: &'a [RoomId],
            ttl: Duration,
        ) -> crate::BoxFut<'a, Result<crate::ports::Reconciled, RouteError>> {
            self.inner.reconcile(node, rooms, ttl)
        }
        fn collect_dead(&self) -> crate::BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
            self.inner.collect_dead()
        }
        fn drop_node(&self, node: &NodeId) -> crate::BoxFut<'_, Result<usize, RouteError>> {
            self.inner.drop_node(node)
        }
        fn watch(&self) -> RouteWatch {
            self.inner.watch()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_overtaken_by_a_change_is_not_cached() {
        let s = setup(Duration::from_secs(60)).await;
        let racing = Arc::new(Racing {
            inner: s.table.clone(),
            change: (s.room.clone(), s.b.clone()),
            raced: Default::default(),
        });
        let cache = RouteCache::new(racing, Duration::from_secs(60), Arc::default());
        assert_eq!(
            &*cache.nodes(&s.room).await.unwrap(),
            std::slice::from_ref(&s.a),
            "the read from before the change"
        );
        assert_eq!(
            &*cache.nodes(&s.room).await.unwrap(),
            [s.a.clone(), s.b.clone()],
            "read again, not served from the cache"
        );
        assert_eq!(cache.stats(), (0, 2));
    }

    /// A watcher that fell behind forgets everything rather than serving a stale route.
    #[tokio::test(start_paused = true)]
    async fn a_lagged_watch_clears_the_cache() {
        let s = setup(Duration::from_secs(60)).await;
        let other = RoomId::parse("other").unwrap();
        s.cache.nodes(&s.room).await.unwrap();
        // A change to `r`, pushed out of the watch by more changes than it holds.
        s.table.add(&s.room, &s.b).await.unwrap();
        for i in 0..5000 {
            let n = NodeId::new(&format!("n{i}"));
            s.table.add(&other, &n).await.unwrap();
        }
        assert_eq!(
            &*s.cache.nodes(&s.room).await.unwrap(),
            [s.a.clone(), s.b.clone()]
        );
    }
}
