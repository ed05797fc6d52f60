//! The Redis adapters against a real Redis (`scripts/services.sh up redis`, or any Redis at
//! `RC_TEST_REDIS_URL`, default `redis://127.0.0.1:16379/`). A missing Redis fails these
//! tests; it never skips them. Each test uses its own key prefix, so tests run in parallel and
//! leave nothing that a later run could trip over (keys expire or are per-run).
#![cfg(feature = "redis")]

use std::time::Duration;

use roomcast_backends::redis::{
    RedisAckStore, RedisConn, RedisModeration, RedisPresence, RedisRateLimiter, RedisRecent,
    RedisRouteTable,
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
