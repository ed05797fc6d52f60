//! The message store's suite: what every [`MessageStore`] adapter must do, and the test batches
//! the adapters' own tests build on ([`batch`]).

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

    // Recovery past the recent messages: one epoch, after a seq, in order, capped.
    let after = store.read_after(&a, 7, 2, 4).await.expect("read_after");
    let seqs: Vec<u64> = after.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4, 5, 6], "after 2, at most 4, in seq order");
    assert_eq!(after[3], *batch("suite-a", 7, 6..=6).msgs[0], "every field");
    assert!(
        store
            .read_after(&a, 8, 0, 10)
            .await
            .expect("read_after")
            .is_empty(),
        "another epoch"
    );
    assert!(
        store
            .read_after(&a, 7, 8, 10)
            .await
            .expect("read_after")
            .is_empty(),
        "nothing after the last"
    );

    let room = store
        .load_room(&b, 100)
        .await
        .expect("load")
        .expect("known room");
    assert_eq!((room.epoch, room.last_seq, room.recent.len()), (3, 2, 2));

    // A new epoch replaces the position (a new message: `batch` numbers messages by seq).
    let mut next = batch("suite-b", 4, 1..=1);
    Arc::make_mut(&mut next.msgs[0]).msg_id = 4001;
    store.append(Arc::new(next)).await.expect("append");
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

    redelivered_messages_are_stored_once(store).await;
    partition_claims(store).await;
}

/// A message the bus delivers again after a worker crashed gets a new place from the partition's
/// next owner (a new epoch, see the worker's "untrusted" partitions), so its position cannot
/// catch it: the store keeps one copy per `(room, msg_id)`, whatever the position, and stores
/// the rest of the batch.
async fn redelivered_messages_are_stored_once(store: &dyn MessageStore) {
    let c = RoomId::parse("suite-c").expect("valid");
    let first = Arc::new(batch("suite-c", 1, 1..=3));
    store.append(first.clone()).await.expect("append");
    // The next owner's epoch 2: seq 1 is message 1002 again, seq 2 a new message.
    let mut again = batch("suite-c", 2, 1..=2);
    Arc::make_mut(&mut again.msgs[0]).msg_id = first.msgs[1].msg_id;
    Arc::make_mut(&mut again.msgs[1]).msg_id = 2002;
    let again = Arc::new(again);
    store.append(again.clone()).await.expect("append");
    store.flush().await.expect("flush");
    let room = store
        .load_room(&c, 100)
        .await
        .expect("load")
        .expect("known room");
    assert_eq!(
        (room.epoch, room.last_seq),
        (2, 2),
        "the position is the batch's"
    );
    assert_eq!(
        room.recent.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
        [1001, 1002, 1003, 2002],
        "1002 once, the batch's other message stored"
    );
    assert_eq!(
        room.recent[1], *first.msgs[1],
        "the copy stored first stays"
    );
    assert_eq!(room.recent[3], *again.msgs[1]);
}

/// Partition ownership: a clean release lets the next owner trust the positions; a missing one
/// (a crash) or one by an owner that lost the partition since does not. Partition numbers are
/// random so that runs sharing a database do not meet.
async fn partition_claims(store: &dyn MessageStore) {
    let node = crate::ids::NodeId::new;
    let (a, b, c, d) = (
        node("claim-a"),
        node("claim-b"),
        node("claim-c"),
        node("claim-d"),
    );
    let base = fastrand::u32(1_000_000..2_000_000_000);
    let (p, q) = (base, base + 1);
    store.claim_partitions(&a, &[p, q]).await.expect("claim");
    store
        .release_partitions(&a, &[p, q])
        .await
        .expect("release");
    assert_eq!(
        store.claim_partitions(&b, &[p]).await.expect("claim"),
        Vec::<u32>::new(),
        "released cleanly: trusted"
    );
    // b never releases p (it crashed).
    assert_eq!(
        store.claim_partitions(&c, &[p, q]).await.expect("claim"),
        vec![p],
        "p was not released by b; q was released by a"
    );
    // b comes back late: its release must not vouch for c's ownership.
    store.release_partitions(&b, &[p]).await.expect("release");
    assert_eq!(
        store.claim_partitions(&d, &[p]).await.expect("claim"),
        vec![p],
        "c holds p and never released it"
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes() {
        super::message_store_suite(&crate::memory::MemoryStore::new(100)).await;
    }
}
