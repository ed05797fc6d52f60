//! permessage-deflate (RFC 7692): negotiated on upgrade, room batches compressed once and the
//! same frame written to every member that negotiated it, plain frames for the others; inbound
//! compressed messages limited by what they inflate to.

use std::net::SocketAddr;

use roomcast_proto::deflate;
use roomcast_proto::ws::{self, Opcode, close};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const MASK: [u8; 4] = [9, 8, 7, 6];

/// A raw client that offers permessage-deflate like a browser and keeps every frame's RSV1.
struct Deflating {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` response header, if any.
    agreed: Option<String>,
}

/// One server frame: whether it came compressed, and its (inflated) payload.
struct Frame {
    compressed: bool,
    opcode: Opcode,
    payload: Vec<u8>,
}

impl Deflating {
    async fn connect(addr: SocketAddr, path: &str, offer: &str) -> Deflating {
        let extra = format!("Sec-WebSocket-Extensions: {offer}\r\n");
        let (stream, rest, head) = raw_upgrade(addr, path, &extra).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let agreed = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_owned())
        });
        Deflating {
            stream,
            buf: rest,
            agreed,
        }
    }

    /// Sends a JSON request in a compressed text frame.
    async fn send_compressed(&mut self, v: Value) {
        let frame = deflate::client_frame(Opcode::Text, v.to_string().as_bytes(), MASK, 6);
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn next_frame(&mut self) -> Frame {
        loop {
            if let Some(head) = ws::parse_head_ext(&self.buf, false, true).unwrap() {
                let total = head.header_len + head.len as usize;
                if self.buf.len() >= total {
                    let raw = &self.buf[head.header_len..total];
                    let payload = if head.rsv1 {
                        let mut out = Vec::new();
                        deflate::inflate(raw, 1 << 24, &mut out).expect("valid deflate data");
                        out
                    } else {
                        raw.to_vec()
                    };
                    let f = Frame {
                        compressed: head.rsv1,
                        opcode: head.opcode,
                        payload,
                    };
                    self.buf.drain(..total);
                    return f;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame that carries `op`, with its packets (a text frame holds one packet or an
    /// array of them).
    async fn expect(&mut self, op: &str) -> (Frame, Vec<Value>) {
        loop {
            let f = self.next_frame().await;
            if f.opcode != Opcode::Text {
                continue;
            }
            let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
            let packets = match v {
                Value::Array(a) => a,
                one => vec![one],
            };
            if packets.iter().any(|p| p["op"] == op) {
                return (f, packets);
            }
        }
    }

    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let f = self.next_frame().await;
            if f.opcode == Opcode::Close {
                return (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
            }
        }
    }
}

const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

#[tokio::test]
async fn batches_are_compressed_once_for_deflate_clients_and_plain_for_the_others() {
    let s = TestServer::start().await;
    let path = format!("/ws?token={}", s.token("viewer"));
    let mut z = Deflating::connect(s.addr, &path, BROWSER_OFFER).await;
    assert_eq!(
        z.agreed.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    z.expect("login_ok").await;
    z.send_compressed(json!({"op": "join", "seq": 1, "body": {"room_id": "zroom"}}))
        .await;
    assert_eq!(z.expect("join_ok").await.1[0]["seq"], 1);
    // A second compressing viewer and a plain one (tungstenite refuses RSV1 frames, so what
    // it reads was sent plain).
    let path2 = format!("/ws?token={}", s.token("viewer2"));
    let mut z2 = Deflating::connect(s.addr, &path2, BROWSER_OFFER).await;
    z2.expect("login_ok").await;
    z2.send_compressed(json!({"op": "join", "seq": 1, "body": {"room_id": "zroom"}}))
        .await;
    z2.expect("join_ok").await;
    let mut plain = s.client("plain").await;
    assert_eq!(plain.join("zroom").await.op, "join_ok");

    let text = "哈哈哈 666 主播好厉害！🎉 ".repeat(12);
    assert_eq!(plain.chat("zroom", &text).await.op, "chat_ok");
    for viewer in [&mut z, &mut z2] {
        let (frame, packets) = viewer.expect("room_msg").await;
        assert!(
            frame.compressed,
            "a batch over deflate_min_bytes goes compressed"
        );
        assert_eq!(packets[0]["body"]["text"], text.as_str());
    }
    assert_eq!(plain.expect("room_msg").await.body["text"], text.as_str());
    let m = &s.running().metrics;
    assert_eq!(m.deflate_connections.get(), 2);
    assert_eq!(
        m.deflate_frames.get(),
        1,
        "the batch was compressed once for both viewers"
    );
    assert!(m.deflate_out_bytes.get() * 3 < m.deflate_in_bytes.get());

    // Short messages are not worth compressing.
    assert_eq!(plain.chat("zroom", "666").await.op, "chat_ok");
    let (frame, packets) = z.expect("room_msg").await;
    assert!(!frame.compressed);
    assert_eq!(packets[0]["body"]["text"], "666");
    plain.close().await;
}

#[tokio::test]
async fn a_zip_bomb_gets_1009_and_harms_nothing_else() {
    let s = TestServer::start().await;
    let path = format!("/ws?token={}", s.token("bomber"));
    let mut z = Deflating::connect(s.addr, &path, BROWSER_OFFER).await;
    z.expect("login_ok").await;
    // 8 MiB of JSON whitespace: about 8 KiB compressed, far past max_frame_bytes (64 KiB)
    // once inflated.
    let mut bomb = b"{\"op\":\"heartbeat\",\"seq\":1,\"body\":{}".to_vec();
    bomb.resize(8 << 20, b' ');
    bomb.push(b'}');
    let frame = deflate::client_frame(Opcode::Text, &bomb, MASK, 9);
    assert!(frame.len() < 16 * 1024, "{}", frame.len());
    z.stream.write_all(&frame).await.unwrap();
    assert_eq!(z.close_code().await, Some(close::MESSAGE_TOO_BIG));
    // Corrupt compressed data: 1007.
    let path = format!("/ws?token={}", s.token("garbler"));
    let mut g = Deflating::connect(s.addr, &path, BROWSER_OFFER).await;
    g.expect("login_ok").await;
    let (mut h, n) = ws::frame_head(true, Opcode::Text, 32, Some(MASK));
    h[0] |= ws::RSV1;
    let mut bad = h[..n].to_vec();
    let mut junk = vec![0xffu8; 32];
    ws::apply_mask(&mut junk, MASK);
    bad.extend(junk);
    g.stream.write_all(&bad).await.unwrap();
    assert_eq!(g.close_code().await, Some(close::INVALID_PAYLOAD));

    let mut c = s.client("ordinary").await;
    assert_eq!(c.join("calm").await.op, "join_ok");
    assert_eq!(c.chat("calm", "still fine").await.op, "chat_ok");
    assert_eq!(c.expect("room_msg").await.body["text"], "still fine");
    c.close().await;
    s.eventually("the bombers' sockets are released", |r| {
        r.metrics.sockets_open.get() == 0 && r.metrics.deflate_connections.get() == 0
    })
    .await;
}

#[tokio::test]
async fn the_off_switch_declines_the_offer_and_rsv1_is_then_a_protocol_error() {
    let s = TestServer::start_with(|c| c.gateway.deflate = false).await;
    let path = format!("/ws?token={}", s.token("viewer"));
    let mut z = Deflating::connect(s.addr, &path, BROWSER_OFFER).await;
    assert_eq!(z.agreed, None);
    z.expect("login_ok").await;
    z.send_compressed(json!({"op": "heartbeat", "seq": 1, "body": {}}))
        .await;
    assert_eq!(z.close_code().await, Some(close::PROTOCOL_ERROR));
}

#[tokio::test]
async fn a_small_server_window_is_honoured() {
    // server_max_window_bits=8 is accepted and answered; that the frames then reference at
    // most 256 bytes back is checked by Autobahn 13.3 and 13.5 (Python zlib, 8-bit window).
    let s = TestServer::start().await;
    let path = format!("/ws?token={}", s.token("tiny"));
    let mut z = Deflating::connect(
        s.addr,
        &path,
        "permessage-deflate; server_max_window_bits=8; client_max_window_bits",
    )
    .await;
    assert_eq!(
        z.agreed.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8"
        )
    );
    z.expect("login_ok").await;
    z.send_compressed(json!({"op": "join", "seq": 1, "body": {"room_id": "w"}}))
        .await;
    z.expect("join_ok").await;
    let mut plain = s.client("plain").await;
    assert_eq!(plain.join("w").await.op, "join_ok");
    let text = "前方高能 awsl ".repeat(20);
    assert_eq!(plain.chat("w", &text).await.op, "chat_ok");
    let (frame, packets) = z.expect("room_msg").await;
    assert!(frame.compressed);
    assert_eq!(packets[0]["body"]["text"], text.as_str());
    plain.close().await;
}
