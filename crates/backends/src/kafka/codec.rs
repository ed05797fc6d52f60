//! The value of a `room_chat` record: a compact, versioned binary form of an
//! [`InboundMessage`], every field of it.
//!
//! ```text
//! version   u8       (1)
//! flags     u8       bit 0 from_outbox, bit 1 name present, bit 2 payload present
//! kind      u8       index in MsgKind::ALL
//! msg_id    u64 LE
//! ts        u64 LE
//! room      varint length + UTF-8
//! user      varint length + UTF-8
//! name      varint length + UTF-8   (when flagged)
//! text      varint length + UTF-8
//! payload   varint length + UTF-8   (when flagged)
//! ```
//!
//! A new field means a new version: a consumer refuses a version it does not know (the record
//! is skipped and counted, see the consumer) rather than guessing at bytes. Decoding checks
//! everything a message got checked for at ingest (ids parse, UTF-8), so a record written by
//! something else never becomes a message that could not have come in through the front door.

use std::sync::Arc;

use roomcast_core::ids::{MsgId, RoomId, UserId};
use roomcast_core::model::{InboundMessage, MsgKind};

/// The version this code writes (and the only one it reads).
pub const VERSION: u8 = 1;

const FROM_OUTBOX: u8 = 1;
const HAS_NAME: u8 = 2;
const HAS_PAYLOAD: u8 = 4;
const KNOWN_FLAGS: u8 = FROM_OUTBOX | HAS_NAME | HAS_PAYLOAD;

/// Why a record's value is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown encoding version {0} (this build reads {VERSION})")]
    Version(u8),
    #[error("truncated in {0}")]
    Truncated(&'static str),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0} bytes after the message")]
    Trailing(usize),
}

fn kind_index(kind: MsgKind) -> u8 {
    MsgKind::ALL
        .iter()
        .position(|k| *k == kind)
        .map_or(0, |i| i as u8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the encoding of `msg` to `out` (which the caller reuses between messages).
pub fn encode_into(msg: &InboundMessage, out: &mut Vec<u8>) {
    let mut flags = 0;
    if msg.from_outbox {
        flags |= FROM_OUTBOX;
    }
    if msg.name.is_some() {
        flags |= HAS_NAME;
    }
    if msg.payload.is_some() {
        flags |= HAS_PAYLOAD;
    }
    out.reserve(
        27 + msg.room.as_str().len()
            + msg.user.as_str().len()
            + msg.name.as_deref().map_or(0, str::len)
            + msg.text.len()
            + msg.payload.as_deref().map_or(0, str::len),
    );
    out.push(VERSION);
    out.push(flags);
    out.push(kind_index(msg.kind));
    out.extend_from_slice(&msg.msg_id.0.to_le_bytes());
    out.extend_from_slice(&msg.ts.to_le_bytes());
    put_str(out, msg.room.as_str());
    put_str(out, msg.user.as_str());
    if let Some(name) = &msg.name {
        put_str(out, name);
    }
    put_str(out, &msg.text);
    if let Some(payload) = &msg.payload {
        put_str(out, payload);
    }
}

/// The encoding of `msg` in a buffer of its own.
pub fn encode(msg: &InboundMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(msg, &mut out);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid {
            field: what,
            reason: "length does not fit in 64 bits".into(),
        })
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.varint(what)?;
        // A length past the end is truncation, whatever its size (no allocation before this).
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.buf.len())
            .ok_or(DecodeError::Truncated(what))?;
        std::str::from_utf8(self.take(len, what)?).map_err(|e| DecodeError::Invalid {
            field: what,
            reason: e.to_string(),
        })
    }
}

/// The message in a record's value.
pub fn decode(buf: &[u8]) -> Result<InboundMessage, DecodeError> {
    let mut r = Reader { buf };
    let version = r.u8("version").map_err(|_| DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = r.u8("flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Invalid {
            field: "flags",
            reason: format!("unknown bits {flags:#04x}"),
        });
    }
    let kind = r.u8("kind")?;
    let kind = *MsgKind::ALL
        .get(kind as usize)
        .ok_or_else(|| DecodeError::Invalid {
            field: "kind",
            reason: format!("no kind {kind}"),
        })?;
    let msg_id = MsgId(r.u64("msg_id")?);
    let ts = r.u64("ts")?;
    let room = RoomId::parse(r.str("room")?).map_err(|e| DecodeError::Invalid {
        field: "room",
        reason: e.to_string(),
    })?;
    let user = UserId::parse(r.str("user")?).map_err(|e| DecodeError::Invalid {
        field: "user",
        reason: e.to_string(),
    })?;
    let name = if flags & HAS_NAME != 0 {
        Some(Arc::<str>::from(r.str("name")?))
    } else {
        None
    };
    let text = r.str("text")?.to_owned();
    let payload = if flags & HAS_PAYLOAD != 0 {
        Some(r.str("payload")?.to_owned())
    } else {
        None
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing(r.buf.len()));
    }
    Ok(InboundMessage {
        room,
        msg_id,
        user,
        name,
        text,
        kind,
        ts,
        payload,
        from_outbox: flags & FROM_OUTBOX != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> InboundMessage {
        InboundMessage {
            room: RoomId::parse("room-1:a.b_c").unwrap(),
            msg_id: MsgId(0x0123_4567_89ab_cdef),
            user: UserId::parse("ünïcödé user").unwrap(),
            name: Some("Ålice 🎉".into()),
            text: "hello — 世界".repeat(40),
            kind: MsgKind::Gift,
            ts: 1_700_000_000_123,
            payload: Some(r#"{"gift":"rose","count":3}"#.into()),
            from_outbox: true,
        }
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let m = full();
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        let bare = InboundMessage {
            name: None,
            payload: None,
            from_outbox: false,
            text: String::new(),
            kind: MsgKind::Chat,
            ts: 0,
            msg_id: MsgId(u64::MAX),
            ..full()
        };
        assert_eq!(decode(&encode(&bare)).unwrap(), bare);
        for kind in MsgKind::ALL {
            let m = InboundMessage { kind, ..full() };
            assert_eq!(decode(&encode(&m)).unwrap().kind, kind);
        }
    }

    #[test]
    fn the_buffer_is_reused_as_given() {
        let mut buf = b"left over".to_vec();
        buf.clear();
        encode_into(&full(), &mut buf);
        assert_eq!(buf, encode(&full()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&full());
        for n in 0..bytes.len() {
            let e = decode(&bytes[..n]).expect_err("truncated");
            assert!(
                matches!(e, DecodeError::Empty | DecodeError::Truncated(_)),
                "{n} bytes: {e}"
            );
        }
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_refused() {
        let mut bytes = encode(&full());
        bytes[0] = 2;
        assert_eq!(decode(&bytes), Err(DecodeError::Version(2)));
        let mut bytes = encode(&full());
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::Trailing(1)));
        let mut bytes = encode(&full());
        bytes[1] |= 0x80;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Invalid { field: "flags", .. })
        ));
        let mut bytes = encode(&full());
        bytes[2] = 99;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Invalid { field: "kind", .. })
        ));
    }

    #[test]
    fn invalid_ids_and_text_are_refused() {
        let m = full();
        let mut bytes = encode(&m);
        // The room id's first byte (after the 19-byte head and its 1-byte length) becomes a
        // character room ids may not hold.
        bytes[20] = b'/';
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Invalid { field: "room", .. })
        ));
        let mut bytes = encode(&m);
        bytes[20] = 0xff;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Invalid { field: "room", .. })
        ));
        // A length that claims more than there is, and one that overflows.
        let mut bytes = encode(&m)[..19].to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated("room")));
        let mut bytes = encode(&m)[..19].to_vec();
        bytes.extend_from_slice(&[0xff; 11]);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::Invalid { field: "room", .. })
        ));
    }

    /// Garbage never panics and never allocates by a length it read: a fixed-seed stream of
    /// random inputs, and random bytes flipped in a valid record.
    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && !bytes.is_empty() {
                bytes[0] = VERSION;
            }
            let _ = decode(&bytes);
        }
        let valid = encode(&full());
        for _ in 0..20_000 {
            let mut bytes = valid.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            if let Ok(m) = decode(&bytes) {
                // A flip that still decodes gives a message whose ids would pass ingest.
                assert!(RoomId::parse(m.room.as_str()).is_ok());
            }
        }
    }
}
