//! Test harness: a real server on port 0 with its own data directory, and WebSocket clients
//! (tokio-tungstenite, an implementation independent of the server's) that speak every wire
//! format. Every wait has a deadline, so a missing event fails the test instead of hanging it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast_core::auth::JwtAuth;
use roomcast_core::clock::now_s;
use roomcast_core::ids::UserId;
use roomcast_proto::body;
use roomcast_proto::packet::{Packets, put_packet};
use roomcast_proto::{Op, Wire};
use roomcast_server::app::{Running, start};
use roomcast_server::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-test-secret-test-secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        shutdown_grace_ms: 2000,
        ..Config::default()
    };
    c.auth.jwt_secret = Some(SECRET.into());
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let running = start(config.clone()).await.expect("server starts");
        TestServer {
            addr: running.addr,
            running: Some(running),
            dir,
            config,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn token(&self, user: &str) -> String {
        token_for(user, Some(&format!("{user}'s name")), 3600)
    }

    /// A logged-in JSON (text) client.
    pub async fn client(&self, user: &str) -> Client {
        self.client_with(user, Wire::JsonText).await
    }

    pub async fn client_with(&self, user: &str, wire: Wire) -> Client {
        let mut c = Client::connect(&self.url(), wire).await;
        let ok = c.login(&self.token(user)).await;
        assert_eq!(ok.op, "login_ok", "{ok:?}");
        c
    }

    pub async fn stop(mut self) -> (tempfile::TempDir, Config) {
        self.running
            .take()
            .unwrap()
            .shutdown()
            .await
            .expect("clean shutdown");
        (self.dir, self.config)
    }

    /// Stops, then starts again on the same data directory (new port).
    pub async fn restart(self) -> Self {
        let (dir, mut config) = self.stop().await;
        config.listen = "127.0.0.1:0".parse().unwrap();
        let running = start(config.clone()).await.expect("server restarts");
        TestServer {
            addr: running.addr,
            running: Some(running),
            dir,
            config,
        }
    }

    /// Waits until `cond` holds for server-side state that has no event to await.
    pub async fn eventually(&self, what: &str, cond: impl Fn(&Running) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !cond(self.running()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn token_for(user: &str, name: Option<&str>, ttl_s: i64) -> String {
    JwtAuth::hs256(SECRET.as_bytes())
        .unwrap()
        .issue(
            &UserId::parse(user).unwrap(),
            name,
            (now_s() as i64 + ttl_s) as u64,
        )
        .unwrap()
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub op: String,
    pub seq: u32,
    pub body: Value,
}

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Close(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub wire: Wire,
    inbox: VecDeque<Packet>,
    next_seq: u32,
}

impl Client {
    pub async fn connect(url: &str, wire: Wire) -> Client {
        let mut req = url.into_client_request().unwrap();
        if wire == Wire::Proto {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "roomcast.v1.proto".parse().unwrap(),
            );
        }
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .expect("WebSocket handshake");
        if wire == Wire::Proto {
            assert_eq!(
                resp.headers().get("sec-websocket-protocol").unwrap(),
                "roomcast.v1.proto"
            );
        }
        Client {
            ws,
            wire,
            inbox: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// A client whose socket has a tiny receive buffer (for slow-reader tests).
    pub async fn connect_small_buffer(url: &str, addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("WebSocket handshake");
        Client {
            ws,
            wire: Wire::JsonText,
            inbox: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// Sends a text frame; false once the connection is gone.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    pub async fn login(&mut self, token: &str) -> Packet {
        let seq = self.send(Op::Login, json!({ "token": token })).await;
        self.reply(seq).await
    }

    /// Sends a request; returns its seq.
    pub async fn send(&mut self, op: Op, body: Value) -> u32 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let msg = encode(self.wire, op, seq, body);
        self.ws.send(msg).await.expect("send");
        seq
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Sends and waits for the reply (which may be an `error`).
    pub async fn call(&mut self, op: Op, body: Value) -> Packet {
        let seq = self.send(op, body).await;
        self.reply(seq).await
    }

    async fn read_frame(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("a frame in time")
    }

    async fn fill(&mut self) {
        loop {
            match self.read_frame().await {
                Some(Ok(m)) => {
                    if let Some(packets) = decode(self.wire, &m) {
                        self.inbox.extend(packets);
                        return;
                    }
                    if let Message::Close(c) = m {
                        panic!("connection closed while waiting for a packet: {c:?}");
                    }
                }
                other => panic!("connection ended while waiting for a packet: {other:?}"),
            }
        }
    }

    /// The next packet of any kind.
    pub async fn next(&mut self) -> Packet {
        loop {
            if let Some(p) = self.inbox.pop_front() {
                return p;
            }
            self.fill().await;
        }
    }

    /// The first packet with this op; others are kept for later.
    pub async fn expect(&mut self, op: &str) -> Packet {
        let mut skipped = Vec::new();
        loop {
            if let Some(i) = self.inbox.iter().position(|p| p.op == op) {
                let p = self.inbox.remove(i).unwrap();
                return p;
            }
            if self.inbox.len() > 10_000 {
                skipped.extend(self.inbox.drain(..));
                panic!("no {op} among {} packets", skipped.len());
            }
            self.fill().await;
        }
    }

    /// The reply to request `seq` (an `*_ok` or an `error`); pushes are kept for later.
    pub async fn reply(&mut self, seq: u32) -> Packet {
        loop {
            if let Some(i) = self.inbox.iter().position(|p| {
                p.seq == seq
                    && !matches!(p.op.as_str(), "room_msg" | "online" | "critical" | "kicked")
            }) {
                return self.inbox.remove(i).unwrap();
            }
            self.fill().await;
        }
    }

    /// The next `n` room messages (any room), in arrival order.
    pub async fn room_msgs(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.expect("room_msg").await.body);
        }
        out
    }

    /// Waits for the connection to end; returns the close frame, skipping any other frames.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match self.read_frame().await {
                Some(Ok(Message::Close(frame))) => {
                    // Complete the closing handshake (tungstenite queued the echo).
                    let _ = self.ws.flush().await;
                    return match frame {
                        Some(CloseFrame { code, reason }) => {
                            Ended::Close(code.into(), reason.to_string())
                        }
                        None => Ended::Close(1005, String::new()),
                    };
                }
                Some(Ok(m)) => {
                    if let Some(p) = decode(self.wire, &m) {
                        self.inbox.extend(p);
                    }
                }
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// Packets already received and not yet taken.
    pub fn inbox(&self) -> &VecDeque<Packet> {
        &self.inbox
    }

    pub async fn join(&mut self, room: &str) -> Packet {
        let p = self.call(Op::Join, json!({ "room_id": room })).await;
        assert_eq!(p.op, "join_ok", "{p:?}");
        p
    }

    pub async fn chat(&mut self, room: &str, text: &str) -> Packet {
        self.call(Op::Chat, json!({ "room_id": room, "text": text }))
            .await
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub fn encode(wire: Wire, op: Op, seq: u32, body: Value) -> Message {
    match wire {
        Wire::JsonText => {
            Message::text(json!({ "op": op.name(), "seq": seq, "body": body }).to_string())
        }
        Wire::JsonBinary => {
            let mut out = Vec::new();
            put_packet::<()>(&mut out, op.code(), seq, |b| {
                b.extend(serde_json::to_vec(&body).unwrap());
                Ok(())
            })
            .unwrap();
            Message::binary(out)
        }
        Wire::Proto => {
            fn pb<T: roomcast_proto::wire::Body>(v: Value) -> Vec<u8> {
                serde_json::from_value::<T>(v)
                    .expect("body fits the message type")
                    .encode_to_vec()
            }
            let bytes = match op {
                Op::Login => pb::<body::Login>(body),
                Op::Heartbeat => pb::<body::Heartbeat>(body),
                Op::Join => pb::<body::Join>(body),
                Op::Leave => pb::<body::Leave>(body),
                Op::Chat => pb::<body::Chat>(body),
                Op::Ack => pb::<body::Ack>(body),
                Op::Logout => pb::<body::Logout>(body),
                other => panic!("not a request: {other:?}"),
            };
            let mut out = Vec::new();
            put_packet::<()>(&mut out, op.code(), seq, |b| {
                b.extend(bytes);
                Ok(())
            })
            .unwrap();
            Message::binary(out)
        }
    }
}

/// Decodes a data frame into packets with JSON bodies; `None` for control frames.
pub fn decode(wire: Wire, m: &Message) -> Option<Vec<Packet>> {
    match m {
        Message::Text(t) => {
            let v: Value = serde_json::from_str(t).expect("server text frames are JSON");
            let items = match v {
                Value::Array(a) => a,
                one => vec![one],
            };
            Some(
                items
                    .into_iter()
                    .map(|p| Packet {
                        op: p["op"].as_str().unwrap().to_owned(),
                        seq: p["seq"].as_u64().unwrap() as u32,
                        body: p["body"].clone(),
                    })
                    .collect(),
            )
        }
        Message::Binary(b) => Some(
            Packets::new(b, usize::MAX)
                .map(|p| {
                    let p = p.expect("server packets are well-formed");
                    let op = Op::from_code(p.op).expect("known op");
                    let body = if wire == Wire::Proto {
                        proto_to_json(op, p.body)
                    } else {
                        serde_json::from_slice(p.body).unwrap()
                    };
                    Packet {
                        op: op.name().to_owned(),
                        seq: p.seq,
                        body,
                    }
                })
                .collect(),
        ),
        _ => None,
    }
}

fn proto_to_json(op: Op, bytes: &[u8]) -> Value {
    fn j<T: roomcast_proto::wire::Body>(b: &[u8]) -> Value {
        serde_json::to_value(T::decode(b).expect("valid protobuf")).unwrap()
    }
    match op {
        Op::LoginOk => j::<body::LoginOk>(bytes),
        Op::HeartbeatOk => j::<body::HeartbeatOk>(bytes),
        Op::JoinOk => j::<body::JoinOk>(bytes),
        Op::LeaveOk => j::<body::LeaveOk>(bytes),
        Op::ChatOk => j::<body::ChatOk>(bytes),
        Op::LogoutOk => j::<body::LogoutOk>(bytes),
        Op::Error => j::<body::Error>(bytes),
        Op::RoomMsg => j::<body::RoomMsg>(bytes),
        Op::Online => j::<body::Online>(bytes),
        Op::Critical => j::<body::Critical>(bytes),
        Op::Kicked => j::<body::Kicked>(bytes),
        other => panic!("server sent a request op {other:?}"),
    }
}

/// A bare TCP client for what a WebSocket library will not send (bad framing, bad UTF-8).
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> (RawClient, String) {
        let (stream, rest, head) = raw_upgrade(addr, path, "").await;
        (RawClient { stream, buf: rest }, head)
    }

    pub async fn send_frame(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads server frames until a close frame; returns its code (None: EOF without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        use tokio::io::AsyncReadExt;
        let mut dec = roomcast_proto::ws::Decoder::client(1 << 24);
        loop {
            let mut pos = 0;
            loop {
                let d = dec
                    .decode(&mut self.buf[pos..])
                    .expect("valid server frames");
                pos += d.consumed;
                match d.message {
                    Some(roomcast_proto::ws::Message::Close(c)) => return c.map(|(code, _)| code),
                    Some(_) => continue,
                    None => break,
                }
            }
            self.buf.drain(..pos);
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("close in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A WebSocket upgrade on a bare TCP connection, with `extra` request header lines (each ending
/// in CRLF); returns the stream, the bytes read after the response head, and the head.
pub async fn raw_upgrade(
    addr: SocketAddr,
    path: &str,
    extra: &str,
) -> (TcpStream, Vec<u8>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let rest = buf[head_end..].to_vec();
    (stream, rest, head)
}

/// One HTTP/1.1 request; returns (status, content type, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("")
        .to_owned();
    // Small bodies come back in one chunk or with a length; strip chunk framing if present.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, ctype, body)
}

pub const JSON: (&str, &str) = ("content-type", "application/json");
