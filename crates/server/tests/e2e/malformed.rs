use roomcast_proto::packet::put_header;
use roomcast_proto::ws::{self, Opcode, client_frame};
use roomcast_proto::{Op, Wire};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn packet(op: u8, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, op, seq, body.len() as u32);
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn malformed_requests_get_errors_and_harm_nobody() {
    let s = TestServer::start().await;
    let mut bystander = s.client("bystander").await;
    bystander.join("r").await;
    let mut c = s.client_with("mallory", Wire::JsonBinary).await;
    c.join("r").await;

    // Bad magic.
    let mut bad = packet(Op::Heartbeat.code(), 1, b"{}");
    bad[0] = 0xde;
    c.send_raw(Message::binary(bad)).await;
    let p = c.expect("error").await;
    assert_eq!(p.body["code"], "bad_request");
    assert!(
        p.body["message"].as_str().unwrap().contains("magic"),
        "{p:?}"
    );

    // Bad version.
    let mut bad = packet(Op::Heartbeat.code(), 2, b"{}");
    bad[2] = 7;
    c.send_raw(Message::binary(bad)).await;
    assert!(
        c.expect("error").await.body["message"]
            .as_str()
            .unwrap()
            .contains("version")
    );

    // Length says more than the frame holds.
    let mut bad = packet(Op::Heartbeat.code(), 3, b"{}");
    bad[11] = 200;
    c.send_raw(Message::binary(bad)).await;
    assert!(
        c.expect("error").await.body["message"]
            .as_str()
            .unwrap()
            .contains("truncated")
    );

    // A header cut short.
    c.send_raw(Message::binary(vec![0x52, 0x43, 1])).await;
    assert_eq!(c.expect("error").await.body["code"], "bad_request");

    // Unknown op code, and a reply op sent as a request: seq is echoed.
    c.send_raw(Message::binary(packet(99, 41, b"{}"))).await;
    let p = c.expect("error").await;
    assert_eq!((p.seq, p.body["code"].as_str()), (41, Some("unknown_op")));
    c.send_raw(Message::binary(packet(Op::JoinOk.code(), 42, b"{}")))
        .await;
    let p = c.expect("error").await;
    assert_eq!((p.seq, p.body["code"].as_str()), (42, Some("unknown_op")));

    // Invalid JSON body, and a body missing a field.
    c.send_raw(Message::binary(packet(Op::Join.code(), 43, b"{not json")))
        .await;
    let p = c.expect("error").await;
    assert_eq!((p.seq, p.body["code"].as_str()), (43, Some("bad_request")));
    c.send_raw(Message::binary(packet(
        Op::Join.code(),
        44,
        b"{\"history\":3}",
    )))
    .await;
    let p = c.expect("error").await;
    assert!(
        p.body["message"].as_str().unwrap().contains("room_id"),
        "{p:?}"
    );

    // A body over the limit is refused, and the packet after it in the same frame still works.
    let mut frame = packet(Op::Chat.code(), 45, &vec![b' '; 5000]);
    frame.extend(packet(Op::Heartbeat.code(), 46, b"{}"));
    c.send_raw(Message::binary(frame)).await;
    let p = c.expect("error").await;
    assert_eq!((p.seq, p.body["code"].as_str()), (45, Some("too_large")));
    assert_eq!(c.reply(46).await.op, "heartbeat_ok");

    // Text frames: not JSON, unknown op by name, oversized body.
    c.send_raw(Message::text("{]")).await;
    assert_eq!(c.expect("error").await.body["code"], "bad_request");
    c.send_raw(Message::text(r#"{"op":"dance","seq":47}"#))
        .await;
    let p = c.expect("error").await;
    assert_eq!((p.seq, p.body["code"].as_str()), (47, Some("unknown_op")));
    let big =
        json!({ "op": "chat", "seq": 48, "body": { "room_id": "r", "text": "x".repeat(5000) } });
    c.send_raw(Message::text(big.to_string())).await;
    let p = c.expect("error").await;
    assert_eq!((p.seq, p.body["code"].as_str()), (48, Some("too_large")));

    // Still connected, still in the room, and the bystander never noticed.
    assert_eq!(c.call(Op::Heartbeat, json!({})).await.op, "heartbeat_ok");
    bystander.chat("r", "all good").await;
    assert_eq!(bystander.expect("room_msg").await.body["text"], "all good");
    assert_eq!(c.expect("room_msg").await.body["text"], "all good");
}

#[tokio::test]
async fn too_many_malformed_requests_close_the_connection() {
    let s = TestServer::start_with(|c| c.gateway.max_errors_per_10s = 5).await;
    let mut c = s.client("noisy").await;
    for _ in 0..6 {
        c.send_raw(Message::text("nonsense")).await;
    }
    assert_eq!(
        c.ended().await,
        Ended::Close(
            ws::close::TOO_MANY_ERRORS,
            "too many malformed requests".into()
        )
    );
}

#[tokio::test]
async fn websocket_violations_close_with_the_rfc_codes() {
    let s = TestServer::start_with(|c| c.gateway.max_frame_bytes = 16 * 1024).await;
    let mut bystander = s.client("bystander").await;
    bystander.join("r").await;

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "unmasked frame",
            ws::server_frame(Opcode::Binary, b"x"),
            ws::close::PROTOCOL_ERROR,
        ),
        (
            "invalid UTF-8 text",
            client_frame(Opcode::Text, &[0xc3, 0x28], KEY),
            ws::close::INVALID_PAYLOAD,
        ),
        (
            "oversized message",
            client_frame(Opcode::Binary, &vec![0; 20 * 1024], KEY),
            ws::close::MESSAGE_TOO_BIG,
        ),
        (
            "reserved bits",
            {
                let mut f = client_frame(Opcode::Binary, b"x", KEY);
                f[0] |= 0x40;
                f
            },
            ws::close::PROTOCOL_ERROR,
        ),
        (
            "unknown opcode",
            {
                let mut f = client_frame(Opcode::Binary, b"x", KEY);
                f[0] = 0x80 | 0x05;
                f
            },
            ws::close::PROTOCOL_ERROR,
        ),
        (
            "continuation without start",
            client_frame(Opcode::Continuation, b"x", KEY),
            ws::close::PROTOCOL_ERROR,
        ),
    ];
    for (what, frame, code) in cases {
        let (mut raw, head) = RawClient::connect(s.addr, "/ws").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.send_frame(&frame).await;
        assert_eq!(raw.close_code().await, Some(code), "{what}");
    }

    // Ping gets a pong; a clean close is echoed.
    let (mut raw, _) = RawClient::connect(s.addr, "/ws").await;
    raw.send_frame(&client_frame(Opcode::Ping, b"hi", KEY))
        .await;
    raw.send_frame(&client_frame(
        Opcode::Close,
        &ws::close_payload(1000, "bye"),
        KEY,
    ))
    .await;
    assert_eq!(raw.close_code().await, Some(1000));

    bystander.chat("r", "unaffected").await;
    assert_eq!(
        bystander.expect("room_msg").await.body["text"],
        "unaffected"
    );
}

#[tokio::test]
async fn plain_http_to_the_websocket_path_is_told_what_to_do() {
    let s = TestServer::start().await;
    let (mut raw, head) = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut t = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        t.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        t.read_to_string(&mut out).await.unwrap();
        (t, out)
    };
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    assert!(head.contains("upgrade_required"));
    let _ = &mut raw;
}
