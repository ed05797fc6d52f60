//! How one connection speaks: body encoding, frame type, and the builder that turns packets into
//! one finished WebSocket frame.
//!
//! A [`FrameBuilder`] writes packets straight into a buffer that has room for the WebSocket
//! header in front, so a batch becomes one contiguous, shareable `Bytes` — the same bytes go to
//! every connection that speaks this [`Wire`] (server frames are not masked).

use std::io::Write as _;

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::packet::put_packet;
use crate::ws::{self, Opcode};

/// Body encoding of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyFormat {
    Json,
    Proto,
}

/// What a connection reads and writes: the body format and the WebSocket frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// Text frames with JSON packets (`{"op":..,"seq":..,"body":..}` or an array of them).
    JsonText = 0,
    /// Binary frames of binary packets with JSON bodies.
    JsonBinary = 1,
    /// Binary frames of binary packets with Protobuf bodies (subprotocol `roomcast.v1.proto`).
    Proto = 2,
}

impl Wire {
    pub const COUNT: usize = 3;

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn body_format(self) -> BodyFormat {
        match self {
            Wire::Proto => BodyFormat::Proto,
            _ => BodyFormat::Json,
        }
    }

    pub fn opcode(self) -> Opcode {
        match self {
            Wire::JsonText => Opcode::Text,
            _ => Opcode::Binary,
        }
    }
}

/// The WebSocket subprotocol names.
pub const SUBPROTOCOL_JSON: &str = "roomcast.v1.json";
pub const SUBPROTOCOL_PROTO: &str = "roomcast.v1.proto";

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid JSON body: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid Protobuf body: {0}")]
    Proto(#[from] prost::DecodeError),
}

/// A packet body in either encoding.
pub trait Body: Serialize + DeserializeOwned + prost::Message + Default {}
impl<T: Serialize + DeserializeOwned + prost::Message + Default> Body for T {}

pub fn encode_body<T: Body>(format: BodyFormat, body: &T, out: &mut Vec<u8>) {
    match format {
        // Serializing our own structs into a Vec cannot fail (no maps with non-string keys,
        // payloads are validated JSON before they get here); an error would leave the body
        // empty rather than panic.
        BodyFormat::Json => {
            let mark = out.len();
            if serde_json::to_writer(&mut *out, body).is_err() {
                out.truncate(mark);
                out.extend_from_slice(b"{}");
            }
        }
        BodyFormat::Proto => {
            out.reserve(body.encoded_len());
            // Encoding into a Vec only fails for lack of capacity, which a Vec grows.
            let _ = body.encode(out);
        }
    }
}

pub fn decode_body<T: Body>(format: BodyFormat, bytes: &[u8]) -> Result<T, BodyError> {
    match format {
        BodyFormat::Json => {
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                // An empty JSON body means `{}`.
                return Ok(serde_json::from_slice(b"{}")?);
            }
            Ok(serde_json::from_slice(bytes)?)
        }
        BodyFormat::Proto => Ok(T::decode(bytes)?),
    }
}

/// Builds one server WebSocket frame holding one or more packets.
pub struct FrameBuilder {
    wire: Wire,
    buf: Vec<u8>,
    count: usize,
}

/// Room left in front of the payload for the largest unmasked frame header.
const HEAD_ROOM: usize = ws::MAX_SERVER_HEADER;

impl FrameBuilder {
    pub fn new(wire: Wire) -> Self {
        Self::with_capacity(wire, 256)
    }

    pub fn with_capacity(wire: Wire, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEAD_ROOM + capacity);
        buf.resize(HEAD_ROOM, 0);
        if wire == Wire::JsonText {
            // Becomes `[` if a second packet is added; a single packet is sent as an object.
            buf.push(b' ');
        }
        FrameBuilder {
            wire,
            buf,
            count: 0,
        }
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Payload bytes written so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - HEAD_ROOM
    }

    /// Appends one packet.
    pub fn push<T: Body>(&mut self, op: crate::Op, seq: u32, body: &T) {
        match self.wire {
            Wire::JsonText => {
                if self.count > 0 {
                    self.buf.push(b',');
                }
                self.buf.extend_from_slice(b"{\"op\":\"");
                self.buf.extend_from_slice(op.name().as_bytes());
                self.buf.extend_from_slice(b"\",\"seq\":");
                let _ = write!(self.buf, "{seq}");
                self.buf.extend_from_slice(b",\"body\":");
                encode_body(BodyFormat::Json, body, &mut self.buf);
                self.buf.push(b'}');
            }
            Wire::JsonBinary | Wire::Proto => {
                let format = self.wire.body_format();
                let _ = put_packet::<()>(&mut self.buf, op.code(), seq, |out| {
                    encode_body(format, body, out);
                    Ok(())
                });
            }
        }
        self.count += 1;
    }

    /// Finishes the frame: header in front, payload after, one contiguous buffer.
    pub fn finish(mut self) -> Bytes {
        if self.wire == Wire::JsonText {
            if self.count > 1 {
                self.buf[HEAD_ROOM] = b'[';
                self.buf.push(b']');
            } else {
                self.buf.remove(HEAD_ROOM);
            }
        }
        let payload_len = self.buf.len() - HEAD_ROOM;
        let (head, head_len) = ws::frame_head(true, self.wire.opcode(), payload_len as u64, None);
        let start = HEAD_ROOM - head_len;
        self.buf[start..HEAD_ROOM].copy_from_slice(&head[..head_len]);
        Bytes::from(self.buf).slice(start..)
    }
}

/// One packet in its own frame.
pub fn single_frame<T: Body>(wire: Wire, op: crate::Op, seq: u32, body: &T) -> Bytes {
    let mut b = FrameBuilder::new(wire);
    b.push(op, seq, body);
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{Online, RoomMsg};
    use crate::packet::Packets;
    use crate::ws::parse_head;
    use crate::{Op, body};

    fn msg(seq: u64) -> RoomMsg {
        RoomMsg {
            room_id: "r".into(),
            msg_id: 1,
            seq,
            user_id: "u".into(),
            text: "hello".into(),
            kind: "chat".into(),
            ..Default::default()
        }
    }

    fn payload(frame: &Bytes) -> &[u8] {
        let head = parse_head(frame, false).unwrap().unwrap();
        assert!(head.fin);
        assert_eq!(head.header_len + head.len as usize, frame.len());
        &frame[head.header_len..]
    }

    #[test]
    fn text_single_packet_is_an_object_and_several_an_array() {
        let one = single_frame(
            Wire::JsonText,
            Op::Online,
            0,
            &Online {
                room_id: "r".into(),
                count: 3,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(payload(&one)).unwrap();
        assert_eq!(v["op"], "online");
        assert_eq!(v["body"]["count"], 3);

        let mut b = FrameBuilder::new(Wire::JsonText);
        b.push(Op::RoomMsg, 0, &msg(1));
        b.push(Op::RoomMsg, 0, &msg(2));
        let two = b.finish();
        let v: serde_json::Value = serde_json::from_slice(payload(&two)).unwrap();
        assert_eq!(v[1]["body"]["seq"], 2);
    }

    #[test]
    fn binary_frames_hold_packets_in_both_formats() {
        for wire in [Wire::JsonBinary, Wire::Proto] {
            let mut b = FrameBuilder::new(wire);
            for i in 0..300 {
                b.push(Op::RoomMsg, 0, &msg(i));
            }
            let frame = b.finish();
            let packets: Vec<_> = Packets::new(payload(&frame), 1 << 20)
                .map(|p| p.unwrap())
                .collect();
            assert_eq!(packets.len(), 300);
            let last: RoomMsg = decode_body(wire.body_format(), packets[299].body).unwrap();
            assert_eq!(last.seq, 299);
        }
    }

    #[test]
    fn empty_json_body_is_an_empty_object() {
        let _: body::Heartbeat = decode_body(BodyFormat::Json, b"").unwrap();
        let _: body::Heartbeat = decode_body(BodyFormat::Json, b"  ").unwrap();
        assert!(decode_body::<body::Chat>(BodyFormat::Json, b"").is_err());
    }
}
