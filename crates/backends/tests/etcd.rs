//! The etcd discovery adapter against a real etcd (`scripts/services.sh up etcd`, or any etcd at
//! `RC_TEST_ETCD_URL`, default `etcd://127.0.0.1:12379`). A missing etcd fails these tests; it
//! never skips them. Each run uses ids of its own (the suite's), under a prefix of its own.
#![cfg(feature = "etcd")]

mod support;

use std::time::Duration;

use roomcast_backends::etcd::EtcdDiscovery;
use roomcast_core::ids::NodeId;
use roomcast_core::ports::{Discovery, DiscoveryError, NodeEvent, NodeInfo, NodeRole};
use roomcast_core::testkit;

fn url() -> String {
    std::env::var("RC_TEST_ETCD_URL").unwrap_or_else(|_| "etcd://127.0.0.1:12379".into())
}

#[tokio::test]
async fn discovery_passes_the_port_suite() {
    let prefix = format!("/test-{:016x}/", fastrand::u64(..));
    let etcd = EtcdDiscovery::connect(&url(), &prefix)
        .await
        .unwrap_or_else(|e| {
            panic!("{e} — start it with `scripts/services.sh up etcd` or set RC_TEST_ETCD_URL")
        });
    // etcd counts leases in whole seconds and expires them on its own timer (every 500 ms):
    // 3 s leaves the suite's "not renewed → gone" waits a clear margin.
    testkit::discovery_suite(&etcd, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn an_unreachable_etcd_is_a_clear_error() {
    let err = EtcdDiscovery::connect("etcd://127.0.0.1:1", "/x/")
        .await
        .err()
        .expect("no etcd on port 1");
    assert!(err.to_string().contains("cannot reach etcd"), "{err}");
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// etcd restarted mid-run (a private instance: the shared one is never stopped). A registration
/// made before is still listed after it (its lease is kept on disk and renewed by etcd's new
/// leader), its keep-alive works again, and a watch opened before it sees what happens after,
/// with nothing missed or repeated. Lost: nothing; only calls made while etcd is down fail.
#[tokio::test]
async fn discovery_survives_etcd_restarting() {
    let server = support::Private::start("etcd").await;
    let etcd = EtcdDiscovery::connect(&server.url(), "/restart/")
        .await
        .unwrap();
    let node = |id: &str| NodeInfo {
        id: NodeId::new(id),
        role: NodeRole::Gateway,
        addr: format!("127.0.0.1:{}", 9000 + id.len()),
        public_url: None,
    };
    let ttl = Duration::from_secs(30);
    let lease = etcd.register(node("gw-1"), ttl).await.unwrap();
    let mut watch = etcd.watch(NodeRole::Gateway).await.unwrap();
    assert_eq!(
        within("the listed node", watch.next()).await,
        Some(NodeEvent::Up(node("gw-1")))
    );

    server.down().await;
    let down = within("keep-alive to fail", lease.keep_alive()).await;
    assert!(
        matches!(down, Err(DiscoveryError::Unavailable(_))),
        "{down:?}"
    );
    server.up().await;

    assert_eq!(
        etcd.list(NodeRole::Gateway).await.unwrap(),
        vec![node("gw-1")],
        "registered before the restart"
    );
    lease.keep_alive().await.expect("keep-alive resumes");
    let second = etcd.register(node("gw-22"), ttl).await.unwrap();
    assert_eq!(
        within("the watch to resume", watch.next()).await,
        Some(NodeEvent::Up(node("gw-22"))),
        "the watch opened before the restart sees the change after it"
    );
    lease.revoke().await.unwrap();
    assert_eq!(
        within("the revocation", watch.next()).await,
        Some(NodeEvent::Down(NodeId::new("gw-1")))
    );
    second.revoke().await.unwrap();
}
