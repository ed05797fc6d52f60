//! Port test-suites: one function per port that any adapter must pass, so that the in-memory
//! adapters and the real ones cannot drift apart. Enabled by the `testkit` feature (for the
//! adapters' own tests) and in this crate's tests.

pub mod bus;
mod outbox;

pub use bus::{BusHarness, MemoryBusHarness, bus_suite};
pub use outbox::outbox_store_suite;

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

/// What every [`crate::ports::RecentMessages`] must do. `ttl` is how long the adapter's clock
/// takes to expire a list — the suite waits that long (under tokio's paused clock for the memory
/// adapter, for real for Redis: keep it short).
pub async fn recent_messages_suite(
    recent: &dyn crate::ports::RecentMessages,
    ttl: std::time::Duration,
) {
    let room = RoomId::parse(&format!("recent-{}", fastrand::u64(..))).expect("valid");
    let long = std::time::Duration::from_secs(3600);
    assert!(
        recent.recent(&room, 10).await.expect("read").is_empty(),
        "unknown room"
    );
    let first = batch(room.as_str(), 9, 1..=3);
    recent.push(&first, 5, long).await.expect("push");
    recent
        .push(&batch(room.as_str(), 9, 4..=7), 5, long)
        .await
        .expect("push");
    let got = recent.recent(&room, 10).await.expect("read");
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4, 5, 6, 7], "capped at 5, oldest first");
    assert_eq!(got[0], *first.msgs[2], "every field round-trips");
    let seqs: Vec<u64> = recent
        .recent(&room, 2)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [6, 7], "the last `limit`");
    // A new epoch is appended after the old one's messages (the list is what was delivered).
    recent
        .push(&batch(room.as_str(), 10, 1..=1), 5, long)
        .await
        .expect("push");
    let got = recent.recent(&room, 10).await.expect("read");
    assert_eq!(
        got.iter().map(|m| (m.epoch, m.seq)).collect::<Vec<_>>(),
        [(9, 4), (9, 5), (9, 6), (9, 7), (10, 1)]
    );
    // An idle room's list expires.
    let other = RoomId::parse(&format!("recent-{}", fastrand::u64(..))).expect("valid");
    recent
        .push(&batch(other.as_str(), 1, 1..=2), 5, ttl)
        .await
        .expect("push");
    assert_eq!(recent.recent(&other, 10).await.expect("read").len(), 2);
    tokio::time::sleep(ttl * 3).await;
    assert!(
        recent.recent(&other, 10).await.expect("read").is_empty(),
        "expired after its ttl"
    );
    assert_eq!(
        recent.recent(&room, 10).await.expect("read").len(),
        5,
        "others stay"
    );
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

// ---- routes, presence, discovery ----------------------------------------------------------------
//
// Leases and TTLs are checked by waiting with `tokio::time::sleep`: the memory adapters run the
// suites under tokio's paused clock (the waits take no real time), a networked adapter with a
// short real `ttl` (its service keeps the time).

/// A prefix that keeps one run's ids apart from another's in a shared service.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

fn room_id(prefix: &str, name: &str) -> RoomId {
    RoomId::parse(&format!("{prefix}-{name}")).expect("valid room id")
}

fn node_id(prefix: &str, name: &str) -> crate::ids::NodeId {
    crate::ids::NodeId::new(&format!("{prefix}-{name}"))
}

/// What every [`RouteTable`](crate::ports::RouteTable) must do; `ttl` is the lease used.
pub async fn route_table_suite(routes: &dyn crate::ports::RouteTable, ttl: std::time::Duration) {
    routes_need_a_live_lease(routes, ttl).await;
    renewal_keeps_routes_expiry_hides_them(routes, ttl).await;
    drop_node_removes_only_that_nodes_routes(routes, ttl).await;
    remove_touches_only_the_named_node(routes, ttl).await;
    watch_sees_adds_removes_and_drops(routes, ttl).await;
}

pub async fn routes_need_a_live_lease(
    routes: &dyn crate::ports::RouteTable,
    ttl: std::time::Duration,
) {
    let p = unique("lease");
    let (room, a, b) = (room_id(&p, "r"), node_id(&p, "a"), node_id(&p, "b"));
    routes.add(&room, &a).await.expect("add");
    routes.add(&room, &b).await.expect("add");
    routes
        .add(&room, &b)
        .await
        .expect("a second add is harmless");
    assert!(
        routes.nodes(&room).await.expect("nodes").is_empty(),
        "no lease, no route"
    );
    routes.renew(&b, ttl).await.expect("renew");
    routes.renew(&a, ttl).await.expect("renew");
    assert_eq!(
        routes.nodes(&room).await.expect("nodes"),
        vec![a.clone(), b.clone()],
        "each node once, sorted"
    );
    assert!(
        routes
            .nodes(&room_id(&p, "other"))
            .await
            .expect("nodes")
            .is_empty()
    );
    routes.drop_node(&a).await.expect("drop");
    routes.drop_node(&b).await.expect("drop");
}

pub async fn renewal_keeps_routes_expiry_hides_them(
    routes: &dyn crate::ports::RouteTable,
    ttl: std::time::Duration,
) {
    let p = unique("renew");
    let (room, a, b) = (room_id(&p, "r"), node_id(&p, "a"), node_id(&p, "b"));
    routes.renew(&a, ttl).await.expect("renew");
    routes.renew(&b, ttl).await.expect("renew");
    routes.add(&room, &a).await.expect("add");
    routes.add(&room, &b).await.expect("add");
    // `a` renews every ttl / 3; `b` stops.
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        routes.renew(&a, ttl).await.expect("renew");
    }
    assert_eq!(
        routes.nodes(&room).await.expect("nodes"),
        vec![a.clone()],
        "b's lease ran out, a's was renewed past its first deadline"
    );
    tokio::time::sleep(ttl + ttl / 10).await;
    assert!(
        routes.nodes(&room).await.expect("nodes").is_empty(),
        "a stopped renewing too"
    );
    routes.renew(&a, ttl).await.expect("renew");
    routes.add(&room, &a).await.expect("add");
    assert_eq!(
        routes.nodes(&room).await.expect("nodes"),
        vec![a.clone()],
        "a node that comes back can route again"
    );
    routes.drop_node(&a).await.expect("drop");
    routes.drop_node(&b).await.expect("drop");
}

pub async fn drop_node_removes_only_that_nodes_routes(
    routes: &dyn crate::ports::RouteTable,
    ttl: std::time::Duration,
) {
    let p = unique("drop");
    let (r1, r2, r3) = (room_id(&p, "1"), room_id(&p, "2"), room_id(&p, "3"));
    let (a, b) = (node_id(&p, "a"), node_id(&p, "b"));
    routes.renew(&a, ttl).await.expect("renew");
    routes.renew(&b, ttl).await.expect("renew");
    for r in [&r1, &r2, &r3] {
        routes.add(r, &a).await.expect("add");
    }
    routes.add(&r2, &b).await.expect("add");
    assert_eq!(
        routes.drop_node(&a).await.expect("drop"),
        3,
        "a was in 3 rooms"
    );
    assert!(routes.nodes(&r1).await.expect("nodes").is_empty());
    assert_eq!(routes.nodes(&r2).await.expect("nodes"), vec![b.clone()]);
    assert!(routes.nodes(&r3).await.expect("nodes").is_empty());
    // The lease went with the routes: a fresh renewal starts empty.
    routes.renew(&a, ttl).await.expect("renew");
    assert_eq!(routes.nodes(&r2).await.expect("nodes"), vec![b.clone()]);
    assert_eq!(routes.drop_node(&a).await.expect("drop"), 0);
    routes.drop_node(&b).await.expect("drop");
}

pub async fn remove_touches_only_the_named_node(
    routes: &dyn crate::ports::RouteTable,
    ttl: std::time::Duration,
) {
    let p = unique("remove");
    let (room, other) = (room_id(&p, "r"), room_id(&p, "other"));
    let (a, b) = (node_id(&p, "a"), node_id(&p, "b"));
    routes.renew(&a, ttl).await.expect("renew");
    routes.renew(&b, ttl).await.expect("renew");
    routes.add(&room, &a).await.expect("add");
    routes.add(&other, &a).await.expect("add");
    routes
        .remove(&room, &b)
        .await
        .expect("removing a route b never had");
    assert_eq!(routes.nodes(&room).await.expect("nodes"), vec![a.clone()]);
    routes.add(&room, &b).await.expect("add");
    routes.remove(&room, &b).await.expect("remove");
    routes
        .remove(&room, &b)
        .await
        .expect("a second remove is harmless");
    assert_eq!(routes.nodes(&room).await.expect("nodes"), vec![a.clone()]);
    routes.remove(&room, &a).await.expect("remove");
    assert!(routes.nodes(&room).await.expect("nodes").is_empty());
    assert_eq!(
        routes.nodes(&other).await.expect("nodes"),
        vec![a.clone()],
        "other rooms keep their routes"
    );
    routes.drop_node(&a).await.expect("drop");
    routes.drop_node(&b).await.expect("drop");
}

pub async fn watch_sees_adds_removes_and_drops(
    routes: &dyn crate::ports::RouteTable,
    ttl: std::time::Duration,
) {
    use crate::ports::RouteChange;
    let p = unique("watch");
    let (r1, r2) = (room_id(&p, "1"), room_id(&p, "2"));
    let a = node_id(&p, "a");
    routes.renew(&a, ttl).await.expect("renew");
    let mut watch = routes.watch();
    // Other runs may share the service: skip what is not ours.
    let ours = |c: &RouteChange| match c {
        RouteChange::Room(r) => r == &r1 || r == &r2,
        RouteChange::Node(n) => n == &a,
        RouteChange::Lagged => true,
    };
    let mut next = async || loop {
        let c = watch.next().await.expect("the table is alive");
        if ours(&c) {
            return c;
        }
    };
    routes.add(&r1, &a).await.expect("add");
    assert_eq!(next().await, RouteChange::Room(r1.clone()));
    routes.add(&r2, &a).await.expect("add");
    assert_eq!(next().await, RouteChange::Room(r2.clone()));
    routes.remove(&r1, &a).await.expect("remove");
    assert_eq!(next().await, RouteChange::Room(r1.clone()));
    routes.drop_node(&a).await.expect("drop");
    assert_eq!(next().await, RouteChange::Node(a.clone()));
}

/// What every [`Presence`](crate::ports::Presence) must do; `ttl` is the entries' TTL.
pub async fn presence_suite(presence: &dyn crate::ports::Presence, ttl: std::time::Duration) {
    use crate::ids::UserId;
    let p = unique("presence");
    let alice = UserId::parse(&format!("{p}-alice")).expect("valid");
    let bob = UserId::parse(&format!("{p}-bob")).expect("valid");
    let (a, b) = (node_id(&p, "a"), node_id(&p, "b"));
    assert!(!presence.is_online(&alice).await.expect("online"));
    assert!(presence.nodes(&alice).await.expect("nodes").is_empty());

    presence.touch(&alice, &b, ttl).await.expect("touch");
    presence.touch(&alice, &a, ttl).await.expect("touch");
    presence.touch(&alice, &a, ttl).await.expect("touch again");
    presence.touch(&bob, &b, ttl).await.expect("touch");
    assert!(presence.is_online(&alice).await.expect("online"));
    assert_eq!(
        presence.nodes(&alice).await.expect("nodes"),
        vec![a.clone(), b.clone()],
        "each node once, sorted"
    );

    // Leaving one node keeps the others, and other users.
    presence.remove(&alice, &b).await.expect("remove");
    assert_eq!(
        presence.nodes(&alice).await.expect("nodes"),
        vec![a.clone()]
    );
    assert_eq!(presence.nodes(&bob).await.expect("nodes"), vec![b.clone()]);
    presence
        .remove(&alice, &b)
        .await
        .expect("a second remove is harmless");

    // Each node's entry expires on its own; touching renews it.
    tokio::time::sleep(ttl * 2 / 3).await;
    presence.touch(&alice, &a, ttl).await.expect("touch");
    tokio::time::sleep(ttl * 2 / 3).await;
    assert_eq!(
        presence.nodes(&alice).await.expect("nodes"),
        vec![a.clone()],
        "renewed"
    );
    assert!(
        !presence.is_online(&bob).await.expect("online"),
        "bob's entry expired"
    );
    assert!(presence.nodes(&bob).await.expect("nodes").is_empty());
    presence.remove(&alice, &a).await.expect("remove");
    assert!(!presence.is_online(&alice).await.expect("online"));
}

/// What every [`Discovery`](crate::ports::Discovery) must do; `ttl` is the leases' TTL.
pub async fn discovery_suite(discovery: &dyn crate::ports::Discovery, ttl: std::time::Duration) {
    use crate::ports::{DiscoveryError, NodeEvent, NodeInfo, NodeRole};
    let p = unique("disco");
    let info = |name: &str, role, port: u16| NodeInfo {
        id: node_id(&p, name),
        role,
        addr: format!("10.0.0.{port}:9000"),
    };
    let (gw1, gw2, gw3) = (
        info("gw1", NodeRole::Gateway, 1),
        info("gw2", NodeRole::Gateway, 2),
        info("gw3", NodeRole::Gateway, 3),
    );
    let ingest = info("in1", NodeRole::Ingest, 4);
    let ours = |n: &NodeInfo| n.id.as_str().starts_with(&p);
    let list = async |role| {
        discovery
            .list(role)
            .await
            .expect("list")
            .into_iter()
            .filter(|n| ours(n))
            .collect::<Vec<_>>()
    };

    let lease2 = discovery
        .register(gw2.clone(), ttl)
        .await
        .expect("register");
    let lease1 = discovery
        .register(gw1.clone(), ttl)
        .await
        .expect("register");
    let lease_in = discovery
        .register(ingest.clone(), ttl)
        .await
        .expect("register");
    assert_eq!(
        list(NodeRole::Gateway).await,
        vec![gw1.clone(), gw2.clone()]
    );
    assert_eq!(list(NodeRole::Ingest).await, vec![ingest.clone()]);
    assert!(list(NodeRole::Worker).await.is_empty());
    assert_eq!(
        discovery
            .register(gw1.clone(), ttl)
            .await
            .err()
            .expect("a live id cannot be taken"),
        DiscoveryError::Taken(gw1.id.clone())
    );

    // A watch starts with what is there, then follows its role only.
    let mut watch = discovery.watch(NodeRole::Gateway).await.expect("watch");
    let mut next = async || loop {
        match watch.next().await.expect("discovery is alive") {
            NodeEvent::Up(n) if !ours(&n) => {}
            NodeEvent::Down(id) if !id.as_str().starts_with(&p) => {}
            ev => return ev,
        }
    };
    let mut initial = vec![next().await, next().await];
    initial.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        initial,
        vec![NodeEvent::Up(gw1.clone()), NodeEvent::Up(gw2.clone())]
    );
    let lease3 = discovery
        .register(gw3.clone(), ttl)
        .await
        .expect("register");
    lease_in.revoke().await.expect("revoke");
    assert_eq!(next().await, NodeEvent::Up(gw3.clone()), "no ingest events");
    lease1.revoke().await.expect("revoke");
    assert_eq!(next().await, NodeEvent::Down(gw1.id.clone()));
    assert!(list(NodeRole::Ingest).await.is_empty());

    // Keep-alive: gw2 is kept, gw3 is not.
    assert!(lease2.keep_alive_every() <= ttl / 2);
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        lease2.keep_alive().await.expect("keep alive");
    }
    assert_eq!(list(NodeRole::Gateway).await, vec![gw2.clone()]);
    assert_eq!(
        lease3.keep_alive().await,
        Err(DiscoveryError::Expired(gw3.id.clone())),
        "too late: register again"
    );
    let lease3 = discovery
        .register(gw3.clone(), ttl)
        .await
        .expect("an expired id can be registered again");
    assert_eq!(
        list(NodeRole::Gateway).await,
        vec![gw2.clone(), gw3.clone()]
    );
    lease2.revoke().await.expect("revoke");
    lease3.revoke().await.expect("revoke");
    assert!(list(NodeRole::Gateway).await.is_empty());
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

    #[tokio::test(start_paused = true)]
    async fn memory_recent_messages_pass() {
        super::recent_messages_suite(
            &crate::memory::MemoryRecent::default(),
            std::time::Duration::from_secs(60),
        )
        .await;
    }
}
