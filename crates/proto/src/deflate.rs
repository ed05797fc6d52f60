//! permessage-deflate (RFC 7692), compressed once per message for every connection.
//!
//! roomcast always answers an offer with `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 7.1.1: a server may add the latter to any offer): every
//! message is compressed on its own, in both directions. So one compressed frame serves every
//! connection that negotiated the extension — a room batch is encoded and compressed once, not
//! once per viewer — and no connection keeps a compressor or a decompressor between messages
//! (zlib's state is hundreds of KiB; a gateway holds hundreds of thousands of connections).
//! Each thread keeps one compressor per window size and one decompressor, reset per message.
//!
//! A client may ask for a smaller server window (`server_max_window_bits` 8–14). Such
//! connections share frames compressed with a 512-byte window: zlib never emits a distance
//! beyond the window minus 262 bytes (250 here), which fits every window from 256 bytes up.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::ws::{self, Opcode};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// What a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deflate {
    /// No compression.
    #[default]
    Off = 0,
    /// permessage-deflate with the full 32 KiB window.
    On = 1,
    /// permessage-deflate; the client limited the server's window (`server_max_window_bits`
    /// below 15): frames compressed with a 512-byte window.
    Small = 2,
}

impl Deflate {
    pub const COUNT: usize = 3;

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Deflate {
        match i {
            1 => Deflate::On,
            2 => Deflate::Small,
            _ => Deflate::Off,
        }
    }

    pub fn is_on(self) -> bool {
        self != Deflate::Off
    }

    fn window_bits(self) -> u8 {
        if self == Deflate::Small { 9 } else { 15 }
    }
}

/// An accepted offer: the connection's mode and the `Sec-WebSocket-Extensions` response value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub mode: Deflate,
    pub response: String,
}

/// Picks the first acceptable permessage-deflate offer from the values of the request's
/// `Sec-WebSocket-Extensions` headers (in order). Offers with unknown, repeated or invalid
/// parameters are declined (RFC 7692 5); `None` when none is acceptable.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    for value in values {
        for offer in split_outside_quotes(value, ',') {
            if let Some(a) = accept_offer(offer) {
                return Some(a);
            }
        }
    }
    None
}

fn accept_offer(offer: &str) -> Option<Agreed> {
    let mut parts = split_outside_quotes(offer, ';');
    let name = parts.next()?.trim();
    if !name.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let (mut snct, mut cnct, mut smwb, mut cmwb) = (false, false, None::<u8>, false);
    for p in parts {
        let p = p.trim();
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
            None => (p, None),
        };
        let seen = match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => std::mem::replace(&mut snct, true),
            "client_no_context_takeover" if value.is_none() => std::mem::replace(&mut cnct, true),
            "server_max_window_bits" => {
                let bits = window_bits(value?)?;
                smwb.replace(bits).is_some()
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                std::mem::replace(&mut cmwb, true)
            }
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    let mut response =
        format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
    let mode = match smwb {
        Some(bits) => {
            response.push_str(&format!("; server_max_window_bits={bits}"));
            if bits < 15 {
                Deflate::Small
            } else {
                Deflate::On
            }
        }
        None => Deflate::On,
    };
    Some(Agreed { mode, response })
}

/// A window size parameter: 8–15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty())
}

/// Settings of the compressing side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Frames whose payload is smaller than this go out uncompressed.
    pub min_bytes: usize,
}

/// The bytes every compressed message ends with, which the sender strips (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// One compressor per window size (15 and 9 bits) with its level.
    static DEFLATERS: RefCell<[Option<(u32, Compress)>; 2]> = const { RefCell::new([None, None]) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// A whole unfragmented server frame (as built by `FrameBuilder` or [`ws::server_frame`]),
/// compressed for connections in `mode`: a new frame with RSV1 set, or the same frame when the
/// mode is `Off`, the frame is a control frame, its payload is under `settings.min_bytes`, or
/// compressing would not make it smaller.
pub fn compress_frame(frame: &Bytes, mode: Deflate, settings: &Settings) -> Bytes {
    if mode == Deflate::Off {
        return frame.clone();
    }
    let Ok(Some(head)) = ws::parse_head(frame, false) else {
        return frame.clone();
    };
    let payload = &frame[head.header_len..];
    if head.opcode.is_control() || !head.fin || payload.len() < settings.min_bytes.max(1) {
        return frame.clone();
    }
    let mut out = Vec::with_capacity(ws::MAX_SERVER_HEADER + payload.len() / 2 + 64);
    out.resize(ws::MAX_SERVER_HEADER, 0);
    deflate(payload, mode, settings.level, &mut out);
    let len = out.len() - ws::MAX_SERVER_HEADER;
    if len >= payload.len() {
        return frame.clone();
    }
    let (mut h, n) = ws::frame_head(true, head.opcode, len as u64, None);
    h[0] |= ws::RSV1;
    let start = ws::MAX_SERVER_HEADER - n;
    out[start..ws::MAX_SERVER_HEADER].copy_from_slice(&h[..n]);
    Bytes::from(out).slice(start..)
}

/// A whole unfragmented client frame compressed with a fresh context (RSV1 set), masked with
/// `key`: for test and benchmark clients.
pub fn client_frame(opcode: Opcode, payload: &[u8], key: [u8; 4], level: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() / 2 + 64);
    deflate(payload, Deflate::On, level, &mut body);
    let (mut h, n) = ws::frame_head(true, opcode, body.len() as u64, Some(key));
    h[0] |= ws::RSV1;
    let mut out = Vec::with_capacity(n + body.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(&body);
    ws::apply_mask(&mut out[n..], key);
    out
}

/// Appends `input` compressed as one permessage-deflate message (fresh context, sync flush,
/// the final `00 00 ff ff` removed) to `out`.
pub fn deflate(input: &[u8], mode: Deflate, level: u32, out: &mut Vec<u8>) {
    let slot = usize::from(mode == Deflate::Small);
    let level = level.clamp(1, 9);
    DEFLATERS.with(|d| {
        let mut d = d.borrow_mut();
        let entry = &mut d[slot];
        if entry.as_ref().is_none_or(|(l, _)| *l != level) {
            *entry = Some((
                level,
                Compress::new_with_window_bits(Compression::new(level), false, mode.window_bits()),
            ));
        }
        let Some((_, c)) = entry.as_mut() else {
            return;
        };
        c.reset();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let done = c.total_in() as usize;
            if c.compress_vec(&input[done..], out, FlushCompress::Sync)
                .is_err()
            {
                // Compressing memory into memory cannot fail; should it, send nothing rather
                // than a broken stream (the caller then sends the frame uncompressed).
                out.clear();
                return;
            }
            // Finished once all input is in and zlib stopped with room to spare.
            if c.total_in() as usize == input.len() && out.len() < out.capacity() {
                break;
            }
        }
    });
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (the rest is not inflated).
    TooBig,
    /// Not a valid deflate stream.
    Corrupt,
}

/// Inflates one permessage-deflate message (its payload as received, without the tail) into
/// `out`, stopping as soon as the output would exceed `max` bytes: a small frame that would
/// inflate to gigabytes costs at most `max` bytes and the work to produce them.
pub fn inflate(input: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
    INFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let d = cell.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let base = out.len();
        let limit = base + max;
        for chunk in [input, &TAIL[..]] {
            let mut pos = 0;
            loop {
                let room = out.capacity() - out.len();
                if room == 0 {
                    if out.len() > limit {
                        return Err(InflateError::TooBig);
                    }
                    // Grow toward the limit (plus one byte, to see that it is exceeded).
                    let want = (out.len() - base).max(input.len() * 4).max(1024);
                    out.reserve_exact(want.min(limit + 1 - out.len()).max(1));
                }
                let (in0, out0) = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(&chunk[pos..], out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                pos += (d.total_in() - in0) as usize;
                let produced = d.total_out() - out0;
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block: whatever follows (the tail we appended) is ignored.
                    return Ok(());
                }
                if pos == chunk.len() && out.len() < out.capacity() {
                    break;
                }
                if produced == 0 && d.total_in() == in0 && out.len() < out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(values: &[&str]) -> Option<(Deflate, String)> {
        negotiate(values.iter().copied()).map(|a| (a.mode, a.response))
    }

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn offers_are_accepted_with_no_context_takeover_both_ways() {
        assert_eq!(
            agreed(&["permessage-deflate"]),
            Some((Deflate::On, BASE.into()))
        );
        // What browsers send.
        assert_eq!(
            agreed(&["permessage-deflate; client_max_window_bits"]),
            Some((Deflate::On, BASE.into()))
        );
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=10"]),
            Some((Deflate::Small, format!("{BASE}; server_max_window_bits=10")))
        );
        assert_eq!(
            agreed(&[
                "permessage-deflate; server_max_window_bits=\"15\"; client_no_context_takeover"
            ]),
            Some((Deflate::On, format!("{BASE}; server_max_window_bits=15")))
        );
        assert_eq!(agreed(&["x-webkit-deflate-frame"]), None);
        assert_eq!(agreed(&[]), None);
    }

    #[test]
    fn invalid_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(agreed(&[bad]), None, "{bad}");
        }
        assert_eq!(
            agreed(&["permessage-deflate; mystery, permessage-deflate"]),
            Some((Deflate::On, BASE.into()))
        );
        assert_eq!(
            agreed(&["foo", "permessage-deflate; server_max_window_bits=9"]),
            Some((Deflate::Small, format!("{BASE}; server_max_window_bits=9")))
        );
    }

    fn chat_text() -> Vec<u8> {
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&format!(
                "{{\"op\":\"room_msg\",\"body\":{{\"seq\":{i},\"text\":\"哈哈哈 666 🎉 nice play\"}}}},"
            ));
        }
        s.into_bytes()
    }

    fn roundtrip(mode: Deflate) {
        let payload = chat_text();
        let frame = Bytes::from(ws::server_frame(Opcode::Text, &payload));
        let settings = Settings {
            level: 6,
            min_bytes: 64,
        };
        let z = compress_frame(&frame, mode, &settings);
        let head = ws::parse_head_ext(&z, false, true).unwrap().unwrap();
        assert!(head.rsv1);
        assert!(z.len() * 5 < frame.len(), "{} vs {}", z.len(), frame.len());
        let mut out = Vec::new();
        inflate(&z[head.header_len..], 1 << 20, &mut out).unwrap();
        assert_eq!(out, payload);
    }

    #[test]
    fn a_compressed_frame_inflates_to_the_original() {
        roundtrip(Deflate::On);
        roundtrip(Deflate::Small);
    }

    #[test]
    fn small_frames_and_off_connections_get_the_plain_frame() {
        let settings = Settings {
            level: 6,
            min_bytes: 256,
        };
        let small = Bytes::from(ws::server_frame(Opcode::Text, b"{\"op\":\"online\"}"));
        assert_eq!(compress_frame(&small, Deflate::On, &settings), small);
        let big = Bytes::from(ws::server_frame(Opcode::Binary, &chat_text()));
        assert_eq!(compress_frame(&big, Deflate::Off, &settings), big);
        let ping = Bytes::from(ws::server_frame(Opcode::Ping, &[7; 100]));
        assert_eq!(compress_frame(&ping, Deflate::On, &settings), ping);
        // Incompressible: sent as it is.
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        let noisy = Bytes::from(ws::server_frame(Opcode::Binary, &noise));
        assert_eq!(compress_frame(&noisy, Deflate::On, &settings), noisy);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut z = Vec::new();
        deflate(&zeros, Deflate::On, 9, &mut z);
        assert!(z.len() < 20_000, "{}", z.len());
        let mut out = Vec::new();
        assert_eq!(inflate(&z, 65_536, &mut out), Err(InflateError::TooBig));
        assert!(out.capacity() <= 65_537 + 1024, "{}", out.capacity());
        let mut out = Vec::new();
        assert_eq!(
            inflate(&z[..z.len() / 2], 65_536, &mut out),
            Err(InflateError::TooBig)
        );
        // Exactly at the limit is fine.
        let mut z = Vec::new();
        deflate(&zeros[..65_536], Deflate::On, 9, &mut z);
        let mut out = Vec::new();
        inflate(&z, 65_536, &mut out).unwrap();
        assert_eq!(out.len(), 65_536);
    }

    #[test]
    fn garbage_is_corrupt() {
        let mut out = Vec::new();
        assert_eq!(
            inflate(&[0xff; 32], 1024, &mut out),
            Err(InflateError::Corrupt)
        );
        // An empty message (what some clients send for "").
        let mut z = Vec::new();
        deflate(b"", Deflate::On, 6, &mut z);
        let mut out = Vec::new();
        inflate(&z, 1024, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
