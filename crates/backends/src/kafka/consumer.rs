//! One member of the room workers' consumer group.
//!
//! librdkafka's consumer is polled on a thread of its own: it decodes records into batches and
//! hands them, and the group's rebalances, to the async side through one bounded channel, so
//! `Assigned`, records and `Revoked` reach the user in the order they happened. A revocation
//! holds the group: the rebalance callback (on the polling thread) hands out `Revoked` and waits
//! — up to [`HOLD_REVOKE`] — until the user calls `next` again, which the port says it does only
//! after it finished and committed the revoked partitions. Commits are synchronous (the broker
//! acknowledged them when `commit` returns), made from the async side while the callback waits,
//! so the next owner starts after them. Records of a partition that arrive after its `Revoked`
//! are dropped on the thread (librdkafka may still hold some it fetched); none are handed out.
//!
//! The eager protocol (librdkafka's default assignors): a rebalance revokes every partition of
//! every member and hands them out again, so a worker forgets its rooms and loads them from the
//! store at each rebalance. That is the simple, always-correct case; the cooperative protocol
//! would move only the partitions that change owner.
//!
//! A record whose value does not decode is logged, counted (`roomcast_bus_undecodable_total`)
//! and skipped; its offset is committed with the records around it (a commit through the record
//! before it goes through it), so it neither blocks the partition nor comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use roomcast_core::BoxFut;
use roomcast_core::memory::partition_of_key;
use roomcast_core::metrics::Metrics;
use roomcast_core::ports::{BusConsumer, BusError, BusEvent, BusRecord, Offset, Partition};
use tokio::sync::mpsc;

use super::{KafkaOptions, KafkaSetupError, codec, log_line};

/// The longest a revocation holds the group for the user to let go.
const HOLD_REVOKE: Duration = Duration::from_secs(30);

/// Records the polling thread gathers into one batch at most.
const MAX_BATCH: usize = 512;

/// Batches between the polling thread and the user; past it the thread waits (and librdkafka
/// stops fetching once its own queue is full).
const CHANNEL_BATCHES: usize = 16;

/// How long one poll waits for a record (and how soon the thread sees that it must stop).
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How often the thread logs a repeated consumer error.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Skipped offsets remembered per partition for commits to step over.
const SKIPPED_KEPT: usize = 1024;

/// What the polling thread hands to the async side, in order.
enum Item {
    /// Records and assignments; offsets of records that did not decode.
    Batch {
        events: Vec<BusEvent>,
        skipped: Vec<(Partition, Offset)>,
    },
    /// Partitions taken away; the group waits until the sender is used or dropped.
    Revoked(Vec<Partition>, SyncSender<()>),
}

#[derive(Default)]
struct Pending {
    events: Vec<BusEvent>,
    skipped: Vec<(Partition, Offset)>,
    /// The partitions the thread hands records of.
    assigned: Vec<Partition>,
}

/// The consumer's librdkafka context: it lives on the polling thread (callbacks run inside
/// `poll`), so its lock is never contended.
struct Ctx {
    topic: String,
    tx: mpsc::Sender<Item>,
    pending: Mutex<Pending>,
    closing: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        log_line(level, fac, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl Ctx {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<Partition> {
        let mut ps: Vec<Partition> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        ps.sort_unstable();
        ps
    }

    /// Hands what was gathered to the async side (waits while the channel is full).
    fn flush(&self) {
        let (events, skipped) = {
            let mut p = self.pending.lock();
            if p.events.is_empty() && p.skipped.is_empty() {
                return;
            }
            // The next batch starts empty and grows to what arrives: a lone record costs no
            // batch-sized allocation.
            (
                std::mem::take(&mut p.events),
                std::mem::take(&mut p.skipped),
            )
        };
        self.send(Item::Batch { events, skipped });
    }

    fn send(&self, item: Item) {
        if self.tx.blocking_send(item).is_err() {
            // The async side is gone: the consumer is being dropped.
            self.closing.store(true, Ordering::Relaxed);
        }
    }

    /// Takes one record in: a message of an assigned partition, or a skipped offset.
    fn take(&self, m: &BorrowedMessage<'_>) {
        let (Ok(partition), Ok(offset)) = (u32::try_from(m.partition()), u64::try_from(m.offset()))
        else {
            return;
        };
        let mut p = self.pending.lock();
        if !p.assigned.contains(&partition) {
            tracing::debug!(partition, offset, "record of a partition not held; dropped");
            return;
        }
        match codec::decode(m.payload().unwrap_or_default()) {
            Ok(msg) => p.events.push(BusEvent::Record(BusRecord {
                partition,
                offset,
                msg,
            })),
            Err(e) => {
                self.metrics.bus_undecodable.inc();
                tracing::warn!(topic = %self.topic, partition, offset, error = %e,
                    "bus record does not decode; skipped");
                p.skipped.push((partition, offset));
            }
        }
    }

    fn len(&self) -> usize {
        self.pending.lock().events.len()
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let ps = self.partitions_of(tpl);
                tracing::debug!(partitions = ?ps, "kafka assigned");
                if ps.is_empty() {
                    return;
                }
                let mut p = self.pending.lock();
                p.assigned.extend(&ps);
                p.events.push(BusEvent::Assigned(ps));
            }
            Rebalance::Revoke(tpl) => {
                let ps = self.partitions_of(tpl);
                tracing::debug!(partitions = ?ps, "kafka revoked");
                self.revoke(ps);
            }
            Rebalance::Error(e) => {
                // rdkafka unassigns everything after a failed rebalance: the user is told so.
                tracing::warn!(error = %e, "kafka rebalance failed; partitions given up");
                let all = self.pending.lock().assigned.clone();
                self.revoke(all);
            }
        }
    }
}

impl Ctx {
    /// Hands out `Revoked` after the records gathered so far, then holds the group until the
    /// user lets go (or [`HOLD_REVOKE`] passes).
    fn revoke(&self, ps: Vec<Partition>) {
        self.pending.lock().assigned.retain(|p| !ps.contains(p));
        self.flush();
        if ps.is_empty() || self.closing.load(Ordering::Relaxed) {
            return;
        }
        let (release, released) = std::sync::mpsc::sync_channel(1);
        self.send(Item::Revoked(ps.clone(), release));
        match released.recv_timeout(HOLD_REVOKE) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => tracing::warn!(
                partitions = ?ps,
                "revoked partitions not let go within {HOLD_REVOKE:?}; the group moves on"
            ),
        }
    }
}

/// The polling thread: until the consumer is dropped, gathers what librdkafka has and hands it
/// over. Leaving the group (librdkafka's close) happens when the last handle drops, here.
fn poll_loop(consumer: Arc<BaseConsumer<Ctx>>) {
    let ctx = consumer.context().clone();
    let mut last_error: Option<(String, Instant)> = None;
    let mut on_error = |e: KafkaError| {
        let text = e.to_string();
        if last_error
            .as_ref()
            .is_none_or(|(t, at)| *t != text || at.elapsed() > ERROR_LOG_EVERY)
        {
            tracing::warn!(topic = %ctx.topic, error = %text, "kafka consumer");
            last_error = Some((text, Instant::now()));
        }
    };
    while !ctx.closing.load(Ordering::Relaxed) {
        let mut wait = POLL_WAIT;
        // Wait for the first record, then take what is ready, up to a batch.
        while ctx.len() < MAX_BATCH {
            match consumer.poll(wait) {
                Some(Ok(m)) => ctx.take(&m),
                Some(Err(e)) => on_error(e),
                None => break,
            }
            wait = Duration::ZERO;
        }
        ctx.flush();
    }
}

/// A member of the consumer group (see the module docs).
pub struct KafkaConsumer {
    rx: mpsc::Receiver<Item>,
    /// Shared with the polling thread; commits go through it.
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
    topic: String,
    partitions: u32,
    commit_timeout: Duration,
    closing: Arc<AtomicBool>,
    /// Signals the polling thread's end (it closed the consumer).
    done: std::sync::mpsc::Receiver<()>,
    owned: Vec<Partition>,
    /// Revoked partitions the user may still commit, until its next `next`.
    releasing: Vec<Partition>,
    release: Option<SyncSender<()>>,
    /// Per partition: the last commit and the skipped offsets after it.
    committed: Vec<Option<Offset>>,
    skipped: Vec<Vec<Offset>>,
}

impl KafkaConsumer {
    pub(super) fn new(
        opts: &KafkaOptions,
        partitions: u32,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaConsumer, KafkaSetupError> {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let closing = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            topic: opts.topic.clone(),
            tx,
            pending: Mutex::new(Pending::default()),
            closing: closing.clone(),
            metrics,
        };
        let consumer: BaseConsumer<Ctx> = opts
            .client_config()
            .set("group.id", &opts.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // A member that joins or leaves is noticed by the others at their next heartbeat.
            .set("heartbeat.interval.ms", "1000")
            .set("session.timeout.ms", "10000")
            // A topic created again (a broker that forgot it) is seen within seconds.
            .set("topic.metadata.refresh.interval.ms", "5000")
            // librdkafka prefetches up to 64 MB per consumer by default; a worker process
            // has several.
            .set("queued.max.messages.kbytes", "8192")
            .set("fetch.wait.max.ms", opts.fetch_wait_ms.to_string())
            .create_with_context(ctx)
            .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
        consumer
            .subscribe(&[&opts.topic])
            .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
        let consumer = Arc::new(consumer);
        let (done_tx, done) = std::sync::mpsc::channel();
        let polled = consumer.clone();
        std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || {
                poll_loop(polled);
                let _ = done_tx.send(());
            })
            .map_err(|e| KafkaSetupError::Client(format!("cannot start a thread: {e}")))?;
        Ok(KafkaConsumer {
            rx,
            consumer: Some(consumer),
            topic: opts.topic.clone(),
            partitions,
            commit_timeout: opts.delivery_timeout(),
            closing,
            done,
            owned: Vec::new(),
            releasing: Vec::new(),
            release: None,
            committed: vec![None; partitions as usize],
            skipped: vec![Vec::new(); partitions as usize],
        })
    }

    /// The partitions this consumer holds now.
    pub fn partitions(&self) -> &[Partition] {
        &self.owned
    }

    fn slot(&mut self, p: Partition) -> usize {
        let i = p as usize;
        if i >= self.committed.len() {
            // The topic grew partitions behind our back; keep up rather than panic.
            self.committed.resize(i + 1, None);
            self.skipped.resize(i + 1, Vec::new());
        }
        i
    }

    /// Takes in one item from the thread; true when the user must see `out` now (a revocation
    /// ends a batch: the user acts on it before anything else).
    fn take(&mut self, item: Item, out: &mut Vec<BusEvent>) -> bool {
        match item {
            Item::Batch { events, skipped } => {
                for e in &events {
                    if let BusEvent::Assigned(ps) = e {
                        for &p in ps {
                            let i = self.slot(p);
                            self.committed[i] = None;
                            self.skipped[i].clear();
                        }
                        self.owned.extend(ps);
                    }
                }
                out.extend(events);
                for (p, o) in skipped {
                    self.skip(p, o);
                }
                false
            }
            Item::Revoked(ps, release) => {
                self.owned.retain(|p| !ps.contains(p));
                self.releasing.extend(&ps);
                self.release = Some(release);
                out.push(BusEvent::Revoked(ps));
                true
            }
        }
    }

    /// A record that did not decode: a commit through the offset before it goes through it.
    fn skip(&mut self, p: Partition, offset: Offset) {
        let i = self.slot(p);
        if self.committed[i].is_some_and(|c| c + 1 == offset) {
            // Everything before it is committed already; nothing after it may come for a
            // while, so step over it now.
            self.committed[i] = Some(offset);
            if let Some(consumer) = &self.consumer {
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition_offset(
                    &self.topic,
                    p as i32,
                    KafkaOffset::Offset(offset as i64 + 1),
                );
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(partition = p, offset, error = %e, "cannot commit past a skipped record");
                }
            }
            return;
        }
        let s = &mut self.skipped[i];
        if s.len() == SKIPPED_KEPT {
            s.remove(0);
        }
        s.push(offset);
    }
}

impl BusConsumer for KafkaConsumer {
    fn next<'a>(&'a mut self, out: &'a mut Vec<BusEvent>) -> BoxFut<'a, Result<(), BusError>> {
        Box::pin(async move {
            // The user is done with what was revoked: the group may move it now.
            if let Some(release) = self.release.take() {
                let _ = release.try_send(());
                for p in std::mem::take(&mut self.releasing) {
                    let i = self.slot(p);
                    self.committed[i] = None;
                    self.skipped[i].clear();
                }
            }
            let start = out.len();
            loop {
                // Cancel-safe: an item taken is in `out` (or in `self`) before the next await.
                let Some(item) = self.rx.recv().await else {
                    return Err(BusError::Unavailable("the kafka consumer stopped".into()));
                };
                let mut stop = self.take(item, out);
                while !stop {
                    match self.rx.try_recv() {
                        Ok(item) => stop = self.take(item, out),
                        Err(_) => break,
                    }
                }
                if out.len() > start {
                    return Ok(());
                }
            }
        })
    }

    fn commit(
        &mut self,
        partition: Partition,
        through: Offset,
    ) -> BoxFut<'_, Result<(), BusError>> {
        Box::pin(async move {
            if !self.owned.contains(&partition) && !self.releasing.contains(&partition) {
                return Err(BusError::NotAssigned(partition));
            }
            let i = self.slot(partition);
            // Step over records that did not decode right after `through`.
            let mut through = through;
            let skipped = &mut self.skipped[i];
            while skipped.contains(&(through + 1)) {
                through += 1;
            }
            skipped.retain(|&o| o > through);
            if self.committed[i].is_some_and(|c| c >= through) {
                return Ok(()); // commits never move back
            }
            let Some(consumer) = self.consumer.clone() else {
                return Err(BusError::Closed);
            };
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                &self.topic,
                partition as i32,
                // Kafka commits the next offset to read.
                KafkaOffset::Offset(through as i64 + 1),
            )
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
            let commit =
                tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync));
            match tokio::time::timeout(self.commit_timeout, commit).await {
                Ok(Ok(Ok(()))) => {
                    self.committed[i] = Some(through);
                    Ok(())
                }
                Ok(Ok(Err(e))) => Err(BusError::Unavailable(format!("commit: {e}"))),
                Ok(Err(e)) => Err(BusError::Unavailable(format!("commit: {e}"))),
                Err(_) => Err(BusError::Unavailable(format!(
                    "commit not acknowledged within {:?}",
                    self.commit_timeout
                ))),
            }
        })
    }

    fn partition_of(&self, key: &str) -> Partition {
        partition_of_key(key, self.partitions as usize) as Partition
    }
}

/// How long dropping a consumer waits for it to leave the group.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

impl Drop for KafkaConsumer {
    /// Leaves the group before returning, so that the next member (a restarted worker, a test's
    /// next case) is not handed partitions this one still holds. Blocks for the leave request's
    /// round trip, bounded by [`LEAVE_WAIT`].
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        // A revocation waiting for this consumer lets go, and the thread's sends fail.
        self.release = None;
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        // The thread holds the last handle; it closes the consumer when it ends.
        self.consumer = None;
        if self.done.recv_timeout(LEAVE_WAIT).is_err() {
            tracing::warn!("the kafka consumer did not leave its group within {LEAVE_WAIT:?}");
        }
    }
}
