//! WebSocket framing (RFC 6455), both directions, without I/O.
//!
//! The gateway owns its sockets and writes pre-built frames to many connections at once, so it
//! needs framing as plain functions rather than a stream wrapper: [`frame_head`] builds headers,
//! [`Decoder`] turns received bytes into messages (unmasking in place, joining fragments,
//! validating control frames, UTF-8 and sizes) and reports violations with the close code the
//! RFC asks for. With permessage-deflate negotiated ([`crate::deflate`]), it inflates compressed
//! messages, with the size limit applied to what they inflate to.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Close codes used by roomcast (1000–1011 from RFC 6455, 4000–4999 application-defined).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is restarting or draining: reconnect (to another gateway, if the `kicked`
    /// notice named some).
    pub const SERVICE_RESTART: u16 = 1012;
    /// No frame from the client for twice the heartbeat period.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// No successful `login` within the login timeout.
    pub const LOGIN_TIMEOUT: u16 = 4001;
    /// Kicked by a moderator or the server API.
    pub const KICKED: u16 = 4002;
    /// The user is banned.
    pub const BANNED: u16 = 4003;
    /// The client read too slowly and fell too far behind.
    pub const SLOW_CONSUMER: u16 = 4004;
    /// Too many malformed requests.
    pub const TOO_MANY_ERRORS: u16 = 4005;
    /// The token expired while connected.
    pub const TOKEN_EXPIRED: u16 = 4006;
}

/// The GUID of RFC 6455 section 1.3.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest header of an unmasked (server) frame.
pub const MAX_SERVER_HEADER: usize = 10;
/// Largest header of a masked (client) frame.
pub const MAX_CLIENT_HEADER: usize = 14;

/// The RSV1 bit of a frame's first byte: a message compressed with permessage-deflate.
pub const RSV1: u8 = 0x40;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl Opcode {
    fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x08 != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooBig { len: u64, max: usize },
    #[error("compressed message inflates past the limit of {max} bytes")]
    InflatesTooBig { max: usize },
    #[error("compressed message is not valid deflate data")]
    BadCompression,
}

impl WsError {
    /// The close code to send for this violation.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => close::INVALID_PAYLOAD,
            WsError::TooBig { .. } | WsError::InflatesTooBig { .. } => close::MESSAGE_TOO_BIG,
            WsError::BadCompression => close::INVALID_PAYLOAD,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    /// RSV1: the message is compressed (only with permessage-deflate negotiated).
    pub rsv1: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    pub header_len: usize,
}

/// Parses a frame header. `Ok(None)`: more bytes are needed. `masked`: whether frames must be
/// masked (true on the server, which reads client frames; false on a client).
pub fn parse_head(buf: &[u8], masked: bool) -> Result<Option<FrameHead>, WsError> {
    parse_head_ext(buf, masked, false)
}

/// [`parse_head`] on a connection that negotiated permessage-deflate when `deflate`: RSV1 is
/// then allowed on the first frame of a data message (whoever calls this checks the rest).
pub fn parse_head_ext(
    buf: &[u8],
    masked: bool,
    deflate: bool,
) -> Result<Option<FrameHead>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let reserved = if deflate { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(WsError::Protocol(
            "reserved bits set without a negotiated extension",
        ));
    }
    let rsv1 = b0 & RSV1 != 0;
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(WsError::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    let is_masked = b1 & 0x80 != 0;
    if is_masked != masked {
        return Err(if masked {
            WsError::Protocol("client frames must be masked")
        } else {
            WsError::Protocol("server frames must not be masked")
        });
    }
    let len7 = b1 & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let header_len = 2 + ext + if is_masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let len = match len7 {
        126 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("payload length has the high bit set"));
            }
            len
        }
        n => n as u64,
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(WsError::Protocol(
            "control frames must be final and at most 125 bytes",
        ));
    }
    if rsv1 && opcode.is_control() {
        return Err(WsError::Protocol("control frames cannot be compressed"));
    }
    if rsv1 && opcode == Opcode::Continuation {
        return Err(WsError::Protocol(
            "RSV1 belongs on the first frame of a message only",
        ));
    }
    let mask = if is_masked {
        let m = 2 + ext;
        Some([buf[m], buf[m + 1], buf[m + 2], buf[m + 3]])
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin,
        rsv1,
        opcode,
        mask,
        len,
        header_len,
    }))
}

/// Builds a frame header; returns the bytes and how many of them are used.
pub fn frame_head(fin: bool, opcode: Opcode, len: u64, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut h = [0u8; 14];
    h[0] = (if fin { 0x80 } else { 0 }) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        h[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as u64 {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(m) = mask {
        h[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    (h, n)
}

/// XORs `buf` with the mask key (the first byte of `buf` is payload byte 0).
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let key8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let (chunks, rest) = buf.as_chunks_mut::<8>();
    for c in chunks {
        *c = (u64::from_ne_bytes(*c) ^ key8).to_ne_bytes();
    }
    // `rest` starts at a multiple of 8, hence of 4.
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A whole unfragmented server frame.
pub fn server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let (h, n) = frame_head(true, opcode, payload.len() as u64, None);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out
}

/// A whole unfragmented client frame, masked with `key`.
pub fn client_frame(opcode: Opcode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let (h, n) = frame_head(true, opcode, payload.len() as u64, Some(key));
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    apply_mask(&mut out[n..], key);
    out
}

/// The payload of a close frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    // Control frames carry at most 125 bytes: 2 for the code, 123 for the reason.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// Inflates a compressed message into `out` (emptied first).
fn inflate_into(input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), WsError> {
    out.clear();
    crate::deflate::inflate(input, max, out).map_err(|e| match e {
        crate::deflate::InflateError::TooBig => WsError::InflatesTooBig { max },
        crate::deflate::InflateError::Corrupt => WsError::BadCompression,
    })
}

/// Whether a received close code is one a peer may send (RFC 6455 section 7.4).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A complete message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `None` when the close frame carried no code.
    Close(Option<(u16, &'a str)>),
}

/// Result of one [`Decoder::decode`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of the input that were used up (also when no message is complete yet).
    pub consumed: usize,
    pub message: Option<Message<'a>>,
}

/// Turns a byte stream from one peer into messages.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    masked: bool,
    /// permessage-deflate was negotiated: messages with RSV1 are inflated.
    deflate: bool,
    frag_opcode: Option<Opcode>,
    /// The message being assembled is compressed (its fragments are held as received).
    frag_compressed: bool,
    frag: Vec<u8>,
    /// An inflated message.
    inflated: Vec<u8>,
    /// The last returned message lived in `frag` or `inflated`; clear them on the next call.
    frag_done: bool,
}

/// Buffers bigger than this are given back once their message is handled.
const KEEP_BUFFER: usize = 64 * 1024;

impl Decoder {
    /// A decoder for client frames (masked), as used by a server.
    pub fn server(max_message: usize) -> Self {
        Self::new(max_message, true)
    }

    /// A decoder for server frames (unmasked), as used by a client.
    pub fn client(max_message: usize) -> Self {
        Self::new(max_message, false)
    }

    fn new(max_message: usize, masked: bool) -> Self {
        Decoder {
            max_message,
            masked,
            deflate: false,
            frag_opcode: None,
            frag_compressed: false,
            frag: Vec::new(),
            inflated: Vec::new(),
            frag_done: false,
        }
    }

    /// Accepts compressed messages (permessage-deflate negotiated, without context takeover:
    /// each message inflates on its own). `max_message` then limits the inflated size.
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// Whether a fragmented message is being assembled (its bytes are held here).
    pub fn holds_partial_message(&self) -> bool {
        self.frag_opcode.is_some()
    }

    /// What a compressed message may take on the wire: a little more than its inflated limit
    /// (deflate's stored blocks add 5 bytes per 64 KiB to data that does not compress).
    fn wire_limit(&self, compressed: bool) -> usize {
        if compressed {
            self.max_message
                .saturating_add(self.max_message / 1024)
                .saturating_add(64)
        } else {
            self.max_message
        }
    }

    /// Decodes at most one message from `buf`, unmasking in place. Call again with
    /// `&mut buf[consumed..]` until it returns no message; keep the unconsumed rest for later.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Decoded<'a>, WsError> {
        if self.frag_done {
            self.frag_done = false;
            self.frag.clear();
            if self.frag.capacity() > KEEP_BUFFER {
                self.frag = Vec::new();
            }
            self.inflated.clear();
            if self.inflated.capacity() > KEEP_BUFFER {
                self.inflated = Vec::new();
            }
        }
        let mut pos = 0;
        loop {
            let head = match parse_head_ext(&buf[pos..], self.masked, self.deflate)? {
                Some(h) => h,
                None => {
                    return Ok(Decoded {
                        consumed: pos,
                        message: None,
                    });
                }
            };
            let (held, compressed) = match head.opcode {
                o if o.is_control() => (0, false),
                Opcode::Continuation => (self.frag.len() as u64, self.frag_compressed),
                _ => (0, head.rsv1),
            };
            let limit = self.wire_limit(compressed);
            if head.len.saturating_add(held) > limit as u64 {
                return Err(WsError::TooBig {
                    len: head.len.saturating_add(held),
                    max: limit,
                });
            }
            let start = pos + head.header_len;
            let end = start + head.len as usize;
            if buf.len() < end {
                return Ok(Decoded {
                    consumed: pos,
                    message: None,
                });
            }
            if let Some(key) = head.mask {
                apply_mask(&mut buf[start..end], key);
            }
            pos = end;
            match head.opcode {
                Opcode::Ping | Opcode::Pong | Opcode::Close => {
                    let payload = &buf[start..end];
                    let message = match head.opcode {
                        Opcode::Ping => Message::Ping(payload),
                        Opcode::Pong => Message::Pong(payload),
                        _ => parse_close(payload)?,
                    };
                    return Ok(Decoded {
                        consumed: pos,
                        message: Some(message),
                    });
                }
                Opcode::Text | Opcode::Binary => {
                    if self.frag_opcode.is_some() {
                        return Err(WsError::Protocol(
                            "new data frame inside a fragmented message",
                        ));
                    }
                    if head.fin {
                        let message = if head.rsv1 {
                            self.frag_done = true;
                            inflate_into(&buf[start..end], self.max_message, &mut self.inflated)?;
                            data_message(head.opcode, &self.inflated)?
                        } else {
                            data_message(head.opcode, &buf[start..end])?
                        };
                        return Ok(Decoded {
                            consumed: pos,
                            message: Some(message),
                        });
                    }
                    self.frag_opcode = Some(head.opcode);
                    self.frag_compressed = head.rsv1;
                    self.push_fragment(&buf[start..end], limit);
                }
                Opcode::Continuation => {
                    let Some(opcode) = self.frag_opcode else {
                        return Err(WsError::Protocol(
                            "continuation frame without a message to continue",
                        ));
                    };
                    self.push_fragment(&buf[start..end], limit);
                    if head.fin {
                        self.frag_opcode = None;
                        self.frag_done = true;
                        let message = if self.frag_compressed {
                            inflate_into(&self.frag, self.max_message, &mut self.inflated)?;
                            data_message(opcode, &self.inflated)?
                        } else {
                            data_message(opcode, &self.frag)?
                        };
                        return Ok(Decoded {
                            consumed: pos,
                            message: Some(message),
                        });
                    }
                }
            }
        }
    }

    /// Appends a fragment's payload. The buffer grows by doubling like a `Vec`, but never past
    /// the message limit (plain doubling could reserve almost twice the limit); the caller has
    /// checked that the message fits.
    fn push_fragment(&mut self, bytes: &[u8], limit: usize) {
        let need = self.frag.len() + bytes.len();
        if need > self.frag.capacity() {
            let target = (self.frag.capacity() * 2).min(limit).max(need);
            self.frag.reserve_exact(target - self.frag.len());
        }
        self.frag.extend_from_slice(bytes);
    }
}

fn data_message(opcode: Opcode, payload: &[u8]) -> Result<Message<'_>, WsError> {
    if opcode == Opcode::Text {
        std::str::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

fn parse_close(payload: &[u8]) -> Result<Message<'_>, WsError> {
    match payload.len() {
        0 => Ok(Message::Close(None)),
        1 => Err(WsError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close(Some((code, reason))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [1, 2, 3, 4];

    fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let (h, n) = frame_head(fin, opcode, payload.len() as u64, Some(KEY));
        let mut out = h[..n].to_vec();
        let mut p = payload.to_vec();
        apply_mask(&mut p, KEY);
        out.extend(p);
        out
    }

    fn decode_all(dec: &mut Decoder, buf: &mut [u8]) -> Result<Vec<String>, WsError> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let d = dec.decode(&mut buf[pos..])?;
            pos += d.consumed;
            match d.message {
                None => return Ok(out),
                Some(m) => out.push(format!("{m:?}")),
            }
        }
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn decodes_text_binary_control_and_fragments() {
        let mut buf = frame(true, Opcode::Text, b"hello");
        buf.extend(frame(false, Opcode::Binary, b"ab"));
        buf.extend(frame(true, Opcode::Ping, b"p"));
        buf.extend(frame(true, Opcode::Continuation, b"cd"));
        buf.extend(frame(true, Opcode::Close, &close_payload(1000, "bye")));
        let mut dec = Decoder::server(1024);
        let got = decode_all(&mut dec, &mut buf).unwrap();
        assert_eq!(
            got,
            vec![
                "Text(\"hello\")",
                "Ping([112])",
                "Binary([97, 98, 99, 100])",
                "Close(Some((1000, \"bye\")))"
            ]
        );
    }

    #[test]
    fn partial_input_needs_more() {
        let full = frame(true, Opcode::Binary, &[7u8; 300]);
        let mut dec = Decoder::server(1024);
        for cut in [0, 1, 3, 7, 100, 299] {
            let mut part = full[..cut].to_vec();
            let d = dec.decode(&mut part).unwrap();
            assert_eq!(
                d,
                Decoded {
                    consumed: 0,
                    message: None
                }
            );
        }
        let mut all = full.clone();
        let d = dec.decode(&mut all).unwrap();
        assert_eq!(d.consumed, full.len());
        assert_eq!(d.message, Some(Message::Binary(&[7u8; 300])));
    }

    fn zframe(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = frame(fin, opcode, payload);
        out[0] |= RSV1;
        out
    }

    fn compressed(text: &[u8]) -> Vec<u8> {
        let mut z = Vec::new();
        crate::deflate::deflate(text, crate::deflate::Deflate::On, 6, &mut z);
        z
    }

    #[test]
    fn compressed_messages_inflate_whole_or_fragmented() {
        let text = "哈哈哈 666 ".repeat(50);
        let z = compressed(text.as_bytes());
        let mut buf = zframe(true, Opcode::Text, &z);
        buf.extend(frame(true, Opcode::Text, b"plain"));
        let (a, b) = z.split_at(z.len() / 2);
        buf.extend(zframe(false, Opcode::Binary, a));
        buf.extend(frame(true, Opcode::Ping, b"p"));
        buf.extend(frame(true, Opcode::Continuation, b));
        let mut dec = Decoder::server(1024).with_deflate(true);
        let got = decode_all(&mut dec, &mut buf).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], format!("Text({text:?})"));
        assert_eq!(got[1], "Text(\"plain\")");
        assert_eq!(got[2], "Ping([112])");
        assert_eq!(got[3], format!("Binary({:?})", text.as_bytes()));
    }

    #[test]
    fn compression_violations_map_to_close_codes() {
        let bomb = compressed(&[b'a'; 100_000]);
        assert!(bomb.len() < 1024, "{}", bomb.len());
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Inflates past the limit: 1009, whatever its size on the wire.
            (zframe(true, Opcode::Binary, &bomb), close::MESSAGE_TOO_BIG),
            (
                zframe(true, Opcode::Text, &[0xff; 40]),
                close::INVALID_PAYLOAD,
            ),
            (
                zframe(true, Opcode::Text, &compressed(&[0xff, 0xfe])),
                close::INVALID_PAYLOAD,
            ),
            (zframe(true, Opcode::Ping, b""), close::PROTOCOL_ERROR),
            (
                [
                    frame(false, Opcode::Text, b"a"),
                    zframe(true, Opcode::Continuation, b"b"),
                ]
                .concat(),
                close::PROTOCOL_ERROR,
            ),
            // RSV2 stays reserved.
            (vec![0x82 | 0x20, 0x80, 0, 0, 0, 0], close::PROTOCOL_ERROR),
        ];
        for (i, (mut buf, code)) in cases.into_iter().enumerate() {
            let mut dec = Decoder::server(4096).with_deflate(true);
            match decode_all(&mut dec, &mut buf) {
                Err(e) => assert_eq!(e.close_code(), code, "case {i}: {e}"),
                Ok(m) => panic!("case {i}: decoded {m:?}"),
            }
        }
        // A decoder that did not negotiate it refuses RSV1 (see below) and, after an inflated
        // message, still decodes plain ones.
        let mut dec = Decoder::server(4096).with_deflate(true);
        let mut buf = zframe(true, Opcode::Text, &compressed(b"hi"));
        buf.extend(frame(true, Opcode::Text, b"there"));
        assert_eq!(
            decode_all(&mut dec, &mut buf).unwrap(),
            vec!["Text(\"hi\")", "Text(\"there\")"]
        );
    }

    #[test]
    fn violations_map_to_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x82 | 0x40, 0x80, 0, 0, 0, 0], close::PROTOCOL_ERROR), // RSV1
            (vec![0x83, 0x80, 0, 0, 0, 0], close::PROTOCOL_ERROR),        // opcode 3
            (vec![0x82, 0x00], close::PROTOCOL_ERROR),                    // unmasked
            (frame(false, Opcode::Ping, b""), close::PROTOCOL_ERROR),     // fragmented control
            (
                frame(true, Opcode::Continuation, b"x"),
                close::PROTOCOL_ERROR,
            ),
            (
                frame(true, Opcode::Text, &[0xff, 0xfe]),
                close::INVALID_PAYLOAD,
            ),
            (
                frame(true, Opcode::Binary, &[0; 2000]),
                close::MESSAGE_TOO_BIG,
            ),
            (frame(true, Opcode::Close, &[0x03]), close::PROTOCOL_ERROR),
            (
                frame(true, Opcode::Close, &[0x03, 0xed]),
                close::PROTOCOL_ERROR,
            ), // 1005
        ];
        for (i, (mut buf, code)) in cases.into_iter().enumerate() {
            let mut dec = Decoder::server(1024);
            match decode_all(&mut dec, &mut buf) {
                Err(e) => assert_eq!(e.close_code(), code, "case {i}: {e}"),
                Ok(m) => panic!("case {i} decoded {m:?}"),
            }
        }
    }

    #[test]
    fn fragmented_message_over_the_limit_is_rejected() {
        let mut buf = frame(false, Opcode::Text, &[b'a'; 600]);
        buf.extend(frame(true, Opcode::Continuation, &[b'a'; 600]));
        let mut dec = Decoder::server(1000);
        assert_eq!(
            decode_all(&mut dec, &mut buf).unwrap_err().close_code(),
            close::MESSAGE_TOO_BIG
        );
    }

    /// Found by fuzzing: fragments of 400, 400 and 200 bytes under a 1,000-byte limit grew the
    /// buffer to 1,600 bytes (doubling); it stays within the limit.
    #[test]
    fn fragment_buffer_never_grows_past_the_limit() {
        let mut buf = frame(false, Opcode::Binary, &[1; 400]);
        buf.extend(frame(false, Opcode::Continuation, &[2; 400]));
        buf.extend(frame(true, Opcode::Continuation, &[3; 200]));
        let mut dec = Decoder::server(1000);
        let d = dec.decode(&mut buf).unwrap();
        let Some(Message::Binary(m)) = d.message else {
            panic!("{:?}", d.message)
        };
        assert_eq!(m.len(), 1000);
        assert!(dec.frag.capacity() <= 1000, "{}", dec.frag.capacity());
    }

    #[test]
    fn client_decoder_reads_server_frames() {
        let mut buf = server_frame(Opcode::Binary, &[9; 70_000]);
        let mut dec = Decoder::client(1 << 20);
        let d = dec.decode(&mut buf).unwrap();
        assert_eq!(d.message, Some(Message::Binary(&[9; 70_000][..])));
    }

    proptest! {
        #[test]
        fn mask_is_an_involution(data in proptest::collection::vec(any::<u8>(), 0..100), key in any::<[u8; 4]>()) {
            let mut m = data.clone();
            apply_mask(&mut m, key);
            for (i, b) in m.iter().enumerate() {
                prop_assert_eq!(*b, data[i] ^ key[i % 4]);
            }
            apply_mask(&mut m, key);
            prop_assert_eq!(m, data);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut dec = Decoder::server(128);
            let _ = decode_all(&mut dec, &mut data);
        }

        #[test]
        fn any_split_point_gives_the_same_messages(payload in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..420) {
            let full = frame(true, Opcode::Binary, &payload);
            let cut = cut.min(full.len());
            let mut dec = Decoder::server(1024);
            let mut first = full[..cut].to_vec();
            let d = dec.decode(&mut first).unwrap();
            if cut < full.len() {
                prop_assert_eq!(d.message, None);
                let mut all = full.clone();
                let d = dec.decode(&mut all).unwrap();
                prop_assert_eq!(d.message, Some(Message::Binary(&payload)));
            }
        }
    }
}
