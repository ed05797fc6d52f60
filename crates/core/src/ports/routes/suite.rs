//! The route table's suite: what every [`RouteTable`](crate::ports::RouteTable) adapter must do
//! (leases, a dead node's routes dropped, the watch); `ttl` is the lease the cases use.

use crate::ports::suite_ids::{node_id, room_id, unique};

/// What every [`RouteTable`](crate::ports::RouteTable) must do; `ttl` is the lease used.
pub async fn route_table_suite(routes: &dyn crate::ports::RouteTable, ttl: std::time::Duration) {
    routes_need_a_live_lease(routes, ttl).await;
    renewal_keeps_routes_expiry_hides_them(routes, ttl).await;
    drop_node_removes_only_that_nodes_routes(routes, ttl).await;
    remove_touches_only_the_named_node(routes, ttl).await;
    watch_sees_adds_removes_and_drops(routes, ttl).await;
    reconcile_repairs_and_dead_nodes_are_collected(routes, ttl).await;
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

/// `renew` says when a lease had lapsed; `reconcile` makes a node's routes exactly its rooms
/// (and tells watchers); `collect_dead` deletes the routes of nodes whose lease ran out, for
/// good, and leaves live nodes alone.
pub async fn reconcile_repairs_and_dead_nodes_are_collected(
    routes: &dyn crate::ports::RouteTable,
    ttl: std::time::Duration,
) {
    use crate::ports::{Reconciled, RouteChange};
    let p = unique("reconcile");
    let (r1, r2, r3) = (room_id(&p, "1"), room_id(&p, "2"), room_id(&p, "3"));
    let (a, b) = (node_id(&p, "a"), node_id(&p, "b"));
    assert!(
        routes.renew(&a, ttl).await.expect("renew"),
        "a lease never taken had lapsed"
    );
    assert!(
        !routes.renew(&a, ttl).await.expect("renew"),
        "a live lease had not"
    );
    routes.add(&r1, &a).await.expect("add");
    routes.add(&r2, &a).await.expect("add");
    let mut watch = routes.watch();
    let done = routes
        .reconcile(&a, &[r2.clone(), r3.clone()], ttl)
        .await
        .expect("reconcile");
    assert_eq!(
        done,
        Reconciled {
            added: 1,
            removed: 1
        },
        "r3 was missing, r1 stale"
    );
    assert!(routes.nodes(&r1).await.expect("nodes").is_empty());
    assert_eq!(routes.nodes(&r2).await.expect("nodes"), vec![a.clone()]);
    assert_eq!(routes.nodes(&r3).await.expect("nodes"), vec![a.clone()]);
    let mut told = false;
    while let Some(c) = watch.try_next() {
        told |= c == RouteChange::Node(a.clone()) || c == RouteChange::Lagged;
    }
    assert!(told, "watchers learn of a repair");
    assert_eq!(
        routes
            .reconcile(&a, &[r3.clone(), r2.clone()], ttl)
            .await
            .expect("reconcile"),
        Reconciled::default(),
        "nothing left to repair"
    );

    // b dies (stops renewing) while a renews.
    routes.renew(&b, ttl).await.expect("renew");
    routes.add(&r2, &b).await.expect("add");
    assert_eq!(
        routes.nodes(&r2).await.expect("nodes"),
        vec![a.clone(), b.clone()]
    );
    assert!(
        !routes
            .collect_dead()
            .await
            .expect("collect")
            .iter()
            .any(|n| *n == a || *n == b),
        "both alive"
    );
    for _ in 0..4 {
        tokio::time::sleep(ttl / 3).await;
        routes.renew(&a, ttl).await.expect("renew");
    }
    let dead = routes.collect_dead().await.expect("collect");
    assert!(dead.contains(&b), "b's lease ran out: {dead:?}");
    assert!(!dead.contains(&a), "a renewed: {dead:?}");
    assert!(
        routes.renew(&b, ttl).await.expect("renew"),
        "b's lease had lapsed"
    );
    assert_eq!(
        routes.nodes(&r2).await.expect("nodes"),
        vec![a.clone()],
        "a collected node's routes are gone for good"
    );
    routes.drop_node(&a).await.expect("drop");
    routes.drop_node(&b).await.expect("drop");
}
