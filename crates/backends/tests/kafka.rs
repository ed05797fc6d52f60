//! The Kafka bus against a real broker: the port's suite (`bus_suite`) over the shared test
//! broker (`scripts/services.sh up kafka`; its URL in `RC_TEST_KAFKA_URL`), a new topic and
//! group per case, and a private broker restarted under a running producer and consumer. A
//! missing broker fails these tests; it never skips them.
#![cfg(feature = "kafka")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset as KafkaOffset, TopicPartitionList};
use roomcast_backends::kafka::{KafkaBus, KafkaConsumer, KafkaOptions};
use roomcast_core::BoxFut;
use roomcast_core::metrics::Metrics;
use roomcast_core::ports::{Bus, BusConsumer, BusError, BusEvent, BusRecord, Partition};
use roomcast_core::testkit::bus::message;
use roomcast_core::testkit::{BusHarness, bus_suite};

fn url() -> String {
    std::env::var("RC_TEST_KAFKA_URL").unwrap_or_else(|_| {
        panic!(
            "RC_TEST_KAFKA_URL is not set: start the test broker with `scripts/services.sh up kafka` \
             and `eval \"$(scripts/services.sh env)\"` (kafka://127.0.0.1:19092)"
        )
    })
}

/// Options for a topic and group of their own.
fn fresh(url: &str, partitions: u32) -> KafkaOptions {
    let mut o = KafkaOptions::from_url(url).expect("a kafka:// url");
    let id = format!("{:016x}", fastrand::u64(..));
    o.topic = format!("test-{id}");
    o.group = format!("test-{id}");
    o.partitions = partitions;
    o
}

async fn connect(opts: KafkaOptions) -> KafkaBus {
    let brokers = opts.brokers.clone();
    KafkaBus::connect(opts, Arc::new(Metrics::default()))
        .await
        .unwrap_or_else(|e| {
            panic!("{e} — is the broker at {brokers} up? (`scripts/services.sh up kafka`)")
        })
}

struct KafkaHarness {
    bus: Arc<KafkaBus>,
}

impl KafkaHarness {
    /// A new topic (3 partitions) and group; `bus_suite` builds harnesses synchronously.
    fn new() -> Self {
        let opts = fresh(&url(), 3);
        let bus = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(connect(opts))
        });
        KafkaHarness { bus: Arc::new(bus) }
    }
}

impl BusHarness for KafkaHarness {
    fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }
    fn join(&self) -> BoxFut<'_, Box<dyn BusConsumer>> {
        let c: Box<dyn BusConsumer> = Box::new(self.bus.consumer().expect("a consumer"));
        Box::pin(std::future::ready(c))
    }
    fn partitions(&self) -> u32 {
        self.bus.partitions()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bus_passes_the_port_suite() {
    bus_suite(KafkaHarness::new).await;
}

#[tokio::test]
async fn the_topic_is_created_with_its_partitions_and_an_existing_one_keeps_its_own() {
    let opts = fresh(&url(), 4);
    let bus = connect(opts.clone()).await;
    assert_eq!(bus.partitions(), 4);
    let again = connect(KafkaOptions {
        partitions: 2,
        ..opts
    })
    .await;
    assert_eq!(again.partitions(), 4, "the topic's own count wins");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let mut opts = KafkaOptions::from_url("kafka://127.0.0.1:1").unwrap();
    opts.delivery_timeout_ms = 1000;
    let started = std::time::Instant::now();
    let err = KafkaBus::connect(opts, Arc::new(Metrics::default()))
        .await
        .err()
        .expect("no broker on port 1");
    assert!(
        err.to_string()
            .contains("cannot reach kafka at 127.0.0.1:1"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    let err = KafkaOptions::from_url("kafka://nope").err().unwrap();
    assert!(err.to_string().contains("invalid kafka url"), "{err}");
}

/// Garbage in the topic (another writer, another version) is skipped, counted, and committed
/// past with the records around it; the records after it come through.
#[tokio::test]
async fn a_record_that_does_not_decode_is_skipped_and_committed_past() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let opts = fresh(&url(), 2);
    let metrics = Arc::new(Metrics::default());
    let bus = KafkaBus::connect(opts.clone(), metrics.clone())
        .await
        .expect("connect");
    let room = "garbage-room";
    let mut c = bus.consumer().expect("consumer");
    let p = c.partition_of(room) as i32;
    bus.publish(message(room, 0)).await.expect("publish");
    let raw: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .create()
        .expect("raw producer");
    for value in [&b"\x02not this version"[..], b"", b"\x01\x00"] {
        raw.send(
            BaseRecord::<str, [u8]>::to(&opts.topic)
                .partition(p)
                .key(room)
                .payload(value),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    }
    raw.flush(Duration::from_secs(10)).expect("flushed");
    bus.publish(message(room, 1)).await.expect("publish");
    let records = read(&mut c, 2).await;
    assert_eq!(
        records
            .iter()
            .map(|r| (r.offset, r.msg.text.as_str()))
            .collect::<Vec<_>>(),
        [(0, "message 0"), (4, "message 1")],
        "the three records between are skipped"
    );
    assert_eq!(metrics.bus_undecodable.get(), 3);
    // A commit through the first record steps over the garbage after it.
    c.commit(p as u32, 0).await.expect("commit");
    assert_eq!(
        committed(&opts, p).await,
        Some(4),
        "next to read: message 1"
    );
    c.commit(p as u32, 4).await.expect("commit");
    assert_eq!(committed(&opts, p).await, Some(5));
}

/// Reads until `n` records came (other events are dropped).
async fn read(c: &mut KafkaConsumer, n: usize) -> Vec<BusRecord> {
    let mut records = Vec::new();
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while records.len() < n {
            c.next(&mut events).await.expect("next");
            records.extend(events.drain(..).filter_map(|e| match e {
                BusEvent::Record(r) => Some(r),
                _ => None,
            }));
        }
    })
    .await
    .expect("records in time");
    records
}

/// The group's committed offset of a partition (Kafka's "next to read"), as the broker has it.
async fn committed(opts: &KafkaOptions, partition: i32) -> Option<i64> {
    let (brokers, group, topic) = (opts.brokers.clone(), opts.group.clone(), opts.topic.clone());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .expect("an offsets reader");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        match got.elements()[0].offset() {
            KafkaOffset::Offset(o) => Some(o),
            _ => None,
        }
    })
    .await
    .expect("reader")
}

// ---- a broker that restarts -------------------------------------------------------------------

/// A tansu of this test's own, started and stopped with the project's script.
struct PrivateBroker {
    dir: tempfile::TempDir,
    port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services.sh")
}

impl PrivateBroker {
    fn start() -> PrivateBroker {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("addr").port()
        };
        let b = PrivateBroker {
            dir: tempfile::tempdir().expect("tempdir"),
            port,
        };
        b.services("up");
        b
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    fn services(&self, cmd: &str) {
        let out = std::process::Command::new("bash")
            .arg(script())
            .args([cmd, "kafka"])
            .env("RC_SERVICES_DIR", self.dir.path())
            .env("RC_KAFKA_PORT", self.port.to_string())
            .output()
            .expect("scripts/services.sh runs");
        assert!(
            out.status.success(),
            "services.sh {cmd} kafka failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .args(["down", "kafka"])
            .env("RC_SERVICES_DIR", self.dir.path())
            .env("RC_KAFKA_PORT", self.port.to_string())
            .output();
    }
}

/// Whether the broker knows the topic (its metadata lists partitions for it).
async fn topic_known(opts: &KafkaOptions) -> bool {
    let (brokers, topic) = (opts.brokers.clone(), opts.topic.clone());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a metadata reader");
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        md.topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    })
    .await
    .expect("reader")
}

/// Publishes until one is accepted (the broker is coming back); each attempt is bounded by the
/// delivery timeout. Returns the failures seen first.
async fn publish_until_accepted(bus: &KafkaBus, i: u64, bound: Duration) -> Vec<BusError> {
    let started = tokio::time::Instant::now();
    let mut failures = Vec::new();
    loop {
        let attempt = tokio::time::Instant::now();
        match bus.publish(message("restart-room", i)).await {
            Ok(()) => return failures,
            Err(e) => failures.push(e),
        }
        assert!(
            attempt.elapsed() <= Duration::from_millis(bus.options().delivery_timeout_ms + 1500),
            "a publish took {:?}",
            attempt.elapsed()
        );
        assert!(
            started.elapsed() < bound,
            "no publish accepted within {bound:?}: {failures:?}"
        );
    }
}

/// What tansu keeps across a restart of its memory storage: nothing. The private broker
/// restarts with no client connected to it, and comes back without the topic (nor its
/// records) and without the group's committed offsets.
async fn restart_forgets_everything(broker: &PrivateBroker, opts: &KafkaOptions, p: Partition) {
    broker.services("down");
    broker.services("up");
    assert!(
        !topic_known(opts).await,
        "tansu's memory storage forgot the topic (with its records)"
    );
    assert_eq!(
        committed(opts, p as i32).await,
        None,
        "and the group's committed offsets"
    );
}

/// During an outage a publish fails within its timeout, it never hangs; after it, the first
/// publishes may fail while the producer reconnects and creates the topic again, then they go
/// through. Returns the failures seen on the way back.
async fn publish_across_an_outage(broker: &PrivateBroker, bus: &KafkaBus) -> Vec<BusError> {
    broker.services("down");
    let started = tokio::time::Instant::now();
    let during = bus.publish(message("restart-room", 100)).await;
    assert!(
        matches!(during, Err(BusError::Unavailable(_))),
        "no broker, no delivery: {during:?}"
    );
    assert!(
        started.elapsed() <= Duration::from_millis(bus.options().delivery_timeout_ms + 1500),
        "bounded by the delivery timeout: {:?}",
        started.elapsed()
    );
    broker.services("up");
    let failures = publish_until_accepted(bus, 3, Duration::from_secs(30)).await;
    assert!(
        topic_known(bus.options()).await,
        "the adapter created the topic again"
    );
    for i in 4..6 {
        bus.publish(message("restart-room", i))
            .await
            .expect("publish");
    }
    failures
}

/// The broker goes down and comes back empty, twice: the producer carries on by itself and
/// makes the topic again; a member of the group that joins afterwards reads the new log from
/// its start (what came before is gone with the broker, and so is the group's commit).
///
/// No consumer is connected across the restarts here: see the next test for why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_survives_a_broker_restart_and_recreates_the_topic() {
    let broker = PrivateBroker::start();
    let mut opts = fresh(&broker.url(), 2);
    opts.delivery_timeout_ms = 2000;
    let bus = connect(opts.clone()).await;
    let mut c = bus.consumer().expect("consumer");
    let p = c.partition_of("restart-room");
    for i in 0..3 {
        bus.publish(message("restart-room", i))
            .await
            .expect("publish");
    }
    let before = read(&mut c, 3).await;
    assert_eq!(
        before.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    c.commit(p, 2).await.expect("commit");
    assert_eq!(committed(&opts, p as i32).await, Some(3));
    drop(c);

    restart_forgets_everything(&broker, &opts, p).await;
    let failures = publish_across_an_outage(&broker, &bus).await;

    let mut c = bus.consumer().expect("consumer");
    let after = read(&mut c, 3).await;
    assert_eq!(
        after
            .iter()
            .map(|r| (r.offset, r.msg.text.as_str()))
            .collect::<Vec<_>>(),
        [(0, "message 3"), (1, "message 4"), (2, "message 5")],
        "the new log starts at offset 0 and nothing from before the restarts is in it \
         (publish failures on the way back: {failures:?})"
    );
    c.commit(p, 2).await.expect("commits work again");
    assert_eq!(committed(&opts, p as i32).await, Some(3));
}

/// The same with a consumer that stays in the group across the restarts: it must rejoin by
/// itself, be told its partitions went and came back (the offsets start again at 0, so the
/// worker's "already processed" offsets must be forgotten), and read what comes after.
///
/// Cannot pass against tansu 0.6.0: librdkafka (2.12, bundled) crashes the process (SIGSEGV).
/// A consumer that reconnects fetches the topic by its id; the restarted tansu does not know it
/// and answers with `FetchResponse::unknown_topic_response` (tansu-storage
/// `src/service/fetch.rs`): error UNKNOWN_TOPIC_OR_PARTITION, topic id all zeros, and a
/// `CurrentLeader` tag of leader 0 on each partition. librdkafka turns a CurrentLeader into a
/// metadata update keyed by topic id (`rd_kafka_handle_Fetch_metadata_update`, the name left
/// NULL); with a zero id `rd_kafka_metadata_update_op` looks the topic up by that NULL name
/// and `strcmp` faults (rdkafka_metadata.c:2095; seen in gdb: topic NULL, topic_id 0, partition
/// leader 0). Apache Kafka echoes the requested topic id (UNKNOWN_TOPIC_ID) and sends no
/// leader, so this is tansu's answer, not the adapter's doing. Run it with `--ignored` against
/// a broker that answers like Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6.0's Fetch answer for an unknown topic crashes librdkafka 2.12 (see the doc comment)"]
async fn a_consumer_rejoins_by_itself_after_a_broker_restart() {
    let broker = PrivateBroker::start();
    let mut opts = fresh(&broker.url(), 2);
    opts.delivery_timeout_ms = 2000;
    let bus = connect(opts.clone()).await;
    let mut c = bus.consumer().expect("consumer");
    let p = c.partition_of("restart-room");
    for i in 0..3 {
        bus.publish(message("restart-room", i))
            .await
            .expect("publish");
    }
    read(&mut c, 3).await;
    c.commit(p, 2).await.expect("commit");

    restart_forgets_everything(&broker, &opts, p).await;
    let failures = publish_across_an_outage(&broker, &bus).await;

    let mut events = Vec::new();
    let mut seen = Vec::new();
    let after = tokio::time::timeout(Duration::from_secs(60), async {
        let mut after: Vec<BusRecord> = Vec::new();
        while after.len() < 3 {
            c.next(&mut events).await.expect("next");
            for e in events.drain(..) {
                match e {
                    BusEvent::Record(r) => after.push(r),
                    e => seen.push(e),
                }
            }
        }
        after
    })
    .await
    .unwrap_or_else(|_| panic!("the consumer did not read after the restart; events: {seen:?}"));
    assert_eq!(
        after
            .iter()
            .map(|r| (r.offset, r.msg.text.as_str()))
            .collect::<Vec<_>>(),
        [(0, "message 3"), (1, "message 4"), (2, "message 5")],
        "the new log from its start (publish failures on the way back: {failures:?})"
    );
    let revoked_then_assigned = seen
        .iter()
        .position(|e| matches!(e, BusEvent::Revoked(_)))
        .is_some_and(|r| seen[r..].iter().any(|e| matches!(e, BusEvent::Assigned(_))));
    assert!(
        revoked_then_assigned,
        "the user was told its partitions went and came back: {seen:?}"
    );
    c.commit(p, 2).await.expect("commits work again");
    assert_eq!(committed(&opts, p as i32).await, Some(3));
}
