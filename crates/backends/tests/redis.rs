//! The Redis adapters against a real Redis (`scripts/services.sh up redis`, or any Redis at
//! `RC_TEST_REDIS_URL`, default `redis://127.0.0.1:16379/`). A missing Redis fails these
//! tests; it never skips them. Each test uses its own key prefix, so tests run in parallel and
//! leave nothing that a later run could trip over (keys expire or are per-run).
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use roomcast_backends::redis::{
    RedisAckStore, RedisConn, RedisModeration, RedisPresence, RedisRateLimiter, RedisRecent,
    RedisRoomCounts, RedisRouteTable,
};
use roomcast_core::ports::{Limit, LimitError, RateLimiter};
use roomcast_core::{testkit, testkit_limits};

fn url() -> String {
    std::env::var("RC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379/".into())
}

async fn conn() -> RedisConn {
    let prefix = format!("test:{:016x}:", fastrand::u64(..));
    RedisConn::connect(&url(), &prefix)
        .await
        .unwrap_or_else(|e| {
            panic!("{e} — start it with `scripts/services.sh up redis` or set RC_TEST_REDIS_URL")
        })
}

#[tokio::test]
async fn rate_limiter_passes_the_port_suite() {
    testkit_limits::rate_limiter_suite(&RedisRateLimiter::new(conn().await)).await;
}

#[tokio::test]
async fn moderation_passes_the_port_suite() {
    testkit_limits::moderation_suite(&RedisModeration::new(conn().await)).await;
}

#[tokio::test]
async fn ack_store_passes_the_port_suite() {
    testkit::ack_store_suite(&RedisAckStore::new(conn().await)).await;
}

/// Two ingest nodes (two connections) share one bucket: together they get the burst, no more.
#[tokio::test]
async fn a_limit_holds_across_nodes() {
    let a = conn().await;
    let b = RedisConn::connect(&url(), a_prefix(&a)).await.unwrap();
    let (na, nb) = (RedisRateLimiter::new(a), RedisRateLimiter::new(b));
    let key = [(
        "user:shared".to_owned(),
        Limit {
            rate: 0.01,
            burst: 10.0,
        },
    )];
    let mut granted = 0;
    for i in 0..20 {
        let node = if i % 2 == 0 { &na } else { &nb };
        match node.acquire(&key).await {
            Ok(()) => granted += 1,
            Err(LimitError::Limited(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(granted, 10);
}

fn a_prefix(c: &RedisConn) -> &str {
    c.prefix()
}

/// A Redis that is not there is a clear error at start, not a hang.
#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error() {
    let err = RedisConn::connect("redis://127.0.0.1:1/", "x:")
        .await
        .err()
        .expect("no Redis on port 1");
    assert!(err.to_string().contains("cannot connect to redis"), "{err}");
    let err = RedisConn::connect("http://nope", "x:").await.err().unwrap();
    assert!(err.to_string().contains("invalid redis url"), "{err}");
}

/// Leases are real time here (Redis keeps the time): a short TTL keeps the suite quick.
const TTL: Duration = Duration::from_millis(600);

#[tokio::test]
async fn route_table_passes_the_port_suite() {
    testkit::route_table_suite(&RedisRouteTable::new(conn().await), TTL).await;
}

#[tokio::test]
async fn room_counts_pass_the_port_suite() {
    let redis = conn().await;
    let routes = RedisRouteTable::new(redis.clone());
    testkit::room_counts_suite(&RedisRoomCounts::new(redis), Some((&routes, TTL))).await;
}

#[tokio::test]
async fn presence_passes_the_port_suite() {
    testkit::presence_suite(&RedisPresence::new(conn().await), TTL).await;
}

#[tokio::test]
async fn recent_messages_pass_the_port_suite() {
    testkit::recent_messages_suite(&RedisRecent::new(conn().await), Duration::from_millis(300))
        .await;
}

/// A route change made through one node's table reaches another node's watch (the channel).
#[tokio::test]
async fn route_changes_reach_other_nodes() {
    use roomcast_core::ids::{NodeId, RoomId};
    use roomcast_core::ports::{RouteChange, RouteTable};
    let a = conn().await;
    let b = RedisConn::connect(&url(), a.prefix()).await.unwrap();
    let (here, there) = (RedisRouteTable::new(a), RedisRouteTable::new(b));
    let mut watch = there.watch();
    let room = RoomId::parse(&format!("x{:08x}", fastrand::u32(..))).unwrap();
    let node = NodeId::new("gw-a");
    here.renew(&node, Duration::from_secs(5)).await.unwrap();
    // The forwarder subscribes in the background: repeat the change until it is seen.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            here.add(&room, &node).await.unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(200), async {
                loop {
                    match watch.next().await {
                        Some(RouteChange::Room(r)) if r == room => return,
                        Some(_) => {}
                        None => panic!("the table is gone"),
                    }
                }
            });
            if wait.await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the other node saw the change");
    assert_eq!(there.nodes(&room).await.unwrap(), vec![node.clone()]);
    here.drop_node(&node).await.unwrap();
}

/// Calls `f` until it succeeds; the result and how many calls failed first.
async fn until_ok<T, E>(mut f: impl AsyncFnMut() -> Result<T, E>) -> (T, u32) {
    let mut failed = 0;
    loop {
        match f().await {
            Ok(t) => return (t, failed),
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Redis restarted gracefully mid-run: a private instance started by the project's script, so
/// with its persistence (the append-only file) — the shared one is never stopped.
///
/// Kept: pending acks, bans and mutes, route leases and routes, presence, the rate limiter's
/// buckets — everything written before the stop. The adapters reconnect by themselves (one
/// `ConnectionManager`; the Lua scripts are loaded again as needed) and the route watch
/// resubscribes and says `Lagged`; a change published after that reaches the existing watcher.
/// Lost: calls made while Redis is down fail (the caller sees an error and retries; nothing is
/// half-written), so does the first call on each connection after it is back, and a route change another node publishes between Redis coming back and this
/// node resubscribing (under a second) never reaches this node's watchers — the `Lagged` they
/// get stands for it, so route caches drop what they hold.
#[tokio::test]
async fn the_adapters_survive_redis_restarting() {
    use roomcast_core::ids::{NodeId, RoomId, UserId};
    use roomcast_core::ports::{
        AckStore, Moderation, PendingCritical, Presence, RouteChange, RouteTable, Sanction,
    };
    let server = support::Private::start("redis").await;
    let url = server.url();
    let here = RedisConn::connect(&url, "restart:").await.unwrap();
    let elsewhere = RedisConn::connect(&url, "restart:").await.unwrap();
    let acks = RedisAckStore::new(here.clone());
    let moderation = RedisModeration::new(here.clone());
    let limiter = RedisRateLimiter::new(here.clone());
    let presence = RedisPresence::new(here.clone());
    let routes = RedisRouteTable::new(here);
    let other_node = RedisRouteTable::new(elsewhere);

    let (alice, mallory, bob) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("mallory").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let (room, gw) = (RoomId::parse("stage").unwrap(), NodeId::new("gw-a"));
    let pending = PendingCritical {
        user: alice.clone(),
        msg_id: 7,
        kind: "gift".into(),
        room: Some(room.clone()),
        text: Some("a yacht".into()),
        payload: Some(r#"{"gift":"yacht"}"#.into()),
        ts: 1_700_000_000_000,
        attempts: 1,
        next_retry_ms: 1_700_000_001_000,
    };
    let ban = Sanction {
        until_ms: None,
        reason: "spam".into(),
    };
    let mute = Sanction {
        until_ms: Some(roomcast_core::clock::now_ms() + 3_600_000),
        reason: "shouting".into(),
    };
    let bucket = [(
        "user:alice".to_owned(),
        Limit {
            rate: 0.001,
            burst: 2.0,
        },
    )];
    acks.put(pending.clone()).await.unwrap();
    moderation.ban(&mallory, ban.clone()).await.unwrap();
    moderation.mute(&room, &bob, mute.clone()).await.unwrap();
    routes.renew(&gw, Duration::from_secs(60)).await.unwrap();
    routes.add(&room, &gw).await.unwrap();
    presence
        .touch(&alice, &gw, Duration::from_secs(60))
        .await
        .unwrap();
    limiter.acquire(&bucket).await.expect("one of two tokens");
    // The watcher, subscribed (another node's change seen) before the restart.
    let mut watch = routes.watch();
    let probe = RoomId::parse("probe").unwrap();
    within("the forwarder to subscribe", async {
        loop {
            other_node.add(&probe, &gw).await.unwrap();
            let seen = tokio::time::timeout(Duration::from_millis(200), async {
                while watch.next().await != Some(RouteChange::Room(probe.clone())) {}
            });
            if seen.await.is_ok() {
                return;
            }
        }
    })
    .await;

    server.down().await;
    let refused = within("a call to fail", acks.pending(&alice)).await;
    assert!(
        refused.is_err(),
        "no answer from a stopped Redis: {refused:?}"
    );
    server.up().await;

    // A connection's first call after the restart may fail: an idle one finds its socket dead
    // only when it writes to it ("broken pipe") and reconnects then; the next call waits for
    // that reconnection and works.
    let (got, failed_here) = within(
        "this node's connection to come back",
        until_ok(async || acks.pending(&alice).await),
    )
    .await;
    let (seen_there, failed_there) = within(
        "the other node's connection to come back",
        until_ok(async || other_node.nodes(&room).await),
    )
    .await;
    assert!(
        failed_here <= 1 && failed_there <= 1,
        "at most the first call fails: {failed_here} and {failed_there}"
    );
    assert_eq!(seen_there, vec![gw.clone()]);
    assert_eq!(got, vec![pending], "the pending ack survived");
    assert_eq!(moderation.banned(&mallory).await.unwrap(), Some(ban));
    assert_eq!(moderation.muted(&room, &bob).await.unwrap(), Some(mute));
    assert_eq!(
        routes.nodes(&room).await.unwrap(),
        vec![gw.clone()],
        "the route and its lease"
    );
    assert_eq!(presence.nodes(&alice).await.unwrap(), vec![gw.clone()]);
    limiter.acquire(&bucket).await.expect("the second token");
    assert!(
        matches!(limiter.acquire(&bucket).await, Err(LimitError::Limited(_))),
        "the bucket remembered the first"
    );

    // The route watch: resubscribed (Lagged), then another node's change reaches it.
    within("the watch to resubscribe", async {
        while watch.next().await != Some(RouteChange::Lagged) {}
    })
    .await;
    let after = RoomId::parse("after-restart").unwrap();
    other_node.add(&after, &gw).await.unwrap();
    within("a change published after the restart", async {
        while watch.next().await != Some(RouteChange::Room(after.clone())) {}
    })
    .await;
}
