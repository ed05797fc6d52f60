//! The bus on Kafka (feature `kafka`): topic `room_chat` (configurable), key = the message's
//! bus key, one consumer group of room workers with manual commits. librdkafka through the
//! `rdkafka` crate (bundled, built with cc + make: no system library, no cmake).
//!
//! Publishing: an idempotent producer (`acks=all`) with a small linger, so messages that arrive
//! together leave in one request; every `publish` awaits its delivery report and fails with
//! `Unavailable` (the reason attached) when there is none within the delivery timeout — ingest
//! never answers "accepted" for a message that is not in the log. The partition is chosen here,
//! with the memory bus's FNV mapping ([`partition_of_key`]) over the partition count read at
//! connect, so every process computes `partition_of` alike and hot-room shard keys
//! (`roomId#shard`) spread the same way on both buses.
//!
//! The topic is created when missing (partition count and replication factor from the options;
//! an existing topic keeps its own count, which is then the one used). A broker can lose the
//! topic (a broker on memory storage restarted); librdkafka then holds the messages until their
//! timeout, waiting for the topic to come back. So every failed delivery makes the bus create the
//! topic again in the background (at most every [`TOPIC_CHECK_EVERY`]; "already exists" is the
//! usual answer), and the publishes after it go through. The consumer is in [`consumer`]; the
//! record's value is [`codec`].

pub mod codec;
mod consumer;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use roomcast_core::BoxFut;
use roomcast_core::memory::partition_of_key;
use roomcast_core::metrics::Metrics;
use roomcast_core::model::InboundMessage;
use roomcast_core::ports::{Bus, BusError};
use tokio::time::Instant;

pub use consumer::KafkaConsumer;

/// What a [`KafkaBus`] connects to and how.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOptions {
    /// `host:port[,host:port…]` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    pub topic: String,
    /// The consumer group of the room workers.
    pub group: String,
    /// Partitions of the topic when this adapter creates it.
    pub partitions: u32,
    /// Replication factor of the topic when this adapter creates it.
    pub replication: u16,
    /// How long the producer waits for more messages to send in the same request.
    pub linger_ms: u64,
    /// The longest a publish waits for its delivery report (and a commit for the broker).
    pub delivery_timeout_ms: u64,
    /// The longest a consumer's fetch waits at the broker for records (`fetch.wait.max.ms`).
    /// Kafka answers as soon as a record arrives, so this only bounds idle fetches; a broker
    /// that does not wake waiting fetches (tansu) adds up to this much to every message's
    /// latency.
    pub fetch_wait_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("invalid kafka url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid kafka option: {0}")]
    Option(String),
    #[error("cannot reach kafka at {brokers}: {reason}")]
    Connect { brokers: String, reason: String },
    #[error("kafka client: {0}")]
    Client(String),
}

impl KafkaOptions {
    /// Options for `kafka://host:port[,host:port…]` with the defaults (topic `room_chat`,
    /// group `roomcast-workers`, 8 partitions, replication 1, linger 5 ms, delivery timeout 5 s).
    pub fn from_url(url: &str) -> Result<KafkaOptions, KafkaSetupError> {
        Ok(KafkaOptions {
            brokers: parse_url(url)?,
            topic: "room_chat".into(),
            group: "roomcast-workers".into(),
            partitions: 8,
            replication: 1,
            linger_ms: 5,
            delivery_timeout_ms: 5000,
            fetch_wait_ms: 20,
        })
    }

    /// Refuses options librdkafka or the broker would refuse later, naming the option.
    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        let bad = |m: String| Err(KafkaSetupError::Option(m));
        if self.topic.is_empty()
            || self.topic.len() > 249
            || self.topic == "."
            || self.topic == ".."
            || !self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad(format!(
                "topic {:?}: 1-249 characters of A-Z a-z 0-9 . _ -",
                self.topic
            ));
        }
        if self.group.trim().is_empty() {
            return bad("group must not be empty".into());
        }
        if !(1..=10_000).contains(&self.partitions) {
            return bad(format!(
                "partitions {}: between 1 and 10000",
                self.partitions
            ));
        }
        if self.replication == 0 {
            return bad("replication must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.fetch_wait_ms) {
            return bad(format!(
                "fetch_wait_ms {}: between 1 and 10000",
                self.fetch_wait_ms
            ));
        }
        if self.linger_ms > 1000 {
            return bad(format!("linger_ms {}: at most 1000", self.linger_ms));
        }
        if self.delivery_timeout_ms < 100
            || self.delivery_timeout_ms > 600_000
            || self.delivery_timeout_ms <= self.linger_ms
        {
            return bad(format!(
                "delivery_timeout_ms {}: between 100 and 600000, and above linger_ms",
                self.delivery_timeout_ms
            ));
        }
        Ok(())
    }

    fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// Settings every client of this adapter shares.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "roomcast")
            // librdkafka backs off up to 10 s between reconnects by default: a broker that
            // restarted would be found that late.
            .set("reconnect.backoff.max.ms", "1000")
            .set("socket.connection.setup.timeout.ms", "5000")
            .set_log_level(RDKafkaLogLevel::Warning);
        c
    }
}

/// The broker list of `kafka://host:port[,host:port…]`.
pub fn parse_url(url: &str) -> Result<String, KafkaSetupError> {
    let err = |reason: &str| KafkaSetupError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("kafka://")
        .ok_or_else(|| err("expected kafka://host:port[,host:port…]"))?
        .trim_end_matches('/');
    if rest.is_empty() {
        return Err(err("no broker"));
    }
    for b in rest.split(',') {
        let (host, port) = b
            .rsplit_once(':')
            .ok_or_else(|| err(&format!("{b:?} has no port")))?;
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(err(&format!("{b:?}: expected host:port")));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(err(&format!("{b:?}: the port must be 1-65535")));
        }
    }
    Ok(rest.to_owned())
}

/// Routes librdkafka's log lines and errors into `tracing` (target `librdkafka`).
#[derive(Clone, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        log_line(level, fac, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

fn log_line(level: RDKafkaLogLevel, fac: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{line}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{line}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{line}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{line}"),
    }
}

/// Time a publish may take beyond the delivery timeout before it gives up on librdkafka's
/// report (which scans for timed-out messages about once a second).
const REPORT_GRACE: Duration = Duration::from_secs(1);

/// The topic is created again (after failed deliveries) at most this often.
const TOPIC_CHECK_EVERY: Duration = Duration::from_millis(500);

thread_local! {
    /// The encoding buffer of this thread's publishes (librdkafka copies the bytes).
    static ENCODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The producing side of the bus, and the factory of its consumers.
pub struct KafkaBus {
    opts: KafkaOptions,
    partitions: u32,
    producer: RwLock<FutureProducer<LogContext>>,
    topic: Arc<TopicKeeper>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// When a delivery last succeeded, and the producer was last replaced (ms after `started`).
    last_delivered_ms: AtomicU64,
    replaced_ms: AtomicU64,
}

/// Creates the topic again when deliveries fail, one attempt at a time.
struct TopicKeeper {
    admin: AdminClient<LogContext>,
    opts: KafkaOptions,
    partitions: u32,
    busy: AtomicBool,
    /// When the last attempt ended, so a burst of failing publishes makes one.
    last: parking_lot::Mutex<Option<Instant>>,
}

impl TopicKeeper {
    /// Starts an attempt in the background unless one runs or ran just now.
    fn check(self: &Arc<Self>) {
        if self
            .last
            .lock()
            .is_some_and(|t| t.elapsed() < TOPIC_CHECK_EVERY)
            || self.busy.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // A publish dropped outside a runtime cannot start one (the next failure will).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.busy.store(false, Ordering::Release);
            return;
        };
        let keeper = self.clone();
        runtime.spawn(async move {
            match create_topic(&keeper.admin, &keeper.opts, keeper.partitions).await {
                Ok(true) => {
                    tracing::warn!(topic = %keeper.opts.topic, partitions = keeper.partitions,
                    "the topic was gone from the broker; created it again")
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(topic = %keeper.opts.topic, error = %e,
                    "cannot check the topic"),
            }
            *keeper.last.lock() = Some(Instant::now());
            keeper.busy.store(false, Ordering::Release);
        });
    }
}

impl KafkaBus {
    /// Connects, creates the topic when missing, and reads its partition count.
    pub async fn connect(
        opts: KafkaOptions,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaBus, KafkaSetupError> {
        opts.validate()?;
        let admin: AdminClient<LogContext> = opts
            .client_config()
            .create_with_context(LogContext)
            .map_err(|e| KafkaSetupError::Client(e.to_string()))?;
        let producer = new_producer(&opts)?;
        let connect_err = |reason: String| KafkaSetupError::Connect {
            brokers: opts.brokers.clone(),
            reason,
        };
        create_topic(&admin, &opts, opts.partitions)
            .await
            .map_err(connect_err)?;
        let partitions = topic_partitions(&producer, &opts)
            .await
            .map_err(connect_err)?;
        if partitions != opts.partitions {
            tracing::warn!(
                topic = %opts.topic,
                partitions,
                configured = opts.partitions,
                "the topic exists with another partition count; using the topic's"
            );
        }
        tracing::info!(brokers = %opts.brokers, topic = %opts.topic, partitions, "kafka bus connected");
        Ok(KafkaBus {
            opts: opts.clone(),
            partitions,
            producer: RwLock::new(producer),
            topic: Arc::new(TopicKeeper {
                admin,
                opts,
                partitions,
                busy: AtomicBool::new(false),
                last: parking_lot::Mutex::new(None),
            }),
            metrics,
            started: Instant::now(),
            last_delivered_ms: AtomicU64::new(0),
            replaced_ms: AtomicU64::new(0),
        })
    }

    /// The topic's partition count (read at connect; keys map over it).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn options(&self) -> &KafkaOptions {
        &self.opts
    }

    /// A new member of the consumer group (see [`KafkaConsumer`]).
    pub fn consumer(&self) -> Result<KafkaConsumer, KafkaSetupError> {
        KafkaConsumer::new(&self.opts, self.partitions, self.metrics.clone())
    }

    fn producer(&self) -> FutureProducer<LogContext> {
        self.producer.read().clone()
    }

    /// After a fatal producer error (an idempotent producer whose broker forgot it, say) the
    /// producer is unusable: the next publish gets a new one.
    ///
    /// After a failed delivery: a producer that failed fatally, or that delivered nothing for a
    /// whole delivery timeout, is replaced by a new one (with a new producer id).
    ///
    /// The second case is a producer that may be wedged: librdkafka answers a broker's
    /// UNKNOWN_PRODUCER_ID by bumping its epoch locally and retrying, which Kafka accepts but a
    /// broker that forgot the id (tansu after a restart) refuses again, forever. A new producer
    /// asks the broker for an id first. During a plain outage the replacement changes nothing
    /// and costs one client every delivery timeout.
    fn after_failure(&self, failed: &FutureProducer<LogContext>) {
        let timeout = self.opts.delivery_timeout_ms;
        let now = self.now_ms();
        let fatal = failed.client().fatal_error();
        let stuck = now.saturating_sub(self.last_delivered_ms.load(Relaxed)) > timeout;
        if fatal.is_none() && !stuck {
            return;
        }
        let mut current = self.producer.write();
        if current.client().native_ptr() != failed.client().native_ptr()
            || (fatal.is_none() && now.saturating_sub(self.replaced_ms.load(Relaxed)) <= timeout)
        {
            return; // replaced already, or just now
        }
        match new_producer(&self.opts) {
            Ok(p) => {
                match &fatal {
                    Some((code, reason)) => tracing::warn!(%code, %reason,
                        "kafka producer failed fatally; replaced"),
                    None => tracing::warn!(
                        "kafka producer delivered nothing for {timeout} ms; replaced"
                    ),
                }
                // In-flight publishes hold the old one until their reports come.
                *current = p;
                self.replaced_ms.store(now, Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot replace the kafka producer"),
        }
    }

    /// Milliseconds since this bus connected.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn delivered(&self) {
        // One shared store per 100 ms at most: publishes from every core land here.
        let now = self.now_ms();
        if now.saturating_sub(self.last_delivered_ms.load(Relaxed)) > 100 {
            self.last_delivered_ms.store(now, Relaxed);
        }
    }

    async fn send(&self, msg: &InboundMessage) -> Result<(), BusError> {
        let key = msg.bus_key();
        let partition = partition_of_key(key, self.partitions as usize) as i32;
        let deadline = Instant::now() + self.opts.delivery_timeout() + REPORT_GRACE;
        // A caller that gives up first (an RPC deadline shorter than the delivery timeout)
        // drops this future before the failure handling below runs: the guard runs it then,
        // or a broker that came back without the topic (or without this producer's id) would
        // never be repaired while every caller keeps giving up.
        let mut guard = CancelGuard {
            bus: self,
            armed: true,
        };
        let r = self.send_inner(msg, key, partition, deadline).await;
        guard.armed = false;
        r
    }

    async fn send_inner(
        &self,
        msg: &InboundMessage,
        key: &str,
        partition: i32,
        deadline: Instant,
    ) -> Result<(), BusError> {
        loop {
            let producer = self.producer();
            let queued = ENCODED.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.clear();
                codec::encode_into(msg, &mut buf);
                producer
                    .send_result(
                        FutureRecord::to(&self.opts.topic)
                            .key(key)
                            .partition(partition)
                            .payload(&buf[..]),
                    )
                    .map_err(|(e, _)| e)
            });
            let report = match queued {
                Ok(report) => report,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                    if Instant::now() < deadline =>
                {
                    // librdkafka's queue is full (the broker is slow or away): wait for room.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => {
                    // A producer that failed fatally refuses every record at once: replace it
                    // here too, or no publish would ever reach the code below again.
                    self.after_failure(&producer);
                    return Err(BusError::Unavailable(e.to_string()));
                }
            };
            let failure = match tokio::time::timeout_at(deadline, report).await {
                Ok(Ok(Ok(_))) => {
                    self.delivered();
                    return Ok(());
                }
                Ok(Ok(Err((e, _)))) => e,
                Ok(Err(_)) => {
                    return Err(BusError::Unavailable(
                        "the producer went away before reporting".into(),
                    ));
                }
                Err(_) => {
                    self.after_failure(&producer);
                    return Err(BusError::Unavailable(format!(
                        "no delivery report within {} ms",
                        self.opts.delivery_timeout_ms
                    )));
                }
            };
            self.after_failure(&producer);
            self.topic.check();
            if topic_missing(&failure) && Instant::now() < deadline {
                // Nothing was written: safe to send again once the topic is back.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Err(BusError::Unavailable(failure.to_string()));
        }
    }
}

/// Runs the failure handling of a publish whose caller stopped waiting for it.
struct CancelGuard<'a> {
    bus: &'a KafkaBus,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let bus = self.bus;
        let stuck = bus
            .now_ms()
            .saturating_sub(bus.last_delivered_ms.load(Relaxed))
            > bus.opts.delivery_timeout_ms;
        if stuck {
            bus.after_failure(&bus.producer());
            bus.topic.check();
        }
    }
}

impl Bus for KafkaBus {
    fn publish(&self, msg: InboundMessage) -> BoxFut<'_, Result<(), BusError>> {
        Box::pin(async move { self.send(&msg).await })
    }
}

fn topic_missing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

fn new_producer(opts: &KafkaOptions) -> Result<FutureProducer<LogContext>, KafkaSetupError> {
    opts.client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", opts.linger_ms.to_string())
        .set("message.timeout.ms", opts.delivery_timeout_ms.to_string())
        .create_with_context(LogContext)
        .map_err(|e| KafkaSetupError::Client(e.to_string()))
}

/// Creates the topic; `Ok(true)` when it was created, `Ok(false)` when it existed.
async fn create_topic(
    admin: &AdminClient<LogContext>,
    opts: &KafkaOptions,
    partitions: u32,
) -> Result<bool, String> {
    let topic = NewTopic::new(
        &opts.topic,
        partitions as i32,
        TopicReplication::Fixed(opts.replication as i32),
    );
    let admin_opts = AdminOptions::new()
        .request_timeout(Some(opts.delivery_timeout()))
        .operation_timeout(Some(opts.delivery_timeout()));
    let results = admin
        .create_topics([&topic], &admin_opts)
        .await
        .map_err(|e| e.to_string())?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((name, code))) => Err(format!("cannot create topic {name}: {code}")),
        None => Err("the broker did not answer for the topic".into()),
    }
}

/// The topic's partition count from the broker's metadata (a topic just created may take a
/// moment to show its partitions).
async fn topic_partitions(
    producer: &FutureProducer<LogContext>,
    opts: &KafkaOptions,
) -> Result<u32, String> {
    let producer = producer.clone();
    let topic = opts.topic.clone();
    let timeout = opts.delivery_timeout();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("metadata: {e}"))?;
            let t = md.topics().iter().find(|t| t.name() == topic);
            match t {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(t.partitions().len() as u32);
                }
                _ if std::time::Instant::now() >= deadline => {
                    return Err(format!("topic {topic} has no partitions in the metadata"));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_brokers() {
        assert_eq!(
            parse_url("kafka://127.0.0.1:19092").unwrap(),
            "127.0.0.1:19092"
        );
        assert_eq!(
            parse_url("kafka://a:9092,b.example:9093/").unwrap(),
            "a:9092,b.example:9093"
        );
        for bad in [
            "memory",
            "kafka://",
            "kafka://host",
            "kafka://host:0",
            "kafka://host:99999",
            "kafka://:9092",
            "kafka://a:9092,",
            "redis://a:1",
        ] {
            let e = parse_url(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid kafka url"), "{e}");
        }
    }

    #[test]
    fn options_are_checked_with_their_name() {
        let ok = KafkaOptions::from_url("kafka://h:1").unwrap();
        assert!(ok.validate().is_ok());
        let check = |f: fn(&mut KafkaOptions), word: &str| {
            let mut o = ok.clone();
            f(&mut o);
            let e = o.validate().expect_err(word);
            assert!(e.to_string().contains(word), "{e}");
        };
        check(|o| o.topic = "a/b".into(), "topic");
        check(|o| o.topic = String::new(), "topic");
        check(|o| o.group = " ".into(), "group");
        check(|o| o.partitions = 0, "partitions");
        check(|o| o.replication = 0, "replication");
        check(|o| o.linger_ms = 5000, "linger_ms");
        check(|o| o.delivery_timeout_ms = 5, "delivery_timeout_ms");
    }
}
