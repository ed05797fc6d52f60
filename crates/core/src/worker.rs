//! The room worker: consumes its share of the bus, gives each message its place in the room's
//! stream (`epoch`, `seq`), gathers a room's messages into batches, records each batch in the
//! history, and delivers it once to every gateway node that has members of the room.
//!
//! Batching follows the sockets, not a clock: a room's messages go out at once when nothing of
//! the room is being written, together with whatever else the worker took in at the same time.
//! While the room's previous batch is still being written to its members (its
//! [`Written`](crate::ports::Written) has not fired: in standalone the gateway's pass over the
//! room), what arrives waits and goes out as one batch the moment that write is done. So a
//! lightly loaded server adds no wait, and under load the batches grow by themselves to what
//! the sockets take. Over gRPC the worker waits only for the `Push` call that carries the
//! previous batch; the gateway does the rest, merging whatever arrives while a room's pass is
//! written into that room's next pass (`Gateway::deliver`).
//! The batch window is only an upper bound on that wait (a slow gateway must not hold a room
//! for long), and a batch also goes out once it holds `batch_max` messages.
//!
//! A room is handled by exactly one worker at a time (the bus maps a room to one partition, and
//! a partition has one owner), so the worker owns the room's sequence without locks. It never
//! touches connections.
//!
//! The bus is at least once (Kafka's contract, see [`BusConsumer`]). The worker drops records at
//! or below the offset it processed in a partition (a broker's redelivery around a rebalance),
//! and commits a partition's offset only once every record up to it is done: delivered and
//! appended to the history, and the store's `flush` that followed has returned. A room's
//! position `(epoch, seq)` belongs to the partition's owner: when a partition is revoked the
//! worker flushes its rooms, commits, and forgets them (here and in the [`History`]), so the next
//! owner loads them from the store. `run` ends on its stop signal (or when the bus closes) after
//! the same flush and commit.
//!
//! Ownership is recorded in the store too ([`MessageStore::claim_partitions`]): a worker claims
//! the partitions it is assigned and releases them once everything it handed out for them is
//! durable (on revocation and on a clean stop). A partition whose previous owner never released
//! it (it crashed, or its store failed) is untrusted: the stored position may be behind what
//! clients saw. The first time the new owner touches one of its rooms it takes the room over
//! ([`RoomWorker::take_over`]): where the recent list (written before every delivery, so it holds
//! everything clients can have seen) continues the stored stream without a gap, the new owner
//! writes the messages the store is missing, continues the same epoch after the list's last
//! seq, and drops the redelivered records the list shows were delivered already — a crash costs
//! clients nothing, not even a duplicate. Otherwise (no recent list, or it does not reach back to
//! the stored position) the room starts a new epoch, so no seq of the old epoch — which clients
//! may have seen with other messages — is handed out twice.
//!
//! The bound grows with what the worker observes itself — flushes that run late, records
//! that waited in the bus longer than records lately did, and how long its `Delivery::deliver`
//! calls take — and, in standalone
//! only, with the local gateway's passes over big rooms ([`LocalFanoutLoad`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxFut;

use crate::config::WorkerConfig;
use crate::history::{History, new_epoch};
use crate::ids::{NodeId, RoomId};
use crate::metrics::Metrics;
use crate::model::{InboundMessage, RoomBatch, RoomMsg};
use crate::ports::{
    BusConsumer, BusError, BusEvent, Delivery, DeliveryError, MessageStore, Offset, Partition,
    RecentMessages, RouteTable, StoreError, Written,
};
use crate::route_cache::RouteCache;

/// Room state kept by a worker; dropped after this long without messages.
const ROOM_IDLE_EVICT: Duration = Duration::from_secs(300);

/// How long a revocation or a stop waits for the store's flush before it hands the partition
/// back without committing (a store that cannot write must not hold a rebalance or a shutdown).
const HANDOVER_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Outbox message ids a worker remembers, to drop a second copy the relay re-published while
/// the first was still on its way to the store.
const OUTBOX_IDS_KEPT: usize = 65_536;

/// A load signal the worker's window follows beside its own observations: the gateway's latest
/// pass over a big room, when the gateway is in the same process (standalone). A worker in
/// another process has none; it sees the time its `Delivery::deliver` calls take instead.
pub trait LocalFanoutLoad: Send + Sync {
    /// The latest pass's duration, if it is recent enough to describe the load now.
    fn recent_pass(&self) -> Option<Duration>;
}

/// How long ago a load sample may be and still count.
const LOAD_FRESH_MS: u64 = 2000;

impl LocalFanoutLoad for Metrics {
    fn recent_pass(&self) -> Option<Duration> {
        self.fanout_load
            .recent(crate::clock::now_ms(), LOAD_FRESH_MS)
    }
}

struct RoomState {
    /// The bus partition its records come from.
    partition: Partition,
    /// The offset of the first pending message (nothing at or after it may be committed).
    first_pending: Option<Offset>,
    epoch: u32,
    next_seq: u64,
    pending: Vec<Arc<RoomMsg>>,
    /// `msg_id`s of the pending messages that came from the outbox.
    pending_outbox: Vec<u64>,
    /// Batches handed to gateways and not written yet.
    writing: u32,
    due: Option<Instant>,
    touched: Instant,
    /// After a take-over: `msg_id`s the previous owner delivered already (from the recent list).
    /// Its redelivered records come first; the first record not in here empties it.
    delivered_before: std::collections::HashSet<u64>,
}

pub struct RoomWorker {
    cfg: WorkerConfig,
    history: Arc<History>,
    /// `nodes(room)` per flush, read from the table only when it changed (or `route_cache_ms`).
    routes: RouteCache,
    delivery: Arc<dyn Delivery>,
    metrics: Arc<Metrics>,
    /// The current batch window in microseconds (adaptive, see the module docs).
    window_us: AtomicU64,
    local_fanout: Option<Arc<dyn LocalFanoutLoad>>,
    /// The slowest recent `deliver` call (µs) and when it was seen (ms since the Unix epoch):
    /// replaced by a slower one at once, by a faster one once it is [`LOAD_FRESH_MS`] old.
    deliver_us: AtomicU64,
    deliver_at_ms: AtomicU64,
    /// The least a record waited for this worker lately: the bus's own latency (and any clock
    /// difference with the ingest nodes), which is no backlog.
    bus_floor: parking_lot::Mutex<WaitFloor>,
    /// The owner this worker claims its partitions as, in the store.
    node: NodeId,
    /// Where gateways in other processes read joins' history: each batch goes there before it
    /// is delivered (distributed mode), kept to `cap` messages, expiring `ttl` after the last.
    recent: Option<(Arc<dyn RecentMessages>, usize, Duration)>,
}

/// What the worker knows of one of its partitions.
#[derive(Default)]
struct PartState {
    /// The highest offset taken in (records at or below it are duplicates).
    processed: Option<Offset>,
    /// The highest offset committed.
    committed: Option<Offset>,
    /// The previous owner did not release the partition cleanly: its rooms start new epochs.
    untrusted: bool,
    /// Rooms of an untrusted partition that started their new epoch already.
    renewed: std::collections::HashSet<RoomId>,
}

/// A store flush under way, and the commits it makes safe.
type Committing = (
    BoxFut<'static, Result<(), StoreError>>,
    Vec<(Partition, Offset)>,
);

#[derive(Default)]
struct Rooms {
    state: HashMap<RoomId, RoomState>,
    timers: BinaryHeap<Reverse<(Instant, RoomId)>>,
    flush_now: Vec<RoomId>,
    last_evict: Option<Instant>,
    parts: HashMap<Partition, PartState>,
    /// Rooms' deliveries in flight: each resolves to its room once every node wrote the batch.
    written: futures_util::stream::FuturesUnordered<BoxFut<'static, RoomId>>,
    /// Recent outbox `msg_id`s (set + insertion order, bounded by [`OUTBOX_IDS_KEPT`]).
    outbox_seen: std::collections::HashSet<u64>,
    outbox_order: std::collections::VecDeque<u64>,
}

impl Rooms {
    /// False when this outbox message was seen already (a re-published copy).
    fn first_outbox_copy(&mut self, msg_id: u64) -> bool {
        if !self.outbox_seen.insert(msg_id) {
            return false;
        }
        self.outbox_order.push_back(msg_id);
        if self.outbox_order.len() > OUTBOX_IDS_KEPT
            && let Some(old) = self.outbox_order.pop_front()
        {
            self.outbox_seen.remove(&old);
        }
        true
    }

    /// Per partition, the highest offset up to which every record is done (flushed or dropped),
    /// where that is beyond the last commit.
    fn commit_targets(&self) -> Vec<(Partition, Offset)> {
        let mut held: HashMap<Partition, Option<Offset>> = HashMap::new();
        for st in self.state.values() {
            if let Some(first) = st.first_pending {
                let before = first.checked_sub(1);
                let e = held.entry(st.partition).or_insert(before);
                *e = (*e).min(before);
            }
        }
        self.parts
            .iter()
            .filter_map(|(&p, ps)| {
                let mut done = ps.processed?;
                if let Some(limit) = held.get(&p) {
                    done = done.min((*limit)?);
                }
                ps.committed.is_none_or(|c| done > c).then_some((p, done))
            })
            .collect()
    }
}

impl RoomWorker {
    pub fn new(
        cfg: WorkerConfig,
        history: Arc<History>,
        routes: Arc<dyn RouteTable>,
        delivery: Arc<dyn Delivery>,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics
            .batch_window_us
            .set((cfg.batch_window_ms * 1000) as i64);
        RoomWorker {
            window_us: AtomicU64::new(cfg.batch_window_ms * 1000),
            routes: RouteCache::new(
                routes,
                Duration::from_millis(cfg.route_cache_ms),
                metrics.clone(),
            ),
            cfg,
            history,
            delivery,
            metrics,
            local_fanout: None,
            deliver_us: AtomicU64::new(0),
            deliver_at_ms: AtomicU64::new(0),
            bus_floor: parking_lot::Mutex::new(WaitFloor::default()),
            node: NodeId::new(&format!("worker-{:016x}", fastrand::u64(..))),
            recent: None,
        }
    }

    /// Appends every batch to the rooms' recent lists before delivering it (distributed mode:
    /// the gateways' [`crate::remote_history::RemoteHistory`] reads them).
    pub fn with_recent(
        mut self,
        recent: Arc<dyn RecentMessages>,
        cap: usize,
        ttl: Duration,
    ) -> Self {
        self.recent = Some((recent, cap, ttl));
        self
    }

    /// The node this worker claims its partitions as (default: a random one per worker).
    pub fn with_node(mut self, node: NodeId) -> Self {
        self.node = node;
        self
    }

    fn store(&self) -> &Arc<dyn MessageStore> {
        self.history.store()
    }

    /// Records this worker as the owner of newly assigned partitions; marks those the previous
    /// owner did not release cleanly (all of them when the store cannot say).
    async fn claim(&self, rooms: &mut Rooms, ps: &[Partition]) {
        let unclean = match self.store().claim_partitions(&self.node, ps).await {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, partitions = ?ps, "cannot claim partitions in the store; their rooms start new epochs");
                ps.to_vec()
            }
        };
        if !unclean.is_empty() {
            tracing::warn!(partitions = ?unclean, "partitions were not released cleanly by their previous owner; their rooms start new epochs");
        }
        for &p in ps {
            rooms.parts.entry(p).or_default().untrusted = unclean.contains(&p);
        }
    }

    /// Marks partitions released in the store (everything handed out for them is durable).
    async fn release(&self, ps: &[Partition]) {
        if ps.is_empty() {
            return;
        }
        if let Err(e) = self.store().release_partitions(&self.node, ps).await {
            tracing::error!(error = %e, partitions = ?ps, "cannot release partitions in the store; the next owner starts new epochs");
        }
    }

    /// Lets the window follow a gateway in the same process (standalone; see
    /// [`LocalFanoutLoad`]).
    pub fn with_local_fanout(mut self, load: Arc<dyn LocalFanoutLoad>) -> Self {
        self.local_fanout = Some(load);
        self
    }

    /// The slowest recent `deliver` call, if recent enough to count.
    fn recent_delivery(&self, now_ms: u64) -> Option<Duration> {
        let at = self.deliver_at_ms.load(Relaxed);
        (at > 0 && now_ms.saturating_sub(at) <= LOAD_FRESH_MS)
            .then(|| Duration::from_micros(self.deliver_us.load(Relaxed)))
    }

    fn observe_delivery(&self, took: Duration) {
        let now = crate::clock::now_ms();
        let took = took.as_micros() as u64;
        if self
            .recent_delivery(now)
            .is_none_or(|d| took >= d.as_micros() as u64)
        {
            self.deliver_us.store(took, Relaxed);
            self.deliver_at_ms.store(now, Relaxed);
        }
    }

    fn window(&self) -> Duration {
        let adaptive = self.window_us.load(Relaxed);
        let factor = self.cfg.pass_window_factor;
        let from_passes = if factor > 0.0 {
            // A sample older than two seconds says nothing about the load now.
            let local = self.local_fanout.as_ref().and_then(|l| l.recent_pass());
            let own = self.recent_delivery(crate::clock::now_ms());
            local
                .max(own)
                .map_or(0, |p| (p.as_micros() as f64 * factor) as u64)
        } else {
            0
        };
        let max = self.cfg.batch_window_max_ms.max(self.cfg.batch_window_ms) * 1000;
        Duration::from_micros(adaptive.max(from_passes.min(max)))
    }

    /// Adapts the window to how late a due flush ran.
    fn observe_lateness(&self, late: Duration) {
        let min = self.cfg.batch_window_ms * 1000;
        let max = self.cfg.batch_window_max_ms.max(self.cfg.batch_window_ms) * 1000;
        let cur = self.window_us.load(Relaxed);
        let late = late.as_micros() as u64;
        let next = if late > cur / 4 {
            (cur + cur / 4).max(cur + 1000).min(max)
        } else if late < cur / 16 {
            (cur - cur / 32).max(min)
        } else {
            cur
        };
        if next != cur {
            self.window_us.store(next, Relaxed);
            self.metrics.batch_window_us.set(next as i64);
        }
    }

    /// Runs until `stop` resolves (or the bus is closed and drained), then flushes what it holds,
    /// commits, and returns.
    pub async fn run(
        &self,
        mut consumer: Box<dyn BusConsumer>,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        let consumer = &mut *consumer;
        let mut rooms = Rooms::default();
        let mut events = Vec::with_capacity(512);
        let mut committing: Option<Committing> = None;
        let mut commit_tick =
            tokio::time::interval(Duration::from_millis(self.cfg.commit_interval_ms.max(1)));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            let next_due = rooms.timers.peek().map(|Reverse((t, _))| *t);
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    self.flush_due(&mut rooms).await;
                }
                Some(room) = futures_util::StreamExt::next(&mut rooms.written), if !rooms.written.is_empty() => {
                    self.written(room, &mut rooms).await;
                }
                r = async {
                    match committing.as_mut() {
                        Some((flush, _)) => flush.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if committing.is_some() => {
                    let targets = committing.take().map(|(_, t)| t).unwrap_or_default();
                    match r {
                        Ok(()) => self.commit(consumer, &mut rooms, targets).await,
                        Err(e) => tracing::warn!(error = %e, "store flush failed; commit deferred"),
                    }
                }
                _ = commit_tick.tick(), if committing.is_none() => {
                    let targets = rooms.commit_targets();
                    if !targets.is_empty() {
                        let store = self.history.store().clone();
                        committing = Some((Box::pin(async move { store.flush().await }), targets));
                    }
                }
                r = consumer.next(&mut events) => match r {
                    Ok(()) => self.handle(consumer, &mut events, &mut rooms).await,
                    Err(BusError::Closed) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bus consumer failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        let all: Vec<RoomId> = rooms.state.keys().cloned().collect();
        self.flush_rooms(&all, &mut rooms).await;
        if self.flush_and_commit(consumer, &mut rooms, None).await {
            let owned: Vec<Partition> = rooms.parts.keys().copied().collect();
            self.release(&owned).await;
        }
    }

    /// Takes in what the consumer handed out, in order.
    async fn handle(
        &self,
        consumer: &mut dyn BusConsumer,
        events: &mut Vec<BusEvent>,
        rooms: &mut Rooms,
    ) {
        // How long the oldest record waited for this worker beyond what records wait anyway
        // (the broker's own latency: tens of ms with some brokers, and any clock difference
        // with the ingest node that stamped it): a backlog here means deliveries cannot keep
        // up, so batches should grow. Counting the broker's latency as backlog would hold every
        // window at its maximum.
        if let Some(first) = events.iter().find_map(|e| match e {
            BusEvent::Record(r) => Some(r.msg.ts),
            _ => None,
        }) {
            let now = crate::clock::now_ms();
            let waited = now.saturating_sub(first);
            let backlog = self.bus_floor.lock().backlog(waited, now);
            self.observe_lateness(Duration::from_millis(backlog));
        }
        for event in events.drain(..) {
            match event {
                BusEvent::Record(r) => {
                    let part = rooms.parts.entry(r.partition).or_default();
                    if part.processed.is_some_and(|p| r.offset <= p) {
                        self.metrics.bus_duplicates.inc();
                        tracing::debug!(
                            partition = r.partition,
                            offset = r.offset,
                            "record processed already; dropped"
                        );
                        continue;
                    }
                    part.processed = Some(r.offset);
                    self.accept(r.msg, r.partition, r.offset, rooms).await;
                }
                BusEvent::Assigned(ps) => {
                    tracing::info!(partitions = ?ps, "partitions assigned");
                    self.claim(rooms, &ps).await;
                }
                BusEvent::Revoked(ps) => {
                    self.metrics.bus_revocations.inc();
                    self.revoke(consumer, rooms, &ps).await
                }
            }
        }
        let now_due = std::mem::take(&mut rooms.flush_now);
        self.flush_rooms(&now_due, rooms).await;
    }

    /// Hands revoked partitions back: flushes their rooms, commits, and forgets their state.
    async fn revoke(&self, consumer: &mut dyn BusConsumer, rooms: &mut Rooms, ps: &[Partition]) {
        tracing::info!(partitions = ?ps, "partitions revoked");
        let gone: Vec<RoomId> = rooms
            .state
            .iter()
            .filter(|(_, st)| ps.contains(&st.partition))
            .map(|(room, _)| room.clone())
            .collect();
        self.flush_rooms(&gone, rooms).await;
        if self.flush_and_commit(consumer, rooms, Some(ps)).await {
            self.release(ps).await;
        }
        for room in &gone {
            rooms.state.remove(room);
        }
        rooms.flush_now.retain(|r| !gone.contains(r));
        for p in ps {
            rooms.parts.remove(p);
        }
        // Rooms this worker no longer tracks may still be cached in the history.
        self.history
            .forget_rooms(|room| ps.contains(&consumer.partition_of(room.as_str())));
    }

    /// Waits for the store to make everything appended durable, then commits what is done (of
    /// `only` these partitions, if given). False when the store did not flush: then nothing
    /// handed out may be durable, and the partitions must not be released as clean.
    async fn flush_and_commit(
        &self,
        consumer: &mut dyn BusConsumer,
        rooms: &mut Rooms,
        only: Option<&[Partition]>,
    ) -> bool {
        let targets: Vec<_> = rooms
            .commit_targets()
            .into_iter()
            .filter(|(p, _)| only.is_none_or(|ps| ps.contains(p)))
            .collect();
        // Nothing to commit may still leave new epochs of empty batches queued: flush anyway.
        // Not committed on failure: the next owner takes these records again (at least once).
        match tokio::time::timeout(HANDOVER_FLUSH_WAIT, self.store().flush()).await {
            Ok(Ok(())) => {
                if !targets.is_empty() {
                    self.commit(consumer, rooms, targets).await;
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store flush failed; offsets not committed");
                false
            }
            Err(_) => {
                tracing::error!(
                    "the store did not flush within {HANDOVER_FLUSH_WAIT:?}; offsets not committed"
                );
                false
            }
        }
    }

    async fn commit(
        &self,
        consumer: &mut dyn BusConsumer,
        rooms: &mut Rooms,
        targets: Vec<(Partition, Offset)>,
    ) {
        for (p, offset) in targets {
            // A partition revoked meanwhile was committed by `revoke`.
            let Some(part) = rooms.parts.get_mut(&p) else {
                continue;
            };
            if part.committed.is_some_and(|c| c >= offset) {
                continue;
            }
            match consumer.commit(p, offset).await {
                Ok(()) => part.committed = Some(offset),
                Err(e) => tracing::warn!(partition = p, offset, error = %e, "commit failed"),
            }
        }
    }

    /// The position to continue a room of an untrusted partition from, and the `msg_id`s its
    /// previous owner delivered already (see the module docs). The recent list is written
    /// before each delivery, so its tail is at or beyond anything clients saw; when it continues
    /// the stored stream (same epoch, no gap after the stored last seq), the messages the store
    /// lacks are written (their outbox rows, if any, marked sent) and the stream goes on in the
    /// same epoch. Otherwise the room starts a new epoch.
    async fn take_over(
        &self,
        room: &RoomId,
    ) -> Result<(u32, u64, std::collections::HashSet<u64>), StoreError> {
        let (epoch, stored) = self.history.cursor(room).await?;
        if let Some((recent, cap, _)) = &self.recent {
            match recent.recent(room, *cap).await {
                Ok(list) => {
                    if let Some((last, missing)) = continuation(epoch, stored, &list) {
                        if !missing.is_empty() {
                            let ids = missing.iter().map(|m| m.msg_id).collect();
                            self.history
                                .append(Arc::new(RoomBatch {
                                    room: room.clone(),
                                    epoch,
                                    msgs: missing,
                                    outbox_ids: ids,
                                }))
                                .await?;
                        }
                        tracing::info!(%room, epoch, stored, last, "room taken over from its recent list; same epoch");
                        let delivered = list
                            .iter()
                            .filter(|m| m.epoch == epoch)
                            .map(|m| m.msg_id)
                            .collect();
                        return Ok((epoch, last, delivered));
                    }
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "cannot read the recent list; starting a new epoch")
                }
            }
        }
        let epoch = self.history.restart_epoch(room).await?;
        tracing::info!(%room, epoch, "room taken over without a usable recent list; new epoch");
        Ok((epoch, 0, Default::default()))
    }

    async fn accept(
        &self,
        msg: InboundMessage,
        partition: Partition,
        offset: Offset,
        rooms: &mut Rooms,
    ) {
        let now = Instant::now();
        if msg.from_outbox && !rooms.first_outbox_copy(msg.msg_id.0) {
            tracing::debug!(room = %msg.room, msg_id = msg.msg_id.0, "outbox message seen already; dropped");
            return;
        }
        if !rooms.state.contains_key(&msg.room) {
            let renew = rooms
                .parts
                .get_mut(&partition)
                .is_some_and(|p| p.untrusted && p.renewed.insert(msg.room.clone()));
            let position = if renew {
                self.take_over(&msg.room).await
            } else {
                self.history
                    .cursor(&msg.room)
                    .await
                    .map(|(e, s)| (e, s, Default::default()))
            };
            let (epoch, last_seq, delivered_before) = match position {
                Ok(c) => c,
                Err(e) => {
                    // Keep the room alive; a fresh epoch tells clients the stream restarted.
                    tracing::error!(room = %msg.room, error = %e, "cannot load room position; starting a new epoch");
                    (new_epoch(), 0, Default::default())
                }
            };
            rooms.state.insert(
                msg.room.clone(),
                RoomState {
                    partition,
                    first_pending: None,
                    epoch,
                    next_seq: last_seq + 1,
                    pending: Vec::new(),
                    pending_outbox: Vec::new(),
                    writing: 0,
                    due: None,
                    touched: now,
                    delivered_before,
                },
            );
        }
        if let Some(st) = rooms.state.get_mut(&msg.room)
            && !st.delivered_before.is_empty()
        {
            if st.delivered_before.remove(&msg.msg_id.0) {
                // The previous owner delivered it (and the take-over stored it).
                self.metrics.bus_duplicates.inc();
                if msg.from_outbox {
                    rooms.first_outbox_copy(msg.msg_id.0);
                }
                return;
            }
            st.delivered_before = Default::default();
        }
        let Some(st) = rooms.state.get_mut(&msg.room) else {
            return;
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.touched = now;
        if st.pending.is_empty() {
            st.first_pending = Some(offset);
        }
        if msg.from_outbox {
            st.pending_outbox.push(msg.msg_id.0);
        }
        st.pending.push(Arc::new(msg.sequenced(st.epoch, seq)));
        if st.pending.len() >= self.cfg.batch_max.max(1) {
            self.flush(&msg.room, rooms).await;
        } else if st.pending.len() == 1 {
            if st.writing == 0 {
                // Nothing of the room is being written: out once the records at hand are in.
                rooms.flush_now.push(msg.room);
            } else {
                // Goes out when the previous batch is written, or after the window at the latest.
                let due = now + self.window();
                st.due = Some(due);
                rooms.timers.push(Reverse((due, msg.room)));
            }
        }
    }

    /// A room's batch is written everywhere: what gathered meanwhile goes out now — with every
    /// other room whose write is done by now, in one flush.
    async fn written(&self, first: RoomId, rooms: &mut Rooms) {
        let mut ready = vec![first];
        // Polled with this task's own waker: `now_or_never` would leave a no-op waker behind,
        // and a write that finishes later would not wake the worker until something else did
        // (the next record, a timer) — measured as p99 spikes of 40-190 ms.
        while let std::task::Poll::Ready(Some(room)) = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(futures_util::StreamExt::poll_next_unpin(
                &mut rooms.written,
                cx,
            ))
        })
        .await
        {
            ready.push(room);
        }
        ready.retain(|room| {
            rooms.state.get_mut(room).is_some_and(|st| {
                st.writing = st.writing.saturating_sub(1);
                st.writing == 0 && !st.pending.is_empty()
            })
        });
        self.flush_rooms(&ready, rooms).await;
    }

    async fn flush_due(&self, rooms: &mut Rooms) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut observed = false;
        while let Some(Reverse((t, _))) = rooms.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, room))) = rooms.timers.pop() else {
                break;
            };
            // Entries go stale when a room went out before its timer (its previous batch was
            // written, or its batch filled up): skip those. Only a live timer says how late
            // the loop runs; a stale one fires after its room went out, and counting it would
            // widen the window for nothing.
            if rooms.state.get(&room).is_some_and(|s| s.due == Some(t)) {
                if !observed {
                    self.observe_lateness(now - t);
                    observed = true;
                }
                due.push(room);
            }
        }
        self.flush_rooms(&due, rooms).await;
        if rooms
            .last_evict
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(30))
        {
            rooms.last_evict = Some(now);
            rooms.state.retain(|_, s| {
                !s.pending.is_empty() || now.duration_since(s.touched) < ROOM_IDLE_EVICT
            });
        }
    }

    async fn flush(&self, room: &RoomId, rooms: &mut Rooms) {
        self.flush_rooms(std::slice::from_ref(room), rooms).await;
    }

    /// Flushes several rooms at once: the batches are recorded in history one by one, appended
    /// to their recent lists together (concurrent calls, which the Redis connection pipelines:
    /// one round trip for all of them instead of one per room, which capped a worker at a few
    /// hundred small batches a second), then delivered in order. Each batch is still in its
    /// list before any gateway has it.
    async fn flush_rooms(&self, list: &[RoomId], rooms: &mut Rooms) {
        let mut batches = Vec::with_capacity(list.len());
        for room in list {
            if let Some(batch) = Self::take_batch(room, rooms) {
                batches.push(batch);
            }
        }
        if batches.is_empty() {
            return;
        }
        for batch in &batches {
            self.metrics.batches.inc();
            self.metrics.batch_size.observe(batch.msgs.len() as f64);
            if let Err(e) = self.history.append(batch.clone()).await {
                tracing::error!(room = %batch.room, error = %e, "cannot record batch in history");
            }
        }
        // Before delivery, as the history: a join never misses a message that was delivered.
        if let Some((recent, cap, ttl)) = &self.recent {
            let pushes = batches.iter().map(|b| recent.push(b, *cap, *ttl));
            for (batch, r) in batches
                .iter()
                .zip(futures_util::future::join_all(pushes).await)
            {
                if let Err(e) = r {
                    // Joins fall back to the store (which has it, or will within its flush).
                    tracing::warn!(room = %batch.room, error = %e, "cannot append to the recent list");
                }
            }
        }
        for batch in batches {
            let room = batch.room.clone();
            let written = self.deliver(batch).await;
            if !written.is_empty()
                && let Some(st) = rooms.state.get_mut(&room)
            {
                st.writing += 1;
                rooms.written.push(Box::pin(async move {
                    for w in written {
                        w.wait().await;
                    }
                    room
                }));
            }
        }
    }

    /// The room's pending messages as its next batch (`None` when nothing is pending).
    fn take_batch(room: &RoomId, rooms: &mut Rooms) -> Option<Arc<RoomBatch>> {
        let st = rooms.state.get_mut(room)?;
        st.due = None;
        if st.pending.is_empty() {
            return None;
        }
        // Done once this flush returns (the next commit waits for the store's flush).
        st.first_pending = None;
        Some(Arc::new(RoomBatch {
            room: room.clone(),
            epoch: st.epoch,
            msgs: std::mem::take(&mut st.pending),
            outbox_ids: std::mem::take(&mut st.pending_outbox),
        }))
    }

    /// Sends a recorded batch to every node in its room's route; returns when each will have
    /// written it.
    async fn deliver(&self, batch: Arc<RoomBatch>) -> Vec<Written> {
        let room = &batch.room;
        let mut written = Vec::new();
        match self.routes.nodes(room).await {
            Ok(nodes) => {
                for node in nodes.iter() {
                    let started = Instant::now();
                    let r = self.delivery.deliver_tracked(node, batch.clone()).await;
                    self.observe_delivery(started.elapsed());
                    match r {
                        Ok(w) => written.push(w),
                        // A route of a node that left (its route lease has not run out yet):
                        // nothing was sent, nothing to say per batch.
                        Err(DeliveryError::UnknownNode(_)) => {
                            tracing::debug!(room = %room, node = %node, "route to a node that left; skipped")
                        }
                        Err(e) => {
                            tracing::warn!(room = %room, node = %node, error = %e, "delivery failed")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(room = %room, error = %e, "cannot read routes; batch not delivered")
            }
        }
        written
    }
}

/// The least a record waited on the bus over the last 5–10 s (two rotating 5 s minima), and
/// how far a new wait exceeds it.
#[derive(Default, Debug)]
struct WaitFloor {
    /// (minimum wait in ms, when its period started) for the current and previous period.
    current: Option<(u64, u64)>,
    previous: Option<u64>,
}

const WAIT_FLOOR_PERIOD_MS: u64 = 5000;

impl WaitFloor {
    fn backlog(&mut self, waited_ms: u64, now_ms: u64) -> u64 {
        match &mut self.current {
            Some((min, since)) if now_ms.saturating_sub(*since) < WAIT_FLOOR_PERIOD_MS => {
                *min = (*min).min(waited_ms);
            }
            cur => {
                self.previous = cur.map(|(min, _)| min);
                *cur = Some((waited_ms, now_ms));
            }
        }
        let floor = self
            .current
            .map(|(min, _)| min)
            .into_iter()
            .chain(self.previous)
            .min()
            .unwrap_or(0);
        waited_ms.saturating_sub(floor)
    }
}

/// Where a taken-over room's recent list says its stream got to, when that list continues the
/// stored stream (`epoch`, `stored`): the list's last seq and the messages after `stored` (to
/// store). `None` when the list is empty, ends in another epoch, or starts after `stored + 1`
/// (messages in between would be missing everywhere).
fn continuation(epoch: u32, stored: u64, list: &[RoomMsg]) -> Option<(u64, Vec<Arc<RoomMsg>>)> {
    let last = list.last()?;
    if last.epoch != epoch || last.seq < stored {
        return None;
    }
    let tail: Vec<&RoomMsg> = list
        .iter()
        .rev()
        .take_while(|m| m.epoch == epoch)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let missing: Vec<Arc<RoomMsg>> = tail
        .iter()
        .filter(|m| m.seq > stored)
        .map(|m| Arc::new((*m).clone()))
        .collect();
    // No gap between the store and the list, and none inside the list.
    if !missing
        .iter()
        .zip(stored + 1..)
        .all(|(m, expect)| m.seq == expect)
    {
        return None;
    }
    Some((last.seq, missing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFut;
    use crate::config::HistoryConfig;
    use crate::ids::{MsgId, NodeId, UserId};
    use crate::memory::{MemoryBus, MemoryRoutes, MemoryStore};
    use crate::model::MsgKind;
    use crate::ports::Bus;
    use parking_lot::Mutex;
    use tokio::sync::mpsc;

    struct Recorder(mpsc::UnboundedSender<(NodeId, Arc<RoomBatch>)>);

    impl Delivery for Recorder {
        fn deliver(
            &self,
            node: &NodeId,
            batch: Arc<RoomBatch>,
        ) -> BoxFut<'_, Result<(), DeliveryError>> {
            let _ = self.0.send((node.clone(), batch));
            Box::pin(std::future::ready(Ok(())))
        }
    }

    fn msg(room: &str, i: u64) -> InboundMessage {
        InboundMessage {
            room: RoomId::parse(room).unwrap(),
            msg_id: MsgId(i),
            user: UserId::parse("u").unwrap(),
            name: None,
            text: format!("{i}"),
            kind: MsgKind::Chat,
            ts: crate::clock::now_ms(),
            payload: None,
            from_outbox: false,
        }
    }

    /// The bus's steady latency is not a backlog; a wait that grows beyond it is, and a floor
    /// older than two periods is forgotten.
    #[test]
    fn only_waits_beyond_the_bus_latency_count_as_backlog() {
        let mut f = WaitFloor::default();
        assert_eq!(f.backlog(40, 1_000), 0, "the first wait is the floor");
        assert_eq!(f.backlog(45, 1_100), 5);
        assert_eq!(f.backlog(38, 1_200), 0, "a lower wait lowers the floor");
        assert_eq!(f.backlog(238, 1_300), 200, "a growing wait is a backlog");
        // The next period keeps the previous one's floor...
        assert_eq!(f.backlog(240, 6_100), 202);
        // ...and a period later it is gone: the floor is what the last 5-10 s saw.
        assert_eq!(f.backlog(240, 11_200), 0);
        assert_eq!(f.backlog(250, 11_300), 10);
    }

    /// The recent list decides a take-over only when it continues the store without a gap.
    #[test]
    fn a_take_over_continues_only_a_list_that_reaches_the_store() {
        let list = |epoch: u32, seqs: &[u64]| -> Vec<RoomMsg> {
            seqs.iter()
                .map(|&s| msg("r", s).sequenced(epoch, s))
                .collect()
        };
        let seqs = |m: Vec<Arc<RoomMsg>>| m.iter().map(|m| m.seq).collect::<Vec<_>>();
        // The store has 1..=3; the list 2..=5: 4 and 5 are written, the stream goes on after 5.
        let (last, missing) = super::continuation(7, 3, &list(7, &[2, 3, 4, 5])).unwrap();
        assert_eq!((last, seqs(missing)), (5, vec![4, 5]));
        // The store is as far as the list: nothing to write.
        let (last, missing) = super::continuation(7, 5, &list(7, &[4, 5])).unwrap();
        assert_eq!((last, missing.len()), (5, 0));
        // An older epoch's messages before the current epoch's are not the current stream.
        let mut mixed = list(6, &[9, 10]);
        mixed.extend(list(7, &[1, 2]));
        let (last, missing) = super::continuation(7, 1, &mixed).unwrap();
        assert_eq!((last, seqs(missing)), (2, vec![2]));
        // Not usable: empty, another epoch at the end, a gap after the store, a list behind it.
        assert!(super::continuation(7, 3, &[]).is_none());
        assert!(super::continuation(7, 3, &list(8, &[4])).is_none());
        assert!(super::continuation(7, 3, &list(7, &[5, 6])).is_none());
        assert!(super::continuation(7, 3, &list(7, &[1, 2])).is_none());
    }

    struct Setup {
        bus: Arc<MemoryBus>,
        rx: mpsc::UnboundedReceiver<(NodeId, Arc<RoomBatch>)>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn setup(cfg: WorkerConfig, routes: &[(&str, &str)]) -> Setup {
        let (tx, rx) = mpsc::unbounded_channel();
        let (bus, task) = setup_with(cfg, routes, Arc::new(Recorder(tx))).await;
        Setup { bus, rx, task }
    }

    /// A running worker over a memory bus with these routes, delivering through `delivery`.
    async fn setup_with(
        cfg: WorkerConfig,
        routes: &[(&str, &str)],
        delivery: Arc<dyn Delivery>,
    ) -> (Arc<MemoryBus>, tokio::task::JoinHandle<()>) {
        let (bus, mut consumers) = MemoryBus::new(1, 1000);
        let route_table = Arc::new(MemoryRoutes::default());
        for (room, node) in routes {
            route_table
                .renew(&NodeId::new(node), Duration::from_secs(3600))
                .await
                .unwrap();
            route_table
                .add(&RoomId::parse(room).unwrap(), &NodeId::new(node))
                .await
                .unwrap();
        }
        let history = Arc::new(History::new(
            HistoryConfig::default(),
            Arc::new(MemoryStore::new(100)),
        ));
        let worker = RoomWorker::new(
            cfg,
            history,
            route_table,
            delivery,
            Arc::new(Metrics::default()),
        );
        let consumer = consumers.pop().unwrap();
        let task = tokio::spawn(async move {
            worker
                .run(Box::new(consumer), std::future::pending::<()>())
                .await
        });
        (Arc::new(bus), task)
    }

    /// In the distributed mode each batch is in the room's recent list before any gateway has
    /// it, so a join on any gateway shows what its members were sent.
    #[tokio::test]
    async fn batches_are_in_the_recent_list_before_they_are_delivered() {
        let (bus, mut consumers) = MemoryBus::new(1, 100);
        let routes = Arc::new(MemoryRoutes::default());
        let n1 = NodeId::new("n1");
        routes.renew(&n1, Duration::from_secs(3600)).await.unwrap();
        routes.add(&RoomId::parse("r").unwrap(), &n1).await.unwrap();
        let recent = Arc::new(crate::memory::MemoryRecent::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let worker = RoomWorker::new(
            WorkerConfig::default(),
            Arc::new(History::new(
                HistoryConfig::default(),
                Arc::new(MemoryStore::new(100)),
            )),
            routes,
            Arc::new(Recorder(tx)),
            Arc::new(Metrics::default()),
        )
        .with_recent(recent.clone(), 3, Duration::from_secs(60));
        let consumer = consumers.pop().unwrap();
        let task = tokio::spawn(async move {
            worker
                .run(Box::new(consumer), std::future::pending::<()>())
                .await
        });
        for i in 1..=5 {
            bus.publish(msg("r", i)).await.unwrap();
            let (_, b) = rx.recv().await.unwrap();
            let listed = recent.recent(&b.room, 10).await.unwrap();
            assert_eq!(
                listed.last().map(|m| m.seq),
                Some(b.last_seq()),
                "listed before delivered"
            );
            assert!(listed.len() <= 3, "capped");
        }
        bus.close();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lightly_loaded_room_adds_no_wait() {
        let cfg = WorkerConfig {
            batch_window_ms: 20,
            batch_max: 100,
            ..Default::default()
        };
        let mut s = setup(cfg, &[("r", "n1")]).await;
        let t0 = Instant::now();
        s.bus.publish(msg("r", 1)).await.unwrap();
        let (_, b) = s.rx.recv().await.unwrap();
        assert_eq!(b.msgs.len(), 1);
        // Written at once (this delivery cannot tell otherwise): the next ones do not wait
        // for a window either.
        for i in 2..=5 {
            s.bus.publish(msg("r", i)).await.unwrap();
        }
        let mut seqs = Vec::new();
        while seqs.len() < 4 {
            let (_, b) = s.rx.recv().await.unwrap();
            seqs.extend(b.msgs.iter().map(|m| m.seq));
        }
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert_eq!(Instant::now(), t0, "no added delay");
        s.bus.close();
        s.task.await.unwrap();
    }

    /// A delivery whose batches are written when the test says so.
    struct Gated(mpsc::UnboundedSender<(Arc<RoomBatch>, tokio::sync::oneshot::Sender<()>)>);

    impl Delivery for Gated {
        fn deliver(
            &self,
            _node: &NodeId,
            _batch: Arc<RoomBatch>,
        ) -> BoxFut<'_, Result<(), DeliveryError>> {
            unreachable!("the worker asks when its batches are written")
        }

        fn deliver_tracked(
            &self,
            _node: &NodeId,
            batch: Arc<RoomBatch>,
        ) -> BoxFut<'_, Result<Written, DeliveryError>> {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = self.0.send((batch, tx));
            Box::pin(std::future::ready(Ok(Written::when(rx))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_gathers_while_its_batch_is_written_and_sends_the_moment_it_is() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cfg = WorkerConfig {
            batch_window_ms: 20,
            batch_window_max_ms: 200,
            batch_max: 100,
            ..Default::default()
        };
        let (bus, task) = setup_with(cfg, &[("r", "n1")], Arc::new(Gated(tx))).await;
        let seqs = |b: &RoomBatch| b.msgs.iter().map(|m| m.seq).collect::<Vec<_>>();
        let t0 = Instant::now();
        bus.publish(msg("r", 1)).await.unwrap();
        let (b1, written1) = rx.recv().await.unwrap();
        assert_eq!(seqs(&b1), [1]);
        assert_eq!(Instant::now(), t0, "nothing was being written: out at once");

        // While batch 1 is being written, the next messages wait for it...
        for i in 2..=5 {
            bus.publish(msg("r", i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(7)).await;
        assert!(
            rx.try_recv().is_err(),
            "held while the previous batch is written"
        );
        // ...and go out as one batch the moment it is written, with no window on top.
        written1.send(()).unwrap();
        let (b2, _written2) = rx.recv().await.unwrap();
        assert_eq!(seqs(&b2), [2, 3, 4, 5]);
        assert_eq!(Instant::now(), t0 + Duration::from_millis(7));

        // A batch that is never reported written holds the next one for the window at most.
        let t1 = Instant::now();
        bus.publish(msg("r", 6)).await.unwrap();
        let (b3, _written3) = rx.recv().await.unwrap();
        assert_eq!(seqs(&b3), [6]);
        assert_eq!(
            Instant::now(),
            t1 + Duration::from_millis(20),
            "the window bounds the wait"
        );
        bus.close();
        task.await.unwrap();
    }

    /// A worker with no bus, for its window logic.
    fn bare_worker(cfg: WorkerConfig, metrics: &Arc<Metrics>) -> RoomWorker {
        let (tx, _rx) = mpsc::unbounded_channel();
        let history = Arc::new(History::new(
            HistoryConfig::default(),
            Arc::new(MemoryStore::new(100)),
        ));
        RoomWorker::new(
            cfg,
            history,
            Arc::new(MemoryRoutes::default()),
            Arc::new(Recorder(tx)),
            metrics.clone(),
        )
    }

    #[test]
    fn window_follows_the_gateways_passes_over_big_rooms() {
        let cfg = WorkerConfig {
            batch_window_ms: 20,
            batch_window_max_ms: 200,
            pass_window_factor: 2.0,
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::default());
        let w = bare_worker(cfg.clone(), &metrics).with_local_fanout(metrics.clone());
        assert_eq!(w.window(), Duration::from_millis(20), "no pass yet");
        let now = crate::clock::now_ms();
        metrics.fanout_load.record(Duration::from_millis(30), now);
        assert_eq!(w.window(), Duration::from_millis(60), "twice the pass");
        metrics.fanout_load.record(Duration::from_millis(150), now);
        assert_eq!(w.window(), Duration::from_millis(200), "capped at the max");
        metrics.fanout_load.record(Duration::from_millis(5), now);
        assert_eq!(w.window(), Duration::from_millis(20), "never below the min");
        metrics
            .fanout_load
            .record(Duration::from_millis(30), now - 5000);
        assert_eq!(
            w.window(),
            Duration::from_millis(20),
            "an old pass is ignored"
        );
        metrics.fanout_load.record(Duration::from_millis(30), now);
        let off = bare_worker(
            WorkerConfig {
                pass_window_factor: 0.0,
                ..cfg.clone()
            },
            &metrics,
        )
        .with_local_fanout(metrics.clone());
        assert_eq!(off.window(), Duration::from_millis(20), "turned off");
        let remote = bare_worker(cfg, &metrics);
        assert_eq!(
            remote.window(),
            Duration::from_millis(20),
            "a worker without the local hook does not see the gateway's metrics"
        );
    }

    /// A worker in another process than its gateways sees their load in how long its
    /// `deliver` calls take.
    #[test]
    fn window_follows_slow_deliveries() {
        let cfg = WorkerConfig {
            batch_window_ms: 20,
            batch_window_max_ms: 200,
            pass_window_factor: 2.0,
            ..Default::default()
        };
        let w = bare_worker(cfg, &Arc::new(Metrics::default()));
        w.observe_delivery(Duration::from_millis(2));
        assert_eq!(w.window(), Duration::from_millis(20), "fast: the minimum");
        w.observe_delivery(Duration::from_millis(40));
        assert_eq!(
            w.window(),
            Duration::from_millis(80),
            "twice the slowest call"
        );
        w.observe_delivery(Duration::from_millis(1));
        assert_eq!(
            w.window(),
            Duration::from_millis(80),
            "a faster call does not hide a recent slow one"
        );
        w.deliver_at_ms
            .store(crate::clock::now_ms() - 5000, Relaxed);
        assert_eq!(
            w.window(),
            Duration::from_millis(20),
            "an old sample expires"
        );
        w.observe_delivery(Duration::from_millis(500));
        assert_eq!(w.window(), Duration::from_millis(200), "capped at the max");
    }

    /// A delivery that takes its time (a gateway behind a network), measured by the worker.
    struct SlowDelivery(Duration);

    impl Delivery for SlowDelivery {
        fn deliver(
            &self,
            _node: &NodeId,
            _batch: Arc<RoomBatch>,
        ) -> BoxFut<'_, Result<(), DeliveryError>> {
            let took = self.0;
            Box::pin(async move {
                tokio::time::sleep(took).await;
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_times_its_own_deliveries() {
        let routes = Arc::new(MemoryRoutes::default());
        routes
            .renew(&NodeId::new("n1"), Duration::from_secs(3600))
            .await
            .unwrap();
        routes
            .add(&RoomId::parse("r").unwrap(), &NodeId::new("n1"))
            .await
            .unwrap();
        let (bus, mut consumers) = MemoryBus::new(1, 100);
        let metrics = Arc::new(Metrics::default());
        let worker = Arc::new(RoomWorker::new(
            WorkerConfig {
                batch_window_ms: 20,
                batch_window_max_ms: 200,
                ..Default::default()
            },
            Arc::new(History::new(
                HistoryConfig::default(),
                Arc::new(MemoryStore::new(100)),
            )),
            routes,
            Arc::new(SlowDelivery(Duration::from_millis(35))),
            metrics,
        ));
        let consumer = consumers.pop().unwrap();
        let task = tokio::spawn({
            let worker = worker.clone();
            async move {
                worker
                    .run(Box::new(consumer), std::future::pending::<()>())
                    .await
            }
        });
        bus.publish(msg("r", 1)).await.unwrap();
        bus.close();
        task.await.unwrap();
        assert_eq!(worker.window(), Duration::from_millis(70));
    }

    #[test]
    fn window_widens_under_backlog_and_narrows_back() {
        let cfg = WorkerConfig {
            batch_window_ms: 20,
            batch_window_max_ms: 200,
            ..Default::default()
        };
        let w = bare_worker(cfg, &Arc::new(Metrics::default()));
        assert_eq!(w.window(), Duration::from_millis(20));
        for _ in 0..100 {
            w.observe_lateness(Duration::from_millis(500));
        }
        assert_eq!(w.window(), Duration::from_millis(200), "capped at the max");
        for _ in 0..1000 {
            w.observe_lateness(Duration::ZERO);
        }
        assert_eq!(w.window(), Duration::from_millis(20), "back to the min");
        // Lateness within the tolerated band leaves it alone.
        w.observe_lateness(Duration::from_millis(3));
        assert_eq!(w.window(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn full_batch_flushes_early_and_only_routed_nodes_get_it() {
        let cfg = WorkerConfig {
            batch_window_ms: 1000,
            batch_max: 3,
            ..Default::default()
        };
        let mut s = setup(cfg, &[("r", "n1"), ("r", "n2"), ("other", "n3")]).await;
        s.bus.publish(msg("r", 1)).await.unwrap();
        let (_, first) = s.rx.recv().await.unwrap();
        let _ = s.rx.recv().await.unwrap();
        assert_eq!(first.msgs.len(), 1);
        let t0 = Instant::now();
        for i in 2..=4 {
            s.bus.publish(msg("r", i)).await.unwrap();
        }
        let got = Mutex::new(Vec::new());
        for _ in 0..2 {
            let (node, b) = s.rx.recv().await.unwrap();
            got.lock().push((
                node.to_string(),
                b.msgs.iter().map(|m| m.seq).collect::<Vec<_>>(),
            ));
        }
        assert!(
            Instant::now() < t0 + Duration::from_millis(1000),
            "flushed at batch_max, not at the window"
        );
        let mut got = got.into_inner();
        got.sort();
        assert_eq!(
            got,
            vec![("n1".into(), vec![2, 3, 4]), ("n2".into(), vec![2, 3, 4])]
        );
        s.bus.close();
        s.task.await.unwrap();
        assert!(s.rx.try_recv().is_err(), "nothing for n3");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_messages_are_flushed_when_the_bus_closes() {
        let cfg = WorkerConfig {
            batch_window_ms: 60_000,
            batch_max: 100,
            ..Default::default()
        };
        let mut s = setup(cfg, &[("r", "n1")]).await;
        s.bus.publish(msg("r", 1)).await.unwrap();
        s.rx.recv().await.unwrap();
        s.bus.publish(msg("r", 2)).await.unwrap();
        s.bus.close();
        s.task.await.unwrap();
        let (_, b) = s.rx.recv().await.unwrap();
        assert_eq!(b.msgs[0].seq, 2);
    }

    /// The relay re-publishes an outbox row whose first copy is still on its way: the room gets
    /// it once, and the batch names it for the store.
    #[tokio::test(start_paused = true)]
    async fn a_second_copy_of_an_outbox_message_is_dropped() {
        let cfg = WorkerConfig {
            batch_window_ms: 20,
            batch_max: 100,
            ..Default::default()
        };
        let mut s = setup(cfg, &[("r", "n1")]).await;
        let gift = InboundMessage {
            from_outbox: true,
            ..msg("r", 7)
        };
        s.bus.publish(gift.clone()).await.unwrap();
        let (_, b) = s.rx.recv().await.unwrap();
        assert_eq!(b.outbox_ids, [7]);
        s.bus.publish(gift).await.unwrap();
        s.bus.publish(msg("r", 8)).await.unwrap();
        let (_, b) = s.rx.recv().await.unwrap();
        assert_eq!(
            b.msgs.iter().map(|m| (m.msg_id, m.seq)).collect::<Vec<_>>(),
            [(8, 2)],
            "the copy is dropped and takes no seq"
        );
        assert!(b.outbox_ids.is_empty());
        s.bus.close();
        s.task.await.unwrap();
    }
}
