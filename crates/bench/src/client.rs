//! A lean WebSocket client for load generation: plain TCP, our own framing, and a reader that
//! extracts only what the measurement needs (a room message's `seq` and the send time at the
//! start of its text) without decoding whole messages. The load generator's own cost per frame
//! is part of every number it reports, so it must stay small.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use roomcast_proto::packet::{Packets, put_packet};
use roomcast_proto::ws::{self, Opcode};
use roomcast_proto::{Op, Wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `ws://host:port/path`.
#[derive(Debug, Clone)]
pub struct WsUrl {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl std::str::FromStr for WsUrl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<WsUrl> {
        let rest = s
            .strip_prefix("ws://")
            .context("expected ws://HOST:PORT/PATH")?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{host}: expected an IP address and port"))?;
        Ok(WsUrl {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// One room message as the reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub seq: u64,
    /// Microseconds since the Unix epoch, from the text's first 16 hex digits (0 if absent).
    pub sent_us: u64,
}

pub struct Client {
    stream: TcpStream,
    frames: FrameBuf,
    pub wire: Wire,
    /// The heartbeat period the server asked for in `login_ok`.
    pub heartbeat_s: u64,
}

/// Received bytes not yet parsed.
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// permessage-deflate was negotiated: frames with RSV1 are inflated (into `inflated`).
    deflate: bool,
    inflated: Vec<u8>,
}

impl FrameBuf {
    fn new() -> Self {
        FrameBuf {
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            deflate: false,
            inflated: Vec::new(),
        }
    }

    /// Room for more bytes: unparsed bytes move to the front, and the buffer grows when a frame
    /// does not fit.
    fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Reads more bytes.
    async fn fill(&mut self, r: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<()> {
        let n = r.read(self.spare()).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        self.end += n;
        Ok(())
    }

    /// Reads once from a non-blocking socket: the number of bytes read (0 when none were
    /// waiting); an error when the server closed the connection.
    pub fn fill_now(&mut self, r: &mut impl std::io::Read) -> anyhow::Result<usize> {
        match r.read(self.spare()) {
            Ok(0) => bail!("connection closed by the server"),
            Ok(n) => {
                self.end += n;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Parses the complete frames held; returns how many there were.
    pub fn parse(&mut self, wire: Wire, on: &mut impl FnMut(Event<'_>)) -> anyhow::Result<usize> {
        let mut frames = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some(head) = ws::parse_head_ext(avail, false, self.deflate)? else {
                return Ok(frames);
            };
            let total = head.header_len + head.len as usize;
            if avail.len() < total {
                return Ok(frames);
            }
            let payload: &[u8] = if head.rsv1 {
                // Each message on its own (the server never takes its context over).
                self.inflated.clear();
                roomcast_proto::deflate::inflate(
                    &avail[head.header_len..total],
                    MAX_INFLATED,
                    &mut self.inflated,
                )
                .map_err(|e| anyhow::anyhow!("a compressed frame did not inflate: {e:?}"))?;
                &self.inflated
            } else {
                &avail[head.header_len..total]
            };
            match head.opcode {
                Opcode::Binary => {
                    for p in Packets::new(payload, usize::MAX) {
                        let p = p?;
                        let op = Op::from_code(p.op).context("unknown op from server")?;
                        if op == Op::RoomMsg {
                            let seen = if wire == Wire::Proto {
                                scan_proto_room_msg(p.body)
                            } else {
                                scan_json_room_msg(p.body)
                            };
                            if let Some(s) = seen {
                                on(Event::RoomMsg(s));
                            }
                        } else {
                            on(Event::Other(op, p.seq, p.body));
                        }
                    }
                }
                Opcode::Text => scan_text(payload, on),
                Opcode::Close => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    bail!(
                        "closed by the server ({code}: {})",
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]))
                    );
                }
                _ => {}
            }
            self.start += total;
            frames += 1;
        }
    }
}

/// The largest message a compressed frame may inflate to here.
const MAX_INFLATED: usize = 64 << 20;

/// Parses 16 hex digits.
fn hex16(b: &[u8]) -> u64 {
    if b.len() < 16 {
        return 0;
    }
    let mut v = 0u64;
    for &c in &b[..16] {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return 0,
        };
        v = (v << 4) | d as u64;
    }
    v
}

/// Reads a protobuf varint.
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// `seq` (field 3) and the text's (field 6) send time of a protobuf `RoomMsg`.
pub fn scan_proto_room_msg(b: &[u8]) -> Option<Seen> {
    let mut pos = 0;
    let mut seq = None;
    let mut sent_us = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        match key & 7 {
            0 => {
                let v = varint(b, &mut pos)?;
                if key >> 3 == 3 {
                    seq = Some(v);
                }
            }
            2 => {
                let len = varint(b, &mut pos)? as usize;
                let end = pos.checked_add(len)?;
                if key >> 3 == 6 {
                    sent_us = hex16(b.get(pos..end)?);
                }
                pos = end;
            }
            5 => pos += 4,
            1 => pos += 8,
            _ => return None,
        }
    }
    Some(Seen { seq: seq?, sent_us })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `seq` and send time of a JSON `room_msg` body.
pub fn scan_json_room_msg(b: &[u8]) -> Option<Seen> {
    let i = find(b, b"\"seq\":")? + 6;
    let mut seq = 0u64;
    let mut any = false;
    for &c in &b[i..] {
        if c.is_ascii_digit() {
            seq = seq * 10 + (c - b'0') as u64;
            any = true;
        } else {
            break;
        }
    }
    if !any {
        return None;
    }
    let sent_us = find(b, b"\"text\":\"")
        .map(|t| hex16(&b[t + 8..]))
        .unwrap_or(0);
    Some(Seen { seq, sent_us })
}

/// A request packet in this client's wire format.
pub fn request(
    wire: Wire,
    op: Op,
    seq: u32,
    json_body: &str,
    proto_body: impl FnOnce(&mut Vec<u8>),
) -> (Opcode, Vec<u8>) {
    match wire {
        Wire::JsonText => (
            Opcode::Text,
            format!(
                "{{\"op\":\"{}\",\"seq\":{seq},\"body\":{json_body}}}",
                op.name()
            )
            .into_bytes(),
        ),
        Wire::JsonBinary => {
            let mut out = Vec::new();
            let _ = put_packet::<()>(&mut out, op.code(), seq, |b| {
                b.extend_from_slice(json_body.as_bytes());
                Ok(())
            });
            (Opcode::Binary, out)
        }
        Wire::Proto => {
            let mut out = Vec::new();
            let _ = put_packet::<()>(&mut out, op.code(), seq, |b| {
                proto_body(b);
                Ok(())
            });
            (Opcode::Binary, out)
        }
    }
}

/// What a reader got from the server in one frame.
pub enum Event<'a> {
    /// A room message.
    RoomMsg(Seen),
    /// Any other packet: op, seq, raw body.
    Other(Op, u32, &'a [u8]),
}

impl Client {
    /// Connects, upgrades with `?token=` (offering permessage-deflate when `deflate`), and
    /// waits for `login_ok`.
    pub async fn connect(
        url: &WsUrl,
        src: Option<IpAddr>,
        token: &str,
        wire: Wire,
        deflate: bool,
    ) -> anyhow::Result<Client> {
        let socket = if url.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = src {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind to {ip}"))?;
        }
        let stream = socket
            .connect(url.addr)
            .await
            .with_context(|| format!("cannot connect to {}", url.addr))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            frames: FrameBuf::new(),
            wire,
            heartbeat_s: 0,
        };
        let protocol = if wire == Wire::Proto {
            "Sec-WebSocket-Protocol: roomcast.v1.proto\r\n"
        } else {
            ""
        };
        let extensions = if deflate {
            // What browsers offer.
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let req = format!(
            "GET {}?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtMQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}{extensions}\r\n",
            url.path, url.host
        );
        c.stream.write_all(req.as_bytes()).await?;
        loop {
            let f = &mut c.frames;
            let n = c.stream.read(&mut f.buf[f.end..]).await?;
            if n == 0 {
                bail!("server closed the connection during the handshake");
            }
            f.end += n;
            if let Some(i) = find(&f.buf[..f.end], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&f.buf[..i]).to_string();
                if !head.starts_with("HTTP/1.1 101") {
                    bail!("upgrade refused: {}", head.lines().next().unwrap_or(""));
                }
                f.deflate = head.lines().any(|l| {
                    let l = l.to_ascii_lowercase();
                    l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate")
                });
                if deflate && !f.deflate {
                    bail!("the server did not accept permessage-deflate");
                }
                f.start = i + 4;
                break;
            }
            if f.end == f.buf.len() {
                bail!("handshake response too long");
            }
        }
        let mut login: Option<u64> = None;
        while login.is_none() {
            c.read_some(|e| {
                if let Event::Other(Op::LoginOk, _, body) = e {
                    // LoginOk.heartbeat_s is field 2.
                    login = Some(body_u64(wire, body, 2, "heartbeat_s"));
                }
            })
            .await?;
        }
        c.heartbeat_s = login.unwrap_or(0);
        Ok(c)
    }

    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> anyhow::Result<()> {
        let key = fastrand::u32(..).to_ne_bytes();
        let frame = ws::client_frame(opcode, payload, key);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Joins a room and returns its `last_seq` (from the join reply).
    pub async fn join(&mut self, room: &str, seq: u32) -> anyhow::Result<u64> {
        let (opcode, payload) = request(
            self.wire,
            Op::Join,
            seq,
            &format!("{{\"room_id\":\"{room}\",\"history\":0}}"),
            |b| {
                // Join { room_id = 1, history = 2 }
                b.push(0x0a);
                b.push(room.len() as u8);
                b.extend_from_slice(room.as_bytes());
                b.extend_from_slice(&[0x10, 0x00]);
            },
        );
        self.send(opcode, &payload).await?;
        let wire = self.wire;
        let mut result: Option<anyhow::Result<u64>> = None;
        while result.is_none() {
            self.read_some(|e| {
                if let Event::Other(op, s, body) = e
                    && s == seq
                {
                    result = Some(match op {
                        Op::JoinOk => Ok(join_last_seq(wire, body)),
                        _ => Err(anyhow::anyhow!(
                            "join {room} failed: {}",
                            String::from_utf8_lossy(body)
                        )),
                    });
                }
            })
            .await?;
        }
        result.unwrap_or_else(|| Ok(0))
    }

    /// Reads whatever arrives next (at least one frame) and reports each packet.
    pub async fn read_some(&mut self, mut on: impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        while self.frames.parse(self.wire, &mut on)? == 0 {
            self.frames.fill(&mut self.stream).await?;
        }
        Ok(())
    }
}

/// Text frames: one packet or an array of them; room messages are found by their op name.
fn scan_text(payload: &[u8], on: &mut impl FnMut(Event<'_>)) {
    let mut rest = payload;
    while let Some(i) = find(rest, b"{\"op\":\"") {
        let after = &rest[i + 7..];
        let Some(end) = after.iter().position(|c| *c == b'"') else {
            return;
        };
        let name = std::str::from_utf8(&after[..end]).unwrap_or("");
        let next = find(&after[end..], b"{\"op\":\"")
            .map(|j| end + j)
            .unwrap_or(after.len());
        let packet = &after[..next];
        match Op::from_name(name) {
            Some(Op::RoomMsg) => {
                if let Some(s) = scan_json_room_msg(packet) {
                    on(Event::RoomMsg(s));
                }
            }
            Some(op) => {
                let seq = find(packet, b"\"seq\":")
                    .map(|k| {
                        packet[k + 6..]
                            .iter()
                            .take_while(|c| c.is_ascii_digit())
                            .fold(0u32, |a, c| a * 10 + (c - b'0') as u32)
                    })
                    .unwrap_or(0);
                let body = find(packet, b"\"body\":")
                    .map(|k| &packet[k + 7..])
                    .unwrap_or(b"");
                on(Event::Other(op, seq, body));
            }
            None => {}
        }
        rest = &after[next..];
    }
}

fn join_last_seq(wire: Wire, body: &[u8]) -> u64 {
    // JoinOk.last_seq is field 6.
    body_u64(wire, body, 6, "last_seq")
}

/// An unsigned field of a reply body: protobuf field number `field`, or JSON key `name`
/// (0 when absent).
fn body_u64(wire: Wire, body: &[u8], field: u64, name: &str) -> u64 {
    if wire == Wire::Proto {
        let mut pos = 0;
        while pos < body.len() {
            let Some(key) = varint(body, &mut pos) else {
                return 0;
            };
            match key & 7 {
                0 => {
                    let Some(v) = varint(body, &mut pos) else {
                        return 0;
                    };
                    if key >> 3 == field {
                        return v;
                    }
                }
                2 => {
                    let Some(len) = varint(body, &mut pos) else {
                        return 0;
                    };
                    pos += len as usize;
                }
                _ => return 0,
            }
        }
        0
    } else {
        let key = format!("\"{name}\":");
        find(body, key.as_bytes())
            .map(|k| {
                body[k + key.len()..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .fold(0u64, |a, c| a * 10 + (c - b'0') as u64)
            })
            .unwrap_or(0)
    }
}

/// Lines like those of a live room's chat: short, mixed Chinese, emoji and Latin, with the
/// same phrases again and again.
const CHAT_LINES: &[&str] = &[
    "666",
    "666666",
    "哈哈哈",
    "哈哈哈哈哈哈哈",
    "主播好厉害！",
    "前方高能",
    "awsl",
    "gg",
    "nice shot!",
    "🎉🎉🎉",
    "这波操作可以",
    "lol",
    "来了来了",
    "爷青回",
    "233333",
    "好活当赏",
    "哈哈哈 笑死我了",
    "what a play 🔥🔥",
    "主播加油！💪",
    "第一次来，关注了",
    "弹幕护体",
    "gg wp",
    "awsl 太可爱了😍",
    "下次一定",
    "泪目😭",
    "up up up",
    "这是什么神仙操作",
    "hello from Berlin 👋",
    "？？？",
    "好听！再来一首",
    "牛啊牛啊",
    "kkp",
];

/// What a chat message says after its 16-digit send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatText {
    /// `x` up to the payload size (compresses to almost nothing).
    Filler(usize),
    /// A line from [`CHAT_LINES`], picked by the message's sequence number.
    Chat,
}

/// A chat request carrying the send time in its first 16 characters.
pub fn chat_packet(
    wire: Wire,
    out: &mut Vec<u8>,
    seq: u32,
    room: &str,
    sent_us: u64,
    what: ChatText,
) {
    let mut text = format!("{sent_us:016x}");
    match what {
        ChatText::Filler(payload) => {
            while text.len() < payload.max(16) {
                text.push('x');
            }
        }
        ChatText::Chat => {
            // A multiplicative hash, so that neighbours differ.
            let i = (seq.wrapping_mul(2_654_435_761) >> 16) as usize % CHAT_LINES.len();
            text.push(' ');
            text.push_str(CHAT_LINES[i]);
        }
    }
    match wire {
        Wire::JsonText => {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(
                format!("{{\"op\":\"chat\",\"seq\":{seq},\"body\":{{\"room_id\":\"{room}\",\"text\":\"{text}\"}}}}").as_bytes(),
            );
        }
        Wire::JsonBinary => {
            let body = format!("{{\"room_id\":\"{room}\",\"text\":\"{text}\"}}");
            let _ = put_packet::<()>(out, Op::Chat.code(), seq, |b| {
                b.extend_from_slice(body.as_bytes());
                Ok(())
            });
        }
        Wire::Proto => {
            let _ = put_packet::<()>(out, Op::Chat.code(), seq, |b| {
                b.push(0x0a);
                put_varint(b, room.len() as u64);
                b.extend_from_slice(room.as_bytes());
                b.push(0x12);
                put_varint(b, text.len() as u64);
                b.extend_from_slice(text.as_bytes());
                Ok(())
            });
        }
    }
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

impl Client {
    /// The connection as a non-blocking std socket, with the bytes already read but not parsed.
    pub fn into_std(self) -> anyhow::Result<(std::net::TcpStream, FrameBuf)> {
        let stream = self.stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok((stream, self.frames))
    }

    pub fn into_split(self) -> (Reader, Writer) {
        let (read, write) = self.stream.into_split();
        (
            Reader {
                read,
                frames: self.frames,
                wire: self.wire,
            },
            Writer { write },
        )
    }
}

/// The reading half of a publisher.
pub struct Reader {
    read: tokio::net::tcp::OwnedReadHalf,
    frames: FrameBuf,
    wire: Wire,
}

impl Reader {
    pub async fn read_some(&mut self, mut on: impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        while self.frames.parse(self.wire, &mut on)? == 0 {
            self.frames.fill(&mut self.read).await?;
        }
        Ok(())
    }
}

/// The writing half of a publisher.
pub struct Writer {
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Writer {
    pub async fn send(&mut self, opcode: Opcode, payload: &[u8]) -> anyhow::Result<()> {
        let key = fastrand::u32(..).to_ne_bytes();
        let frame = ws::client_frame(opcode, payload, key);
        self.write.write_all(&frame).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use roomcast_proto::body::RoomMsg;

    fn msg(seq: u64, text: &str) -> RoomMsg {
        RoomMsg {
            room_id: "r".into(),
            msg_id: 99,
            seq,
            user_id: "u".into(),
            text: text.into(),
            kind: "chat".into(),
            ts: 5,
            epoch: 3,
            ..Default::default()
        }
    }

    #[test]
    fn scans_both_encodings() {
        let text = format!("{:016x}xxxx", 1_234_567u64);
        let m = msg(42, &text);
        let want = Some(Seen {
            seq: 42,
            sent_us: 1_234_567,
        });
        assert_eq!(scan_proto_room_msg(&m.encode_to_vec()), want);
        assert_eq!(scan_json_room_msg(&serde_json::to_vec(&m).unwrap()), want);
        assert_eq!(
            scan_proto_room_msg(&msg(7, "short").encode_to_vec()),
            Some(Seen { seq: 7, sent_us: 0 })
        );
    }

    #[test]
    fn chat_packets_decode_on_the_server_side() {
        for wire in [Wire::JsonBinary, Wire::Proto] {
            let mut out = Vec::new();
            chat_packet(wire, &mut out, 9, "room-1", 0xabc, ChatText::Filler(100));
            let p = Packets::new(&out, 4096).next().unwrap().unwrap();
            let chat: roomcast_proto::body::Chat =
                roomcast_proto::wire::decode_body(wire.body_format(), p.body).unwrap();
            assert_eq!(chat.room_id, "room-1");
            assert_eq!(chat.text.len(), 100);
            assert_eq!(hex16(chat.text.as_bytes()), 0xabc);
        }
    }
}
