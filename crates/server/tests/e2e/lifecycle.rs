use std::time::Duration;

use roomcast_proto::Op;
use roomcast_proto::ws::close;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn silent_connections_time_out_heartbeating_ones_stay() {
    let s = TestServer::start_with(|c| c.gateway.heartbeat_s = 1).await;
    let mut silent = s.client("silent").await;
    let mut alive = s.client("alive").await;
    let beat = tokio::spawn(async move {
        // Heartbeats at half the period keep it open past the other's timeout.
        for _ in 0..8 {
            assert_eq!(
                alive.call(Op::Heartbeat, json!({})).await.op,
                "heartbeat_ok"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        alive
    });
    assert_eq!(
        silent.ended().await,
        Ended::Close(close::HEARTBEAT_TIMEOUT, "no heartbeat".into())
    );
    let mut alive = beat.await.unwrap();
    assert_eq!(
        alive.call(Op::Heartbeat, json!({})).await.op,
        "heartbeat_ok"
    );
}

#[tokio::test]
async fn connections_that_never_log_in_are_closed() {
    let s = TestServer::start_with(|c| c.gateway.login_timeout_s = 1).await;
    let mut c = Client::connect(&s.url(), roomcast_proto::Wire::JsonText).await;
    assert_eq!(
        c.ended().await,
        Ended::Close(close::LOGIN_TIMEOUT, "no login".into())
    );
}

#[tokio::test]
async fn graceful_shutdown_says_going_away_and_delivers_what_was_sent() {
    let s = TestServer::start_with(|c| c.worker.batch_window_ms = 200).await;
    let mut a = s.client("a").await;
    a.join("r").await;
    a.chat("r", "first").await;
    // Sent inside the batch window: still pending in the worker when shutdown starts.
    assert_eq!(a.chat("r", "second").await.op, "chat_ok");
    let stop = tokio::spawn(s.stop());
    let mut texts = Vec::new();
    let ended = a.ended().await;
    for p in a.inbox() {
        if p.op == "room_msg" {
            texts.push(p.body["text"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        texts,
        ["first", "second"],
        "pending batches are flushed before closing"
    );
    assert_eq!(
        ended,
        Ended::Close(close::GOING_AWAY, "server shutting down".into())
    );
    stop.await.unwrap();
}

#[tokio::test]
async fn health_endpoints() {
    let s = TestServer::start().await;
    let get = |path: &'static str| {
        let addr = s.addr;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
            t.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            t.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    let ready = get("/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("ready"),
        "{ready}"
    );
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn a_draining_server_is_not_ready_but_still_serves() {
    let mut s = TestServer::start_with(|c| c.shutdown_drain_ms = 60_000).await;
    let addr = s.addr;
    let mut c = s.client("stays").await;
    c.join("r").await;
    let running = s.running.take().unwrap();
    let stopping = tokio::spawn(running.shutdown());
    // Wait for the drain to begin (readiness flips), then check it still serves.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = http(addr, "GET", "/readyz", &[], "").await;
        if status == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(http(addr, "GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(c.chat("r", "still here").await.op, "chat_ok");
    let mut late = s.client("late").await;
    late.join("r").await;
    stopping.abort();
}
