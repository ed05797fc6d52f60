//! The etcd discovery adapter against a real etcd (`scripts/services.sh up etcd`, or any etcd at
//! `RC_TEST_ETCD_URL`, default `etcd://127.0.0.1:12379`). A missing etcd fails these tests; it
//! never skips them. Each run uses ids of its own (the suite's), under a prefix of its own.
#![cfg(feature = "etcd")]

use std::time::Duration;

use roomcast_backends::etcd::EtcdDiscovery;
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
