//! The distributed mode in one test process: real roles (`roomcast_server::roles`) on the real
//! services — etcd, Redis, MariaDB and the Kafka broker (`scripts/services.sh up`) — each test
//! with its own etcd prefix, Redis key prefix, database and topic. The roles talk gRPC over
//! loopback exactly as separate processes do; `scripts/cluster.sh` runs them as processes.

use roomcast_server::config::Config;
use roomcast_server::roles::{self, Role, RoleRunning};

use crate::common::*;
use crate::kafka::kafka_url;
use crate::mysql_store::{Db, redis_url};

pub(crate) fn etcd_url() -> String {
    std::env::var("RC_TEST_ETCD_URL").unwrap_or_else(|_| {
        panic!(
            "RC_TEST_ETCD_URL is not set: start etcd with `scripts/services.sh up etcd` and \
             `eval \"$(scripts/services.sh env)\"`"
        )
    })
}

/// One cluster's shared settings.
pub(crate) struct Cluster {
    pub(crate) id: String,
    pub(crate) db: Db,
    dirs: Vec<tempfile::TempDir>,
    nodes: u16,
}

impl Cluster {
    pub(crate) async fn new() -> Cluster {
        Cluster {
            id: format!("{:012x}", fastrand::u64(..) >> 16),
            db: Db::fresh().await,
            dirs: Vec::new(),
            nodes: 0,
        }
    }

    pub(crate) fn config(&mut self, node: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        self.dirs.push(dir);
        self.nodes += 1;
        c.node_id = Some(format!("{node}-{}", self.id));
        c.redis.url = Some(redis_url());
        c.redis.key_prefix = format!("cl:{}:", self.id);
        c.store.url = Some(self.db.url.clone());
        c.bus.url = kafka_url();
        c.bus.topic = format!("cl-{}", self.id);
        c.bus.group = format!("cl-{}", self.id);
        c.bus.partitions = 2;
        c.cluster.etcd_url = Some(etcd_url());
        c.cluster.etcd_prefix = format!("/rc-{}/", self.id);
        c.cluster.lease_ttl_s = 3;
        // Ids made on different nodes never collide: each node claims its number in etcd.
        // Tests chat faster than people do.
        c.ingest.user_limit.rate = 1000.0;
        c.ingest.user_limit.burst = 1000.0;
        c.api.keys = vec![API_KEY.into()];
        c
    }

    pub(crate) async fn start(&mut self, role: Role, node: &str) -> RoleRunning {
        self.start_with(role, node, |_| {}).await
    }

    pub(crate) async fn start_with(
        &mut self,
        role: Role,
        node: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> RoleRunning {
        let mut config = self.config(node);
        tweak(&mut config);
        roles::start(role, config)
            .await
            .unwrap_or_else(|e| panic!("{node} starts: {e:#}"))
    }
}

pub(crate) async fn client(gw: &RoleRunning, user: &str) -> Client {
    let mut c = Client::connect(
        &format!("ws://{}/ws", gw.addr),
        roomcast_proto::Wire::JsonText,
    )
    .await;
    let ok = c.login(&token_for(user, Some(user), 3600)).await;
    assert_eq!(ok.op, "login_ok", "{ok:?}");
    c
}

/// Messages delivered to a gateway's clients (every message of every batch it was pushed).
fn delivered(gw: &RoleRunning) -> u64 {
    gw.metrics.delivery_latency.count()
}

fn texts(msgs: &[serde_json::Value]) -> Vec<(String, u64)> {
    msgs.iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Clients on two gateways in one room receive every message once, in the same order; a room
/// whose members are all on one gateway causes no push to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_one_room_every_message_once_in_one_order() {
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl.start(Role::Gateway, "gw-a").await;
    let b = cl.start(Role::Gateway, "gw-b").await;

    let (mut alice, mut bob) = (client(&a, "alice").await, client(&b, "bob").await);
    assert_eq!(alice.join("c").await.op, "join_ok");
    assert_eq!(bob.join("c").await.op, "join_ok");
    // Both write, from both gateways.
    let mut sent = Vec::new();
    for i in 1..=6 {
        let (who, text) = if i % 2 == 0 {
            (&mut bob, format!("b{i}"))
        } else {
            (&mut alice, format!("a{i}"))
        };
        let ok = who.chat("c", &text).await;
        assert_eq!(ok.op, "chat_ok", "{ok:?}");
        sent.push(text);
    }
    let at_a = texts(&alice.room_msgs(6).await);
    let at_b = texts(&bob.room_msgs(6).await);
    assert_eq!(at_a, at_b, "one order for everyone");
    assert_eq!(
        at_a.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "every message once, seq 1..6"
    );
    let mut got: Vec<String> = at_a.into_iter().map(|(t, _)| t).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);

    // A room whose only member is on a: nothing is pushed to b.
    let before = delivered(&b);
    let mut carol = client(&a, "carol").await;
    carol.join("solo").await;
    for i in 1..=3 {
        assert_eq!(carol.chat("solo", &format!("s{i}")).await.op, "chat_ok");
    }
    assert_eq!(carol.room_msgs(3).await.len(), 3);
    // Anything for b would have been pushed before carol's copy (one pass per batch).
    assert_eq!(
        delivered(&b),
        before,
        "b has no member of 'solo': zero pushes"
    );
    for c in [&alice, &bob] {
        assert!(
            !c.inbox().iter().any(|p| p.op == "room_msg"),
            "nothing twice: {:?}",
            c.inbox()
        );
    }

    // A join on b sees the history the worker listed (Redis), then the store.
    let mut dave = client(&b, "dave").await;
    let joined = dave.join("solo").await;
    let history: Vec<&str> = joined.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["s1", "s2", "s3"]);
    assert_eq!(joined.body["last_seq"], 3);

    for r in [a, b, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// An API call to a gateway of the cluster (every node of a test shares one API key).
async fn api(
    gw: &RoleRunning,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {API_KEY}");
    let text = body.to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, _, reply) =
        http(gw.addr, method, &format!("/api/v1{path}"), &headers, &text).await;
    (
        status,
        serde_json::from_str(&reply).unwrap_or(serde_json::Value::String(reply)),
    )
}

pub(crate) const API_KEY: &str = "cluster-test-api-key-0123456789";

/// The server API on one gateway reaches a user on the other: a critical message arrives and
/// is acknowledged there, and a ban disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_on_one_gateway_reaches_users_on_the_other() {
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let a = cl.start(Role::Gateway, "gw-a").await;
    let b = cl.start(Role::Gateway, "gw-b").await;
    let mut erin = client(&b, "erin").await;

    let (status, reply) = api(
        &a,
        "POST",
        "/critical",
        serde_json::json!({"user_ids": ["erin"], "kind": "system", "text": "hello from a"}),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(
        reply["online"], 1,
        "a found erin on b through presence: {reply}"
    );
    let m = erin.expect("critical").await;
    assert_eq!(m.body["text"], "hello from a");
    erin.send(
        roomcast_proto::Op::Ack,
        serde_json::json!({"msg_id": m.body["msg_id"]}),
    )
    .await;
    let acks = b.gateway.as_ref().unwrap().deps().acks.clone();
    let user = roomcast_core::ids::UserId::parse("erin").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !acks.pending(&user).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ack clears the pending entry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let (status, reply) = api(
        &a,
        "PUT",
        "/users/erin/ban",
        serde_json::json!({"reason": "spam"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["closed_connections"], 1, "{reply}");
    assert_eq!(
        erin.ended().await,
        Ended::Close(4003, "banned: spam".into())
    );

    for r in [a, b, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// A gateway that dies without draining: within its leases' TTL its routes are gone and no
/// worker pushes to it any more, and the room goes on for the members on the other gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_gateway_is_forgotten_within_its_lease() {
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl
        .start_with(Role::Gateway, "gw-a", |c| c.gateway.route_lease_s = 2)
        .await;
    let b = cl
        .start_with(Role::Gateway, "gw-b", |c| c.gateway.route_lease_s = 2)
        .await;
    let (mut alice, mut bob) = (client(&a, "alice").await, client(&b, "bob").await);
    alice.join("d").await;
    bob.join("d").await;
    assert_eq!(alice.chat("d", "before").await.op, "chat_ok");
    assert_eq!(texts(&bob.room_msgs(1).await), [("before".to_owned(), 1)]);
    assert_eq!(texts(&alice.room_msgs(1).await), [("before".to_owned(), 1)]);

    let redis =
        roomcast_backends::redis::RedisConn::connect(&redis_url(), &format!("cl:{}:", cl.id))
            .await
            .unwrap();
    let routes = roomcast_backends::redis::RedisRouteTable::new(redis);
    let room = roomcast_core::ids::RoomId::parse("d").unwrap();
    use roomcast_core::ports::RouteTable;
    assert_eq!(routes.nodes(&room).await.unwrap().len(), 2);

    let b_id = b.gateway.as_ref().unwrap().node().clone();
    b.kill().await;
    // Route leases of 2 s and a node lease of 3 s: both gone well within 10 s.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let nodes = routes.nodes(&room).await.unwrap();
        if !nodes.contains(&b_id) {
            assert_eq!(nodes.len(), 1, "a stays");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's routes outlived its lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The room goes on on a, and the worker's pushes stop finding b.
    for i in 2..=4 {
        assert_eq!(alice.chat("d", &format!("after{i}")).await.op, "chat_ok");
    }
    assert_eq!(
        texts(&alice.room_msgs(3).await)
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    for r in [a, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// A user's chat limit holds across ingest nodes: the gateway spreads chats over both, and the
/// bucket is one (Redis), so the burst is the burst whichever node takes a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_two_ingest_nodes() {
    let mut cl = Cluster::new().await;
    let strict = |c: &mut Config| {
        c.ingest.user_limit.rate = 0.01;
        c.ingest.user_limit.burst = 4.0;
    };
    let i1 = cl.start_with(Role::Ingest, "ingest1", strict).await;
    let i2 = cl.start_with(Role::Ingest, "ingest2", strict).await;
    let gw = cl.start(Role::Gateway, "gw-a").await;
    let mut frank = client(&gw, "frank").await;
    frank.join("lim").await;
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..10 {
        let r = frank.chat("lim", &format!("m{i}")).await;
        match r.op.as_str() {
            "chat_ok" => ok += 1,
            "error" if r.body["code"] == "rate_limited" => {
                limited += 1;
                assert!(r.body["retry_after_ms"].as_u64().unwrap() > 0, "{r:?}");
            }
            _ => panic!("unexpected answer {r:?}"),
        }
    }
    assert_eq!((ok, limited), (4, 6), "burst 4 in all, not 4 per node");
    // Both nodes took chats (round robin), and each refused some: one bucket between them.
    use roomcast_core::metrics::DropReason;
    for n in [&i1, &i2] {
        let took = n.metrics.messages_in.get() + n.metrics.dropped(DropReason::RateLimited);
        assert_eq!(took, 5, "each node took half of the chats");
    }
    assert_eq!(
        i1.metrics.messages_in.get() + i2.metrics.messages_in.get(),
        4,
        "accepted in all"
    );
    for r in [gw, i1, i2] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// A gateway draining (SIGTERM): its clients get `kicked` `draining` naming the other gateway
/// and close 1012; one that reconnects there and re-joins with `since` recovers what was sent
/// meanwhile, and the drained gateway's routes are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_gateway_sends_its_clients_to_the_other() {
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl.start(Role::Gateway, "gw-a").await;
    let b = cl.start(Role::Gateway, "gw-b").await;
    let (mut alice, mut bob) = (client(&a, "alice").await, client(&b, "bob").await);
    alice.join("dr").await;
    bob.join("dr").await;
    assert_eq!(alice.chat("dr", "one").await.op, "chat_ok");
    let got = bob.room_msgs(1).await;
    let (epoch, seq) = (got[0]["epoch"].clone(), got[0]["seq"].as_u64().unwrap());
    alice.room_msgs(1).await;

    let a_url = format!("ws://{}/ws", a.addr);
    let b_id = b.gateway.as_ref().unwrap().node().clone();
    let drained = tokio::spawn(b.shutdown());
    let kicked = bob.expect("kicked").await;
    assert_eq!(kicked.body["code"], "draining");
    assert_eq!(
        kicked.body["reconnect"],
        serde_json::json!([a_url]),
        "the other gateway"
    );
    assert_eq!(
        bob.ended().await,
        Ended::Close(1012, "server restarting".into())
    );
    drained.await.unwrap().expect("clean drain");

    // Sent while bob was away.
    for t in ["two", "three"] {
        assert_eq!(alice.chat("dr", t).await.op, "chat_ok");
    }
    alice.room_msgs(2).await;
    let mut bob = Client::connect(&a_url, roomcast_proto::Wire::JsonText).await;
    assert_eq!(
        bob.login(&token_for("bob", Some("bob"), 3600)).await.op,
        "login_ok"
    );
    let rejoined = bob
        .call(
            roomcast_proto::Op::Join,
            serde_json::json!({"room_id": "dr", "since": {"epoch": epoch, "seq": seq}}),
        )
        .await;
    assert_eq!(rejoined.body["recovered"], true, "{rejoined:?}");
    let missed: Vec<&str> = rejoined.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(missed, ["two", "three"], "exactly what was missed");

    let redis =
        roomcast_backends::redis::RedisConn::connect(&redis_url(), &format!("cl:{}:", cl.id))
            .await
            .unwrap();
    use roomcast_core::ports::RouteTable;
    let nodes = roomcast_backends::redis::RedisRouteTable::new(redis)
        .nodes(&roomcast_core::ids::RoomId::parse("dr").unwrap())
        .await
        .unwrap();
    assert!(
        !nodes.contains(&b_id),
        "the drained gateway dropped its routes: {nodes:?}"
    );
    for r in [a, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// The transactional outbox across the cluster: a row written through one gateway's API is
/// published by the relay on an ingest node and reaches the room's members on the other
/// gateway once; the worker's store marks it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outbox_row_written_on_one_gateway_reaches_the_room_on_the_other() {
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl.start(Role::Gateway, "gw-a").await;
    let b = cl.start(Role::Gateway, "gw-b").await;
    let mut viewer = client(&b, "viewer").await;
    viewer.join("paid").await;
    let (status, reply) = api(
        &a,
        "POST",
        "/outbox",
        serde_json::json!({"room_id": "paid", "kind": "gift", "text": "a yacht!", "user_id": "whale"}),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let m = viewer.expect("room_msg").await.body;
    assert_eq!(
        (m["kind"].as_str(), m["text"].as_str()),
        (Some("gift"), Some("a yacht!"))
    );
    let msg_id: u64 = m["msg_id"].as_str().unwrap().parse().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while cl.db.outbox_pending().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row is marked sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(cl.db.stored(msg_id).await, 1, "stored once");
    for r in [a, b, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// Waits for an `online` push of the room with count `n`; the counts on the way are skipped.
async fn sees_online(c: &mut Client, n: u64, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let p = tokio::time::timeout_at(deadline, c.expect("online"))
            .await
            .unwrap_or_else(|_| panic!("no online count of {n} within {within:?}"));
        if p.body["count"] == n {
            return;
        }
    }
}

/// B2: `join_ok.online`, the `online` pushes and the room API count the room's connections
/// over every gateway, not each gateway's own: 3 viewers on a and 2 on b all see 5, and 4 once
/// one leaves. The count reaches the other gateway within two `online_push_interval_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_online_count_is_the_rooms_over_every_gateway() {
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl.start(Role::Gateway, "gw-a").await;
    let b = cl.start(Role::Gateway, "gw-b").await;
    let mut viewers = Vec::new();
    for (i, gw) in [&a, &a, &a, &b, &b].into_iter().enumerate() {
        let mut c = client(gw, &format!("viewer{i}")).await;
        c.join("crowd").await;
        viewers.push(c);
    }
    // Two refresh intervals (1 s each); the rest is scheduling on a loaded 2-core machine.
    let within = std::time::Duration::from_millis(2500);
    let start = std::time::Instant::now();
    for v in &mut viewers {
        sees_online(v, 5, within).await;
    }
    eprintln!(
        "room-wide online count of 5 seen by all {:?} after the last join",
        start.elapsed()
    );
    let late = client(&b, "late").await;
    let mut late = late;
    let joined = late.join("crowd").await;
    assert_eq!(
        joined.body["online"], 6,
        "join_ok counts every gateway: {joined:?}"
    );
    late.close().await;
    viewers.remove(0).close().await;
    let start = std::time::Instant::now();
    for v in &mut viewers {
        sees_online(v, 4, within).await;
    }
    eprintln!("a leave seen by all {:?} after it", start.elapsed());
    let (status, info) = api(&b, "GET", "/rooms/crowd", serde_json::Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(info["online"], 4, "{info}");
    for r in [a, b, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}
