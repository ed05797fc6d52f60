//! The messages that flow through the pipeline.
//!
//! [`InboundMessage`] is what ingest accepted and the bus carries (no sequence yet);
//! [`RoomBatch`] is what a room worker produced: sequenced messages of one room, in order, as the
//! wire type [`RoomMsg`] so that gateways can encode them without converting.

use std::sync::Arc;

pub use roomcast_proto::body::RoomMsg;

use crate::ids::{MsgId, RoomId, UserId};

/// What kind of room message this is. Clients render kinds differently (a gift is not a chat
/// line); only `chat` comes from clients, the others from the server API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MsgKind {
    Chat,
    Gift,
    Like,
    Follow,
    System,
    Admin,
}

impl MsgKind {
    pub const ALL: [MsgKind; 6] = [
        MsgKind::Chat,
        MsgKind::Gift,
        MsgKind::Like,
        MsgKind::Follow,
        MsgKind::System,
        MsgKind::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MsgKind::Chat => "chat",
            MsgKind::Gift => "gift",
            MsgKind::Like => "like",
            MsgKind::Follow => "follow",
            MsgKind::System => "system",
            MsgKind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<MsgKind> {
        MsgKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A message accepted by ingest, on its way through the bus to its room's worker.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub room: RoomId,
    pub msg_id: MsgId,
    pub user: UserId,
    pub name: Option<Arc<str>>,
    pub text: String,
    pub kind: MsgKind,
    /// Milliseconds since the Unix epoch, set by ingest.
    pub ts: u64,
    /// JSON text, for non-chat kinds.
    pub payload: Option<String>,
    /// Published by the outbox relay: the store marks its outbox row sent in the transaction
    /// that stores it, and a room worker drops a second copy of the same `msg_id`.
    pub from_outbox: bool,
}

impl InboundMessage {
    /// The key the bus partitions by (Kafka's message key): the room id. A hot room split over
    /// several streams later gets keys `roomId#shard`; everything keyed per stream (partition,
    /// a worker's room state) then follows this key, not the room id.
    pub fn bus_key(&self) -> &str {
        self.room.as_str()
    }

    /// The wire form once the room worker has given it a place in the room's stream.
    pub fn sequenced(&self, epoch: u32, seq: u64) -> RoomMsg {
        RoomMsg {
            room_id: self.room.as_str().to_owned(),
            msg_id: self.msg_id.0,
            seq,
            user_id: self.user.as_str().to_owned(),
            name: self.name.as_deref().map(str::to_owned),
            text: self.text.clone(),
            kind: self.kind.as_str().to_owned(),
            ts: self.ts,
            epoch,
            payload: self.payload.clone(),
        }
    }
}

/// Consecutive messages of one room, as a room worker flushed them.
#[derive(Debug)]
pub struct RoomBatch {
    pub room: RoomId,
    pub epoch: u32,
    pub msgs: Vec<Arc<RoomMsg>>,
    /// The `msg_id`s of the messages that came from the outbox: a store marks their outbox rows
    /// sent in the same transaction as the messages (see [`crate::outbox`]). Usually empty.
    pub outbox_ids: Vec<u64>,
}

impl RoomBatch {
    pub fn first_seq(&self) -> u64 {
        self.msgs.first().map(|m| m.seq).unwrap_or(0)
    }

    pub fn last_seq(&self) -> u64 {
        self.msgs.last().map(|m| m.seq).unwrap_or(0)
    }
}
