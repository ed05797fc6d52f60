//! Time-ordered message ids: 41 bits of milliseconds since 2024-01-01, 10 bits of ingest node
//! number, 12 bits of sequence — about 69 years, 1024 nodes, 4096 ids per millisecond per node.
//!
//! Ids from one node strictly increase, even if the wall clock steps back (the generator keeps
//! counting from the last time it used).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;
use crate::ids::MsgId;

/// 2024-01-01T00:00:00Z in ms since the Unix epoch.
pub const ID_EPOCH_MS: u64 = 1_704_067_200_000;
const SEQ_BITS: u32 = 12;
const NODE_BITS: u32 = 10;

pub struct IdGenerator {
    /// The node number (it changes only when a node lost its claim and took another).
    node: AtomicU64,
    /// `(ms since ID_EPOCH << SEQ_BITS) | seq` of the last id.
    last: AtomicU64,
}

impl IdGenerator {
    pub fn new(node: u16) -> Self {
        IdGenerator {
            node: AtomicU64::new(node as u64 & ((1 << NODE_BITS) - 1)),
            last: AtomicU64::new(0),
        }
    }

    /// The node number in the ids.
    pub fn node(&self) -> u16 {
        self.node.load(Ordering::Relaxed) as u16
    }

    /// Issues ids with another node number from now on (the node claimed a new one).
    pub fn set_node(&self, node: u16) {
        self.node
            .store(node as u64 & ((1 << NODE_BITS) - 1), Ordering::Relaxed);
    }

    pub fn next(&self) -> MsgId {
        self.next_at(now_ms())
    }

    fn next_at(&self, now_ms: u64) -> MsgId {
        let now = now_ms.saturating_sub(ID_EPOCH_MS) << SEQ_BITS;
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            // Next value: the current millisecond, or one more than the last (which rolls into
            // the next millisecond when the sequence is used up).
            let next = if now > cur { now } else { cur + 1 };
            match self
                .last
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ms = next >> SEQ_BITS;
                    let seq = next & ((1 << SEQ_BITS) - 1);
                    return MsgId(
                        (ms << (NODE_BITS + SEQ_BITS))
                            | (self.node.load(Ordering::Relaxed) << SEQ_BITS)
                            | seq,
                    );
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Milliseconds since the Unix epoch at which an id was made.
    pub fn timestamp_ms(id: MsgId) -> u64 {
        (id.0 >> (NODE_BITS + SEQ_BITS)) + ID_EPOCH_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increasing_even_when_the_clock_steps_back() {
        let g = IdGenerator::new(5);
        let t = ID_EPOCH_MS + 1_000_000;
        let a = g.next_at(t);
        let b = g.next_at(t);
        let c = g.next_at(t - 500);
        let d = g.next_at(t + 1);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(IdGenerator::timestamp_ms(a), t);
        assert_eq!((a.0 >> 12) & 1023, 5);
    }

    #[test]
    fn sequence_overflow_rolls_into_the_next_millisecond() {
        let g = IdGenerator::new(0);
        let t = ID_EPOCH_MS + 7;
        let ids: Vec<_> = (0..5000).map(|_| g.next_at(t)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(IdGenerator::timestamp_ms(ids[4095]), t);
        assert_eq!(IdGenerator::timestamp_ms(ids[4096]), t + 1);
    }

    #[test]
    fn unique_across_threads() {
        let g = std::sync::Arc::new(IdGenerator::new(1));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..10_000).map(|_| g.next().0).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
