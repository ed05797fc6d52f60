//! Recovery with `since` that never says `recovered: true` over a hole.
//!
//! A join with `since` gets exactly what came after it or `recovered: false`. The recent
//! messages (the worker's ring, the Redis list) answer when they prove it: every `seq` from
//! `since + 1` to the room's last, once, in order. When they cannot — the gap is older than
//! what they keep, or a push to the list failed and left a hole — the message store (the
//! record) is read for the gap and joined with the recent messages' tail; if that still is not
//! contiguous the answer is `recovered: false`.
//!
//! A store read is single-flight per room: viewers who re-join at once (a worker died, a
//! gateway restarted) wait for one read and take what they need from it, so an outage does not
//! send every viewer to the database. What it must not do: answer from a read older than
//! [`FRESH`], or reuse a read that was cut at its limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ids::RoomId;
use crate::metrics::Metrics;
use crate::model::RoomMsg;
use crate::ports::{MessageStore, StoreError};

/// How long one store read serves other viewers of the room.
pub const FRESH: Duration = Duration::from_secs(2);

/// The messages of `epoch` after `after` in `msgs` (oldest first, any epochs), when they are
/// exactly `after + 1 ..= last_seq`, each once, in order; `None` when that is not proven.
pub fn contiguous_after<'a>(
    msgs: impl Iterator<Item = &'a Arc<RoomMsg>>,
    epoch: u32,
    after: u64,
    last_seq: u64,
) -> Option<Vec<Arc<RoomMsg>>> {
    let mut out = Vec::new();
    let mut next = after + 1;
    for m in msgs.filter(|m| m.epoch == epoch && m.seq > after) {
        if m.seq != next {
            return None;
        }
        out.push(m.clone());
        next += 1;
    }
    (next == last_seq + 1).then_some(out)
}

/// One store read of a room's gap, kept for the room's other viewers.
struct Flight {
    at: Instant,
    epoch: u32,
    after: u64,
    /// Fewer than the limit came back: everything the store had after `after`.
    complete: bool,
    msgs: Arc<Vec<Arc<RoomMsg>>>,
}

/// Store reads for recovery, single-flight per room.
pub struct StoreRecovery {
    store: Arc<dyn MessageStore>,
    flights: Mutex<HashMap<RoomId, Arc<tokio::sync::Mutex<Option<Flight>>>>>,
    metrics: Option<Arc<Metrics>>,
}

impl StoreRecovery {
    pub fn new(store: Arc<dyn MessageStore>) -> Self {
        StoreRecovery {
            store,
            flights: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The stored messages of `epoch` after `after` (at most `limit`), from a read of this
    /// room made less than [`FRESH`] ago when one covers it, else from a new read.
    /// Whether the answer came from another viewer's read goes with it.
    async fn read(
        &self,
        room: &RoomId,
        epoch: u32,
        after: u64,
        limit: usize,
        fresh: bool,
    ) -> Result<(Vec<Arc<RoomMsg>>, bool), StoreError> {
        let cell = self.flights.lock().entry(room.clone()).or_default().clone();
        let mut slot = cell.lock().await;
        if let Some(f) = slot.as_ref()
            && !fresh
            && f.epoch == epoch
            && f.after <= after
            && f.complete
            && f.at.elapsed() < FRESH
        {
            if let Some(m) = &self.metrics {
                m.recovery_store_shared.inc();
            }
            let msgs = f
                .msgs
                .iter()
                .filter(|m| m.seq > after)
                .take(limit)
                .cloned()
                .collect();
            return Ok((msgs, true));
        }
        if let Some(m) = &self.metrics {
            m.recovery_store_reads.inc();
        }
        let msgs: Vec<Arc<RoomMsg>> = self
            .store
            .read_after(room, epoch, after, limit)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        let complete = msgs.len() < limit;
        let msgs = Arc::new(msgs);
        *slot = Some(Flight {
            at: Instant::now(),
            epoch,
            after,
            complete,
            msgs: msgs.clone(),
        });
        drop(slot);
        drop(cell);
        let mut flights = self.flights.lock();
        if flights.len() > 1024 {
            // Rooms nobody is reading now whose read is stale.
            flights.retain(|_, c| {
                Arc::strong_count(c) > 1
                    || c.try_lock()
                        .map(|f| f.as_ref().is_some_and(|f| f.at.elapsed() < FRESH))
                        .unwrap_or(true)
            });
        }
        Ok((msgs.to_vec(), false))
    }

    /// Recovery after `after` in `epoch` from the store joined with `recent` (the recent
    /// messages, oldest first; the room's position is `last_seq` in `epoch` by them): the
    /// messages up to the newest either knows of, when together they are contiguous. `None`
    /// when they are not, or the store cannot be read (logged: the join answers
    /// `recovered: false`, it does not fail).
    pub async fn recover(
        &self,
        room: &RoomId,
        epoch: u32,
        after: u64,
        last_seq: u64,
        recent: &[Arc<RoomMsg>],
        limit: usize,
    ) -> Option<(u64, Vec<Arc<RoomMsg>>)> {
        if last_seq.saturating_sub(after) > limit as u64 {
            self.unproven();
            return None;
        }
        let mut fresh = false;
        loop {
            let (mut all, shared) = match self.read(room, epoch, after, limit, fresh).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "recovery: cannot read the store; answering recovered: false");
                    self.unproven();
                    return None;
                }
            };
            let stored_last = all.last().map(|m| m.seq).unwrap_or(after);
            all.extend(
                recent
                    .iter()
                    .filter(|m| m.epoch == epoch && m.seq > stored_last)
                    .cloned(),
            );
            let top = all.last().map(|m| m.seq).unwrap_or(after).max(last_seq);
            if let Some(msgs) = contiguous_after(all.iter(), epoch, after, top)
                && top - after <= limit as u64
            {
                return Some((top, msgs));
            }
            if shared {
                // Another viewer's read may predate what the store has now.
                fresh = true;
                continue;
            }
            tracing::info!(%room, epoch, after, top, "recovery: the store and the recent messages leave a hole; answering recovered: false");
            self.unproven();
            return None;
        }
    }

    fn unproven(&self) {
        if let Some(m) = &self.metrics {
            m.recovery_unproven.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::ports::store::suite::batch;

    fn msgs(epoch: u32, seqs: &[u64]) -> Vec<Arc<RoomMsg>> {
        seqs.iter()
            .map(|&s| batch("r", epoch, s..=s).msgs[0].clone())
            .collect()
    }

    #[test]
    fn contiguity_is_proven_or_refused() {
        let ok = contiguous_after(msgs(1, &[3, 4, 5, 6]).iter(), 1, 4, 6).unwrap();
        assert_eq!(ok.iter().map(|m| m.seq).collect::<Vec<_>>(), [5, 6]);
        assert!(
            contiguous_after(msgs(1, &[3, 4, 6]).iter(), 1, 3, 6).is_none(),
            "5 is missing"
        );
        assert!(
            contiguous_after(msgs(1, &[5, 6]).iter(), 1, 2, 6).is_none(),
            "older than what is kept"
        );
        assert!(
            contiguous_after(msgs(1, &[3, 4]).iter(), 1, 3, 6).is_none(),
            "the tail is missing"
        );
        assert!(
            contiguous_after(msgs(1, &[4, 4, 5]).iter(), 1, 3, 5).is_none(),
            "a position twice"
        );
        assert!(
            contiguous_after(msgs(2, &[4, 5]).iter(), 1, 3, 5).is_none(),
            "another epoch"
        );
        assert_eq!(
            contiguous_after(msgs(1, &[]).iter(), 1, 5, 5)
                .unwrap()
                .len(),
            0,
            "nothing missed"
        );
    }

    #[tokio::test]
    async fn the_store_fills_what_the_recent_messages_miss_and_is_read_once() {
        let store = Arc::new(MemoryStore::new(1000));
        store.append(Arc::new(batch("r", 1, 1..=8))).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let rec = StoreRecovery::new(store.clone()).with_metrics(metrics.clone());
        let room = RoomId::parse("r").unwrap();
        // The list has a hole at 7 and a tail the store does not have yet (9, 10).
        let recent = msgs(1, &[5, 6, 8, 9, 10]);
        let (top, got) = rec.recover(&room, 1, 2, 10, &recent, 100).await.unwrap();
        assert_eq!(top, 10);
        assert_eq!(
            got.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7, 8, 9, 10]
        );
        // Another viewer a little further on shares that read.
        let (_, got) = rec.recover(&room, 1, 4, 10, &recent, 100).await.unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(
            (
                metrics.recovery_store_reads.get(),
                metrics.recovery_store_shared.get()
            ),
            (1, 1)
        );
        // A hole neither has: refused.
        let holey = msgs(1, &[12]);
        assert!(rec.recover(&room, 1, 2, 12, &holey, 100).await.is_none());
        // A gap longer than the limit: refused.
        assert!(rec.recover(&room, 1, 0, 10, &recent, 5).await.is_none());
        assert_eq!(metrics.recovery_unproven.get(), 2);
    }

    #[tokio::test]
    async fn viewers_arriving_at_once_cost_one_store_read() {
        let store = Arc::new(MemoryStore::new(1000));
        store.append(Arc::new(batch("r", 1, 1..=50))).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let rec = Arc::new(StoreRecovery::new(store).with_metrics(metrics.clone()));
        let room = RoomId::parse("r").unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (rec, room) = (rec.clone(), room.clone());
                tokio::spawn(async move { rec.recover(&room, 1, 10 + i, 50, &[], 1000).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().is_some());
        }
        assert_eq!(
            metrics.recovery_store_reads.get(),
            1,
            "one read served the rest"
        );
    }
}
