//! The outbox port's suite: what every [`OutboxStore`] must do, together with the
//! [`MessageStore`] on the same database (which marks rows sent when it stores their messages),
//! and what the relay does on top of it (order, a `msg_id` fixed across re-publications, one
//! publisher at a time, nothing lost to a crash). Every wait is bounded by [`WAIT`].

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::config::IngestConfig;
use crate::ids::{MsgId, RoomId, UserId};
use crate::ingest::IngestService;
use crate::ingest::filter::WordFilter;
use crate::memory::{MemoryBus, MemoryModeration, MemoryRateLimiter};
use crate::metrics::Metrics;
use crate::model::{InboundMessage, MsgKind, RoomBatch};
use crate::outbox::{Cycle, NewOutboxRow, OutboxRelay, OutboxRow, OutboxStore, RelayConfig};
use crate::ports::{BusConsumer, BusEvent, MessageStore};

use crate::ports::bus::suite::WAIT;

/// What every [`OutboxStore`] must do. `outbox` must be empty and its lease free (a fresh
/// database); `store` is the message store on the same database.
pub async fn outbox_store_suite(outbox: Arc<dyn OutboxStore>, store: &dyn MessageStore) {
    assert_eq!(
        outbox.pending_count().await.expect("count"),
        0,
        "the suite needs an empty outbox"
    );
    rows_are_pending_in_order_until_stored(&*outbox, store).await;
    one_lease_holder_at_a_time(&*outbox).await;
    a_row_is_pending_until_its_message_is_stored_then_stored_once(outbox.clone(), store).await;
    a_row_still_pending_after_resend_after_is_published_again(outbox).await;
}

fn room() -> RoomId {
    RoomId::parse(&format!("outbox-{:08x}", fastrand::u32(..))).expect("valid")
}

fn row(room: &RoomId, text: &str) -> NewOutboxRow {
    NewOutboxRow {
        room: room.clone(),
        kind: MsgKind::Gift,
        user: UserId::parse("buyer").expect("valid"),
        name: Some("Buyer — ünïcödé".into()),
        text: text.into(),
        payload: Some(r#"{"gift":"yacht","count":2}"#.into()),
    }
}

async fn insert_all(outbox: &dyn OutboxStore, rows: &[NewOutboxRow]) -> Vec<i64> {
    let mut ids = Vec::new();
    for r in rows {
        ids.push(outbox.insert(r.clone()).await.expect("insert"));
    }
    ids
}

/// Stores messages as a room worker would: one batch after the room's stored position, with
/// the outbox's `msg_id`s named.
async fn store_msgs(store: &dyn MessageStore, msgs: &[InboundMessage]) {
    let room = msgs[0].room.clone();
    let (epoch, last) = match store.load_room(&room, 0).await.expect("load") {
        Some(r) => (r.epoch, r.last_seq),
        None => (1, 0),
    };
    let batch = RoomBatch {
        room,
        epoch,
        msgs: msgs
            .iter()
            .zip(last + 1..)
            .map(|(m, seq)| Arc::new(m.sequenced(epoch, seq)))
            .collect(),
        outbox_ids: msgs
            .iter()
            .filter(|m| m.from_outbox)
            .map(|m| m.msg_id.0)
            .collect(),
    };
    store.append(Arc::new(batch)).await.expect("append");
    store.flush().await.expect("flush");
}

/// The message of a row as the relay publishes it (its fixed `msg_id`).
fn published(r: &OutboxRow) -> InboundMessage {
    InboundMessage {
        room: r.event.room.clone(),
        msg_id: MsgId(r.msg_id.expect("msg_id fixed before publication")),
        user: r.event.user.clone(),
        name: r.event.name.clone().map(Into::into),
        text: r.event.text.clone(),
        kind: r.event.kind,
        ts: now_ms(),
        payload: r.event.payload.clone(),
        from_outbox: true,
    }
}

/// How many copies of a message the room's history holds.
async fn stored(store: &dyn MessageStore, room: &RoomId, msg_id: u64) -> usize {
    store
        .load_room(room, 1000)
        .await
        .expect("load")
        .map_or(0, |r| {
            r.recent.iter().filter(|m| m.msg_id == msg_id).count()
        })
}

async fn rows_are_pending_in_order_until_stored(
    outbox: &dyn OutboxStore,
    store: &dyn MessageStore,
) {
    let room = room();
    let plain = NewOutboxRow {
        kind: MsgKind::System,
        user: UserId::parse("system").expect("valid"),
        name: None,
        payload: None,
        ..row(&room, "b")
    };
    let rows = [row(&room, "a"), plain, row(&room, "c")];
    let before = now_ms();
    let ids = insert_all(outbox, &rows).await;
    let after = now_ms();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");

    let pending = outbox.pending(10).await.expect("pending");
    assert_eq!(pending.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    for (got, written) in pending.iter().zip(&rows) {
        assert_eq!(&got.event, written, "every field as written");
        assert_eq!(got.msg_id, None);
        assert!(
            (before.saturating_sub(1000)..=after + 1000).contains(&got.created_ms),
            "created_ms {} is now",
            got.created_ms
        );
    }
    let first_two = outbox.pending(2).await.expect("pending");
    assert_eq!(
        first_two.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids[..2],
        "the oldest `limit`"
    );

    outbox.assign_msg_id(ids[0], 77_001).await.expect("assign");
    outbox.assign_msg_id(ids[0], 88_001).await.expect("assign");
    assert_eq!(
        outbox.pending(1).await.expect("pending")[0].msg_id,
        Some(77_001),
        "fixed once"
    );
    assert_eq!(outbox.pending_count().await.expect("count"), 3);

    // The message store marks a row sent in the transaction that stores its message.
    let a = outbox.pending(1).await.expect("pending").remove(0);
    store_msgs(store, &[published(&a)]).await;
    assert_eq!(
        outbox.pending_count().await.expect("count"),
        2,
        "marked sent by the store"
    );
    assert_eq!(
        outbox.pending(10).await.expect("pending")[0].event.text,
        "b"
    );
    // A copy published again after that (the relay did not see it stored) is not stored again,
    // alone or twice in one batch.
    store_msgs(store, &[published(&a)]).await;
    store_msgs(store, &[published(&a), published(&a)]).await;
    assert_eq!(stored(store, &room, 77_001).await, 1, "one copy");

    // Both copies of a row in one batch (the relay published it again while the first was on
    // its way): one stored, the row marked.
    outbox.assign_msg_id(ids[1], 77_002).await.expect("assign");
    let b = outbox.pending(1).await.expect("pending").remove(0);
    assert_eq!(b.id, ids[1]);
    store_msgs(store, &[published(&b), published(&b)]).await;
    assert_eq!(stored(store, &room, 77_002).await, 1, "one copy");
    assert_eq!(outbox.pending_count().await.expect("count"), 1);

    // A row that can never be published is set aside: out of the queue, not sent.
    outbox.mark_failed(ids[2]).await.expect("mark failed");
    assert_eq!(outbox.pending_count().await.expect("count"), 0);
    assert!(outbox.pending(10).await.expect("pending").is_empty());
}

async fn one_lease_holder_at_a_time(outbox: &dyn OutboxStore) {
    let ttl = Duration::from_secs(60);
    let lease =
        |h: &'static str, ttl| async move { outbox.acquire_lease(h, ttl).await.expect("lease") };
    assert!(lease("lease-a", ttl).await);
    assert!(!lease("lease-b", ttl).await, "a holds it");
    assert!(lease("lease-a", ttl).await, "renewed");
    assert!(lease("lease-a", ttl).await, "renewed at once again");
    outbox.release_lease("lease-b").await.expect("release");
    assert!(!lease("lease-b", ttl).await, "only the holder releases");
    outbox.release_lease("lease-a").await.expect("release");
    assert!(lease("lease-b", Duration::ZERO).await, "released: free");
    // b's lease (ttl 0) has expired at once: a may take over.
    assert!(lease("lease-a", ttl).await);
    assert!(!lease("lease-b", ttl).await);
    outbox.release_lease("lease-a").await.expect("release");
}

struct Bench {
    ingest: Arc<IngestService>,
    consumer: Box<dyn BusConsumer>,
}

fn bench() -> Bench {
    let (bus, mut consumers) = MemoryBus::new(1, 1024);
    let ingest = Arc::new(IngestService::new(
        IngestConfig::default(),
        Arc::new(bus),
        Arc::new(MemoryRateLimiter::default()),
        Arc::new(MemoryModeration::default()),
        WordFilter::empty(),
        Arc::new(Metrics::default()),
    ));
    Bench {
        ingest,
        consumer: Box::new(consumers.pop().expect("one consumer")),
    }
}

fn relay(b: &Bench, outbox: Arc<dyn OutboxStore>, cfg: RelayConfig) -> OutboxRelay {
    let ids = b.ingest.clone();
    OutboxRelay::new(cfg, outbox, b.ingest.clone(), move || ids.next_id())
}

fn holder(name: &str) -> RelayConfig {
    RelayConfig {
        holder: name.into(),
        ..RelayConfig::default()
    }
}

async fn drain(consumer: &mut Box<dyn BusConsumer>, n: usize) -> Vec<InboundMessage> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        while out.len() < n {
            consumer.next(&mut events).await.expect("bus open");
            out.extend(events.drain(..).filter_map(BusEvent::into_message));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} messages published in time"));
    out
}

/// A published row stays pending until the store has its message (the relay never marks it):
/// a crash before that publishes it again with the same msg_id, the store keeps one copy,
/// nothing is lost, and a second relay publishes nothing while the first holds the lease.
async fn a_row_is_pending_until_its_message_is_stored_then_stored_once(
    outbox: Arc<dyn OutboxStore>,
    store: &dyn MessageStore,
) {
    let room = room();
    insert_all(
        &*outbox,
        &[row(&room, "one"), row(&room, "two"), row(&room, "three")],
    )
    .await;
    let mut b = bench();

    let first = relay(&b, outbox.clone(), holder("relay-1"));
    assert_eq!(first.cycle().await.expect("cycle"), Cycle::Published(3));
    let before = drain(&mut b.consumer, 3).await;
    assert!(before.iter().all(|m| m.from_outbox));
    assert_eq!(
        first.cycle().await.expect("cycle"),
        Cycle::Published(0),
        "in flight: not published again each cycle"
    );
    assert_eq!(first.in_flight(), 3);
    assert_eq!(
        outbox.pending_count().await.expect("count"),
        3,
        "published is not sent"
    );

    // Only "one" reaches the store; then the process dies ("two" and "three" were still in the
    // bus / the worker / the writer queue).
    store_msgs(store, &before[..1]).await;
    assert_eq!(outbox.pending_count().await.expect("count"), 2);
    assert_eq!(first.cycle().await.expect("cycle"), Cycle::Published(0));
    assert_eq!(first.in_flight(), 2, "the stored row is forgotten");
    drop(first); // never released its lease: the restarted relay has the same name

    let restarted = relay(&b, outbox.clone(), holder("relay-1"));
    let rival = relay(&b, outbox.clone(), holder("relay-2"));
    assert_eq!(restarted.cycle().await.expect("cycle"), Cycle::Published(2));
    assert_eq!(rival.cycle().await.expect("cycle"), Cycle::NotLeader);
    let after = drain(&mut b.consumer, 2).await;
    assert_eq!(
        after.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["two", "three"],
        "in order"
    );
    assert_eq!(
        (before[1].msg_id, before[2].msg_id),
        (after[0].msg_id, after[1].msg_id),
        "re-published with the same msg_id"
    );
    assert!(before.iter().chain(&after).all(|m| m.kind == MsgKind::Gift
        && m.payload.as_deref() == Some(r#"{"gift":"yacht","count":2}"#)));

    // Had the old copy of "two" survived after all, both copies reach the store: one kept.
    store_msgs(store, &[before[1].clone(), after[0].clone()]).await;
    store_msgs(store, &after).await;
    assert_eq!(outbox.pending_count().await.expect("count"), 0);
    for m in before.iter().chain(&after) {
        assert_eq!(stored(store, &room, m.msg_id.0).await, 1, "{}", m.text);
    }
    assert_eq!(restarted.cycle().await.expect("cycle"), Cycle::Published(0));
    assert_eq!(restarted.in_flight(), 0);
    outbox.release_lease("relay-1").await.expect("release");
}

async fn a_row_still_pending_after_resend_after_is_published_again(outbox: Arc<dyn OutboxStore>) {
    let room = room();
    insert_all(&*outbox, &[row(&room, "lost")]).await;
    let mut b = bench();
    let r = relay(
        &b,
        outbox.clone(),
        RelayConfig {
            resend_after: Duration::ZERO,
            ..holder("relay-resend")
        },
    );
    assert_eq!(r.cycle().await.expect("cycle"), Cycle::Published(1));
    assert_eq!(r.cycle().await.expect("cycle"), Cycle::Published(1));
    let copies = drain(&mut b.consumer, 2).await;
    assert_eq!(copies[0].msg_id, copies[1].msg_id);
    outbox.release_lease("relay-resend").await.expect("release");
}
