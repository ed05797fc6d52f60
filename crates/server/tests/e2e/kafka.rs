//! A standalone server with `[bus] url` on Kafka: ingest publishes to the topic and the room
//! workers consume it as one group. Needs the test broker (`scripts/services.sh up kafka`,
//! `RC_TEST_KAFKA_URL`); a missing one fails the test.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::*;

pub fn kafka_url() -> String {
    std::env::var("RC_TEST_KAFKA_URL").unwrap_or_else(|_| {
        panic!(
            "RC_TEST_KAFKA_URL is not set: start the test broker with `scripts/services.sh up kafka` \
             and `eval \"$(scripts/services.sh env)\"`"
        )
    })
}

/// Records in the topic, and the offsets the group committed, summed over its partitions.
async fn topic_offsets(topic: &str, group: &str) -> (i64, i64) {
    let (topic, group) = (topic.to_owned(), group.to_owned());
    let brokers = kafka_url().trim_start_matches("kafka://").to_owned();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .expect("an offsets reader");
        let wait = Duration::from_secs(10);
        let md = c.fetch_metadata(Some(&topic), wait).expect("metadata");
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut records = 0;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (low, high) = c.fetch_watermarks(&topic, p, wait).expect("watermarks");
            records += high - low;
            tpl.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(tpl, wait)
            .expect("committed")
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        (records, committed)
    })
    .await
    .expect("reader")
}

/// A round trip through the broker to two clients, then a restart on the same topic and group:
/// the new workers start after what the old ones committed at shutdown, so nothing comes twice
/// and the room's sequence continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_goes_through_kafka_and_a_restart_delivers_nothing_twice() {
    let id = format!("{:016x}", fastrand::u64(..));
    let s = TestServer::start_with(|c| {
        c.bus.url = kafka_url();
        c.bus.topic = format!("e2e-{id}");
        c.bus.group = format!("e2e-{id}");
        c.bus.partitions = 2;
        c.worker.partitions = 2;
    })
    .await;
    let (mut alice, mut bob) = (s.client("alice").await, s.client("bob").await);
    alice.join("k").await;
    bob.join("k").await;
    for i in 1..=3 {
        assert_eq!(alice.chat("k", &format!("m{i}")).await.op, "chat_ok");
    }
    for c in [&mut alice, &mut bob] {
        let got = c.room_msgs(3).await;
        let seen: Vec<(&str, u64)> = got
            .iter()
            .map(|m| (m["text"].as_str().unwrap(), m["seq"].as_u64().unwrap()))
            .collect();
        assert_eq!(seen, [("m1", 1), ("m2", 2), ("m3", 3)]);
    }

    let (topic, group) = (format!("e2e-{id}"), format!("e2e-{id}"));
    assert_eq!(
        topic_offsets(&topic, &group).await.0,
        3,
        "the messages went through the topic"
    );

    let s = s.restart().await;
    let (mut alice, mut bob) = (s.client("alice").await, s.client("bob").await);
    let joined = alice.join("k").await;
    assert_eq!(joined.body["last_seq"], 3);
    bob.join("k").await;
    assert_eq!(alice.chat("k", "after").await.op, "chat_ok");
    for c in [&mut alice, &mut bob] {
        let m = c.expect("room_msg").await.body;
        assert_eq!(
            (m["text"].as_str(), m["seq"].as_u64()),
            (Some("after"), Some(4)),
            "the first message after the restart is the new one: nothing before it came again"
        );
    }
    // Whatever else was in flight would have arrived with or before it.
    for c in [&alice, &bob] {
        assert!(
            !c.inbox().iter().any(|p| p.op == "room_msg"),
            "{:?}",
            c.inbox()
        );
    }
    s.stop().await;
    assert_eq!(
        topic_offsets(&topic, &group).await,
        (4, 4),
        "every record in the topic, each committed once its batch was delivered"
    );
}
