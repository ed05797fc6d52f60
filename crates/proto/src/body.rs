//! Packet bodies. Each struct is both a serde type (JSON) and a prost message (Protobuf), so the
//! two encodings cannot drift apart; `proto/roomcast.proto` documents the same schema for
//! clients in other languages (a test checks the field tags against it).
//!
//! JSON conventions: `msg_id` is a decimal string (it is a 64-bit id, beyond a JavaScript
//! number's exact range) and is accepted as a string or a number; optional fields are omitted
//! when absent; unknown fields are ignored so that clients and servers can evolve separately.

use serde::{Deserialize, Serialize};

// ---- client -> server ------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Login {
    #[prost(string, tag = "1")]
    pub token: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Heartbeat {}

/// A point in a room's stream: the client has everything up to `seq` of `epoch`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
pub struct Since {
    #[prost(uint32, tag = "1")]
    pub epoch: u32,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Join {
    #[prost(string, tag = "1")]
    pub room_id: String,
    /// How many recent messages to return (default 50, at most the server's limit).
    #[prost(uint32, optional, tag = "2")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
    /// Recover from this point instead of returning the last `history` messages.
    #[prost(message, optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    /// Only return messages from the last this many seconds.
    #[prost(uint32, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_secs: Option<u32>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Leave {
    #[prost(string, tag = "1")]
    pub room_id: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Chat {
    #[prost(string, tag = "1")]
    pub room_id: String,
    #[prost(string, tag = "2")]
    pub text: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    #[serde(with = "u64_str")]
    pub msg_id: u64,
}

// ---- server -> client replies ----------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct LoginOk {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(uint32, tag = "2")]
    pub heartbeat_s: u32,
    #[prost(string, optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct HeartbeatOk {}

/// `logout`: end the session (leave every room, drop presence) and close.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Logout {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct LogoutOk {}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct JoinOk {
    #[prost(string, tag = "1")]
    pub room_id: String,
    #[prost(uint64, tag = "2")]
    pub online: u64,
    #[prost(uint32, tag = "3")]
    pub epoch: u32,
    /// Present when the join carried `since`: whether `history` is exactly what was missed.
    #[prost(bool, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// Oldest first.
    #[prost(message, repeated, tag = "5")]
    pub history: Vec<RoomMsg>,
    /// The room's latest `seq` in `epoch` at the time of the join (0 when empty).
    #[prost(uint64, tag = "6")]
    pub last_seq: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct LeaveOk {
    #[prost(string, tag = "1")]
    pub room_id: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct ChatOk {
    #[prost(uint64, tag = "1")]
    #[serde(with = "u64_str")]
    pub msg_id: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Error {
    /// Machine-readable code, see docs/protocol.md.
    #[prost(string, tag = "1")]
    pub code: String,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(uint64, optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The op of the request that failed, when known.
    #[prost(string, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The room the request was about, when it was about one.
    #[prost(string, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
}

// ---- server pushes ---------------------------------------------------------------------------

/// One message of a room's stream.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct RoomMsg {
    #[prost(string, tag = "1")]
    pub room_id: String,
    #[prost(uint64, tag = "2")]
    #[serde(with = "u64_str")]
    pub msg_id: u64,
    /// Increases by one per message within `epoch`.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    #[prost(string, tag = "4")]
    pub user_id: String,
    #[prost(string, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[prost(string, tag = "6")]
    pub text: String,
    /// `chat`, `gift`, `like`, `follow`, `system` or `admin`.
    #[prost(string, tag = "7")]
    pub kind: String,
    /// Milliseconds since the Unix epoch, when the server accepted the message.
    #[prost(uint64, tag = "8")]
    pub ts: u64,
    #[prost(uint32, tag = "9")]
    pub epoch: u32,
    /// Structured data for non-chat kinds (a gift's id and count, say), as JSON text in
    /// Protobuf and as a JSON value in JSON.
    #[prost(string, optional, tag = "10")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "raw_json")]
    pub payload: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Online {
    #[prost(string, tag = "1")]
    pub room_id: String,
    #[prost(uint64, tag = "2")]
    pub count: u64,
}

/// A message that must reach the user: acknowledge it with `ack {msg_id}`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Critical {
    #[prost(uint64, tag = "1")]
    #[serde(with = "u64_str")]
    pub msg_id: u64,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[prost(string, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[prost(string, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none", with = "raw_json")]
    pub payload: Option<String>,
    #[prost(uint64, tag = "6")]
    pub ts: u64,
}

/// Sent just before the server closes a connection on purpose (kick, ban, slow reader).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Kicked {
    #[prost(string, tag = "1")]
    pub code: String,
    #[prost(string, tag = "2")]
    pub reason: String,
    /// `draining`: other gateways to reconnect to (`ws://…/ws` URLs), possibly none.
    #[prost(string, repeated, tag = "3")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconnect: Vec<String>,
}

/// `u64` as a JSON string, accepting a string or a number on input.
pub mod u64_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = itoa_buf::Buffer::new();
        s.serialize_str(buf.format(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum StrOrNum<'a> {
            Num(u64),
            Str(std::borrow::Cow<'a, str>),
        }
        match StrOrNum::deserialize(d)? {
            StrOrNum::Num(n) => Ok(n),
            StrOrNum::Str(s) => s
                .parse()
                .map_err(|_| D::Error::custom(format!("invalid id {s:?}: expected a decimal u64"))),
        }
    }

    /// A tiny stack formatter so that serializing an id does not allocate.
    mod itoa_buf {
        pub struct Buffer([u8; 20]);
        impl Buffer {
            pub fn new() -> Self {
                Buffer([0; 20])
            }
            pub fn format(&mut self, mut v: u64) -> &str {
                let mut i = 20;
                loop {
                    i -= 1;
                    self.0[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                    if v == 0 {
                        break;
                    }
                }
                // Only ASCII digits were written.
                std::str::from_utf8(&self.0[i..]).unwrap_or("0")
            }
        }
    }
}

/// `Option<String>` holding JSON text, written as a raw JSON value and read from any JSON value.
pub mod raw_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error, ser};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(text) => {
                let raw: &RawValue = serde_json::from_str(text)
                    .map_err(|e| <S::Error as ser::Error>::custom(format!("payload: {e}")))?;
                raw.serialize(s)
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let raw: Option<Box<RawValue>> = Option::deserialize(d).map_err(D::Error::custom)?;
        Ok(raw.map(|r| r.get().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> RoomMsg {
        RoomMsg {
            room_id: "lobby".into(),
            msg_id: 18_446_744_073_709_551_615,
            seq: 7,
            user_id: "alice".into(),
            name: Some("Alice".into()),
            text: "hi".into(),
            kind: "gift".into(),
            ts: 1_700_000_000_000,
            epoch: 3,
            payload: Some(r#"{"gift":"rocket","count":2}"#.into()),
        }
    }

    #[test]
    fn json_shape_is_the_documented_one() {
        let text = serde_json::to_string(&sample()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["msg_id"], "18446744073709551615");
        assert_eq!(json["payload"]["gift"], "rocket");
        assert_eq!(json["name"], "Alice");
        let back: RoomMsg = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sample());
        let no_name = RoomMsg {
            name: None,
            payload: None,
            ..sample()
        };
        let text = serde_json::to_string(&no_name).unwrap();
        assert!(
            !text.contains("name") && !text.contains("payload"),
            "{text}"
        );
    }

    #[test]
    fn protobuf_round_trip() {
        let bytes = sample().encode_to_vec();
        assert_eq!(RoomMsg::decode(&bytes[..]).unwrap(), sample());
    }

    #[test]
    fn msg_id_accepts_string_or_number() {
        let a: Ack = serde_json::from_str(r#"{"msg_id":"42"}"#).unwrap();
        let b: Ack = serde_json::from_str(r#"{"msg_id":42}"#).unwrap();
        assert_eq!(a.msg_id, 42);
        assert_eq!(b.msg_id, 42);
        assert!(serde_json::from_str::<Ack>(r#"{"msg_id":"x"}"#).is_err());
    }

    #[test]
    fn join_optional_fields() {
        let j: Join =
            serde_json::from_str(r#"{"room_id":"r","since":{"epoch":1,"seq":5}}"#).unwrap();
        assert_eq!(j.since, Some(Since { epoch: 1, seq: 5 }));
        assert_eq!(j.history, None);
    }
}
