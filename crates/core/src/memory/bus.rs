//! The in-memory bus: one bounded channel per partition, a room always on the same partition.
//!
//! Bounded on purpose: when workers fall behind, `publish` waits, which pushes back on the
//! publishing connection instead of growing memory.

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::BoxFut;
use crate::ids::RoomId;
use crate::model::InboundMessage;
use crate::ports::{Bus, BusConsumer, BusError};

pub struct MemoryBus {
    partitions: Mutex<Vec<mpsc::Sender<InboundMessage>>>,
    count: usize,
}

pub struct MemoryConsumer {
    partition: usize,
    rx: mpsc::Receiver<InboundMessage>,
}

/// The partition of a room: FNV-1a of its id, stable across runs and processes.
pub fn partition_of(room: &RoomId, partitions: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in room.as_str().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % partitions.max(1) as u64) as usize
}

impl MemoryBus {
    /// A bus with `partitions` partitions of `capacity` messages each, and one consumer per
    /// partition.
    pub fn new(partitions: usize, capacity: usize) -> (MemoryBus, Vec<MemoryConsumer>) {
        let partitions = partitions.max(1);
        let (txs, consumers) = (0..partitions)
            .map(|partition| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                (tx, MemoryConsumer { partition, rx })
            })
            .unzip();
        (
            MemoryBus {
                partitions: Mutex::new(txs),
                count: partitions,
            },
            consumers,
        )
    }

    /// Stops accepting messages; consumers drain what is queued, then see `Closed`.
    pub fn close(&self) {
        self.partitions.lock().clear();
    }
}

impl Bus for MemoryBus {
    fn publish(&self, msg: InboundMessage) -> BoxFut<'_, Result<(), BusError>> {
        let tx = {
            let parts = self.partitions.lock();
            parts.get(partition_of(&msg.room, self.count)).cloned()
        };
        Box::pin(async move {
            match tx {
                None => Err(BusError::Closed),
                Some(tx) => tx.send(msg).await.map_err(|_| BusError::Closed),
            }
        })
    }
}

impl MemoryConsumer {
    pub fn partition(&self) -> usize {
        self.partition
    }
}

impl BusConsumer for MemoryConsumer {
    fn next<'a>(
        &'a mut self,
        out: &'a mut Vec<InboundMessage>,
    ) -> BoxFut<'a, Result<(), BusError>> {
        Box::pin(async move {
            if self.rx.recv_many(out, 512).await == 0 {
                Err(BusError::Closed)
            } else {
                Ok(())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MsgId, UserId};
    use crate::model::MsgKind;

    fn msg(room: &str, i: u64) -> InboundMessage {
        InboundMessage {
            room: RoomId::parse(room).unwrap(),
            msg_id: MsgId(i),
            user: UserId::parse("u").unwrap(),
            name: None,
            text: i.to_string(),
            kind: MsgKind::Chat,
            ts: 0,
            payload: None,
            from_outbox: false,
        }
    }

    #[tokio::test]
    async fn a_room_stays_on_one_partition_in_order() {
        let (bus, mut consumers) = MemoryBus::new(4, 100);
        for i in 0..50 {
            bus.publish(msg("a", i)).await.unwrap();
            bus.publish(msg("b", i)).await.unwrap();
        }
        bus.close();
        let pa = partition_of(&RoomId::parse("a").unwrap(), 4);
        let mut got = Vec::new();
        let c = &mut consumers[pa];
        while c.next(&mut got).await.is_ok() {}
        let a: Vec<u64> = got
            .iter()
            .filter(|m| m.room.as_str() == "a")
            .map(|m| m.msg_id.0)
            .collect();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
        assert!(bus.publish(msg("a", 99)).await.is_err());
    }
}
