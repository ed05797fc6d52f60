//! Port test-suites: one function per port that any adapter must pass, so that the in-memory
//! adapters and the real ones cannot drift apart. Enabled by the `testkit` feature (for the
//! adapters' own tests) and in this crate's tests.

pub mod bus;

pub use bus::{BusHarness, MemoryBusHarness, bus_suite};

use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::ids::RoomId;
use crate::model::{RoomBatch, RoomMsg};
use crate::ports::MessageStore;

/// A batch of room `room` in `epoch` with the given sequence numbers.
pub fn batch(room: &str, epoch: u32, seqs: RangeInclusive<u64>) -> RoomBatch {
    RoomBatch {
        room: RoomId::parse(room).expect("valid room id"),
        epoch,
        msgs: seqs
            .map(|seq| {
                Arc::new(RoomMsg {
                    room_id: room.to_owned(),
                    msg_id: 1000 + seq,
                    seq,
                    user_id: format!("user{seq}"),
                    name: (seq % 2 == 0).then(|| format!("Name {seq}")),
                    text: format!("message {seq} — ünïcödé"),
                    kind: if seq % 3 == 0 { "gift" } else { "chat" }.to_owned(),
                    ts: 1_700_000_000_000 + seq,
                    epoch,
                    payload: (seq % 3 == 0).then(|| format!(r#"{{"gift":"rose","count":{seq}}}"#)),
                })
            })
            .collect(),
        outbox_ids: Vec::new(),
    }
}

/// What every [`MessageStore`] must do.
pub async fn message_store_suite(store: &dyn MessageStore) {
    let a = RoomId::parse("suite-a").expect("valid");
    let b = RoomId::parse("suite-b").expect("valid");
    assert!(
        store.load_room(&a, 10).await.expect("load").is_none(),
        "unknown room"
    );

    store
        .append(Arc::new(batch("suite-a", 7, 1..=5)))
        .await
        .expect("append");
    store
        .append(Arc::new(batch("suite-b", 3, 1..=2)))
        .await
        .expect("append");
    store
        .append(Arc::new(batch("suite-a", 7, 6..=8)))
        .await
        .expect("append");
    store.flush().await.expect("flush");

    let room = store
        .load_room(&a, 4)
        .await
        .expect("load")
        .expect("known room");
    assert_eq!((room.epoch, room.last_seq), (7, 8));
    let seqs: Vec<u64> = room.recent.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [5, 6, 7, 8], "the last `limit`, oldest first");
    let expected = batch("suite-a", 7, 6..=6);
    assert_eq!(room.recent[1], *expected.msgs[0], "every field round-trips");
    let expected = batch("suite-a", 7, 5..=5);
    assert_eq!(room.recent[0], *expected.msgs[0]);

    let room = store
        .load_room(&b, 100)
        .await
        .expect("load")
        .expect("known room");
    assert_eq!((room.epoch, room.last_seq, room.recent.len()), (3, 2, 2));

    // A new epoch replaces the position.
    store
        .append(Arc::new(batch("suite-b", 4, 1..=1)))
        .await
        .expect("append");
    store.flush().await.expect("flush");
    let room = store
        .load_room(&b, 100)
        .await
        .expect("load")
        .expect("known room");
    assert_eq!((room.epoch, room.last_seq), (4, 1));
    assert_eq!(room.recent.last().map(|m| m.epoch), Some(4));

    // A batch with no messages records a fresh epoch (how `History` persists one at once).
    store
        .append(Arc::new(RoomBatch {
            room: b.clone(),
            epoch: 5,
            msgs: Vec::new(),
            outbox_ids: Vec::new(),
        }))
        .await
        .expect("append");
    store.flush().await.expect("flush");
    let room = store
        .load_room(&b, 100)
        .await
        .expect("load")
        .expect("known room");
    assert_eq!((room.epoch, room.last_seq), (5, 0));
    assert_eq!(room.recent.len(), 3, "older messages stay");
}

/// What every [`crate::ports::AckStore`] must do.
pub async fn ack_store_suite(store: &dyn crate::ports::AckStore) {
    use crate::ids::UserId;
    use crate::ports::PendingCritical;
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let entry = |user: &UserId, msg_id: u64| PendingCritical {
        user: user.clone(),
        msg_id,
        kind: "gift".into(),
        room: msg_id
            .is_multiple_of(2)
            .then(|| RoomId::parse("room-1").unwrap()),
        text: Some(format!("notice {msg_id} — ünïcödé")),
        payload: msg_id
            .is_multiple_of(3)
            .then(|| r#"{"gift":"rose","count":3}"#.to_owned()),
        ts: 1_700_000_000_000 + msg_id,
        attempts: 1,
        next_retry_ms: 1_700_000_001_000 + msg_id,
    };
    assert!(store.pending(&alice).await.unwrap().is_empty());
    for id in [30, 10, 20] {
        store.put(entry(&alice, id)).await.unwrap();
    }
    store.put(entry(&bob, 10)).await.unwrap();
    let got = store.pending(&alice).await.unwrap();
    assert_eq!(
        got,
        vec![entry(&alice, 10), entry(&alice, 20), entry(&alice, 30)],
        "oldest first, every field kept"
    );
    assert_eq!(store.count().await.unwrap(), 4);

    // Replacing updates the retry state.
    let mut again = entry(&alice, 20);
    again.attempts = 3;
    again.next_retry_ms += 5000;
    store.put(again.clone()).await.unwrap();
    assert_eq!(store.pending(&alice).await.unwrap()[1], again);
    assert_eq!(store.count().await.unwrap(), 4);

    // Recording an attempt updates an entry but never re-creates an acknowledged one.
    let mut third = again.clone();
    third.attempts = 4;
    assert!(store.update(&third).await.unwrap());
    assert_eq!(store.pending(&alice).await.unwrap()[1].attempts, 4);
    let gone = entry(&alice, 99);
    assert!(!store.update(&gone).await.unwrap());
    assert_eq!(store.count().await.unwrap(), 4);

    // Acks are per user.
    assert!(store.remove(&alice, 10).await.unwrap());
    assert!(!store.remove(&alice, 10).await.unwrap(), "only once");
    assert!(!store.remove(&bob, 20).await.unwrap(), "not bob's");
    assert_eq!(store.pending(&bob).await.unwrap(), vec![entry(&bob, 10)]);
    assert_eq!(
        store
            .pending(&alice)
            .await
            .unwrap()
            .iter()
            .map(|p| p.msg_id)
            .collect::<Vec<_>>(),
        [20, 30]
    );
    assert_eq!(store.count().await.unwrap(), 3);
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
                .publish(super::bus::message("commit-log", i))
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

    #[tokio::test]
    async fn memory_store_passes() {
        super::message_store_suite(&crate::memory::MemoryStore::new(100)).await;
    }
}
