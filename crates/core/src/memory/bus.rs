//! The in-memory bus: a bounded log per partition and a consumer group over them, with Kafka's
//! contract (offsets, commits, assignments, at-least-once redelivery) so that the room worker
//! runs the same way on it as on Kafka.
//!
//! A key always maps to the same partition (FNV-1a of the key). Each partition keeps the records
//! after its last commit: a new owner starts after the commit, so records read but not committed
//! are handed out again. Bounded on purpose: `publish` waits while a partition holds `capacity`
//! unread records (when workers fall behind) or `RETAINED_FACTOR × capacity` uncommitted ones
//! (when commits stop), which pushes back on the publishing connection instead of growing memory.
//!
//! The group hands partitions round-robin to its members, in the order they joined; a member that
//! joins or leaves moves partitions. A moving partition is first `Revoked` from its owner and
//! given to the next one only when the owner has released it (called `next` again, or was
//! dropped), so two members never hold it at once. Standalone creates one member per partition
//! at start ([`MemoryBus::new`]) and never changes the group; tests add members with
//! [`MemoryBus::join`]. This adapter does no I/O and must not grow per message beyond its bounds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::BoxFut;
use crate::ids::RoomId;
use crate::model::InboundMessage;
use crate::ports::{Bus, BusConsumer, BusError, BusEvent, BusRecord, Offset, Partition};

/// A partition holds at most this many times its capacity of uncommitted records.
const RETAINED_FACTOR: usize = 4;

/// Commits a partition remembers, for tests (the last ones).
const COMMITS_KEPT: usize = 64;

/// Records one `next` hands out at most.
const MAX_RECORDS: usize = 512;

pub struct MemoryBus {
    shared: Arc<Shared>,
}

struct Shared {
    parts: Vec<Part>,
    capacity: usize,
    group: Mutex<Group>,
}

struct Part {
    log: Mutex<Log>,
    /// Publishers waiting for room.
    space: Notify,
}

#[derive(Default)]
struct Log {
    /// Records from offset `base` on (everything after the last commit).
    records: VecDeque<InboundMessage>,
    base: Offset,
    /// The owner's reading position.
    read: Offset,
    committed: Option<Offset>,
    /// The last [`COMMITS_KEPT`] commits, in order (for tests).
    commits: VecDeque<Offset>,
    closed: bool,
    /// Wakes the current owner.
    reader: Option<Arc<Notify>>,
}

impl Log {
    fn end(&self) -> Offset {
        self.base + self.records.len() as u64
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Holder {
    Free,
    Held(u64),
    /// Revoked from `from`, who has not released it yet; then it goes to `to`.
    Releasing {
        from: u64,
        to: Option<u64>,
    },
}

struct Member {
    wake: Arc<Notify>,
    events: Vec<BusEvent>,
}

struct Group {
    members: BTreeMap<u64, Member>,
    next_id: u64,
    holders: Vec<Holder>,
}

/// The partition of a bus key: FNV-1a of the key, stable across runs and processes.
pub fn partition_of_key(key: &str, partitions: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % partitions.max(1) as u64) as usize
}

/// The partition of a room (its bus key is its id).
pub fn partition_of(room: &RoomId, partitions: usize) -> usize {
    partition_of_key(room.as_str(), partitions)
}

impl MemoryBus {
    /// A bus with `partitions` partitions of `capacity` records each, and one consumer per
    /// partition (consumer `i` holds partition `i`).
    pub fn new(partitions: usize, capacity: usize) -> (MemoryBus, Vec<MemoryConsumer>) {
        let partitions = partitions.max(1);
        let bus = MemoryBus::without_consumers(partitions, capacity);
        let ids: Vec<u64> = {
            let mut g = bus.shared.group.lock();
            let ids = (0..partitions).map(|_| g.add_member()).collect();
            bus.shared.rebalance(&mut g);
            ids
        };
        let consumers = ids
            .into_iter()
            .map(|id| MemoryConsumer::new(bus.shared.clone(), id))
            .collect();
        (bus, consumers)
    }

    /// A bus with no consumers yet (they join with [`MemoryBus::join`]).
    pub fn without_consumers(partitions: usize, capacity: usize) -> MemoryBus {
        let partitions = partitions.max(1);
        MemoryBus {
            shared: Arc::new(Shared {
                parts: (0..partitions)
                    .map(|_| Part {
                        log: Mutex::new(Log::default()),
                        space: Notify::new(),
                    })
                    .collect(),
                capacity: capacity.max(1),
                group: Mutex::new(Group {
                    members: BTreeMap::new(),
                    next_id: 0,
                    holders: vec![Holder::Free; partitions],
                }),
            }),
        }
    }

    /// A new member of the consumer group; partitions move to it (see the module docs).
    pub fn join(&self) -> MemoryConsumer {
        let id = {
            let mut g = self.shared.group.lock();
            let id = g.add_member();
            self.shared.rebalance(&mut g);
            id
        };
        MemoryConsumer::new(self.shared.clone(), id)
    }

    pub fn partitions(&self) -> usize {
        self.shared.parts.len()
    }

    /// The last commits of a partition (up to 64), in order.
    pub fn commits(&self, partition: Partition) -> Vec<Offset> {
        self.shared
            .parts
            .get(partition as usize)
            .map(|p| p.log.lock().commits.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Stops accepting records; consumers drain what is there, then see `Closed`.
    pub fn close(&self) {
        for part in &self.shared.parts {
            let reader = {
                let mut log = part.log.lock();
                log.closed = true;
                log.reader.clone()
            };
            part.space.notify_waiters();
            if let Some(r) = reader {
                r.notify_one();
            }
        }
        for m in self.shared.group.lock().members.values() {
            m.wake.notify_one();
        }
    }
}

impl Group {
    fn add_member(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.members.insert(
            id,
            Member {
                wake: Arc::new(Notify::new()),
                events: Vec::new(),
            },
        );
        id
    }

    fn push_event(&mut self, member: u64, event: BusEvent) {
        if let Some(m) = self.members.get_mut(&member) {
            // Merge with a pending event of the same kind, keeping the order of kinds.
            match (m.events.last_mut(), event) {
                (Some(BusEvent::Assigned(ps)), BusEvent::Assigned(more))
                | (Some(BusEvent::Revoked(ps)), BusEvent::Revoked(more)) => ps.extend(more),
                (_, event) => m.events.push(event),
            }
            m.wake.notify_one();
        }
    }
}

impl Shared {
    /// Moves partitions towards a round-robin spread over the members.
    fn rebalance(&self, g: &mut Group) {
        let ids: Vec<u64> = g.members.keys().copied().collect();
        for p in 0..self.parts.len() {
            let target = (!ids.is_empty()).then(|| ids[p % ids.len()]);
            match g.holders[p] {
                Holder::Held(a) if Some(a) == target => {}
                Holder::Held(a) => {
                    g.holders[p] = Holder::Releasing {
                        from: a,
                        to: target,
                    };
                    g.push_event(a, BusEvent::Revoked(vec![p as Partition]));
                }
                Holder::Releasing { from, .. } => {
                    g.holders[p] = Holder::Releasing { from, to: target };
                }
                Holder::Free => {
                    if let Some(t) = target {
                        self.give(g, p, t);
                    }
                }
            }
        }
    }

    /// Hands a free partition to a member: it reads from after the last commit.
    fn give(&self, g: &mut Group, p: usize, member: u64) {
        let Some(wake) = g.members.get(&member).map(|m| m.wake.clone()) else {
            g.holders[p] = Holder::Free;
            return;
        };
        {
            let mut log = self.parts[p].log.lock();
            log.read = log.base;
            log.reader = Some(wake);
        }
        g.holders[p] = Holder::Held(member);
        g.push_event(member, BusEvent::Assigned(vec![p as Partition]));
        self.parts[p].space.notify_waiters();
    }

    /// A member let go of a revoked partition: it goes to its next owner.
    fn release(&self, g: &mut Group, p: usize, member: u64) {
        if let Holder::Releasing { from, to } = g.holders[p]
            && from == member
        {
            self.parts[p].log.lock().reader = None;
            g.holders[p] = Holder::Free;
            match to {
                Some(t) if g.members.contains_key(&t) => self.give(g, p, t),
                _ => self.rebalance(g),
            }
        }
    }
}

impl Bus for MemoryBus {
    fn publish(&self, msg: InboundMessage) -> BoxFut<'_, Result<(), BusError>> {
        Box::pin(async move {
            let part = &self.shared.parts[partition_of_key(msg.bus_key(), self.shared.parts.len())];
            let cap = self.shared.capacity;
            loop {
                let space = part.space.notified();
                tokio::pin!(space);
                space.as_mut().enable();
                {
                    let mut log = part.log.lock();
                    if log.closed {
                        return Err(BusError::Closed);
                    }
                    let unread = log.end() - log.read.max(log.base);
                    if unread < cap as u64 && log.records.len() < cap * RETAINED_FACTOR {
                        log.records.push_back(msg);
                        let reader = log.reader.clone();
                        drop(log);
                        if let Some(r) = reader {
                            r.notify_one();
                        }
                        return Ok(());
                    }
                }
                space.await;
            }
        })
    }
}

/// A member of the in-memory bus's consumer group.
pub struct MemoryConsumer {
    shared: Arc<Shared>,
    id: u64,
    wake: Arc<Notify>,
    /// Partitions this consumer reads.
    owned: Vec<Partition>,
    /// Revoked partitions handed out as `Revoked`, released on the next `next` (or drop).
    releasing: Vec<Partition>,
}

impl MemoryConsumer {
    fn new(shared: Arc<Shared>, id: u64) -> Self {
        let wake = shared
            .group
            .lock()
            .members
            .get(&id)
            .map(|m| m.wake.clone())
            .unwrap_or_default();
        MemoryConsumer {
            shared,
            id,
            wake,
            owned: Vec::new(),
            releasing: Vec::new(),
        }
    }

    /// The partitions this consumer reads now.
    pub fn partitions(&self) -> &[Partition] {
        &self.owned
    }

    /// Takes pending group events; true when there were some.
    fn take_events(&mut self, out: &mut Vec<BusEvent>) -> bool {
        let mut g = self.shared.group.lock();
        for p in std::mem::take(&mut self.releasing) {
            self.shared.release(&mut g, p as usize, self.id);
        }
        let Some(m) = g.members.get_mut(&self.id) else {
            return false;
        };
        let events = std::mem::take(&mut m.events);
        drop(g);
        let any = !events.is_empty();
        for e in events {
            match &e {
                BusEvent::Assigned(ps) => self.owned.extend(ps),
                BusEvent::Revoked(ps) => {
                    self.owned.retain(|p| !ps.contains(p));
                    self.releasing.extend(ps);
                }
                BusEvent::Record(_) => {}
            }
            out.push(e);
        }
        any
    }

    /// Reads records of the owned partitions; whether every one of them is closed and drained.
    fn read(&mut self, out: &mut Vec<BusEvent>) -> bool {
        let mut all_done = true;
        let mut budget = MAX_RECORDS;
        for &p in &self.owned {
            let part = &self.shared.parts[p as usize];
            let took = {
                let mut log = part.log.lock();
                let from = log.read.max(log.base);
                let n = ((log.end() - from) as usize).min(budget);
                for i in 0..n {
                    let offset = from + i as u64;
                    let msg = log.records[(offset - log.base) as usize].clone();
                    out.push(BusEvent::Record(BusRecord {
                        partition: p,
                        offset,
                        msg,
                    }));
                }
                log.read = from + n as u64;
                all_done &= log.closed && log.read == log.end();
                n
            };
            if took > 0 {
                budget -= took;
                part.space.notify_waiters();
            }
        }
        all_done
    }
}

impl BusConsumer for MemoryConsumer {
    fn next<'a>(&'a mut self, out: &'a mut Vec<BusEvent>) -> BoxFut<'a, Result<(), BusError>> {
        Box::pin(async move {
            loop {
                let wake = self.wake.clone();
                let notified = wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.take_events(out) {
                    return Ok(());
                }
                let before = out.len();
                let drained = self.read(out);
                if out.len() > before {
                    return Ok(());
                }
                let closed =
                    self.owned.is_empty() && self.shared.parts.iter().all(|p| p.log.lock().closed);
                if drained && (closed || !self.owned.is_empty()) {
                    return Err(BusError::Closed);
                }
                notified.await;
            }
        })
    }

    fn commit(
        &mut self,
        partition: Partition,
        through: Offset,
    ) -> BoxFut<'_, Result<(), BusError>> {
        let r = if self.owned.contains(&partition) || self.releasing.contains(&partition) {
            let part = &self.shared.parts[partition as usize];
            {
                let mut log = part.log.lock();
                if log.committed.is_none_or(|c| through > c) && through < log.end() {
                    log.committed = Some(through);
                    if log.commits.len() == COMMITS_KEPT {
                        log.commits.pop_front();
                    }
                    log.commits.push_back(through);
                    let done =
                        ((through + 1).saturating_sub(log.base) as usize).min(log.records.len());
                    log.records.drain(..done);
                    log.base = through + 1;
                }
            }
            part.space.notify_waiters();
            Ok(())
        } else {
            Err(BusError::NotAssigned(partition))
        };
        Box::pin(std::future::ready(r))
    }

    fn partition_of(&self, key: &str) -> Partition {
        partition_of_key(key, self.shared.parts.len()) as Partition
    }
}

impl Drop for MemoryConsumer {
    /// Leaving the group releases everything this consumer held.
    fn drop(&mut self) {
        let mut g = self.shared.group.lock();
        g.members.remove(&self.id);
        for p in 0..self.shared.parts.len() {
            match g.holders[p] {
                Holder::Held(a) if a == self.id => {
                    self.shared.parts[p].log.lock().reader = None;
                    g.holders[p] = Holder::Free;
                }
                Holder::Releasing { from, .. } if from == self.id => {
                    self.shared.parts[p].log.lock().reader = None;
                    g.holders[p] = Holder::Free;
                }
                _ => {}
            }
        }
        self.shared.rebalance(&mut g);
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
        assert_eq!(got[0], BusEvent::Assigned(vec![pa as Partition]));
        let a: Vec<u64> = got
            .into_iter()
            .filter_map(BusEvent::into_message)
            .filter(|m| m.room.as_str() == "a")
            .map(|m| m.msg_id.0)
            .collect();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
        assert!(bus.publish(msg("a", 99)).await.is_err());
    }

    #[tokio::test]
    async fn publish_waits_for_a_reader_when_the_partition_is_full() {
        let (bus, mut consumers) = MemoryBus::new(1, 2);
        let bus = Arc::new(bus);
        bus.publish(msg("a", 0)).await.unwrap();
        bus.publish(msg("a", 1)).await.unwrap();
        let third = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(msg("a", 2)).await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "full: the publisher waits");
        let mut got = Vec::new();
        consumers[0].next(&mut got).await.unwrap(); // Assigned
        consumers[0].next(&mut got).await.unwrap(); // two records
        third.await.unwrap().unwrap();
        assert_eq!(got.len(), 3);
    }

    /// Read but uncommitted records are kept for the next owner, up to a bound: past it the
    /// publisher waits for a commit, which frees them.
    #[tokio::test]
    async fn uncommitted_records_are_bounded_and_freed_by_a_commit() {
        let (bus, mut consumers) = MemoryBus::new(1, 2);
        let bus = Arc::new(bus);
        let c = &mut consumers[0];
        let mut got = Vec::new();
        c.next(&mut got).await.unwrap(); // Assigned
        for i in 0..(2 * RETAINED_FACTOR as u64) {
            bus.publish(msg("a", i)).await.unwrap();
            c.next(&mut got).await.unwrap(); // read at once: never 2 unread
        }
        let blocked = tokio::spawn({
            let bus = bus.clone();
            async move { bus.publish(msg("a", 99)).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !blocked.is_finished(),
            "{RETAINED_FACTOR} × capacity kept: waits"
        );
        c.commit(0, 3).await.unwrap();
        blocked.await.unwrap().unwrap();
        assert_eq!(bus.commits(0), [3]);
    }

    #[tokio::test]
    async fn commits_for_partitions_not_held_are_refused() {
        let (_bus, mut consumers) = MemoryBus::new(2, 10);
        let mut got = Vec::new();
        consumers[0].next(&mut got).await.unwrap();
        assert!(matches!(
            consumers[0].commit(1, 0).await,
            Err(BusError::NotAssigned(1))
        ));
    }
}
