//! Something to send to every member of a room, encoded at most once per wire format and
//! compressed at most once per compression mode.
//!
//! The first connection that needs a format pays for encoding it (one `FrameBuilder` pass over
//! the batch), the first one of them that negotiated permessage-deflate for compressing it;
//! every other connection gets a clone of the same `Bytes`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use roomcast_proto::Op;
use roomcast_proto::body::Online;
use roomcast_proto::deflate::{self, Deflate};
use roomcast_proto::wire::{FrameBuilder, Wire};

use crate::ids::RoomId;
use crate::metrics::Metrics;
use crate::model::RoomBatch;

pub enum Content {
    Batch(Arc<RoomBatch>),
    Online { room: RoomId, count: u64 },
}

pub struct Outgoing {
    content: Content,
    /// By wire format, then compression mode.
    frames: [OnceLock<Bytes>; Wire::COUNT * Deflate::COUNT],
    /// May a slow reader lose it?
    pub droppable: bool,
}

impl Outgoing {
    /// A room batch. Ordinary messages (chat, likes) may be dropped for a reader that falls
    /// behind; a batch with a high-priority event (gift, follow, system, admin) may not (R18).
    pub fn batch(batch: Arc<RoomBatch>) -> Self {
        let droppable = !batch.msgs.iter().any(|m| high_priority(&m.kind));
        Outgoing {
            content: Content::Batch(batch),
            frames: Default::default(),
            droppable,
        }
    }

    pub fn online(room: RoomId, count: u64) -> Self {
        Outgoing {
            content: Content::Online { room, count },
            frames: Default::default(),
            droppable: true,
        }
    }

    pub fn content(&self) -> &Content {
        &self.content
    }

    /// Messages this carries (for delivery counts).
    pub fn message_count(&self) -> usize {
        match &self.content {
            Content::Batch(b) => b.msgs.len(),
            Content::Online { .. } => 0,
        }
    }

    /// The frame for a connection with this wire format and compression mode.
    pub fn frame(
        &self,
        wire: Wire,
        mode: Deflate,
        settings: &deflate::Settings,
        metrics: &Metrics,
    ) -> &Bytes {
        let at = wire.index() * Deflate::COUNT;
        let plain = self.frames[at].get_or_init(|| self.encode(wire));
        if mode == Deflate::Off {
            return plain;
        }
        self.frames[at + mode.index()].get_or_init(|| compress(plain, mode, settings, metrics))
    }

    fn encode(&self, wire: Wire) -> Bytes {
        match &self.content {
            Content::Batch(batch) => {
                let estimate = batch.msgs.iter().map(|m| m.text.len() + 96).sum();
                let mut b = FrameBuilder::with_capacity(wire, estimate);
                for m in &batch.msgs {
                    b.push(Op::RoomMsg, 0, &**m);
                }
                b.finish()
            }
            Content::Online { room, count } => {
                let mut b = FrameBuilder::new(wire);
                b.push(
                    Op::Online,
                    0,
                    &Online {
                        room_id: room.as_str().to_owned(),
                        count: *count,
                    },
                );
                b.finish()
            }
        }
    }
}

/// A frame compressed for connections in `mode` (the same frame when that does not pay), counted.
pub fn compress(
    frame: &Bytes,
    mode: Deflate,
    settings: &deflate::Settings,
    metrics: &Metrics,
) -> Bytes {
    let z = deflate::compress_frame(frame, mode, settings);
    if z.len() < frame.len() {
        // Header sizes aside, close enough for a ratio.
        metrics.deflate_frames.inc();
        metrics.deflate_in_bytes.add(frame.len() as u64);
        metrics.deflate_out_bytes.add(z.len() as u64);
    }
    z
}

/// Kinds that are never dropped for a slow reader.
pub fn high_priority(kind: &str) -> bool {
    matches!(kind, "gift" | "follow" | "system" | "admin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RoomMsg;

    fn batch(kinds: &[&str]) -> Arc<RoomBatch> {
        Arc::new(RoomBatch {
            room: RoomId::parse("r").unwrap(),
            epoch: 1,
            msgs: kinds
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    Arc::new(RoomMsg {
                        room_id: "r".into(),
                        msg_id: i as u64,
                        seq: i as u64 + 1,
                        user_id: "u".into(),
                        name: None,
                        text: "t".into(),
                        kind: (*k).into(),
                        ts: 0,
                        epoch: 1,
                        payload: None,
                    })
                })
                .collect(),
            outbox_ids: Vec::new(),
        })
    }

    #[test]
    fn only_ordinary_batches_may_be_dropped() {
        assert!(Outgoing::batch(batch(&["chat", "like", "chat"])).droppable);
        assert!(!Outgoing::batch(batch(&["chat", "gift"])).droppable);
        for k in ["follow", "system", "admin"] {
            assert!(!Outgoing::batch(batch(&[k])).droppable, "{k}");
        }
    }
}
