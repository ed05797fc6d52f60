//! Discovery's suite: what every [`Discovery`](crate::ports::Discovery) adapter must do
//! (registration under a lease, keep-alive and expiry, list and watch by role).

use crate::ports::suite_ids::{node_id, unique};

/// What every [`Discovery`](crate::ports::Discovery) must do; `ttl` is the leases' TTL.
pub async fn discovery_suite(discovery: &dyn crate::ports::Discovery, ttl: std::time::Duration) {
    use crate::ports::{DiscoveryError, NodeEvent, NodeInfo, NodeRole};
    let p = unique("disco");
    let info = |name: &str, role, port: u16| NodeInfo {
        id: node_id(&p, name),
        role,
        addr: format!("10.0.0.{port}:9000"),
        public_url: None,
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
    number_claims_are_unique(discovery, ttl).await;
}

/// `claim_number`: the lowest free number, never one a live claim holds; a wanted one or
/// `Taken`; a holder takes its own live claim over; an expired or revoked claim frees it.
pub async fn number_claims_are_unique(
    discovery: &dyn crate::ports::Discovery,
    ttl: std::time::Duration,
) {
    use crate::ports::DiscoveryError;
    let p = unique("numbers");
    let (a, b, c) = (node_id(&p, "a"), node_id(&p, "b"), node_id(&p, "c"));
    let (na, la) = discovery
        .claim_number(&p, &a, None, 3, ttl)
        .await
        .expect("claim");
    let (nb, lb) = discovery
        .claim_number(&p, &b, None, 3, ttl)
        .await
        .expect("claim");
    assert_eq!((na, nb), (0, 1), "the lowest free numbers");
    assert_eq!(
        discovery
            .claim_number(&p, &c, Some(1), 3, ttl)
            .await
            .err()
            .expect("1 is b's"),
        DiscoveryError::Taken(c.clone())
    );
    let (nc, lc) = discovery
        .claim_number(&p, &c, Some(2), 3, ttl)
        .await
        .expect("2 is free");
    assert_eq!(nc, 2);
    assert!(
        discovery
            .claim_number(&p, &c, None, 3, ttl)
            .await
            .is_ok_and(|(n, _)| n == 2),
        "a holder's own live claim is taken over"
    );
    let d = node_id(&p, "d");
    assert!(
        discovery.claim_number(&p, &d, None, 3, ttl).await.is_err(),
        "all three are held"
    );
    lb.revoke().await.expect("revoke");
    let (nd, ld) = discovery
        .claim_number(&p, &d, None, 3, ttl)
        .await
        .expect("1 is free again");
    assert_eq!(nd, 1);
    // a keeps its claim alive, the others' run out.
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        la.keep_alive().await.expect("keep alive");
    }
    assert_eq!(
        ld.keep_alive().await,
        Err(DiscoveryError::Expired(d.clone()))
    );
    let (n, l) = discovery
        .claim_number(&p, &b, None, 3, ttl)
        .await
        .expect("expired claims free their numbers");
    assert_eq!(n, 1);
    for l in [la, l, lc] {
        l.revoke().await.expect("revoke");
    }
}
