//! Partial faults in the distributed mode: blips, flushes and cuts between one role and one
//! service, injected for real — a fault proxy ([`roomcast_core::fault_proxy`]) between a role
//! and Redis, `FLUSHALL` on a private Redis, `kill` of a role — with the roles in this process
//! over gRPC and the real services (as `cluster.rs`). What is asserted is what clients see: no
//! room goes silent on a gateway for good, no hole is called recovered, no two nodes issue one
//! message id. Each test prints what the fault cost (docs/operations.md, the fault table).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roomcast_core::fault_proxy::FaultProxy;
use roomcast_proto::Op;
use roomcast_server::roles::{Role, RoleRunning};
use serde_json::json;

use crate::cluster::{Cluster, client};
use crate::common::*;
use crate::mysql_store::redis_url;
use crate::private_services::Private;

/// The lease every test cluster uses (`cluster.lease_ttl_s`), which the gateways' route lease
/// follows.
const LEASE: Duration = Duration::from_secs(3);

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The raw members of `room:subs:{room}` (no lease filter): what garbage collection leaves.
async fn raw_routes(url: &str, cl: &Cluster, room: &str) -> Vec<String> {
    let mut c = redis(url).await;
    let mut v: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("cl:{}:room:subs:{room}", cl.id))
        .query_async(&mut c)
        .await
        .unwrap();
    v.sort();
    v
}

/// A fault proxy in front of the shared Redis.
async fn redis_proxy() -> FaultProxy {
    let url = redis_url();
    let host = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap();
    FaultProxy::start_for(host).await.unwrap()
}

fn node(cl: &Cluster, name: &str) -> String {
    format!("{name}-{}", cl.id)
}

/// A counter from a role's metrics.
async fn metric(r: &RoleRunning, name: &str) -> u64 {
    let (status, _, body) = http(r.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Polls `cond` every 50 ms until it holds; panics after `within`. Returns how long it took.
async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `m{i}` to `rooms[i % len]` every `every` until stopped; `sent` is the next index.
fn chatter(
    mut c: Client,
    rooms: Vec<String>,
    every: Duration,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        for room in &rooms {
            c.join(room).await;
        }
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let room = &rooms[i as usize % rooms.len()];
            let ok = c.chat(room, &format!("m{i}")).await;
            assert_eq!(ok.op, "chat_ok", "{ok:?}");
            i += 1;
            sent.store(i, Ordering::Relaxed);
            tokio::time::sleep(every).await;
        }
        c
    })
}

/// Follows a viewer's room messages; `seen` is the highest `m{i}` index received (+1).
fn follower(
    mut c: Client,
    seen: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok(p) =
                tokio::time::timeout(Duration::from_millis(500), c.expect("room_msg")).await
            else {
                continue;
            };
            let i: u64 = p.body["text"].as_str().unwrap()[1..].parse().unwrap();
            seen.fetch_max(i + 1, Ordering::Relaxed);
        }
    })
}

/// `FLUSHALL` under load: every gateway's routes (and its lease) are gone at once. Each gateway
/// learns it at its next renewal (its lease had lapsed) and re-asserts its whole route set, so
/// every member of every room receives messages again within 2 × the lease TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_room_comes_back_within_two_leases_after_flushall_under_load() {
    let private = Private::start("redis").await;
    let url = private.url();
    let mut cl = Cluster::new().await;
    let on = |c: &mut roomcast_server::config::Config| c.redis.url = Some(url.clone());
    let ingest = cl.start_with(Role::Ingest, "ingest1", on).await;
    // The worker reads the routes for every batch, so what members receive shows the routes
    // as they are (a cache would hide the flush for up to `worker.route_cache_ms`).
    let worker = cl
        .start_with(Role::Worker, "worker1", |c| {
            on(c);
            c.worker.route_cache_ms = 0;
        })
        .await;
    let a = cl.start_with(Role::Gateway, "gw-a", on).await;
    let b = cl.start_with(Role::Gateway, "gw-b", on).await;

    let rooms: Vec<String> = (0..4).map(|i| format!("flush{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut seen = Vec::new();
    let mut followers = Vec::new();
    for room in &rooms {
        for (gw, side) in [(&a, "a"), (&b, "b")] {
            let mut v = client(gw, &format!("v-{room}-{side}")).await;
            v.join(room).await;
            let s = Arc::new(AtomicU64::new(0));
            seen.push((format!("{room}@{side}"), s.clone()));
            followers.push(follower(v, s, stop.clone()));
        }
    }
    let sent = Arc::new(AtomicU64::new(0));
    let chat = chatter(
        client(&a, "talker").await,
        rooms.clone(),
        Duration::from_millis(20),
        sent.clone(),
        stop.clone(),
    );
    // Every member receives before the flush.
    until("every member receives", Duration::from_secs(10), || async {
        seen.iter().all(|(_, s)| s.load(Ordering::Relaxed) > 0)
    })
    .await;

    let mut c = redis(&url).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let flushed_at = sent.load(Ordering::Relaxed);
    let took = until(
        "every member receives a message sent after FLUSHALL",
        LEASE * 2,
        || async {
            seen.iter()
                .all(|(_, s)| s.load(Ordering::Relaxed) > flushed_at + rooms.len() as u64)
        },
    )
    .await;
    eprintln!("FLUSHALL under load: every room's members receive again {took:?} after it");
    assert!(metric(&a, "roomcast_route_repairs_total").await >= rooms.len() as u64);
    assert!(metric(&b, "roomcast_route_repairs_total").await >= rooms.len() as u64);

    stop.store(true, Ordering::Relaxed);
    let _ = chat.await.unwrap();
    for f in followers {
        f.await.unwrap();
    }
    for r in [a, b, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// A Redis blip during a join: the route write fails (logged, counted), the join is answered,
/// and the gateway's next lease renewal writes the route — the room does not stay silent on
/// that gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_lost_in_a_redis_blip_during_a_join_is_repaired() {
    let proxy = redis_proxy().await;
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let via_proxy = proxy.rewrite_url(&redis_url());
    let a = cl
        .start_with(Role::Gateway, "gw-a", |c| c.redis.url = Some(via_proxy))
        .await;
    let b = cl.start(Role::Gateway, "gw-b").await;

    let mut alice = client(&a, "alice").await;
    proxy.refuse();
    let joined = alice.join("blip").await;
    assert_eq!(joined.body["online"], 1, "the join is answered: {joined:?}");
    assert!(metric(&a, "roomcast_route_write_failures_total").await >= 1);
    proxy.pass();

    // Bob on the other gateway talks until alice hears him.
    let bob = client(&b, "bob").await;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chat = chatter(
        bob,
        vec!["blip".into()],
        Duration::from_millis(50),
        sent.clone(),
        stop.clone(),
    );
    let start = Instant::now();
    let first = tokio::time::timeout(LEASE * 2, alice.expect("room_msg"))
        .await
        .expect("alice hears the room within 2 × the lease after the blip");
    eprintln!(
        "Redis blip during a join: the member hears the room {:?} after the blip ({})",
        start.elapsed(),
        first.body["text"]
    );
    assert!(metric(&a, "roomcast_route_repairs_total").await >= 1);
    stop.store(true, Ordering::Relaxed);
    let _ = chat.await.unwrap();
    for r in [a, b, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// A gateway restarted with the same node id after a crash does not bring back the routes of
/// rooms it has no members in; a gateway that died is garbage-collected from every room's
/// route set by the others (not only filtered out by its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_routes_of_a_restarted_node_and_routes_of_a_dead_one_are_deleted() {
    let url = redis_url();
    let mut cl = Cluster::new().await;
    // Each gateway reaches Redis through a proxy of its own: a crash that came with (or after)
    // a cut from Redis leaves its routes behind, as a kill -9 does.
    let (pa, pb) = (redis_proxy().await, redis_proxy().await);
    let through = |p: &FaultProxy| {
        let via = p.rewrite_url(&redis_url());
        move |c: &mut roomcast_server::config::Config| {
            c.gateway.route_reconcile_s = 1;
            c.redis.url = Some(via);
        }
    };
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl.start_with(Role::Gateway, "gw-a", through(&pa)).await;
    let b = cl.start_with(Role::Gateway, "gw-b", through(&pb)).await;
    let (na, nb) = (node(&cl, "gw-a"), node(&cl, "gw-b"));

    let mut alice = client(&a, "alice").await;
    alice.join("left").await;
    let mut bob = client(&b, "bob").await;
    bob.join("stay").await;
    assert_eq!(
        raw_routes(&url, &cl, "left").await,
        std::slice::from_ref(&na)
    );
    assert_eq!(
        raw_routes(&url, &cl, "stay").await,
        std::slice::from_ref(&nb)
    );

    // a is cut from Redis and crashes: its route stays. It comes back with the same id and no
    // members.
    pa.refuse();
    a.kill().await;
    drop(alice);
    assert_eq!(
        raw_routes(&url, &cl, "left").await,
        std::slice::from_ref(&na),
        "left behind"
    );
    pa.pass();
    let a = cl.start_with(Role::Gateway, "gw-a", through(&pa)).await;
    assert!(
        raw_routes(&url, &cl, "left").await.is_empty(),
        "the restarted node dropped the route of a room it has no members in"
    );

    // b is cut and dies; a deletes its routes once its lease ran out.
    pb.refuse();
    b.kill().await;
    drop(bob);
    assert_eq!(
        raw_routes(&url, &cl, "stay").await,
        std::slice::from_ref(&nb),
        "left behind"
    );
    let took = until(
        "the dead node's routes are deleted",
        LEASE + Duration::from_secs(5),
        || async { raw_routes(&url, &cl, "stay").await.is_empty() },
    )
    .await;
    eprintln!("a dead gateway's routes are deleted {took:?} after its death");
    assert!(metric(&a, "roomcast_dead_nodes_collected_total").await >= 1);
    for r in [a, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// A worker cut from Redis keeps delivering (from its route cache) while its pushes to the
/// room's recent list fail, which leaves a hole in the list. A viewer recovering over the
/// hole gets it from the store, contiguous — never `recovered: true` with messages missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_over_a_hole_in_the_recent_list_reads_the_store() {
    let proxy = redis_proxy().await;
    let mut cl = Cluster::new().await;
    let ingest = cl.start(Role::Ingest, "ingest1").await;
    let via_proxy = proxy.rewrite_url(&redis_url());
    let worker = cl
        .start_with(Role::Worker, "worker1", |c| {
            c.redis.url = Some(via_proxy);
            c.worker.route_cache_ms = 60_000;
        })
        .await;
    let a = cl.start(Role::Gateway, "gw-a").await;

    let mut alice = client(&a, "alice").await;
    alice.join("hole").await;
    let mut seqs = Vec::new();
    let mut ids = Vec::new();
    let mut epoch = 0;
    async fn say(alice: &mut Client, text: &str) -> (u64, u64, u64) {
        assert_eq!(alice.chat("hole", text).await.op, "chat_ok");
        let m = alice.expect("room_msg").await.body;
        (
            m["seq"].as_u64().unwrap(),
            m["epoch"].as_u64().unwrap(),
            m["msg_id"].as_str().unwrap().parse::<u64>().unwrap(),
        )
    }
    for i in 1..=3 {
        let (s, e, id) = say(&mut alice, &format!("before{i}")).await;
        seqs.push(s);
        ids.push(id);
        epoch = e;
    }
    proxy.refuse();
    for i in 1..=3 {
        let (s, _, id) = say(&mut alice, &format!("cut{i}")).await;
        seqs.push(s);
        ids.push(id);
    }
    proxy.pass();
    // After the cut the worker's pushes reach the list again.
    use roomcast_core::ports::RecentMessages;
    let recent = roomcast_backends::redis::RedisRecent::new(
        roomcast_backends::redis::RedisConn::connect(&redis_url(), &format!("cl:{}:", cl.id))
            .await
            .unwrap(),
    );
    let room = roomcast_core::ids::RoomId::parse("hole").unwrap();
    let start = Instant::now();
    for n in 1.. {
        let text = format!("after{n}");
        let (s, _, id) = say(&mut alice, &text).await;
        seqs.push(s);
        ids.push(id);
        let listed = recent.recent(&room, 100).await.unwrap();
        if listed.last().is_some_and(|m| m.text == text) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the worker's pushes reach the list again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "alice saw every message"
    );
    let listed: Vec<u64> = recent
        .recent(&room, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert!(
        !listed.contains(&4),
        "the cut left a hole in the list: {listed:?}"
    );
    // Every message is stored (the store was not cut).
    for id in &ids {
        until("the message is stored", Duration::from_secs(10), || async {
            cl.db.stored(*id).await == 1
        })
        .await;
    }

    let mut dave = client(&a, "dave").await;
    let p = dave
        .call(
            Op::Join,
            json!({ "room_id": "hole", "since": { "epoch": epoch, "seq": 2 } }),
        )
        .await;
    assert_eq!(p.op, "join_ok", "{p:?}");
    let got: Vec<u64> = p.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let last = *seqs.last().unwrap();
    assert_eq!(
        (p.body["recovered"].as_bool(), got),
        (Some(true), (3..=last).collect::<Vec<_>>()),
        "recovered from the store, with nothing missing"
    );
    assert!(metric(&a, "roomcast_recovery_store_reads_total").await >= 1);
    for r in [a, worker, ingest] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}

/// Two ingest nodes and two gateways left at the default `ingest.node_number` claim distinct
/// numbers in etcd, so their message ids never collide; a node set to a number another live
/// node holds refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_at_default_node_numbers_issue_distinct_ids() {
    let mut cl = Cluster::new().await;
    let i1 = cl.start(Role::Ingest, "ingest1").await;
    let i2 = cl.start(Role::Ingest, "ingest2").await;
    let worker = cl.start(Role::Worker, "worker1").await;
    let a = cl.start(Role::Gateway, "gw-a").await;
    let b = cl.start(Role::Gateway, "gw-b").await;
    let mut numbers: Vec<u16> = [&i1, &i2, &a, &b]
        .iter()
        .map(|r| r.node_number().expect("a claimed number"))
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 4, "four nodes, four numbers: {numbers:?}");
    assert_eq!(worker.node_number(), None, "a worker issues no ids");

    // Chats through both ingest nodes (the gateways spread calls over them): all ids distinct.
    let mut alice = client(&a, "alice").await;
    let mut bob = client(&b, "bob").await;
    alice.join("ids").await;
    bob.join("ids").await;
    let mut ids = std::collections::HashSet::new();
    for i in 0..100 {
        for c in [&mut alice, &mut bob] {
            let ok = c.chat("ids", &format!("x{i}")).await;
            assert_eq!(ok.op, "chat_ok", "{ok:?}");
            assert!(
                ids.insert(ok.body["msg_id"].as_str().unwrap().to_owned()),
                "a colliding id"
            );
        }
    }

    // A number that is taken.
    let taken = i1.node_number().unwrap();
    let config = {
        let mut c = cl.config("ingest3");
        c.ingest.node_number = Some(taken);
        c
    };
    let err = match roomcast_server::roles::start(Role::Ingest, config).await {
        Ok(_) => panic!("a node started on a number another node holds"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("held by another live node"), "{err}");
    // Released at a clean stop: the next node may take it.
    i1.shutdown().await.expect("clean shutdown");
    let config = {
        let mut c = cl.config("ingest3");
        c.ingest.node_number = Some(taken);
        c
    };
    let i3 = roomcast_server::roles::start(Role::Ingest, config)
        .await
        .expect("a released number can be claimed");
    assert_eq!(i3.node_number(), Some(taken));
    for r in [a, b, worker, i2, i3] {
        r.shutdown().await.expect("clean shutdown");
    }
    cl.db.drop_it().await;
}
