//! The bus: the ordered, partitioned log between ingest and the room workers (Kafka's shape:
//! topic `room_chat`, key = room id), and the consumer group the workers form over it.

use crate::BoxFut;
use crate::model::InboundMessage;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus is closed")]
    Closed,
    #[error("bus is unavailable: {0}")]
    Unavailable(String),
    #[error("partition {0} is not assigned to this consumer")]
    NotAssigned(Partition),
}

/// A partition of the bus (Kafka's partition number).
pub type Partition = u32;

/// A record's place in its partition: 0, 1, 2, … in publication order (Kafka's offset).
pub type Offset = u64;

/// One message as a consumer read it: where it sits in the log, and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct BusRecord {
    pub partition: Partition,
    pub offset: Offset,
    pub msg: InboundMessage,
}

/// What a consumer hands out, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// These partitions are now this consumer's. Their records follow, starting after the
    /// group's last commit: records processed by an earlier owner but not committed come again.
    Assigned(Vec<Partition>),
    /// These partitions are no longer this consumer's; no more of their records follow. Before it
    /// calls [`BusConsumer::next`] again, the consumer's user finishes what it holds of them and
    /// commits: the next owner starts after that commit, and an adapter may hold the group's
    /// rebalance until that call.
    Revoked(Vec<Partition>),
    Record(BusRecord),
}

impl BusEvent {
    /// The message of a record event.
    pub fn into_message(self) -> Option<InboundMessage> {
        match self {
            BusEvent::Record(r) => Some(r.msg),
            _ => None,
        }
    }
}

/// The ordered, partitioned log between ingest and room workers (Kafka's shape: a key always
/// maps to the same partition, so one room's messages stay in order). The key is
/// [`InboundMessage::bus_key`], today the room id (topic `room_chat`, key = room id).
pub trait Bus: Send + Sync {
    fn publish(&self, msg: InboundMessage) -> BoxFut<'_, Result<(), BusError>>;
}

/// One member of the bus's consumer group; a room worker owns one.
///
/// Delivery is at least once: records after the last commit of a partition are handed out again
/// to its next owner (after a crash, a restart or a rebalance), and a broker may repeat records
/// around a rebalance even to the same owner. Users drop records at or below the offset they
/// processed and commit only what is done.
pub trait BusConsumer: Send {
    /// Waits for something to happen and appends at least one event to `out`: records, in order
    /// per partition, and assignment changes in the order they took effect. The first events
    /// of a new consumer are its `Assigned` partitions. `Err(Closed)` once the bus is closed
    /// and this consumer's partitions are drained (a networked bus may never close).
    fn next<'a>(&'a mut self, out: &'a mut Vec<BusEvent>) -> BoxFut<'a, Result<(), BusError>>;
    /// Marks every record of `partition` at or below `through` processed: the partition's next
    /// owner starts at `through + 1`. Commits never move back (a lower one is ignored). Allowed
    /// for assigned partitions, and for revoked ones until the next call to `next`.
    fn commit(&mut self, partition: Partition, through: Offset)
    -> BoxFut<'_, Result<(), BusError>>;
    /// The partition a bus key ([`InboundMessage::bus_key`]) maps to, as the publishers map it.
    fn partition_of(&self, key: &str) -> Partition;
}
