//! Room history: the recent messages of each room and its stream position (`epoch`, `seq`).
//!
//! An in-memory ring per room (the last `max_count` messages) answers joins without touching the
//! store; the ring is filled from the [`MessageStore`] the first time a room is touched after a
//! start, so history survives restarts. The room worker is the only writer of a room (it assigns
//! `seq`), the gateway's join the reader.
//!
//! Epochs: a room's `seq` is only meaningful within its `epoch`. A room seen for the first time
//! gets a random epoch; so does every room after a start that followed a crash (the store may
//! have lost the last messages, so their `seq` values could be handed out again). A clean
//! restart keeps the epoch, so clients can recover across it. A fresh epoch that replaces a
//! stored one is written to the store at once (an empty batch), so that a crash followed by a
//! clean restart can never bring the older epoch back. A room with nothing stored has nothing
//! to regress to: its epoch lives in memory until its first batch is stored.
//!
//! Memory: at most `max_rooms` rooms are cached; past that the least recently used one that
//! nobody holds is dropped (least recently used within its shard of the map, so the check stays
//! cheap). A room with nothing stored costs one small slot with no ring allocated.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use roomcast_proto::body::Since;
use tokio::sync::OnceCell;

use crate::clock::{now_ms, now_s};
use crate::config::HistoryConfig;
use crate::ids::RoomId;
use crate::model::{RoomBatch, RoomMsg};
use crate::ports::{MessageStore, StoreError};
use crate::recovery::{StoreRecovery, contiguous_after};
use crate::shard::Sharded;

/// What a join asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub limit: Option<u32>,
    pub since: Option<Since>,
    pub secs: Option<u32>,
}

/// What a join gets.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub epoch: u32,
    pub last_seq: u64,
    /// Oldest first.
    pub msgs: Vec<Arc<RoomMsg>>,
    /// `Some` when the query had `since`: whether `msgs` is exactly what came after it.
    pub recovered: Option<bool>,
}

/// Where a gateway reads history for joins: the [`History`] itself in standalone.
pub trait HistoryReader: Send + Sync {
    fn query<'a>(
        &'a self,
        room: &'a RoomId,
        q: &'a HistoryQuery,
    ) -> crate::BoxFut<'a, Result<HistoryPage, StoreError>>;
}

impl HistoryReader for History {
    fn query<'a>(
        &'a self,
        room: &'a RoomId,
        q: &'a HistoryQuery,
    ) -> crate::BoxFut<'a, Result<HistoryPage, StoreError>> {
        Box::pin(History::query(self, room, q))
    }
}

/// A join's answer from a room's position and its recent messages (oldest first): the recovery
/// after `since` when the messages prove they cover it (every seq after it, once), otherwise
/// the last `limit` (within `secs`) with `recovered: false`.
pub(crate) fn answer<'a>(
    cfg: &HistoryConfig,
    epoch: u32,
    last_seq: u64,
    ring: impl ExactSizeIterator<Item = &'a Arc<RoomMsg>> + Clone,
    q: &HistoryQuery,
) -> HistoryPage {
    let limit = q
        .limit
        .map(|l| l as usize)
        .unwrap_or(cfg.default_count)
        .min(cfg.max_count);
    let mut recovered = None;
    if let Some(since) = &q.since {
        // Only what is proven contiguous counts as recovered (docs: module recovery).
        let proven = (since.epoch == epoch
            && since.seq <= last_seq
            && last_seq - since.seq <= cfg.recover_max_count as u64)
            .then(|| contiguous_after(ring.clone(), epoch, since.seq, last_seq))
            .flatten();
        recovered = Some(proven.is_some());
        if let Some(msgs) = proven {
            return HistoryPage {
                epoch,
                last_seq,
                msgs,
                recovered,
            };
        }
    }
    let min_ts = q
        .secs
        .map(|s| now_ms().saturating_sub(s as u64 * 1000))
        .unwrap_or(0);
    let skip = ring.len().saturating_sub(limit);
    let msgs = ring
        .skip(skip)
        .filter(|m| m.ts >= min_ts)
        .cloned()
        .collect();
    HistoryPage {
        epoch,
        last_seq,
        msgs,
        recovered,
    }
}

/// `page` (a join's answer with `recovered: false` for a gap in its own epoch), or the
/// recovery from the store joined with `recent` when together they prove the gap.
pub(crate) async fn recover_or(
    recovery: &StoreRecovery,
    cfg: &HistoryConfig,
    room: &RoomId,
    after: u64,
    page: HistoryPage,
    recent: &[Arc<RoomMsg>],
) -> HistoryPage {
    match recovery
        .recover(
            room,
            page.epoch,
            after,
            page.last_seq,
            recent,
            cfg.recover_max_count,
        )
        .await
    {
        Some((last_seq, msgs)) => HistoryPage {
            epoch: page.epoch,
            last_seq,
            msgs,
            recovered: Some(true),
        },
        None => page,
    }
}

struct RoomHistory {
    epoch: u32,
    last_seq: u64,
    ring: VecDeque<Arc<RoomMsg>>,
}

#[derive(Default)]
struct Slot {
    state: OnceCell<Mutex<RoomHistory>>,
    last_access_s: AtomicU64,
    /// [`History::tick`] at the last touch: the order for least-recently-used eviction.
    last_used: AtomicU64,
}

impl Slot {
    /// The loaded state; only called on slots returned by [`History::room`].
    fn lock(&self) -> parking_lot::MutexGuard<'_, RoomHistory> {
        self.state
            .get()
            .expect("room history is loaded before use")
            .lock()
    }
}

pub struct History {
    cfg: HistoryConfig,
    store: Arc<dyn MessageStore>,
    rooms: Sharded<HashMap<RoomId, Arc<Slot>>>,
    /// Slots in `rooms`.
    count: AtomicUsize,
    tick: AtomicU64,
    fresh_epochs: bool,
    /// Recoveries older than a room's ring.
    recovery: StoreRecovery,
}

/// A random non-zero epoch.
pub fn new_epoch() -> u32 {
    loop {
        let e = fastrand::u32(..);
        if e != 0 {
            return e;
        }
    }
}

impl History {
    pub fn new(cfg: HistoryConfig, store: Arc<dyn MessageStore>) -> Self {
        let fresh_epochs = !store.previous_shutdown_clean();
        // Shards of at least ~64 rooms, so that the least recently used room of a shard is close
        // to the least recently used of all.
        let shards = (cfg.max_rooms / 64).clamp(1, 64);
        History {
            cfg,
            recovery: StoreRecovery::new(store.clone()),
            store,
            rooms: Sharded::new(shards),
            count: AtomicUsize::new(0),
            tick: AtomicU64::new(0),
            fresh_epochs,
        }
    }

    /// Lets the store's partition claims alone decide which room positions to distrust (the
    /// distributed mode's workers, see [`crate::worker`]): a node's own unclean last run says
    /// nothing about partitions other workers released cleanly meanwhile, and the partitions it
    /// owned itself come back untrusted anyway.
    pub fn trusting_partition_claims(mut self) -> Self {
        self.fresh_epochs = false;
        self
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.cfg
    }

    fn capacity(&self) -> usize {
        self.cfg.max_count.max(1)
    }

    /// The room's slot, loaded.
    async fn room(&self, room: &RoomId) -> Result<Arc<Slot>, StoreError> {
        let (slot, added) = {
            let mut shard = self.rooms.for_key(room).lock();
            match shard.get(room) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Slot::default());
                    shard.insert(room.clone(), s.clone());
                    (s, true)
                }
            }
        };
        slot.last_access_s.store(now_s(), Ordering::Relaxed);
        slot.last_used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if added && self.count.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_rooms.max(1) {
            self.evict_one(room);
        }
        slot.state
            .get_or_try_init(|| async {
                let stored = self.store.load_room(room, self.capacity()).await?;
                let state = match stored {
                    None => RoomHistory {
                        epoch: new_epoch(),
                        last_seq: 0,
                        ring: VecDeque::new(),
                    },
                    Some(s) => {
                        let ring = s.recent.into_iter().map(Arc::new).collect();
                        if self.fresh_epochs || s.epoch == 0 {
                            let epoch = new_epoch();
                            // Durable before anyone sees it (the store writes in order).
                            self.store
                                .append(Arc::new(RoomBatch {
                                    room: room.clone(),
                                    epoch,
                                    msgs: Vec::new(),
                                    outbox_ids: Vec::new(),
                                }))
                                .await?;
                            RoomHistory {
                                epoch,
                                last_seq: 0,
                                ring,
                            }
                        } else {
                            RoomHistory {
                                epoch: s.epoch,
                                last_seq: s.last_seq,
                                ring,
                            }
                        }
                    }
                };
                Ok::<_, StoreError>(Mutex::new(state))
            })
            .await?;
        Ok(slot)
    }

    /// Drops the least recently used slot nobody holds: in `near`'s shard if it has one, else
    /// in the next shard that does.
    fn evict_one(&self, near: &RoomId) {
        let start = self.rooms.index_for(near);
        let n = self.rooms.iter().count();
        for i in 0..n {
            let mut shard = self.rooms.at((start + i) % n).lock();
            let victim = shard
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                shard.remove(&k);
                self.count.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// The room's epoch and last `seq` (loading it if needed).
    pub async fn cursor(&self, room: &RoomId) -> Result<(u32, u64), StoreError> {
        let slot = self.room(room).await?;
        let h = slot.lock();
        Ok((h.epoch, h.last_seq))
    }

    /// Starts a new epoch for the room (`last_seq` 0), durable before it is returned — for a
    /// worker that took the room's partition from an owner that did not release it cleanly: the
    /// stored position may be behind what clients saw, so no seq of the old epoch is handed out
    /// again. The ring keeps the old epoch's messages (history still shows them).
    pub async fn restart_epoch(&self, room: &RoomId) -> Result<u32, StoreError> {
        self.room(room).await?;
        let epoch = new_epoch();
        self.append(Arc::new(RoomBatch {
            room: room.clone(),
            epoch,
            msgs: Vec::new(),
            outbox_ids: Vec::new(),
        }))
        .await?;
        Ok(epoch)
    }

    /// Records a flushed batch: into the ring at once, into the store in the background (this
    /// waits only when the store's queue is full).
    pub async fn append(&self, batch: Arc<RoomBatch>) -> Result<(), StoreError> {
        {
            let slot = self.room(&batch.room).await?;
            let mut h = slot.lock();
            h.epoch = batch.epoch;
            h.last_seq = batch.last_seq();
            let cap = self.capacity();
            for m in &batch.msgs {
                if h.ring.len() >= cap {
                    h.ring.pop_front();
                }
                h.ring.push_back(m.clone());
            }
        }
        self.store.append(batch).await
    }

    /// Answers a join; a recovery older than the ring reads the store.
    pub async fn query(&self, room: &RoomId, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let slot = self.room(room).await?;
        let (page, ring) = {
            let h = slot.lock();
            let page = answer(&self.cfg, h.epoch, h.last_seq, h.ring.iter(), q);
            let gap = page.recovered == Some(false)
                && q.since
                    .as_ref()
                    .is_some_and(|s| s.epoch == h.epoch && s.seq < h.last_seq);
            (
                page,
                gap.then(|| h.ring.iter().cloned().collect::<Vec<_>>()),
            )
        };
        match (ring, &q.since) {
            (Some(ring), Some(since)) => {
                Ok(recover_or(&self.recovery, &self.cfg, room, since.seq, page, &ring).await)
            }
            _ => Ok(page),
        }
    }

    /// Forgets the in-memory history of rooms untouched for `idle_evict_s` (it is reloaded
    /// from the store on the next touch). Call periodically.
    pub fn evict_idle(&self) {
        let cutoff = now_s().saturating_sub(self.cfg.idle_evict_s);
        for shard in self.rooms.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.last_access_s.load(Ordering::Relaxed) >= cutoff
            });
            self.count
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Forgets the rooms `gone` names: their next touch loads them from the store. A room worker
    /// calls it when its partitions are revoked (after the store's flush), so that a later owner
    /// of the room — this process again, or another — starts from the store, never from memory
    /// of an earlier ownership.
    pub fn forget_rooms(&self, mut gone: impl FnMut(&RoomId) -> bool) {
        for shard in self.rooms.iter() {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|room, _| !gone(room));
            self.count
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Rooms with history in memory.
    pub fn rooms_in_memory(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> &Arc<dyn MessageStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn msg(room: &str, epoch: u32, seq: u64) -> Arc<RoomMsg> {
        Arc::new(RoomMsg {
            room_id: room.into(),
            msg_id: seq,
            seq,
            epoch,
            ts: now_ms(),
            text: format!("m{seq}"),
            kind: "chat".into(),
            ..Default::default()
        })
    }

    async fn fill(h: &History, room: &RoomId, n: u64) -> u32 {
        let (epoch, last) = h.cursor(room).await.unwrap();
        let msgs = (last + 1..=last + n)
            .map(|s| msg(room.as_str(), epoch, s))
            .collect();
        h.append(Arc::new(RoomBatch {
            room: room.clone(),
            epoch,
            msgs,
            outbox_ids: Vec::new(),
        }))
        .await
        .unwrap();
        epoch
    }

    fn seqs(p: &HistoryPage) -> Vec<u64> {
        p.msgs.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn last_n_and_recovery() {
        let cfg = HistoryConfig {
            default_count: 3,
            max_count: 5,
            ..Default::default()
        };
        let h = History::new(cfg, Arc::new(MemoryStore::new(100)));
        let r = RoomId::parse("r").unwrap();
        let epoch = fill(&h, &r, 8).await;

        let p = h.query(&r, &HistoryQuery::default()).await.unwrap();
        assert_eq!(seqs(&p), [6, 7, 8]);
        assert_eq!((p.epoch, p.last_seq, p.recovered), (epoch, 8, None));

        let p = h
            .query(
                &r,
                &HistoryQuery {
                    limit: Some(100),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(seqs(&p), [4, 5, 6, 7, 8], "capped at max_count");

        let since = |seq| HistoryQuery {
            since: Some(Since { epoch, seq }),
            ..Default::default()
        };
        let p = h.query(&r, &since(5)).await.unwrap();
        assert_eq!((seqs(&p), p.recovered), (vec![6, 7, 8], Some(true)));
        let p = h.query(&r, &since(3)).await.unwrap();
        assert_eq!(
            (seqs(&p), p.recovered),
            (vec![4, 5, 6, 7, 8], Some(true)),
            "4 is the oldest kept"
        );
        let p = h.query(&r, &since(8)).await.unwrap();
        assert_eq!((seqs(&p), p.recovered), (vec![], Some(true)));
        let p = h.query(&r, &since(2)).await.unwrap();
        assert_eq!(
            (seqs(&p), p.recovered),
            (vec![3, 4, 5, 6, 7, 8], Some(true)),
            "older than the ring: from the store"
        );
        let short = History::new(
            HistoryConfig {
                default_count: 3,
                max_count: 5,
                recover_max_count: 5,
                ..Default::default()
            },
            h.store().clone(),
        );
        let p = short.query(&r, &since(2)).await.unwrap();
        assert_eq!(
            (seqs(&p), p.recovered),
            (vec![6, 7, 8], Some(false)),
            "longer than recover_max_count: last N"
        );
        let p = h.query(&r, &since(9)).await.unwrap();
        assert_eq!(p.recovered, Some(false), "from the future");
        let other = HistoryQuery {
            since: Some(Since {
                epoch: epoch ^ 1,
                seq: 7,
            }),
            ..Default::default()
        };
        assert_eq!(
            h.query(&r, &other).await.unwrap().recovered,
            Some(false),
            "other epoch"
        );
    }

    #[tokio::test]
    async fn reload_from_store_keeps_the_epoch_after_a_clean_stop() {
        let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new(100));
        let r = RoomId::parse("r").unwrap();
        let epoch = {
            let h = History::new(HistoryConfig::default(), store.clone());
            fill(&h, &r, 4).await
        };
        let h = History::new(HistoryConfig::default(), store);
        assert_eq!(h.cursor(&r).await.unwrap(), (epoch, 4));
        let p = h.query(&r, &HistoryQuery::default()).await.unwrap();
        assert_eq!(seqs(&p), [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn time_window() {
        let h = History::new(HistoryConfig::default(), Arc::new(MemoryStore::new(10)));
        let r = RoomId::parse("r").unwrap();
        let (epoch, _) = h.cursor(&r).await.unwrap();
        let mut old = (*msg("r", epoch, 1)).clone();
        old.ts -= 120_000;
        let batch = RoomBatch {
            room: r.clone(),
            epoch,
            msgs: vec![Arc::new(old), msg("r", epoch, 2)],
            outbox_ids: Vec::new(),
        };
        h.append(Arc::new(batch)).await.unwrap();
        let p = h
            .query(
                &r,
                &HistoryQuery {
                    secs: Some(60),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(seqs(&p), [2]);
    }

    /// A store whose previous run crashed (positions cannot be trusted).
    struct AfterCrash(Arc<MemoryStore>);

    impl MessageStore for AfterCrash {
        fn append(&self, batch: Arc<RoomBatch>) -> crate::BoxFut<'_, Result<(), StoreError>> {
            self.0.append(batch)
        }
        fn load_room(
            &self,
            room: &RoomId,
            limit: usize,
        ) -> crate::BoxFut<'_, Result<Option<crate::ports::StoredRoom>, StoreError>> {
            self.0.load_room(room, limit)
        }
        fn read_after(
            &self,
            room: &RoomId,
            epoch: u32,
            after_seq: u64,
            limit: usize,
        ) -> crate::BoxFut<'_, Result<Vec<RoomMsg>, StoreError>> {
            self.0.read_after(room, epoch, after_seq, limit)
        }
        fn flush(&self) -> crate::BoxFut<'_, Result<(), StoreError>> {
            self.0.flush()
        }
        fn previous_shutdown_clean(&self) -> bool {
            false
        }
        fn close(&self) -> crate::BoxFut<'_, Result<(), StoreError>> {
            self.0.close()
        }
        fn claim_partitions<'a>(
            &'a self,
            owner: &'a crate::ids::NodeId,
            partitions: &'a [crate::ports::Partition],
        ) -> crate::BoxFut<'a, Result<Vec<crate::ports::Partition>, StoreError>> {
            self.0.claim_partitions(owner, partitions)
        }
        fn release_partitions<'a>(
            &'a self,
            owner: &'a crate::ids::NodeId,
            partitions: &'a [crate::ports::Partition],
        ) -> crate::BoxFut<'a, Result<(), StoreError>> {
            self.0.release_partitions(owner, partitions)
        }
    }

    /// Crash, then a run that only hands out the fresh epoch (no messages), then a clean
    /// restart: the room keeps the fresh epoch instead of going back to the stored one.
    #[tokio::test]
    async fn a_fresh_epoch_after_a_crash_survives_a_clean_restart() {
        let store = Arc::new(MemoryStore::new(100));
        let r = RoomId::parse("r").unwrap();
        let old = {
            let h = History::new(HistoryConfig::default(), store.clone());
            fill(&h, &r, 5).await
        };
        let fresh = {
            let h = History::new(
                HistoryConfig::default(),
                Arc::new(AfterCrash(store.clone())),
            );
            let (fresh, last) = h.cursor(&r).await.unwrap();
            assert_ne!(fresh, old, "a crash starts a new epoch");
            assert_eq!(last, 0);
            fresh
        };
        let h = History::new(HistoryConfig::default(), store);
        assert_eq!(
            h.cursor(&r).await.unwrap(),
            (fresh, 0),
            "the fresh epoch was stored when assigned"
        );
    }

    #[tokio::test]
    async fn cached_rooms_are_capped_and_an_evicted_room_continues_where_it_was() {
        let cfg = HistoryConfig {
            max_rooms: 16,
            ..Default::default()
        };
        let h = History::new(cfg, Arc::new(MemoryStore::new(100)));
        let kept = RoomId::parse("kept").unwrap();
        let epoch = fill(&h, &kept, 3).await;
        for i in 0..160 {
            let room = RoomId::parse(&format!("random-{i}-{}", fastrand::u64(..))).unwrap();
            h.query(&room, &HistoryQuery::default()).await.unwrap();
            assert!(h.rooms_in_memory() <= 16, "at most the cap");
        }
        assert_eq!(h.rooms_in_memory(), 16, "at the cap");
        assert!(
            !h.rooms.for_key(&kept).lock().contains_key(&kept),
            "the least recently used room was dropped"
        );
        assert_eq!(h.cursor(&kept).await.unwrap(), (epoch, 3), "reloaded");
        assert_eq!(fill(&h, &kept, 2).await, epoch);
        let p = h.query(&kept, &HistoryQuery::default()).await.unwrap();
        assert_eq!(seqs(&p), [1, 2, 3, 4, 5]);
        assert_eq!(h.rooms_in_memory(), 16);
    }

    #[tokio::test]
    async fn recently_used_rooms_stay_cached() {
        let cfg = HistoryConfig {
            max_rooms: 4,
            ..Default::default()
        };
        let h = History::new(cfg, Arc::new(MemoryStore::new(100)));
        let hot = RoomId::parse("hot").unwrap();
        let (epoch, _) = h.cursor(&hot).await.unwrap();
        for i in 0..40 {
            h.cursor(&RoomId::parse(&format!("cold-{i}")).unwrap())
                .await
                .unwrap();
            // Touched between every other room: never the least recently used.
            assert_eq!(h.cursor(&hot).await.unwrap(), (epoch, 0));
        }
        assert_eq!(h.rooms_in_memory(), 4);
    }
}
