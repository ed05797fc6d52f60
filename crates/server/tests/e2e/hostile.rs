//! Hostile clients: what one misbehaving client can make the server hold, and proof that it
//! gets a bounded answer. Every case asserts the server's socket/connection counts afterwards
//! and that an ordinary client in the same room still chats.

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_core::gateway::{Handler, HandlerTable};
use roomcast_proto::Op;
use roomcast_proto::ws::{Opcode, client_frame, close};
use roomcast_server::app::start_with_handlers;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const MASK: [u8; 4] = [1, 2, 3, 4];

/// A raw WebSocket client on a socket with a tiny receive buffer, upgraded on `path`.
async fn raw_small(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    // Read exactly the response head (it ends the first read on loopback in practice; be safe).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("handshake in time")
            .unwrap();
        assert_eq!(n, 1, "server closed during the handshake");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgraded");
    stream
}

fn text(v: serde_json::Value) -> Vec<u8> {
    client_frame(Opcode::Text, v.to_string().as_bytes(), MASK)
}

/// Reads until the server ends the connection (EOF or reset); panics after `within`.
async fn wait_ended(stream: &mut TcpStream, within: Duration) {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server ended the connection in time");
}

/// An ordinary client still joins and chats.
async fn ordinary_client_chats(s: &TestServer, room: &str) {
    let mut c = s.client("ordinary").await;
    assert_eq!(c.join(room).await.op, "join_ok");
    assert_eq!(c.chat(room, "still fine").await.op, "chat_ok");
    let m = c.expect("room_msg").await;
    assert_eq!(m.body["text"], "still fine");
    c.close().await;
}

async fn sockets_released(s: &TestServer) {
    s.eventually("every WebSocket socket is closed", |r| {
        r.metrics.sockets_open.get() == 0 && r.metrics.connections.get() == 0
    })
    .await;
}

/// Defect 1: clients that keep their receive window full never lose their sockets once the
/// server has closed them. Now the socket is aborted `close_grace_ms` after the close, whatever
/// the peer does, and counted until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_its_socket_within_the_grace_period() {
    let s = TestServer::start_with(|c| {
        c.gateway.send_queue_bytes = 16 * 1024;
        c.gateway.socket_send_buffer = 16 * 1024;
        c.gateway.slow_reader_timeout_s = 1;
        c.gateway.close_grace_ms = 300;
        c.ingest.max_text_chars = 2000;
        c.ingest.user_limit.rate = 0.0;
        c.ingest.room_limit.rate = 0.0;
    })
    .await;
    let mut stuck = Vec::new();
    for i in 0..5 {
        let mut c = raw_small(s.addr, "/ws").await;
        let token = s.token(&format!("stuck{i}"));
        c.write_all(&text(
            json!({"op": "login", "seq": 1, "body": {"token": token}}),
        ))
        .await
        .unwrap();
        c.write_all(&text(
            json!({"op": "join", "seq": 2, "body": {"room_id": "busy"}}),
        ))
        .await
        .unwrap();
        stuck.push(c);
    }
    s.eventually("the stuck clients joined", |r| {
        r.gateway
            .room_members(&roomcast_core::ids::RoomId::parse("busy").unwrap())
            == 5
    })
    .await;
    assert_eq!(s.running().metrics.sockets_open.get(), 5);
    let mut sender = s.client("sender").await;
    sender.join("busy").await;
    let big = "x".repeat(1500);
    let metrics = s.running().metrics.clone();
    // Send until the server gives up on all five (each write is awaited, so this is bounded).
    for i in 0..20_000 {
        if metrics.slow_disconnects.get() >= 5 {
            break;
        }
        assert_eq!(
            sender.chat("busy", &format!("{i} {big}")).await.op,
            "chat_ok"
        );
        if i % 50 == 0 {
            // The sender reads what it gets, so it is never the slow one.
            while !sender.inbox().is_empty() {
                sender.next().await;
            }
        }
    }
    assert!(metrics.slow_disconnects.get() >= 5, "all five were dropped");
    sender.close().await;
    // The stuck clients still hold their sockets open and read nothing; the server lets go.
    sockets_released(&s).await;
    for mut c in stuck {
        wait_ended(&mut c, WAIT).await;
    }
    ordinary_client_chats(&s, "busy").await;
}

/// Defect 2: pings without reading grew the server's memory without bound. Now at most one
/// pong waits per connection and the flood counts against the error budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_bounded_and_closed() {
    let s = TestServer::start_with(|c| {
        c.gateway.socket_send_buffer = 16 * 1024;
        c.gateway.close_grace_ms = 300;
        // Only the flood may end these connections here.
        c.gateway.login_timeout_s = 600;
    })
    .await;
    let ping = client_frame(Opcode::Ping, &[b'p'; 125], MASK);
    let burst: Vec<u8> = ping.repeat(200);
    let mut floods = Vec::new();
    for _ in 0..20 {
        let mut c = raw_small(s.addr, "/ws").await;
        let burst = burst.clone();
        floods.push(tokio::spawn(async move {
            // Up to 5,000 pings; a write error (the server ended it) is the expected end.
            for _ in 0..25 {
                if c.write_all(&burst).await.is_err() {
                    return;
                }
            }
            // Hold the socket open without reading.
            std::future::pending::<()>().await;
        }));
    }
    let gw = s.running().gateway.clone();
    let metrics = s.running().metrics.clone();
    let mut max_queued = 0;
    // Every flooder exhausts its error budget (21 counted errors each) and is closed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.protocol_errors.get() < 20 * 21 || metrics.connections.get() > 0 {
        max_queued = max_queued.max(gw.queued_bytes());
        assert!(
            tokio::time::Instant::now() < deadline,
            "flooders closed: errors {}, connections {}",
            metrics.protocol_errors.get(),
            metrics.connections.get()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What waited in the server's queues stayed within a pong and a close frame each.
    assert!(
        max_queued <= 20 * 512,
        "queued {max_queued} bytes for 20 ping flooders"
    );
    sockets_released(&s).await;
    for f in floods {
        f.abort();
    }
    ordinary_client_chats(&s, "calm").await;
}

/// Slow handshakes: headers trickled byte by byte are cut at `http.header_timeout_ms`.
#[tokio::test]
async fn a_slowloris_upgrade_is_cut_off() {
    let s = TestServer::start_with(|c| c.http.header_timeout_ms = 300).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    for c in slow.iter_mut() {
        // One more header line, never the end of the head.
        let _ = c.write_all(b"X-Slow: 1\r\n").await;
    }
    for mut c in slow {
        wait_ended(&mut c, Duration::from_secs(5)).await;
    }
    s.eventually("the slow connections are released", |r| {
        r.metrics.http_connections.get() == 0
    })
    .await;
    ordinary_client_chats(&s, "r").await;
}

/// A request body trickled in never ties up the server past `http.request_timeout_ms`.
#[tokio::test]
async fn a_trickled_body_gets_408() {
    let s = TestServer::start_with(|c| c.http.request_timeout_ms = 300).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"POST /dev/token HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"na",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            // Trickle: one byte now and then, never the whole body.
            let _ = c.write_all(b" ").await;
            match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("answered in time");
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
    assert!(s.running().metrics.http_timeouts.get() >= 1);
    ordinary_client_chats(&s, "r").await;
}

/// Joins of random room ids: per connection the join budget, per node the new-room budget;
/// the node's room table stays bounded.
#[tokio::test]
async fn a_join_storm_with_random_room_ids_is_bounded() {
    let s = TestServer::start_with(|c| {
        c.gateway.join_limit.rate = 5.0;
        c.gateway.join_limit.burst = 10.0;
        c.gateway.new_room_limit.rate = 1.0;
        c.gateway.new_room_limit.burst = 30.0;
        c.gateway.max_rooms_per_conn = 1000;
    })
    .await;
    // One connection: after its burst, rate_limited, and the flood closes it (4005).
    let mut c = s.client("stormer").await;
    let joins: Vec<_> = (0..200)
        .map(|i| json!({"op": "join", "seq": i + 10, "body": {"room_id": format!("r{i}")}}))
        .collect();
    c.send_raw(tokio_tungstenite::tungstenite::Message::text(
        serde_json::to_string(&joins).unwrap(),
    ))
    .await;
    let ended = c.ended().await;
    assert!(
        matches!(ended, Ended::Close(4005, _) | Ended::Dropped),
        "{ended:?}"
    );
    let limited: Vec<_> = c
        .inbox()
        .iter()
        .filter(|p| p.op == "error" && p.body["code"] == "rate_limited")
        .collect();
    assert!(!limited.is_empty(), "joins over the budget were refused");
    assert!(limited[0].body["retry_after_ms"].as_u64().unwrap() > 0);
    let joined = c.inbox().iter().filter(|p| p.op == "join_ok").count();
    assert_eq!(joined, 10, "exactly the burst got in");

    // Many connections, one new room each: the node's budget holds.
    let mut refused = 0;
    for i in 0..40 {
        let mut c = s.client(&format!("u{i}")).await;
        let p = c
            .call(Op::Join, json!({"room_id": format!("new{i}")}))
            .await;
        if p.op == "error" {
            assert_eq!(p.body["code"], "rate_limited");
            refused += 1;
        }
    }
    assert!(
        refused >= 15,
        "the node refused new rooms past its budget ({refused})"
    );
    assert!(s.running().gateway.room_count() <= 40);
    assert!(s.running().metrics.limited_requests.get() > 0);
    ordinary_client_chats(&s, "r0").await;
}

/// Beyond the per-address cap, connections are refused at accept (503) — other addresses and
/// the ones already in are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_ip_cap_are_refused() {
    let s = TestServer::start_with(|c| c.http.max_connections_per_ip = 1000).await;
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    s.eventually("1,000 connections are in", |r| {
        r.metrics.http_connections.get() == 1000
    })
    .await;
    for _ in 0..10 {
        let mut extra = TcpStream::connect(s.addr).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, extra.read_to_end(&mut raw))
            .await
            .expect("refused at once")
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    }
    assert_eq!(s.running().metrics.http_refused_per_ip.get(), 10);
    // Another address still gets in.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = socket.connect(s.addr).await.unwrap();
    drop(other);
    drop(held);
    s.eventually("the slots are released", |r| {
        r.metrics.http_connections.get() == 0
    })
    .await;
    ordinary_client_chats(&s, "r").await;
}

/// `ack` and `login` cost store writes and signature checks: a burst of them is refused past
/// the per-connection budget and closes the connection.
#[tokio::test]
async fn a_burst_of_acks_and_logins_is_refused_then_closed() {
    let s = TestServer::start_with(|c| {
        c.gateway.request_limit.rate = 10.0;
        c.gateway.request_limit.burst = 20.0;
    })
    .await;
    for op in ["ack", "login"] {
        let mut c = s.client(&format!("{op}er")).await;
        let token = s.token(&format!("{op}er"));
        let reqs: Vec<_> = (0..200)
            .map(|i| {
                let body = if op == "ack" {
                    json!({"msg_id": i})
                } else {
                    json!({"token": token})
                };
                json!({"op": op, "seq": i + 10, "body": body})
            })
            .collect();
        c.send_raw(tokio_tungstenite::tungstenite::Message::text(
            serde_json::to_string(&reqs).unwrap(),
        ))
        .await;
        let ended = c.ended().await;
        assert!(
            matches!(ended, Ended::Close(4005, _) | Ended::Dropped),
            "{op}: {ended:?}"
        );
        assert!(
            c.inbox()
                .iter()
                .any(|p| p.op == "error" && p.body["code"] == "rate_limited"),
            "{op}: refused over the budget"
        );
    }
    sockets_released(&s).await;
    ordinary_client_chats(&s, "r").await;
}

/// A handler that panics.
struct Panics;

impl Handler for Panics {
    fn handle<'a>(
        &'a self,
        _cx: roomcast_core::gateway::session::Ctx<'a>,
        _req: roomcast_core::gateway::session::Request<'a>,
    ) -> roomcast_core::BoxFut<'a, Result<(), roomcast_core::gateway::session::ReplyError>> {
        Box::pin(async { panic!("a bug in a handler") })
    }
}

/// A panic in a session's task still cleans up: rooms left, connection and socket released.
#[tokio::test]
async fn a_panicking_session_does_not_leak_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let mut handlers = HandlerTable::standard();
    handlers.register(Op::Ack, Box::new(Panics));
    let running = start_with_handlers(config.clone(), handlers)
        .await
        .expect("server starts");
    let s = TestServer {
        addr: running.addr,
        running: Some(running),
        dir,
        config,
    };
    let mut victim = s.client("victim").await;
    victim.join("room").await;
    let mut other = s.client("other").await;
    other.join("room").await;
    let room = roomcast_core::ids::RoomId::parse("room").unwrap();
    assert_eq!(s.running().gateway.room_members(&room), 2);
    victim.send(Op::Ack, json!({"msg_id": 1})).await;
    let ended = victim.ended().await;
    assert!(
        matches!(ended, Ended::Dropped | Ended::Close(..)),
        "{ended:?}"
    );
    s.eventually("the panicked session left its room", |r| {
        r.gateway.room_members(&room) == 1 && r.metrics.connections.get() == 1
    })
    .await;
    s.eventually("and its socket is closed", |r| {
        r.metrics.sockets_open.get() == 1
    })
    .await;
    assert_eq!(other.chat("room", "still here").await.op, "chat_ok");
}

/// Oversized messages (in one frame or in fragments) and invalid UTF-8 close with the RFC's
/// codes and release the socket; the others are unaffected.
#[tokio::test]
async fn oversized_fragmented_and_invalid_frames_release_the_socket() {
    let s = TestServer::start_with(|c| {
        c.gateway.max_frame_bytes = 8 * 1024;
        c.gateway.close_grace_ms = 300;
    })
    .await;
    let one_big = client_frame(Opcode::Text, &vec![b'a'; 9000], MASK);
    let mut fragments = Vec::new();
    {
        use roomcast_proto::ws::{apply_mask, frame_head};
        let chunk = vec![b'b'; 1000];
        for i in 0..10 {
            let op = if i == 0 {
                Opcode::Text
            } else {
                Opcode::Continuation
            };
            let (h, n) = frame_head(false, op, chunk.len() as u64, Some(MASK));
            fragments.extend_from_slice(&h[..n]);
            let mut p = chunk.clone();
            apply_mask(&mut p, MASK);
            fragments.extend_from_slice(&p);
        }
    }
    let bad_utf8 = client_frame(Opcode::Text, &[0xff, 0xfe, b'x'], MASK);
    for (frame, code) in [
        (one_big, close::MESSAGE_TOO_BIG),
        (fragments, close::MESSAGE_TOO_BIG),
        (bad_utf8, close::INVALID_PAYLOAD),
    ] {
        let (mut c, _) = RawClient::connect(s.addr, "/ws").await;
        c.send_frame(&frame).await;
        assert_eq!(c.close_code().await, Some(code));
    }
    sockets_released(&s).await;
    ordinary_client_chats(&s, "r").await;
}
