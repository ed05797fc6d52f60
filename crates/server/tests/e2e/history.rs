use roomcast_proto::Op;
use serde_json::{Value, json};

use crate::common::*;

fn texts(history: &Value) -> Vec<String> {
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

fn unlimited(c: &mut roomcast_server::config::Config) {
    c.ingest.user_limit.rate = 0.0;
}

#[tokio::test]
async fn history_on_join_and_after_a_restart() {
    let s = TestServer::start_with(unlimited).await;
    let mut a = s.client("a").await;
    let first = a.join("h").await;
    assert_eq!(first.body["history"], json!([]));
    assert_eq!(first.body["last_seq"], 0);
    let epoch = first.body["epoch"].as_u64().unwrap();
    assert!(epoch > 0);
    for i in 1..=5 {
        assert_eq!(a.chat("h", &format!("m{i}")).await.op, "chat_ok");
    }
    a.room_msgs(5).await;

    let mut b = s.client("b").await;
    let p = b
        .call(Op::Join, json!({ "room_id": "h", "history": 3 }))
        .await;
    assert_eq!(
        texts(&p.body["history"]),
        ["m3", "m4", "m5"],
        "last 3, oldest first"
    );
    assert_eq!(p.body["last_seq"], 5);
    assert_eq!(p.body["epoch"], epoch);
    assert!(p.body.get("recovered").is_none());
    let p = b.call(Op::Join, json!({ "room_id": "h" })).await;
    assert_eq!(
        texts(&p.body["history"]).len(),
        5,
        "default count covers all five"
    );

    let s = s.restart().await;
    let mut c = s.client("c").await;
    let p = c.join("h").await;
    assert_eq!(texts(&p.body["history"]), ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(p.body["epoch"], epoch, "a clean restart keeps the epoch");
    assert_eq!(p.body["last_seq"], 5);
    c.chat("h", "m6").await;
    let m = c.expect("room_msg").await.body;
    assert_eq!(m["seq"], 6, "the sequence continues");
}

#[tokio::test]
async fn recovery_from_a_since_point() {
    let s = TestServer::start_with(|c| {
        unlimited(c);
        c.history.max_count = 10;
        c.history.default_count = 4;
        c.history.recover_max_count = 20;
    })
    .await;
    let mut writer = s.client("w").await;
    writer.join("rec").await;
    let mut reader = s.client("r").await;
    let joined = reader.join("rec").await;
    let epoch = joined.body["epoch"].as_u64().unwrap();
    for i in 1..=3 {
        writer.chat("rec", &format!("m{i}")).await;
    }
    let seen = reader.room_msgs(3).await;
    let last_seen = seen[2]["seq"].as_u64().unwrap();
    assert_eq!(seen[2]["epoch"], epoch);
    reader.close().await;

    writer.room_msgs(3).await;
    // While the reader is away, four more messages (delivered: the writer sees them).
    for i in 4..=7 {
        writer.chat("rec", &format!("m{i}")).await;
    }
    writer.room_msgs(4).await;
    let mut back = s.client("r").await;
    let p = back
        .call(
            Op::Join,
            json!({ "room_id": "rec", "since": { "epoch": epoch, "seq": last_seen } }),
        )
        .await;
    assert_eq!(p.body["recovered"], true);
    assert_eq!(
        texts(&p.body["history"]),
        ["m4", "m5", "m6", "m7"],
        "exactly what was missed"
    );

    // Older than the ring (10 messages): the store has it.
    for i in 8..=20 {
        writer.chat("rec", &format!("m{i}")).await;
    }
    writer.room_msgs(13).await;
    let mut mid = s.client("mid").await;
    let p = mid
        .call(
            Op::Join,
            json!({ "room_id": "rec", "since": { "epoch": epoch, "seq": last_seen } }),
        )
        .await;
    assert_eq!(p.body["recovered"], true, "{p:?}");
    assert_eq!(
        texts(&p.body["history"]),
        (4..=20).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "from the store and the ring, nothing missing"
    );

    // Too old: a recovery returns at most recover_max_count (20); 24 were missed.
    for i in 21..=27 {
        writer.chat("rec", &format!("m{i}")).await;
    }
    writer.room_msgs(7).await;
    let mut late = s.client("late").await;
    let p = late
        .call(
            Op::Join,
            json!({ "room_id": "rec", "since": { "epoch": epoch, "seq": last_seen } }),
        )
        .await;
    assert_eq!(p.body["recovered"], false);
    assert_eq!(
        texts(&p.body["history"]),
        ["m24", "m25", "m26", "m27"],
        "the last N instead"
    );

    // Another epoch cannot be recovered either.
    let p = late
        .call(
            Op::Join,
            json!({ "room_id": "rec", "since": { "epoch": epoch + 1, "seq": 1 } }),
        )
        .await;
    assert_eq!(p.body["recovered"], false);
}

#[tokio::test]
async fn history_window_in_seconds() {
    let s = TestServer::start().await;
    let mut a = s.client("a").await;
    a.join("w").await;
    a.chat("w", "recent").await;
    a.expect("room_msg").await;
    let p = a
        .call(Op::Join, json!({ "room_id": "w", "history_secs": 60 }))
        .await;
    assert_eq!(texts(&p.body["history"]), ["recent"]);
}
