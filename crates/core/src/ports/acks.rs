//! The ack store (`ack:pending:{userId}`): critical messages waiting for a user's `ack`, with
//! their retry state. Its errors are the message store's ([`StoreError`]).

use crate::BoxFut;
use crate::ids::{RoomId, UserId};

pub use super::store::StoreError;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

/// A critical message waiting for one user's `ack` (`ack:pending:{user}` in the design: msg_id →
/// next-retry deadline, with the message stored beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCritical {
    pub user: UserId,
    pub msg_id: u64,
    pub kind: String,
    pub room: Option<RoomId>,
    pub text: Option<String>,
    /// JSON text.
    pub payload: Option<String>,
    /// Milliseconds since the Unix epoch when it was created.
    pub ts: u64,
    /// How many times it has been sent.
    pub attempts: u32,
    /// When to send it again (ms since the Unix epoch) if still unacknowledged.
    pub next_retry_ms: u64,
}

/// Pending critical messages per user. Must survive a restart in every mode but tests.
pub trait AckStore: Send + Sync {
    /// Inserts or replaces (same user and msg_id) an entry.
    fn put(&self, p: PendingCritical) -> BoxFut<'_, Result<(), StoreError>>;
    /// Removes an entry; whether it was there.
    fn remove<'a>(&'a self, user: &'a UserId, msg_id: u64) -> BoxFut<'a, Result<bool, StoreError>>;
    /// The user's pending entries, oldest first.
    fn pending<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingCritical>, StoreError>>;
    /// Records another attempt of an existing entry (`attempts`, `next_retry_ms`); false when
    /// the entry is gone (acknowledged meanwhile) — it is never re-created.
    fn update(&self, p: &PendingCritical) -> BoxFut<'_, Result<bool, StoreError>>;
    /// Entries of all users, for metrics and tests.
    fn count(&self) -> BoxFut<'_, Result<u64, StoreError>>;
}
