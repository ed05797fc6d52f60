//! The room counts' suite: what every [`RoomCounts`](crate::ports::RoomCounts) adapter must do.

use crate::ports::suite_ids::{node_id, room_id, unique};

/// Reports replace a node's own count, 0 removes it, totals sum the nodes per room. An adapter
/// that counts only nodes with a live route lease passes its route table (`leases`, with the
/// lease `ttl`): the suite renews the nodes' leases and checks that a lapsed one stops counting.
pub async fn room_counts_suite(
    counts: &dyn crate::ports::RoomCounts,
    leases: Option<(&dyn crate::ports::RouteTable, std::time::Duration)>,
) {
    let p = unique("online");
    let (r1, r2, r3) = (room_id(&p, "1"), room_id(&p, "2"), room_id(&p, "3"));
    let (a, b) = (node_id(&p, "a"), node_id(&p, "b"));
    if let Some((routes, ttl)) = leases {
        routes.renew(&a, ttl * 100).await.expect("renew");
        routes.renew(&b, ttl * 100).await.expect("renew");
    }
    assert_eq!(
        counts
            .totals(&[r1.clone(), r2.clone()])
            .await
            .expect("totals"),
        [0, 0],
        "nothing reported"
    );
    counts
        .report(&a, &[(r1.clone(), 3), (r2.clone(), 1)])
        .await
        .expect("report");
    counts.report(&b, &[(r1.clone(), 2)]).await.expect("report");
    assert_eq!(
        counts
            .totals(&[r1.clone(), r2.clone(), r3.clone()])
            .await
            .expect("totals"),
        [5, 1, 0]
    );
    counts.report(&a, &[(r1.clone(), 2)]).await.expect("report");
    counts.report(&b, &[(r1.clone(), 0)]).await.expect("report");
    assert_eq!(
        counts
            .totals(&[r2.clone(), r1.clone()])
            .await
            .expect("totals"),
        [1, 2],
        "a's new count, b's gone, in the order asked"
    );
    assert!(counts.totals(&[]).await.expect("totals").is_empty());
    if let Some((routes, ttl)) = leases {
        // c reports, then its lease runs out: it stops counting.
        let c = node_id(&p, "c");
        routes.renew(&c, ttl).await.expect("renew");
        counts.report(&c, &[(r2.clone(), 4)]).await.expect("report");
        assert_eq!(
            counts
                .totals(std::slice::from_ref(&r2))
                .await
                .expect("totals"),
            [5]
        );
        tokio::time::sleep(ttl + ttl / 2).await;
        assert_eq!(
            counts
                .totals(std::slice::from_ref(&r2))
                .await
                .expect("totals"),
            [1],
            "a node whose lease ran out does not count"
        );
        routes.drop_node(&a).await.expect("drop");
        routes.drop_node(&b).await.expect("drop");
        routes.drop_node(&c).await.expect("drop");
    }
    counts
        .report(&a, &[(r1, 0), (r2, 0)])
        .await
        .expect("report");
}
