//! Time-boxed mutation fuzzing of every decoder in `roomcast-proto` on the stable toolchain:
//! WebSocket frames (server and client side, fed in random chunks as the gateway's read loop
//! does), the binary packet header walk, JSON text packets, and JSON and Protobuf bodies of every
//! op. Each input must decode without a panic, within a stated allocation bound, and the same
//! way whatever the chunking. `ROOMCAST_FUZZ_MS` sets the time per target (default 2000 ms),
//! `ROOMCAST_FUZZ_SEED` replays a run (see `fuzzkit/mod.rs`).

mod fuzzkit;

use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};

use fuzzkit::{Bound, CountingAlloc, uncounted};
use roomcast_proto::body::{self, Since};
use roomcast_proto::wire::{Body, BodyFormat, FrameBuilder, Wire, decode_body, encode_body};
use roomcast_proto::ws::{self, Decoder, Message, Opcode, WsError};
use roomcast_proto::{HEADER_LEN, Op, Packets, text};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The gateway's defaults (`gateway.max_frame_bytes`, `gateway.max_body_bytes`).
const MAX_FRAME: usize = 65_536;
const MAX_BODY: usize = 4096;
/// A small message limit for the server-side decoder, so that mutants cross it often.
const SMALL_MAX_FRAME: usize = 4096;

// ---- WebSocket -------------------------------------------------------------------------------

/// What a decoder made of a byte stream: the messages (hashed), the bytes used, the error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    messages: u64,
    count: usize,
    consumed: usize,
    error: Option<WsError>,
}

fn note_message(h: &mut DefaultHasher, m: &Message<'_>) {
    match m {
        Message::Text(t) => (1u8, t.as_bytes()).hash(h),
        Message::Binary(b) => (2u8, b).hash(h),
        Message::Ping(p) => (3u8, p).hash(h),
        Message::Pong(p) => (4u8, p).hash(h),
        Message::Close(c) => {
            if let Some((code, _)) = c {
                assert!(
                    ws::is_valid_close_code(*code),
                    "close code {code} let through"
                );
            }
            (5u8, c).hash(h)
        }
    }
}

/// Feeds `input` to `dec` in the chunks ending at `cuts`, keeping the unconsumed rest in a buffer
/// as the gateway's session loop does. The buffer handling is not counted as the decoder's
/// allocation.
fn feed(dec: &mut Decoder, input: &[u8], cuts: &[usize], max: usize) -> Outcome {
    let mut buf = uncounted(|| Vec::with_capacity(input.len()));
    let mut h = DefaultHasher::new();
    let (mut count, mut consumed, mut prev) = (0, 0, 0);
    for &cut in cuts {
        uncounted(|| buf.extend_from_slice(&input[prev..cut]));
        prev = cut;
        let mut pos = 0;
        loop {
            let left = buf.len() - pos;
            match dec.decode(&mut buf[pos..]) {
                Err(e) => {
                    if let WsError::TooBig { len, max: m } = e {
                        // Compressed messages may take a little more on the wire than inflated.
                        assert!(
                            len > m as u64 && m >= max && m <= max + max / 512 + 64,
                            "{e}"
                        );
                    }
                    // An error reports no bytes used (the connection is done).
                    return Outcome {
                        messages: h.finish(),
                        count,
                        consumed: 0,
                        error: Some(e),
                    };
                }
                Ok(d) => {
                    assert!(d.consumed <= left, "consumed {} of {left}", d.consumed);
                    pos += d.consumed;
                    let Some(m) = d.message else { break };
                    if let Message::Binary(b) = &m {
                        assert!(b.len() <= max, "message of {} bytes", b.len());
                    }
                    if let Message::Text(t) = &m {
                        assert!(t.len() <= max, "message of {} bytes", t.len());
                    }
                    note_message(&mut h, &m);
                    count += 1;
                }
            }
        }
        buf.drain(..pos);
        consumed += pos;
    }
    Outcome {
        messages: h.finish(),
        count,
        consumed,
        error: None,
    }
}

/// One input, decoded whole (the reference, not counted) and in random chunks (counted): both
/// must give the same messages, bytes used and error.
fn ws_target(server: bool, deflate: bool, max: usize, input: &[u8], rng: &mut fastrand::Rng) {
    let new = |max| {
        if server {
            Decoder::server(max)
        } else {
            Decoder::client(max)
        }
        .with_deflate(deflate)
    };
    let (whole, cuts) = uncounted(|| {
        let mut dec = new(max);
        let whole = feed(&mut dec, input, &[input.len()], max);
        (whole, fuzzkit::split_points(rng, input.len()))
    });
    let mut dec = new(max);
    let chunked = feed(&mut dec, input, &cuts, max);
    assert_eq!(chunked, whole, "chunked at {cuts:?}");
}

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame (any fin bit, any length encoding the header builder picks).
fn client(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let (h, n) = ws::frame_head(fin, opcode, payload.len() as u64, Some(KEY));
    let mut out = h[..n].to_vec();
    let mut p = payload.to_vec();
    ws::apply_mask(&mut p, KEY);
    out.extend(p);
    out
}

fn server(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let (h, n) = ws::frame_head(fin, opcode, payload.len() as u64, None);
    let mut out = h[..n].to_vec();
    out.extend_from_slice(payload);
    out
}

fn ws_seeds(frame: fn(bool, Opcode, &[u8]) -> Vec<u8>, masked: bool) -> Vec<Vec<u8>> {
    let packets = frame_payload(Wire::JsonBinary);
    let text = frame_payload(Wire::JsonText);
    let utf8 = "héllo wörld 🎉 done".as_bytes();
    let mut fragmented = frame(false, Opcode::Text, &utf8[..2]);
    fragmented.extend(frame(true, Opcode::Ping, b"mid"));
    fragmented.extend(frame(false, Opcode::Continuation, &utf8[2..15]));
    fragmented.extend(frame(true, Opcode::Continuation, &utf8[15..]));
    let mut many = frame(true, Opcode::Text, &text);
    many.extend(frame(true, Opcode::Binary, &packets));
    many.extend(frame(true, Opcode::Pong, b""));
    many.extend(frame(true, Opcode::Close, &ws::close_payload(1000, "bye")));
    // A 64-bit length field holding a small length (legal, if odd).
    let mut long_len = vec![0x82, if masked { 0xff } else { 0x7f }];
    long_len.extend_from_slice(&5u64.to_be_bytes());
    if masked {
        long_len.extend_from_slice(&[0, 0, 0, 0]);
    }
    long_len.extend_from_slice(b"abcde");
    vec![
        frame(true, Opcode::Text, &text),
        frame(true, Opcode::Binary, &packets),
        frame(true, Opcode::Binary, &[0xab; 300]),
        frame(true, Opcode::Text, &[b'x'; 5000]),
        frame(false, Opcode::Binary, &[1; 3000]),
        fragmented,
        many,
        frame(true, Opcode::Ping, b"are you there"),
        frame(
            true,
            Opcode::Close,
            &ws::close_payload(4002, "kicked: spam ✂"),
        ),
        frame(true, Opcode::Close, b""),
        long_len,
    ]
}

#[test]
fn websocket_server_decoder() {
    let seeds = ws_seeds(client, true);
    let r = fuzzkit::run(
        "ws_server",
        &seeds,
        // Fragments are held in one buffer that never exceeds the message limit; it grows by
        // doubling (at most 2 x its final size in total, which is at most 2 x the input).
        Bound {
            base: 64,
            per_byte: 4,
            cap: SMALL_MAX_FRAME,
        },
        |input, rng| ws_target(true, false, SMALL_MAX_FRAME, input, rng),
    );
    assert!(r.inputs > seeds.len() as u64);
}

#[test]
fn websocket_client_decoder() {
    let seeds = ws_seeds(server, false);
    let r = fuzzkit::run(
        "ws_client",
        &seeds,
        Bound {
            base: 64,
            per_byte: 4,
            cap: MAX_FRAME,
        },
        |input, rng| ws_target(false, false, MAX_FRAME, input, rng),
    );
    assert!(r.inputs > seeds.len() as u64);
}

/// A masked client frame with RSV1 (a permessage-deflate message's first frame).
fn zclient(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut f = client(fin, opcode, payload);
    f[0] |= ws::RSV1;
    f
}

fn deflated(b: &[u8]) -> Vec<u8> {
    let mut z = Vec::new();
    roomcast_proto::deflate::deflate(b, roomcast_proto::deflate::Deflate::On, 6, &mut z);
    z
}

#[test]
fn websocket_server_decoder_with_deflate() {
    let mut seeds = ws_seeds(client, true);
    let zt = deflated(&frame_payload(Wire::JsonText));
    let zb = deflated(&frame_payload(Wire::JsonBinary));
    let half = zt.len() / 2;
    let mut fragmented = zclient(false, Opcode::Text, &zt[..half]);
    fragmented.extend(client(true, Opcode::Ping, b"mid"));
    fragmented.extend(client(true, Opcode::Continuation, &zt[half..]));
    let mut mixed = zclient(true, Opcode::Binary, &zb);
    mixed.extend(client(true, Opcode::Text, b"plain"));
    mixed.extend(zclient(
        true,
        Opcode::Text,
        &deflated("哈哈哈 666 🎉".as_bytes()),
    ));
    seeds.extend([
        zclient(true, Opcode::Text, &zt),
        zclient(true, Opcode::Binary, &zb),
        fragmented,
        mixed,
        // Inflates far past the limit.
        zclient(true, Opcode::Binary, &deflated(&[0; 100_000])),
        zclient(true, Opcode::Text, &deflated(b"")),
    ]);
    let r = fuzzkit::run(
        "ws_server_deflate",
        &seeds,
        // The decoder holds at most the message limit of compressed fragments and of inflated
        // output (each grown by doubling), plus this thread's decompressor, made on first use
        // and kept (zlib-rs: its state and a 32 KiB window).
        Bound {
            base: 4 * SMALL_MAX_FRAME + INFLATER,
            per_byte: 4,
            cap: 2 * SMALL_MAX_FRAME + INFLATER,
        },
        |input, rng| ws_target(true, true, SMALL_MAX_FRAME, input, rng),
    );
    assert!(r.inputs > seeds.len() as u64);
}

/// What one thread's decompressor holds (allocated once per thread).
const INFLATER: usize = 64 * 1024;

// ---- bodies ----------------------------------------------------------------------------------

fn room_msg(seq: u64) -> body::RoomMsg {
    body::RoomMsg {
        room_id: "lobby".into(),
        msg_id: 18_446_744_073_709_551_615,
        seq,
        user_id: "alice".into(),
        name: Some("Alice".into()),
        text: "hi 👋".into(),
        kind: "gift".into(),
        ts: 1_700_000_000_000,
        epoch: 3,
        payload: Some(r#"{"gift":"rocket","count":2,"x":[1.5,null,"\u00e9"]}"#.into()),
    }
}

/// Runs `$f::<BodyType>($args)` for the body type of `$op`.
macro_rules! by_op {
    ($op:expr, $f:ident ( $($arg:expr),* )) => {
        match $op {
            Op::Login => $f::<body::Login>($($arg),*),
            Op::Heartbeat => $f::<body::Heartbeat>($($arg),*),
            Op::Join => $f::<body::Join>($($arg),*),
            Op::Leave => $f::<body::Leave>($($arg),*),
            Op::Chat => $f::<body::Chat>($($arg),*),
            Op::Ack => $f::<body::Ack>($($arg),*),
            Op::Logout => $f::<body::Logout>($($arg),*),
            Op::LoginOk => $f::<body::LoginOk>($($arg),*),
            Op::HeartbeatOk => $f::<body::HeartbeatOk>($($arg),*),
            Op::JoinOk => $f::<body::JoinOk>($($arg),*),
            Op::LeaveOk => $f::<body::LeaveOk>($($arg),*),
            Op::ChatOk => $f::<body::ChatOk>($($arg),*),
            Op::LogoutOk => $f::<body::LogoutOk>($($arg),*),
            Op::Error => $f::<body::Error>($($arg),*),
            Op::RoomMsg => $f::<body::RoomMsg>($($arg),*),
            Op::Online => $f::<body::Online>($($arg),*),
            Op::Critical => $f::<body::Critical>($($arg),*),
            Op::Kicked => $f::<body::Kicked>($($arg),*),
        }
    };
}

/// A filled-in body for every op (every optional field set).
fn sample(op: Op, format: BodyFormat, out: &mut Vec<u8>) {
    let room = || "lobby".to_owned();
    match op {
        Op::Login => encode_body(
            format,
            &body::Login {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln".into(),
            },
            out,
        ),
        Op::Heartbeat => encode_body(format, &body::Heartbeat {}, out),
        Op::Join => encode_body(
            format,
            &body::Join {
                room_id: room(),
                history: Some(20),
                since: Some(Since { epoch: 7, seq: 42 }),
                history_secs: Some(600),
            },
            out,
        ),
        Op::Leave => encode_body(format, &body::Leave { room_id: room() }, out),
        Op::Chat => encode_body(
            format,
            &body::Chat {
                room_id: room(),
                text: "hello \"world\" \\ ✨\n".into(),
            },
            out,
        ),
        Op::Ack => encode_body(format, &body::Ack { msg_id: u64::MAX }, out),
        Op::Logout => encode_body(format, &body::Logout {}, out),
        Op::LoginOk => encode_body(
            format,
            &body::LoginOk {
                user_id: "alice".into(),
                heartbeat_s: 30,
                name: Some("Alice".into()),
            },
            out,
        ),
        Op::HeartbeatOk => encode_body(format, &body::HeartbeatOk {}, out),
        Op::JoinOk => encode_body(
            format,
            &body::JoinOk {
                room_id: room(),
                online: 12,
                epoch: 7,
                recovered: Some(true),
                history: vec![room_msg(1), room_msg(2)],
                last_seq: 2,
            },
            out,
        ),
        Op::LeaveOk => encode_body(format, &body::LeaveOk { room_id: room() }, out),
        Op::ChatOk => encode_body(format, &body::ChatOk { msg_id: 1 << 40 }, out),
        Op::LogoutOk => encode_body(format, &body::LogoutOk {}, out),
        Op::Error => encode_body(
            format,
            &body::Error {
                code: "rate_limited".into(),
                message: "slow down".into(),
                retry_after_ms: Some(1500),
                op: Some("chat".into()),
                room_id: Some(room()),
            },
            out,
        ),
        Op::RoomMsg => encode_body(format, &room_msg(9), out),
        Op::Online => encode_body(
            format,
            &body::Online {
                room_id: room(),
                count: 5,
            },
            out,
        ),
        Op::Critical => encode_body(
            format,
            &body::Critical {
                msg_id: 77,
                kind: "system".into(),
                room_id: Some(room()),
                text: Some("maintenance at 10".into()),
                payload: Some("[1,2,3]".into()),
                ts: 1_700_000_000_000,
            },
            out,
        ),
        Op::Kicked => encode_body(
            format,
            &body::Kicked {
                code: "kicked".into(),
                reason: "spam".into(),
                reconnect: vec!["ws://a/ws".into()],
            },
            out,
        ),
    }
}

/// Decodes a body as `T`; what decodes must encode and decode back to the same value (that part
/// is not counted).
fn decode_as<T: Body + PartialEq + Debug>(format: BodyFormat, bytes: &[u8]) {
    if let Ok(v) = decode_body::<T>(format, bytes) {
        uncounted(|| {
            let mut out = Vec::new();
            encode_body(format, &v, &mut out);
            let back: T = decode_body(format, &out)
                .unwrap_or_else(|e| panic!("re-decoding {v:?} from {out:?}: {e}"));
            assert_eq!(back, v, "round trip");
        });
    }
}

/// `[selector][body]`: bit 7 of the selector picks Protobuf, the rest the op.
fn body_target(input: &[u8]) {
    let Some((&sel, bytes)) = input.split_first() else {
        return;
    };
    let format = if sel & 0x80 != 0 {
        BodyFormat::Proto
    } else {
        BodyFormat::Json
    };
    let op = Op::ALL[usize::from(sel & 0x7f) % Op::ALL.len()];
    by_op!(op, decode_as(format, bytes));
}

fn body_seeds(requests_only: bool) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, op) in Op::ALL.into_iter().enumerate() {
        if requests_only && !op.is_request() {
            continue;
        }
        for (bit, format) in [(0u8, BodyFormat::Json), (0x80, BodyFormat::Proto)] {
            let mut seed = vec![i as u8 | bit];
            sample(op, format, &mut seed);
            seeds.push(seed);
        }
    }
    seeds
}

#[test]
fn request_bodies() {
    // What the gateway decodes from clients: the six request ops, JSON and Protobuf.
    let seeds = body_seeds(true);
    fuzzkit::run(
        "request_bodies",
        &seeds,
        // Strings (and serde's buffering of `msg_id`, a string or a number) cost about their
        // length, error messages quote the input.
        Bound {
            base: 1024,
            per_byte: 8,
            cap: 4 * MAX_BODY + 256,
        },
        |input, _| body_target(&input[..input.len().min(MAX_BODY + 1)]),
    );
}

#[test]
fn all_bodies() {
    // Replies and pushes too (clients and the load generator decode them). `join_ok` holds a
    // list of messages: an empty one costs a struct of about 200 bytes from 2 input bytes.
    let seeds = body_seeds(false);
    fuzzkit::run(
        "all_bodies",
        &seeds,
        Bound {
            base: 1024,
            per_byte: 256,
            cap: 256 * MAX_FRAME,
        },
        |input, _| body_target(input),
    );
}

// ---- packets and text frames -----------------------------------------------------------------

/// The payload of a server frame holding one packet of each request op.
fn frame_payload(wire: Wire) -> Vec<u8> {
    let mut b = FrameBuilder::new(wire);
    b.push(
        Op::Join,
        1,
        &body::Join {
            room_id: "lobby".into(),
            history: Some(5),
            since: None,
            history_secs: None,
        },
    );
    b.push(
        Op::Chat,
        2,
        &body::Chat {
            room_id: "lobby".into(),
            text: "hi ✨".into(),
        },
    );
    b.push(Op::Ack, 3, &body::Ack { msg_id: 99 });
    b.push(Op::Heartbeat, 4, &body::Heartbeat {});
    let frame = b.finish();
    let head = ws::parse_head(&frame, false).unwrap().unwrap();
    frame[head.header_len..].to_vec()
}

#[test]
fn binary_packets() {
    let seeds = vec![
        frame_payload(Wire::JsonBinary),
        frame_payload(Wire::Proto),
        frame_payload(Wire::JsonBinary)[..HEADER_LEN].to_vec(),
    ];
    fuzzkit::run(
        "binary_packets",
        &seeds,
        // The header walk never allocates.
        Bound::NONE,
        |input, _| {
            let mut n = 0;
            for p in Packets::new(input, MAX_BODY).take(input.len() + 2) {
                n += 1;
                if let Ok(p) = p {
                    assert!(p.body.len() <= MAX_BODY);
                }
            }
            assert!(n <= input.len() / HEADER_LEN + 1, "{n} packets");
        },
    );
}

#[test]
fn binary_packets_with_bodies() {
    // The gateway's binary path: walk the packets, decode each body as its op's type.
    let seeds = vec![frame_payload(Wire::JsonBinary), frame_payload(Wire::Proto)];
    fuzzkit::run(
        "binary_packets_with_bodies",
        &seeds,
        // Each packet's body decodes into owned strings and vectors (each up to its body's
        // size, plus the growth of a `Vec`): linear in the input, with a constant per packet.
        Bound {
            base: 256,
            per_byte: 16,
            cap: 16 * MAX_FRAME,
        },
        |input, rng| {
            let format = if rng.bool() {
                BodyFormat::Json
            } else {
                BodyFormat::Proto
            };
            for p in Packets::new(input, MAX_BODY).flatten() {
                if let Some(op) = Op::from_code(p.op).filter(|op| op.is_request()) {
                    by_op!(op, decode_as(format, p.body));
                }
            }
        },
    );
}

#[test]
fn json_text_packets() {
    // The gateway's text path: parse the packets, decode each body by its op name.
    let text = frame_payload(Wire::JsonText);
    let mut one = FrameBuilder::new(Wire::JsonText);
    one.push(Op::Chat, 7, &body::Chat::default());
    let one = one.finish();
    let head = ws::parse_head(&one, false).unwrap().unwrap();
    let one = one[head.header_len..].to_vec();
    let seeds = vec![text, one, br#"{"op":"heartbeat"}"#.to_vec()];
    fuzzkit::run(
        "json_text_packets",
        &seeds,
        Bound {
            base: 512,
            per_byte: 16,
            cap: 16 * MAX_FRAME,
        },
        |input, _| {
            let text = match std::str::from_utf8(input) {
                Ok(t) => t,
                // The WebSocket decoder lets only UTF-8 through; keep the valid prefix.
                Err(e) => std::str::from_utf8(&input[..e.valid_up_to()]).unwrap_or(""),
            };
            let Ok(packets) = text::parse(text) else {
                return;
            };
            for p in packets {
                if let Some(op) = Op::from_name(&p.op).filter(|op| op.is_request()) {
                    let body = p.body_json();
                    if body.len() <= MAX_BODY {
                        by_op!(op, decode_as(BodyFormat::Json, body));
                    }
                }
            }
        },
    );
}
