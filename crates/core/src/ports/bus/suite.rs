//! The bus port's suite: what every [`Bus`]/[`BusConsumer`] adapter must do, and what the room
//! worker does on top of it (duplicates dropped, commits after the work, room state dropped on
//! revoke, a clean stop). Each case is a generic async fn over a [`BusHarness`], which builds a
//! fresh bus and its consumer group (a Kafka adapter: a new topic and group per case), so the
//! same cases run against the in-memory bus now and a networked one later. Every wait is bounded
//! by [`WAIT`] and fails loudly instead of hanging; nothing here sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::BoxFut;
use crate::config::{HistoryConfig, WorkerConfig};
use crate::history::History;
use crate::ids::{MsgId, NodeId, RoomId, UserId};
use crate::memory::{MemoryBus, MemoryRecent, MemoryRoutes, MemoryStore};
use crate::metrics::Metrics;
use crate::model::{InboundMessage, MsgKind, RoomBatch};
use crate::ports::{
    Bus, BusConsumer, BusError, BusEvent, BusRecord, Delivery, DeliveryError, MessageStore, Offset,
    Partition, RecentMessages, RouteTable,
};
use crate::worker::RoomWorker;

/// The longest any case waits for an event before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A fresh bus and its consumer group, for [`bus_suite`].
pub trait BusHarness: Send + Sync {
    fn bus(&self) -> Arc<dyn Bus>;
    /// A new member of the group (the group rebalances; its partitions come as `Assigned`).
    fn join(&self) -> BoxFut<'_, Box<dyn BusConsumer>>;
    /// How many partitions the bus has (at least 2).
    fn partitions(&self) -> u32;
}

/// The in-memory bus in a [`BusHarness`].
pub struct MemoryBusHarness {
    pub bus: Arc<MemoryBus>,
}

impl MemoryBusHarness {
    pub fn new(partitions: usize) -> Self {
        MemoryBusHarness {
            bus: Arc::new(MemoryBus::without_consumers(partitions, 1024)),
        }
    }
}

impl BusHarness for MemoryBusHarness {
    fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }
    fn join(&self) -> BoxFut<'_, Box<dyn BusConsumer>> {
        let c: Box<dyn BusConsumer> = Box::new(self.bus.join());
        Box::pin(std::future::ready(c))
    }
    fn partitions(&self) -> u32 {
        self.bus.partitions() as u32
    }
}

/// Every case, each on a fresh harness from `make`.
pub async fn bus_suite<H: BusHarness>(make: impl Fn() -> H) {
    records_keep_their_order_and_partition_per_key(&make()).await;
    a_new_member_starts_after_the_last_commit(&make()).await;
    a_partition_moves_only_after_its_owner_let_go(&make()).await;
    the_worker_drops_records_it_processed(&make()).await;
    the_worker_stops_with_everything_flushed_and_committed(&make()).await;
    a_crashed_worker_leaves_what_was_not_done_to_the_next(&make()).await;
    a_revoked_room_is_loaded_from_the_store_by_its_next_owner(&make()).await;
    a_room_taken_from_a_crashed_owner_starts_a_new_epoch(&make()).await;
    a_room_taken_from_a_crashed_owner_continues_from_its_recent_list(&make()).await;
}

// ---- helpers -------------------------------------------------------------------------------

pub fn message(room: &str, i: u64) -> InboundMessage {
    InboundMessage {
        room: RoomId::parse(room).expect("valid room id"),
        msg_id: MsgId(1_000_000 + i),
        user: UserId::parse("suite-user").expect("valid user id"),
        name: None,
        text: format!("message {i}"),
        kind: MsgKind::Chat,
        ts: crate::clock::now_ms(),
        payload: None,
        from_outbox: false,
    }
}

/// One room id per partition, as `consumer` maps keys.
fn room_per_partition(consumer: &dyn BusConsumer, partitions: u32) -> BTreeMap<Partition, String> {
    let mut rooms = BTreeMap::new();
    for i in 0..10_000 {
        let room = format!("suite-room-{i}");
        rooms.entry(consumer.partition_of(&room)).or_insert(room);
        if rooms.len() == partitions as usize {
            break;
        }
    }
    assert_eq!(
        rooms.len(),
        partitions as usize,
        "every partition gets keys"
    );
    rooms
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Reads until `n` records came; returns them and the other events seen on the way.
async fn read_records(consumer: &mut dyn BusConsumer, n: usize) -> (Vec<BusRecord>, Vec<BusEvent>) {
    let (mut records, mut other) = (Vec::new(), Vec::new());
    let mut events = Vec::new();
    within("records", async {
        while records.len() < n {
            consumer.next(&mut events).await.expect("next");
            for e in events.drain(..) {
                match e {
                    BusEvent::Record(r) => records.push(r),
                    e => other.push(e),
                }
            }
        }
    })
    .await;
    (records, other)
}

/// Which partitions a consumer holds, as its `Assigned`/`Revoked` events said, and how many
/// records it handed out.
#[derive(Default)]
pub struct Ownership {
    owned: Mutex<BTreeSet<Partition>>,
    records: Mutex<usize>,
    commits: Mutex<Vec<(Partition, Offset)>>,
    changed: Notify,
}

impl Ownership {
    pub fn owned(&self) -> BTreeSet<Partition> {
        self.owned.lock().clone()
    }

    /// Successful commits, in order.
    pub fn commits(&self) -> Vec<(Partition, Offset)> {
        self.commits.lock().clone()
    }

    /// Waits until a commit satisfies `ok`.
    pub async fn wait_commit(&self, what: &str, ok: impl Fn(&(Partition, Offset)) -> bool) {
        within(what, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.commits.lock().iter().any(&ok) {
                    return;
                }
                changed.await;
            }
        })
        .await
    }

    /// Waits until the consumer handed out `n` records (its user takes them in before it
    /// looks at anything else, such as a stop signal).
    pub async fn wait_records(&self, n: usize) {
        within("records handed out", async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if *self.records.lock() >= n {
                    return;
                }
                changed.await;
            }
        })
        .await
    }

    /// Waits until the owned set satisfies `ok`.
    pub async fn wait_for(&self, what: &str, ok: impl Fn(&BTreeSet<Partition>) -> bool) {
        within(what, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if ok(&self.owned.lock()) {
                    return;
                }
                changed.await;
            }
        })
        .await
    }
}

/// A consumer that tells an [`Ownership`] what it holds, and can hand each record out twice
/// (a broker's redelivery).
pub struct Tap {
    inner: Box<dyn BusConsumer>,
    own: Arc<Ownership>,
    double: bool,
    /// Commits are swallowed (never reach the bus): a worker that dies before committing.
    lose_commits: bool,
}

impl Tap {
    pub fn new(inner: Box<dyn BusConsumer>, double: bool) -> (Tap, Arc<Ownership>) {
        let own = Arc::new(Ownership::default());
        (
            Tap {
                inner,
                own: own.clone(),
                double,
                lose_commits: false,
            },
            own,
        )
    }

    /// A tap whose commits never reach the bus.
    pub fn losing_commits(inner: Box<dyn BusConsumer>) -> (Tap, Arc<Ownership>) {
        let (mut t, own) = Tap::new(inner, false);
        t.lose_commits = true;
        (t, own)
    }
}

impl BusConsumer for Tap {
    fn next<'a>(&'a mut self, out: &'a mut Vec<BusEvent>) -> BoxFut<'a, Result<(), BusError>> {
        Box::pin(async move {
            let start = out.len();
            let r = self.inner.next(out).await;
            let new = out.split_off(start);
            let mut changed = false;
            for e in new {
                match &e {
                    BusEvent::Assigned(ps) => {
                        self.own.owned.lock().extend(ps);
                        changed = true;
                    }
                    BusEvent::Revoked(ps) => {
                        self.own.owned.lock().retain(|p| !ps.contains(p));
                        changed = true;
                    }
                    BusEvent::Record(_) => {
                        *self.own.records.lock() += 1;
                        changed = true;
                        if self.double {
                            out.push(e.clone());
                        }
                    }
                }
                out.push(e);
            }
            if changed {
                self.own.changed.notify_waiters();
            }
            r
        })
    }
    fn commit(
        &mut self,
        partition: Partition,
        through: Offset,
    ) -> BoxFut<'_, Result<(), BusError>> {
        if self.lose_commits {
            return Box::pin(std::future::ready(Ok(())));
        }
        let own = self.own.clone();
        let commit = self.inner.commit(partition, through);
        Box::pin(async move {
            let r = commit.await;
            if r.is_ok() {
                own.commits.lock().push((partition, through));
                own.changed.notify_waiters();
            }
            r
        })
    }
    fn partition_of(&self, key: &str) -> Partition {
        self.inner.partition_of(key)
    }
}

/// Records what a worker delivers; with `held`, its batches are never reported written (a
/// gateway busy writing), so the worker holds each room's next batch for its window.
struct Recorder(
    mpsc::UnboundedSender<Arc<RoomBatch>>,
    Option<parking_lot::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
);

impl Delivery for Recorder {
    fn deliver(
        &self,
        _node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<(), DeliveryError>> {
        let _ = self.0.send(batch);
        Box::pin(std::future::ready(Ok(())))
    }

    fn deliver_tracked(
        &self,
        _node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<crate::ports::Written, DeliveryError>> {
        let _ = self.0.send(batch);
        let written = match &self.1 {
            Some(held) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                held.lock().push(tx);
                crate::ports::Written::when(rx)
            }
            None => crate::ports::Written::done(),
        };
        Box::pin(std::future::ready(Ok(written)))
    }
}

/// A running room worker (one "process": its own history over the shared store).
struct Running {
    batches: mpsc::UnboundedReceiver<Arc<RoomBatch>>,
    /// The epoch of the last batch delivered per room.
    epochs: BTreeMap<String, u32>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

async fn start_worker(
    consumer: Box<dyn BusConsumer>,
    store: Arc<dyn MessageStore>,
    rooms: impl IntoIterator<Item = String>,
    window_ms: u64,
) -> Running {
    start_worker_listing(consumer, store, rooms, window_ms, None, false).await
}

/// [`start_worker`] listing its batches in `recent` before it delivers them (distributed mode).
async fn start_worker_listing(
    consumer: Box<dyn BusConsumer>,
    store: Arc<dyn MessageStore>,
    rooms: impl IntoIterator<Item = String>,
    window_ms: u64,
    recent: Option<Arc<dyn RecentMessages>>,
    hold_writes: bool,
) -> Running {
    let routes = Arc::new(MemoryRoutes::default());
    // Routes are visible only under a live lease.
    routes
        .renew(&NodeId::new("n1"), std::time::Duration::from_secs(3600))
        .await
        .expect("lease");
    for room in rooms {
        routes
            .add(&RoomId::parse(&room).expect("valid"), &NodeId::new("n1"))
            .await
            .expect("route");
    }
    let (tx, batches) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::default());
    let mut worker = RoomWorker::new(
        WorkerConfig {
            batch_window_ms: window_ms,
            batch_window_max_ms: window_ms,
            commit_interval_ms: 10,
            ..WorkerConfig::default()
        },
        Arc::new(History::new(HistoryConfig::default(), store)),
        routes,
        Arc::new(Recorder(
            tx,
            hold_writes.then(|| parking_lot::Mutex::new(Vec::new())),
        )),
        metrics.clone(),
    );
    if let Some(recent) = recent {
        worker = worker.with_recent(recent, 100, Duration::from_secs(3600));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run(consumer, async move {
                let _ = stopped.await;
            })
            .await
    });
    Running {
        batches,
        epochs: BTreeMap::new(),
        stop: Some(stop),
        task,
        metrics,
    }
}

impl Running {
    /// Collects delivered messages until `n` came: (room, seq) in delivery order.
    async fn delivered(&mut self, n: usize) -> Vec<(String, u64)> {
        let mut got = Vec::new();
        within("deliveries", async {
            while got.len() < n {
                let b = self.batches.recv().await.expect("worker is running");
                self.epochs.insert(b.room.as_str().to_owned(), b.epoch);
                got.extend(b.msgs.iter().map(|m| (m.room_id.clone(), m.seq)));
            }
        })
        .await;
        assert_eq!(got.len(), n, "no more than expected in the last batch");
        got
    }

    /// Sends the stop signal and waits for `run` to return; what it delivered meanwhile.
    async fn stop(mut self) -> Vec<(String, u64)> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("the worker to stop", &mut self.task)
            .await
            .expect("worker task");
        let mut rest = Vec::new();
        while let Ok(b) = self.batches.try_recv() {
            rest.extend(b.msgs.iter().map(|m| (m.room_id.clone(), m.seq)));
        }
        rest
    }
}

// ---- the bus itself --------------------------------------------------------------------------

/// One key always lands on one partition (the one `partition_of` names), in publication order,
/// with offsets that grow; a lone member gets every partition, announced first.
pub async fn records_keep_their_order_and_partition_per_key(h: &dyn BusHarness) {
    let mut c = h.join().await;
    let bus = h.bus();
    let mut first = BTreeMap::new();
    for i in 0..20 {
        for room in ["order-a", "order-b", "order-c"] {
            let m = message(room, i);
            first.entry(room).or_insert_with(|| m.clone());
            bus.publish(m).await.expect("publish");
        }
    }
    let (records, other) = read_records(&mut *c, 60).await;
    let assigned: BTreeSet<Partition> = other
        .iter()
        .flat_map(|e| match e {
            BusEvent::Assigned(ps) => ps.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        assigned,
        (0..h.partitions()).collect(),
        "a lone member holds every partition"
    );
    for room in ["order-a", "order-b", "order-c"] {
        let mine: Vec<&BusRecord> = records
            .iter()
            .filter(|r| r.msg.room.as_str() == room)
            .collect();
        let texts: Vec<String> = mine.iter().map(|r| r.msg.text.clone()).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
        assert_eq!(texts, expected, "{room}: in publication order");
        assert!(
            mine.iter().all(|r| r.partition == c.partition_of(room)),
            "{room}: always its own partition"
        );
        assert!(
            mine.windows(2).all(|w| w[0].offset < w[1].offset),
            "{room}: offsets grow"
        );
        assert_eq!(mine[0].msg, first[room], "every field travels");
    }
}

/// Records after the last commit are handed out again to the next member; committed ones are
/// not; a commit below an earlier one changes nothing.
pub async fn a_new_member_starts_after_the_last_commit(h: &dyn BusHarness) {
    let bus = h.bus();
    let mut c1 = h.join().await;
    for i in 0..10 {
        bus.publish(message("commit-room", i))
            .await
            .expect("publish");
    }
    let (records, _) = read_records(&mut *c1, 10).await;
    let p = records[0].partition;
    c1.commit(p, records[5].offset).await.expect("commit");
    c1.commit(p, records[2].offset)
        .await
        .expect("a lower commit is ignored");
    drop(c1);
    bus.publish(message("commit-room", 10))
        .await
        .expect("publish");
    let mut c2 = h.join().await;
    let (again, _) = read_records(&mut *c2, 5).await;
    assert_eq!(
        again.iter().map(|r| r.msg.text.clone()).collect::<Vec<_>>(),
        (6..=10).map(|i| format!("message {i}")).collect::<Vec<_>>(),
        "resumes after the committed offset, uncommitted records come again"
    );
    assert_eq!(again[0].offset, records[5].offset + 1);
}

/// A member joining takes partitions away from the first one: the owner is told (`Revoked`),
/// commits, and only then does the newcomer get them — from after that commit.
pub async fn a_partition_moves_only_after_its_owner_let_go(h: &dyn BusHarness) {
    let bus = h.bus();
    let (c1, own1) = Tap::new(h.join().await, false);
    let mut c1: Box<dyn BusConsumer> = Box::new(c1);
    let rooms = room_per_partition(&*c1, h.partitions());
    for room in rooms.values() {
        bus.publish(message(room, 0)).await.expect("publish");
    }
    let (first, _) = read_records(&mut *c1, rooms.len()).await;
    let (c2, own2) = Tap::new(h.join().await, false);
    let mut c2: Box<dyn BusConsumer> = Box::new(c2);
    // The newcomer waits for its partitions while the first member has not let go.
    let c2_reader = tokio::spawn(async move {
        let (records, _) = read_records(&mut *c2, 1).await;
        (c2, records)
    });
    let mut events = Vec::new();
    let revoked = within("a revocation", async {
        loop {
            c1.next(&mut events).await.expect("next");
            if let Some(ps) = events.drain(..).find_map(|e| match e {
                BusEvent::Revoked(ps) => Some(ps),
                _ => None,
            }) {
                return ps;
            }
        }
    })
    .await;
    assert!(!revoked.is_empty());
    assert!(
        own2.owned().is_empty(),
        "not handed over before the owner let go"
    );
    for r in first.iter().filter(|r| revoked.contains(&r.partition)) {
        c1.commit(r.partition, r.offset)
            .await
            .expect("commit a revoked partition");
    }
    // Letting go: the next call. Then new records of a moved partition go to the newcomer.
    let c1_next = tokio::spawn(async move {
        let mut events = Vec::new();
        let _ = c1.next(&mut events).await;
        (c1, events)
    });
    own2.wait_for("the newcomer's partitions", |o| !o.is_empty())
        .await;
    assert!(
        own2.owned().is_disjoint(&own1.owned()),
        "never two owners: {:?} and {:?}",
        own1.owned(),
        own2.owned()
    );
    let moved = *own2.owned().iter().next().expect("one");
    assert!(revoked.contains(&moved));
    bus.publish(message(&rooms[&moved], 1))
        .await
        .expect("publish");
    let (_c2, records) = within("the newcomer's read", c2_reader)
        .await
        .expect("reader");
    assert_eq!(
        (records[0].partition, records[0].msg.text.as_str()),
        (moved, "message 1"),
        "the committed record is not handed out again"
    );
    c1_next.abort();
}

// ---- the room worker on top of it ----------------------------------------------------------

/// Records handed out twice (a broker's redelivery) get one place in the room's stream.
pub async fn the_worker_drops_records_it_processed(h: &dyn BusHarness) {
    let (c, _) = Tap::new(h.join().await, true);
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
    let mut w = start_worker(Box::new(c), store, ["dup-room".to_owned()], 5).await;
    for i in 0..5 {
        h.bus()
            .publish(message("dup-room", i))
            .await
            .expect("publish");
    }
    let got = w.delivered(5).await;
    assert_eq!(
        got,
        (1..=5)
            .map(|s| ("dup-room".to_owned(), s))
            .collect::<Vec<_>>()
    );
    assert_eq!(w.metrics.bus_duplicates.get(), 5, "every copy counted");
    assert!(w.stop().await.is_empty(), "no copy came later");
}

/// On its stop signal a worker flushes what it holds — a batch still inside its window too —
/// commits, and returns: a new member starts after everything it did.
pub async fn the_worker_stops_with_everything_flushed_and_committed(h: &dyn BusHarness) {
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
    let room = "stop-room".to_owned();
    let (c, own) = Tap::new(h.join().await, false);
    // A window far longer than the case, and a first batch that is never reported written:
    // only the stop can flush the second batch.
    let mut w = start_worker_listing(
        Box::new(c),
        store.clone(),
        [room.clone()],
        600_000,
        None,
        true,
    )
    .await;
    let bus = h.bus();
    bus.publish(message(&room, 0)).await.expect("publish");
    assert_eq!(
        w.delivered(1).await,
        [(room.clone(), 1)],
        "an idle room: at once"
    );
    bus.publish(message(&room, 1)).await.expect("publish");
    bus.publish(message(&room, 2)).await.expect("publish");
    own.wait_records(3).await;
    assert!(
        w.batches.try_recv().is_err(),
        "held while the first batch is written"
    );
    let seen = w.stop().await;
    assert_eq!(
        seen,
        [(room.clone(), 2), (room.clone(), 3)],
        "flushed on stop"
    );
    let stored = store
        .load_room(&RoomId::parse(&room).expect("valid"), 10)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(stored.last_seq, 3, "stored before run returned");

    bus.publish(message(&room, 3)).await.expect("publish");
    let mut w2 = start_worker(h.join().await, store, [room.clone()], 5).await;
    assert_eq!(
        w2.delivered(1).await,
        [(room.clone(), 4)],
        "committed records are not taken again; the room continues from the store"
    );
    assert!(w2.stop().await.is_empty());
}

/// A worker commits only what it delivered and stored: when it dies (no stop, no flush) while
/// it holds a batch, the next member gets those records again.
pub async fn a_crashed_worker_leaves_what_was_not_done_to_the_next(h: &dyn BusHarness) {
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
    let room = "crash-room".to_owned();
    let (c, own) = Tap::new(h.join().await, false);
    // The first batch is never reported written: the next two wait (for the long window).
    let mut w = start_worker_listing(
        Box::new(c),
        store.clone(),
        [room.clone()],
        600_000,
        None,
        true,
    )
    .await;
    let bus = h.bus();
    bus.publish(message(&room, 0)).await.expect("publish");
    assert_eq!(
        w.delivered(1).await,
        [(room.clone(), 1)],
        "the first at once"
    );
    bus.publish(message(&room, 1)).await.expect("publish");
    bus.publish(message(&room, 2)).await.expect("publish");
    own.wait_records(3).await;
    // The first is done: a commit covers it. The other two wait for it to be written.
    own.wait_commit("the first record's commit", |_| true).await;
    let (p, done) = own.commits()[0];
    w.task.abort();
    let _ = w.task.await;
    assert!(
        own.commits().iter().all(|&(_, o)| o == done),
        "nothing held in a batch was committed: {:?}",
        own.commits()
    );
    let mut next = h.join().await;
    let (again, _) = read_records(&mut *next, 2).await;
    assert_eq!(
        again
            .iter()
            .map(|r| (r.partition, r.offset, r.msg.text.as_str()))
            .collect::<Vec<_>>(),
        [(p, done + 1, "message 1"), (p, done + 2, "message 2")],
        "the records the dead worker held come again"
    );
}

/// Two workers ("processes", each with its own history) over one store: rooms move with their
/// partitions, and each owner continues a room from the store — never from what it remembered
/// of an earlier ownership.
pub async fn a_revoked_room_is_loaded_from_the_store_by_its_next_owner(h: &dyn BusHarness) {
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
    let bus = h.bus();
    let (c1, own1) = Tap::new(h.join().await, false);
    let rooms = room_per_partition(&c1, h.partitions());
    let mut w1 = start_worker(Box::new(c1), store.clone(), rooms.values().cloned(), 5).await;
    let publish_all = |round: u64| {
        let (bus, rooms) = (bus.clone(), rooms.clone());
        async move {
            for room in rooms.values() {
                bus.publish(message(room, round)).await.expect("publish");
            }
        }
    };
    publish_all(0).await;
    let mut got = w1.delivered(rooms.len()).await;
    got.sort();
    assert!(got.iter().all(|(_, seq)| *seq == 1));

    // A second member takes some partitions.
    let (c2, own2) = Tap::new(h.join().await, false);
    let mut w2 = start_worker(Box::new(c2), store.clone(), rooms.values().cloned(), 5).await;
    own2.wait_for("the second member's partitions", |o| !o.is_empty())
        .await;
    let moved = own2.owned();
    assert!(moved.is_disjoint(&own1.owned()), "never two owners");
    publish_all(1).await;
    let mut by_w2 = w2.delivered(moved.len()).await;
    by_w2.sort();
    let mut expected: Vec<(String, u64)> = moved.iter().map(|p| (rooms[p].clone(), 2)).collect();
    expected.sort();
    assert_eq!(by_w2, expected, "the new owner continues from the store");
    let stayed = rooms.len() - moved.len();
    let by_w1 = w1.delivered(stayed).await;
    assert!(by_w1.iter().all(|(_, seq)| *seq == 2));

    // The second member leaves; its partitions come back to the first.
    assert!(w2.stop().await.is_empty(), "nothing taken twice");
    own1.wait_for("the partitions to come back", |o| o.len() == rooms.len())
        .await;
    publish_all(2).await;
    let mut back = w1.delivered(rooms.len()).await;
    back.sort();
    let mut expected: Vec<(String, u64)> = rooms.values().map(|r| (r.clone(), 3)).collect();
    expected.sort();
    assert_eq!(
        back, expected,
        "rooms that were away continue from the store (seq 3), not from memory (seq 2)"
    );
    assert!(w1.stop().await.is_empty());
}

/// Ownership is recorded in the store: a worker that takes a partition its previous owner
/// released cleanly continues its rooms' epochs; one that takes it from a crashed owner (no
/// release: its handed-out seqs may not all be stored) starts each room on a new epoch, so no
/// seq is handed out twice within an epoch.
pub async fn a_room_taken_from_a_crashed_owner_starts_a_new_epoch(h: &dyn BusHarness) {
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
    let bus = h.bus();
    let room = "epoch-room".to_owned();

    // A clean hand-over (stop): the next owner keeps the epoch.
    let mut w1 = start_worker(h.join().await, store.clone(), [room.clone()], 5).await;
    bus.publish(message(&room, 0)).await.expect("publish");
    assert_eq!(w1.delivered(1).await, [(room.clone(), 1)]);
    let first_epoch = w1.epochs[&room];
    assert!(w1.stop().await.is_empty());
    let (c2, own2) = Tap::new(h.join().await, false);
    let mut w2 = start_worker(Box::new(c2), store.clone(), [room.clone()], 5).await;
    bus.publish(message(&room, 1)).await.expect("publish");
    assert_eq!(w2.delivered(1).await, [(room.clone(), 2)], "seq continues");
    assert_eq!(
        w2.epochs[&room], first_epoch,
        "a clean hand-over keeps the epoch"
    );
    // Committed (so the successor does not take the record again), but never released.
    own2.wait_commit("w2's commit", |_| true).await;

    // w2 dies without releasing: its successor starts the room on a new epoch at seq 1.
    w2.task.abort();
    let _ = w2.task.await;
    let mut w3 = start_worker(h.join().await, store.clone(), [room.clone()], 5).await;
    bus.publish(message(&room, 2)).await.expect("publish");
    let got = w3.delivered(1).await;
    assert_eq!(got, [(room.clone(), 1)], "a new epoch starts at seq 1");
    assert_ne!(
        w3.epochs[&room], first_epoch,
        "untrusted positions get a new epoch"
    );
    let stored = store
        .load_room(&RoomId::parse(&room).expect("valid"), 10)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        (stored.epoch, stored.last_seq),
        (w3.epochs[&room], 1),
        "the new epoch is durable"
    );
    assert!(w3.stop().await.is_empty());
}

/// In the distributed mode the worker lists each batch in the recent list before it delivers it,
/// so the list shows everything clients can have seen. A worker that takes a crashed owner's
/// partition continues a room whose list continues the stored stream: the same epoch after the
/// list's last seq, the messages the store lacks written to it, and the redelivered records
/// that were delivered already dropped — the crash costs clients nothing, not even a duplicate.
pub async fn a_room_taken_from_a_crashed_owner_continues_from_its_recent_list(h: &dyn BusHarness) {
    let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
    let recent: Arc<dyn RecentMessages> = Arc::new(MemoryRecent::default());
    let bus = h.bus();
    let room = "takeover-room".to_owned();
    let room_id = RoomId::parse(&room).expect("valid");

    // w1 delivers three messages and dies: its commits never reached the bus, its partitions
    // were never released.
    let (c1, _) = Tap::losing_commits(h.join().await);
    let mut w1 = start_worker_listing(
        Box::new(c1),
        store.clone(),
        [room.clone()],
        5,
        Some(recent.clone()),
        false,
    )
    .await;
    for i in 0..3 {
        bus.publish(message(&room, i)).await.expect("publish");
        assert_eq!(w1.delivered(1).await, [(room.clone(), i + 1)]);
    }
    let epoch = w1.epochs[&room];
    w1.task.abort();
    let _ = w1.task.await;
    // And one more it had listed and delivered, whose store write died with it.
    let lost_write = Arc::new(message(&room, 3).sequenced(epoch, 4));
    recent
        .push(
            &RoomBatch {
                room: room_id.clone(),
                epoch,
                msgs: vec![lost_write],
                outbox_ids: Vec::new(),
            },
            100,
            Duration::from_secs(3600),
        )
        .await
        .expect("listed");
    bus.publish(message(&room, 3)).await.expect("publish");
    assert_eq!(
        store
            .load_room(&room_id, 10)
            .await
            .expect("load")
            .map(|s| s.last_seq),
        Some(3),
        "the store is one message behind what clients saw"
    );

    let mut w2 = start_worker_listing(
        h.join().await,
        store.clone(),
        [room.clone()],
        5,
        Some(recent.clone()),
        false,
    )
    .await;
    bus.publish(message(&room, 4)).await.expect("publish");
    assert_eq!(
        w2.delivered(1).await,
        [(room.clone(), 5)],
        "the four redelivered records are not delivered again; the next message is seq 5"
    );
    assert_eq!(
        w2.epochs[&room], epoch,
        "the same epoch: clients keep their place"
    );
    assert!(
        w2.metrics.bus_duplicates.get() >= 4,
        "the four redelivered records dropped as delivered"
    );
    let stored = store
        .load_room(&room_id, 10)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!((stored.epoch, stored.last_seq), (epoch, 5));
    assert_eq!(
        stored
            .recent
            .iter()
            .map(|m| (m.seq, m.text.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "message 0"),
            (2, "message 1"),
            (3, "message 2"),
            (4, "message 3"),
            (5, "message 4")
        ],
        "the write the crash lost is repaired from the list"
    );
    assert!(w2.stop().await.is_empty());
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_bus_passes() {
        super::bus_suite(|| super::MemoryBusHarness::new(4)).await;
    }

    struct Nowhere;

    impl crate::ports::Delivery for Nowhere {
        fn deliver(
            &self,
            _node: &crate::ids::NodeId,
            _batch: std::sync::Arc<crate::model::RoomBatch>,
        ) -> crate::BoxFut<'_, Result<(), crate::ports::DeliveryError>> {
            Box::pin(std::future::ready(Ok(())))
        }
    }

    /// The memory bus records every commit: a stopped worker committed through its last record.
    #[tokio::test]
    async fn a_stopped_worker_committed_its_last_record() {
        use crate::ports::{Bus, Partition};
        let h = super::MemoryBusHarness::new(2);
        let consumer = h.bus.join();
        let p = crate::ports::BusConsumer::partition_of(&consumer, "commit-log") as Partition;
        for i in 0..3 {
            h.bus
                .publish(super::message("commit-log", i))
                .await
                .unwrap();
        }
        h.bus.close();
        let worker = crate::worker::RoomWorker::new(
            crate::config::WorkerConfig::default(),
            std::sync::Arc::new(crate::history::History::new(
                crate::config::HistoryConfig::default(),
                std::sync::Arc::new(crate::memory::MemoryStore::new(10)),
            )),
            std::sync::Arc::new(crate::memory::MemoryRoutes::default()),
            std::sync::Arc::new(Nowhere),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        );
        worker
            .run(Box::new(consumer), std::future::pending::<()>())
            .await;
        assert_eq!(
            h.bus.commits(p).last(),
            Some(&2),
            "through the third record"
        );
        assert!(h.bus.commits(1 - p).is_empty(), "nothing to commit there");
    }
}
