use std::collections::HashSet;

use roomcast_proto::Op;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_dropped_while_the_others_keep_up() {
    let s = TestServer::start_with(|c| {
        c.gateway.send_queue_bytes = 32 * 1024;
        c.gateway.socket_send_buffer = 64 * 1024;
        c.gateway.slow_reader_timeout_s = 5;
        c.ingest.max_text_chars = 2000;
        c.ingest.user_limit.rate = 0.0;
        c.ingest.room_limit.rate = 0.0;
    })
    .await;
    let mut slow = Client::connect_small_buffer(&s.url(), s.addr).await;
    assert_eq!(slow.login(&s.token("slow")).await.op, "login_ok");
    slow.join("hot").await;
    let mut fast = s.client("fast").await;
    fast.join("hot").await;
    let mut sender = s.client("sender").await;
    sender.join("hot").await;

    // The slow client stops reading from here on; the fast one reads as messages come.
    const N: usize = 600;
    let metrics = s.running().metrics.clone();
    let reader = tokio::spawn(async move {
        let got = fast.room_msgs(N).await;
        let drops = metrics.dropped(roomcast_core::metrics::DropReason::SlowReader);
        (fast, got, drops, metrics.slow_disconnects.get())
    });
    let text = "x".repeat(1500);
    for i in 0..N {
        let p = sender.chat("hot", &format!("{i:04}{text}")).await;
        assert_eq!(p.op, "chat_ok");
    }
    let (mut fast, got, drops, disconnects) = reader.await.unwrap();
    let texts: Vec<String> = got
        .iter()
        .map(|m| m["text"].as_str().unwrap()[..4].to_owned())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("{i:04}")).collect();
    assert_eq!(texts, want, "the fast reader got everything, in order");
    assert!(
        drops > 0,
        "the slow reader was already losing messages while the fast one had them all"
    );
    assert_eq!(
        disconnects, 0,
        "the fast reader did not wait for the slow one to go"
    );

    s.eventually("the slow reader is disconnected", |r| {
        r.metrics.slow_disconnects.get() == 1
    })
    .await;
    // The slow reader finally reads: some messages, with a gap, then the end.
    let ended = slow.ended().await;
    let seen: HashSet<u64> = slow
        .inbox()
        .iter()
        .filter(|p| p.op == "room_msg")
        .map(|p| p.body["seq"].as_u64().unwrap())
        .collect();
    assert!(seen.len() < N, "it lost messages ({} of {N})", seen.len());
    assert!(
        matches!(ended, Ended::Close(4004, _) | Ended::Dropped),
        "closed as a slow consumer: {ended:?}"
    );
    if let Ended::Close(..) = ended {
        let kicked = slow
            .inbox()
            .iter()
            .find(|p| p.op == "kicked")
            .expect("a kicked notice");
        assert_eq!(kicked.body["code"], "slow_consumer");
    }
    // Everyone else is still fine.
    sender.chat("hot", "still flowing").await;
    let m = fast.expect("room_msg").await.body;
    assert_eq!(m["text"], "still flowing");
    assert_eq!(fast.call(Op::Heartbeat, json!({})).await.op, "heartbeat_ok");
}

/// A client that sends requests and never reads the replies does not grow its queue without
/// bound: past the limit it is disconnected like any slow reader.
#[tokio::test]
async fn a_client_that_never_reads_its_replies_is_disconnected() {
    let s = TestServer::start_with(|c| {
        c.gateway.send_queue_bytes = 16 * 1024;
        c.gateway.socket_send_buffer = 16 * 1024;
        // Only the queue limit may end it here, not the slow-reader timeout.
        c.gateway.slow_reader_timeout_s = 600;
    })
    .await;
    let mut c = Client::connect_small_buffer(&s.url(), s.addr).await;
    assert_eq!(c.login(&s.token("flooder")).await.op, "login_ok");
    let batch: Vec<_> = (0..1000)
        .map(|i| json!({"op": "heartbeat", "seq": i + 10, "body": {}}))
        .collect();
    let frame = serde_json::to_string(&batch).unwrap();
    let metrics = s.running().metrics.clone();
    let flood = async {
        for _ in 0..200 {
            if metrics.slow_disconnects.get() == 1 || !c.try_send_text(&frame).await {
                break; // disconnected, or the server is gone
            }
        }
    };
    // Without the limit the writes above block once the server stops reading a dead session.
    let _ = tokio::time::timeout(WAIT, flood).await;
    s.eventually("the flooder is disconnected", |r| {
        r.metrics.slow_disconnects.get() == 1
    })
    .await;
    // Others are unaffected.
    let mut other = s.client("other").await;
    other.join("r").await;
    assert_eq!(other.chat("r", "still fine").await.op, "chat_ok");
}
