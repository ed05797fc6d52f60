//! Something to send to every member of a room, encoded at most once per wire format.
//!
//! The first connection that needs a format pays for encoding it (one `FrameBuilder` pass over
//! the batch); every other connection gets a clone of the same `Bytes`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use roomcast_proto::Op;
use roomcast_proto::body::Online;
use roomcast_proto::wire::{FrameBuilder, Wire};

use crate::ids::RoomId;
use crate::model::RoomBatch;

pub enum Content {
    Batch(Arc<RoomBatch>),
    Online { room: RoomId, count: u64 },
}

pub struct Outgoing {
    content: Content,
    frames: [OnceLock<Bytes>; Wire::COUNT],
    /// May a slow reader lose it?
    pub droppable: bool,
}

impl Outgoing {
    pub fn batch(batch: Arc<RoomBatch>) -> Self {
        Outgoing {
            content: Content::Batch(batch),
            frames: Default::default(),
            droppable: true,
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

    pub fn frame(&self, wire: Wire) -> &Bytes {
        self.frames[wire.index()].get_or_init(|| self.encode(wire))
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
