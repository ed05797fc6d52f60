use roomcast_proto::Op;
use serde_json::json;

use crate::common::*;

fn raise_limits(c: &mut roomcast_server::config::Config) {
    c.ingest.user_limit.rate = 0.0;
    c.ingest.room_limit.rate = 0.0;
}

#[tokio::test]
async fn a_chat_reaches_every_member_and_nobody_else() {
    let s = TestServer::start().await;
    let mut members = Vec::new();
    for u in ["a1", "a2", "a3"] {
        let mut c = s.client(u).await;
        c.join("room-a").await;
        members.push(c);
    }
    let mut outsider = s.client("b1").await;
    outsider.join("room-b").await;
    let deliveries_before = s.running().metrics.deliveries.get();

    let ok = members[0].chat("room-a", "hello room a").await;
    assert_eq!(ok.op, "chat_ok", "{ok:?}");
    let msg_id = ok.body["msg_id"].as_str().unwrap().to_owned();
    for m in &mut members {
        let got = m.expect("room_msg").await.body;
        assert_eq!(got["text"], "hello room a");
        assert_eq!(got["room_id"], "room-a");
        assert_eq!(got["user_id"], "a1");
        assert_eq!(got["name"], "a1's name");
        assert_eq!(got["kind"], "chat");
        assert_eq!(got["msg_id"], msg_id.as_str());
        assert_eq!(got["seq"], 1);
        assert!(got["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
    // Exactly three deliveries were made, and the outsider's next frame is its own reply.
    assert_eq!(s.running().metrics.deliveries.get() - deliveries_before, 3);
    let p = outsider.call(Op::Heartbeat, json!({})).await;
    assert_eq!(p.op, "heartbeat_ok");
    assert!(
        outsider.inbox().iter().all(|p| p.op != "room_msg"),
        "{:?}",
        outsider.inbox()
    );
}

#[tokio::test]
async fn order_within_a_room_is_the_same_for_everyone() {
    let s = TestServer::start_with(raise_limits).await;
    let mut senders = [s.client("s1").await, s.client("s2").await];
    let mut readers = [s.client("r1").await, s.client("r2").await];
    for c in senders.iter_mut().chain(readers.iter_mut()) {
        c.join("ordered").await;
    }
    // Two senders interleave without waiting for replies.
    for i in 0..100 {
        for (k, c) in senders.iter_mut().enumerate() {
            c.send(
                Op::Chat,
                json!({ "room_id": "ordered", "text": format!("{k}:{i}") }),
            )
            .await;
        }
    }
    let mut streams = Vec::new();
    for c in readers.iter_mut().chain(senders.iter_mut()) {
        let msgs = c.room_msgs(200).await;
        let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "consecutive seq");
        // Each sender's own messages keep their order.
        for k in 0..2 {
            let mine: Vec<String> = msgs
                .iter()
                .map(|m| m["text"].as_str().unwrap().to_owned())
                .filter(|t| t.starts_with(&format!("{k}:")))
                .collect();
            let want: Vec<String> = (0..100).map(|i| format!("{k}:{i}")).collect();
            assert_eq!(mine, want);
        }
        streams.push(
            msgs.iter()
                .map(|m| m["msg_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        streams.windows(2).all(|w| w[0] == w[1]),
        "everyone sees the same order"
    );
}

#[tokio::test]
async fn several_rooms_on_one_connection() {
    let s = TestServer::start().await;
    let mut viewer = s.client("viewer").await;
    viewer.join("r1").await;
    viewer.join("r2").await;
    let mut a = s.client("a").await;
    a.join("r1").await;
    let mut b = s.client("b").await;
    b.join("r2").await;

    a.chat("r1", "in r1").await;
    b.chat("r2", "in r2").await;
    let mut got: Vec<(String, String)> = viewer
        .room_msgs(2)
        .await
        .iter()
        .map(|m| {
            (
                m["room_id"].as_str().unwrap().into(),
                m["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("r1".into(), "in r1".into()), ("r2".into(), "in r2".into())]
    );

    let p = viewer.call(Op::Leave, json!({ "room_id": "r1" })).await;
    assert_eq!(
        (p.op.as_str(), p.body["room_id"].as_str()),
        ("leave_ok", Some("r1"))
    );
    let p = viewer.call(Op::Leave, json!({ "room_id": "r1" })).await;
    assert_eq!(p.body["code"], "not_joined");
    let p = viewer.chat("r1", "still here?").await;
    assert_eq!(p.body["code"], "not_joined");
    assert_eq!(p.body["room_id"], "r1");

    a.chat("r1", "after leave").await;
    a.expect("room_msg").await;
    b.chat("r2", "r2 again").await;
    let m = viewer.expect("room_msg").await.body;
    assert_eq!(m["text"], "r2 again", "r1 messages no longer arrive");
}

#[tokio::test]
async fn room_limits_per_connection_and_bad_room_ids() {
    let s = TestServer::start_with(|c| c.gateway.max_rooms_per_conn = 2).await;
    let mut c = s.client("u").await;
    c.join("one").await;
    c.join("two").await;
    c.join("two").await; // joining again is fine and not counted twice
    let p = c.call(Op::Join, json!({ "room_id": "three" })).await;
    assert_eq!(p.body["code"], "too_many_rooms");
    for bad in ["", "has space", "ü", &"x".repeat(65)] {
        let p = c.call(Op::Join, json!({ "room_id": bad })).await;
        assert_eq!(p.body["code"], "bad_request", "{bad:?}: {p:?}");
        assert!(p.body["message"].as_str().unwrap().contains("room_id"));
    }
}

#[tokio::test]
async fn online_counts_in_join_ok_and_pushed() {
    let s = TestServer::start_with(|c| c.gateway.online_push_interval_ms = 50).await;
    let mut first = s.client("first").await;
    let p = first.join("live").await;
    assert_eq!(p.body["online"], 1);
    let mut second = s.client("second").await;
    let p = second.join("live").await;
    assert_eq!(p.body["online"], 2);
    // Pushes carry the current count; wait for the one that says 2.
    loop {
        let o = first.expect("online").await.body;
        assert_eq!(o["room_id"], "live");
        if o["count"] == 2 {
            break;
        }
    }
    second.close().await;
    loop {
        let o = first.expect("online").await.body;
        if o["count"] == 1 {
            break;
        }
    }
}

#[tokio::test]
async fn a_big_room_written_by_parallel_tasks_keeps_order_and_loses_nothing() {
    // Five members with a chunk of two: every pass is split over three tasks, and with
    // `fanout_spacing` each pass waits after the previous one (batches arriving meanwhile go
    // out together). Order and completeness must not depend on either.
    let s = TestServer::start_with(|c| {
        raise_limits(c);
        c.gateway.fanout_chunk = 2;
        c.gateway.fanout_spacing = 3.0;
        c.worker.batch_window_ms = 1;
        c.worker.batch_window_max_ms = 1;
    })
    .await;
    let mut members = Vec::new();
    for i in 0..5 {
        let mut c = s.client(&format!("big{i}")).await;
        c.join("big-room").await;
        members.push(c);
    }
    let passes_before = s.running().metrics.fanout_pass_big.count();
    for i in 0..60 {
        members[0]
            .send(
                Op::Chat,
                json!({ "room_id": "big-room", "text": format!("m{i}") }),
            )
            .await;
    }
    for m in &mut members {
        let msgs = m.room_msgs(60).await;
        let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "consecutive seq");
        let texts: Vec<&str> = msgs.iter().map(|m| m["text"].as_str().unwrap()).collect();
        let want: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
        assert_eq!(texts, want);
    }
    let passes = s.running().metrics.fanout_pass_big.count() - passes_before;
    assert!(passes >= 1, "the parallel path was taken");
}

/// Route damping (R6 with Centrifugo's lesson): a viewer flapping in and out of a room writes
/// no route; the node leaves the room's route `route_linger_ms` after its last member left,
/// and not before.
#[tokio::test]
async fn a_rooms_route_lingers_after_its_last_member_leaves() {
    use roomcast_core::ids::RoomId;
    use roomcast_core::ports::RouteChange;
    let linger = std::time::Duration::from_millis(300);
    let s = TestServer::start_with(|c| c.gateway.route_linger_ms = linger.as_millis() as u64).await;
    let gw = s.running().gateway.clone();
    let routes = gw.deps().routes.clone();
    let room = RoomId::parse("flap").unwrap();
    let mut watch = routes.watch();

    let writes = || s.running().metrics.route_writes.get();
    let mut viewer = s.client("viewer").await;
    viewer.join("flap").await;
    assert_eq!(
        watch.try_next(),
        Some(RouteChange::Room(room.clone())),
        "added"
    );
    assert_eq!(writes(), 1);
    for _ in 0..3 {
        let p = viewer.call(Op::Leave, json!({ "room_id": "flap" })).await;
        assert_eq!(p.op, "leave_ok");
        viewer.join("flap").await;
    }
    assert_eq!(watch.try_next(), None, "no route changes while flapping");
    assert_eq!(writes(), 1, "no route writes while flapping");

    let left = tokio::time::Instant::now();
    let p = viewer.call(Op::Leave, json!({ "room_id": "flap" })).await;
    assert_eq!(p.op, "leave_ok");
    assert_eq!(routes.nodes(&room).await.unwrap(), [gw.node().clone()]);
    assert_eq!(gw.lingering_routes(), 1);
    assert_eq!(watch.next().await, Some(RouteChange::Room(room.clone())));
    assert!(
        left.elapsed() >= linger,
        "removed after {:?}",
        left.elapsed()
    );
    assert!(routes.nodes(&room).await.unwrap().is_empty(), "removed");
    assert_eq!(gw.lingering_routes(), 0);
    assert_eq!(writes(), 2);

    // The next first member adds the route again, and messages flow.
    viewer.join("flap").await;
    assert_eq!(watch.try_next(), Some(RouteChange::Room(room.clone())));
    viewer.chat("flap", "back").await;
    assert_eq!(viewer.expect("room_msg").await.body["text"], "back");
}

/// Room workers cache a room's route: many batches, one route table read — until the route
/// changes, which the next batch sees.
#[tokio::test]
async fn a_busy_room_reads_its_route_once_until_it_changes() {
    let s = TestServer::start_with(|c| {
        raise_limits(c);
        c.worker.route_cache_ms = 60_000;
    })
    .await;
    let metrics = s.running().metrics.clone();
    let mut a = s.client("a").await;
    a.join("busy").await;
    let batches_before = metrics.batches.get();
    for i in 0..20 {
        a.chat("busy", &format!("m{i}")).await;
        a.expect("room_msg").await;
    }
    assert!(metrics.batches.get() - batches_before >= 20, "a batch each");
    assert_eq!(metrics.route_reads.get(), 1, "one read for every batch");

    // A second node's worth of change: the route is re-read at once, not after 60 s.
    let routes = s.running().gateway.deps().routes.clone();
    let room = roomcast_core::ids::RoomId::parse("busy").unwrap();
    routes
        .remove(&room, s.running().gateway.node())
        .await
        .unwrap();
    a.chat("busy", "unrouted").await;
    // Its batch read the changed (empty) route.
    s.eventually("the route is read again", |r| {
        r.metrics.route_reads.get() == 2
    })
    .await;
    routes.add(&room, s.running().gateway.node()).await.unwrap();
    a.chat("busy", "routed again").await;
    let m = a.expect("room_msg").await.body;
    assert_eq!(
        m["text"], "routed again",
        "the unrouted message went nowhere"
    );
    assert_eq!(metrics.route_reads.get(), 3);
}

/// The node renews its route lease (every third of `route_lease_s`), so its routes outlive the
/// lease; at shutdown it removes them all at once.
#[tokio::test]
async fn routes_outlive_their_lease_while_renewed_and_go_at_shutdown() {
    use roomcast_core::ids::RoomId;
    use roomcast_core::ports::RouteChange;
    let s = TestServer::start_with(|c| c.gateway.route_lease_s = 1).await;
    let gw = s.running().gateway.clone();
    let routes = gw.deps().routes.clone();
    let mut a = s.client("a").await;
    a.join("kept").await;
    let room = RoomId::parse("kept").unwrap();
    let mut watch = routes.watch();
    // Nothing to await: an expiry is the absence of renewals. Two leases long, no change.
    let waited = tokio::time::timeout(std::time::Duration::from_secs(2), watch.next()).await;
    assert!(waited.is_err(), "no route change: {waited:?}");
    assert_eq!(routes.nodes(&room).await.unwrap(), [gw.node().clone()]);
    a.chat("kept", "still routed").await;
    assert_eq!(a.expect("room_msg").await.body["text"], "still routed");

    let node = gw.node().clone();
    drop(gw);
    a.close().await;
    s.stop().await;
    assert_eq!(watch.try_next(), Some(RouteChange::Node(node)));
    assert!(routes.nodes(&room).await.unwrap().is_empty());
}
