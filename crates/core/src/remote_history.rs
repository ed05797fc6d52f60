//! A gateway's history in the distributed mode, where the room worker that owns a room's stream
//! is another process: a join reads the room's recent list (`RecentMessages`, Redis), which the
//! worker appends to before it delivers each batch, and falls back to the message store (the
//! record) when the list has nothing — it expired with an idle room, or Redis lost it.
//!
//! A room with nothing in either has no stream yet: the answer has epoch 0 and `last_seq` 0, and
//! the first message starts the stream (its epoch is the room's; docs/protocol.md, section 10).
//! The list does not show an epoch that started without messages (after a worker crash) until
//! its first message: clients learn it from that message, as with any new epoch.

use std::sync::Arc;

use crate::BoxFut;
use crate::config::HistoryConfig;
use crate::history::{HistoryPage, HistoryQuery, HistoryReader, answer, recover_or};
use crate::ids::RoomId;
use crate::ports::{MessageStore, RecentMessages, StoreError};
use crate::recovery::StoreRecovery;

pub struct RemoteHistory {
    cfg: HistoryConfig,
    recent: Arc<dyn RecentMessages>,
    store: Arc<dyn MessageStore>,
    recovery: StoreRecovery,
}

impl RemoteHistory {
    pub fn new(
        cfg: HistoryConfig,
        recent: Arc<dyn RecentMessages>,
        store: Arc<dyn MessageStore>,
    ) -> Self {
        RemoteHistory {
            cfg,
            recent,
            recovery: StoreRecovery::new(store.clone()),
            store,
        }
    }

    /// Counts store reads for recovery in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.recovery = StoreRecovery::new(self.store.clone()).with_metrics(metrics);
        self
    }
}

impl HistoryReader for RemoteHistory {
    fn query<'a>(
        &'a self,
        room: &'a RoomId,
        q: &'a HistoryQuery,
    ) -> BoxFut<'a, Result<HistoryPage, StoreError>> {
        Box::pin(async move {
            let cap = self.cfg.max_count.max(1);
            let listed = match self.recent.recent(room, cap).await {
                Ok(l) => l,
                // The store still answers: a cache outage costs a database read, not the join.
                Err(e) => {
                    tracing::warn!(%room, error = %e, "recent list unavailable; reading the store");
                    Vec::new()
                }
            };
            let (epoch, last_seq, msgs) = match listed.last() {
                Some(last) => (
                    last.epoch,
                    last.seq,
                    listed.into_iter().map(Arc::new).collect(),
                ),
                None => match self.store.load_room(room, cap).await? {
                    Some(s) => (
                        s.epoch,
                        s.last_seq,
                        s.recent.into_iter().map(Arc::new).collect::<Vec<_>>(),
                    ),
                    None => (0, 0, Vec::new()),
                },
            };
            let page = answer(&self.cfg, epoch, last_seq, msgs.iter(), q);
            // A hole in the list (a push that failed) or a gap older than it: the store.
            match &q.since {
                Some(since)
                    if page.recovered == Some(false)
                        && since.epoch == epoch
                        && since.seq < last_seq =>
                {
                    Ok(recover_or(&self.recovery, &self.cfg, room, since.seq, page, &msgs).await)
                }
                _ => Ok(page),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::memory::{MemoryRecent, MemoryStore};
    use crate::model::{RoomBatch, RoomMsg};
    use roomcast_proto::body::Since;

    fn batch(room: &str, epoch: u32, seqs: std::ops::RangeInclusive<u64>) -> RoomBatch {
        RoomBatch {
            room: RoomId::parse(room).unwrap(),
            epoch,
            msgs: seqs
                .map(|seq| {
                    Arc::new(RoomMsg {
                        room_id: room.into(),
                        msg_id: seq,
                        seq,
                        user_id: "u".into(),
                        name: None,
                        text: format!("m{seq}"),
                        kind: "chat".into(),
                        ts: crate::clock::now_ms(),
                        epoch,
                        payload: None,
                    })
                })
                .collect(),
            outbox_ids: Vec::new(),
        }
    }

    fn seqs(p: &HistoryPage) -> Vec<u64> {
        p.msgs.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn joins_read_the_recent_list_then_the_store_then_nothing() {
        let recent = Arc::new(MemoryRecent::default());
        let store = Arc::new(MemoryStore::new(100));
        let h = RemoteHistory::new(HistoryConfig::default(), recent.clone(), store.clone());
        let room = RoomId::parse("r").unwrap();
        let q = HistoryQuery::default();

        let p = h.query(&room, &q).await.unwrap();
        assert_eq!(
            (p.epoch, p.last_seq, p.msgs.len()),
            (0, 0, 0),
            "no stream yet"
        );

        // Only the store has it (the list expired).
        store.append(Arc::new(batch("r", 7, 1..=4))).await.unwrap();
        let p = h.query(&room, &q).await.unwrap();
        assert_eq!((p.epoch, p.last_seq, seqs(&p)), (7, 4, vec![1, 2, 3, 4]));

        // The list is ahead of the store (written before delivery): it answers.
        let b = batch("r", 7, 5..=6);
        recent.push(&b, 100, Duration::from_secs(60)).await.unwrap();
        let p = h.query(&room, &q).await.unwrap();
        assert_eq!((p.epoch, p.last_seq, seqs(&p)), (7, 6, vec![5, 6]));

        // Recovery after `since` from the list.
        let since = HistoryQuery {
            since: Some(Since { epoch: 7, seq: 5 }),
            ..HistoryQuery::default()
        };
        let p = h.query(&room, &since).await.unwrap();
        assert_eq!((p.recovered, seqs(&p)), (Some(true), vec![6]));
        let gap = HistoryQuery {
            since: Some(Since { epoch: 7, seq: 2 }),
            ..HistoryQuery::default()
        };
        let p = h.query(&room, &gap).await.unwrap();
        assert_eq!(
            (p.recovered, p.last_seq, seqs(&p)),
            (Some(true), 6, vec![3, 4, 5, 6]),
            "3 and 4 are not in the list: the store has them"
        );
    }

    /// A push to the list that failed leaves a hole: recovery over it reads the store, and says
    /// `recovered: false` when the store does not have the message either.
    #[tokio::test]
    async fn a_hole_in_the_list_is_never_called_recovered() {
        let recent = Arc::new(MemoryRecent::default());
        let store = Arc::new(MemoryStore::new(100));
        let h = RemoteHistory::new(HistoryConfig::default(), recent.clone(), store.clone());
        let room = RoomId::parse("r").unwrap();
        let ttl = Duration::from_secs(60);
        recent.push(&batch("r", 7, 1..=3), 100, ttl).await.unwrap();
        // 4 was delivered, its push failed; 5 and 6 were pushed.
        recent.push(&batch("r", 7, 5..=6), 100, ttl).await.unwrap();
        let since = |seq| HistoryQuery {
            since: Some(Since { epoch: 7, seq }),
            ..HistoryQuery::default()
        };
        let p = h.query(&room, &since(2)).await.unwrap();
        assert_eq!(p.recovered, Some(false), "4 is in neither: {:?}", seqs(&p));
        let p = h.query(&room, &since(4)).await.unwrap();
        assert_eq!(
            (p.recovered, seqs(&p)),
            (Some(true), vec![5, 6]),
            "after the hole"
        );
        // The store has it (written after delivery): recovered from there.
        store.append(Arc::new(batch("r", 7, 1..=6))).await.unwrap();
        let p = h.query(&room, &since(2)).await.unwrap();
        assert_eq!((p.recovered, seqs(&p)), (Some(true), vec![3, 4, 5, 6]));
    }
}
