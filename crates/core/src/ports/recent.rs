//! The recent-messages cache (`room:recent:{roomId}`): each room's latest messages where every
//! gateway can read them, so a join's history needs no database read. Its errors are the message
//! store's ([`StoreError`]).

use std::time::Duration;

use crate::BoxFut;
use crate::ids::RoomId;
use crate::model::{RoomBatch, RoomMsg};

pub use super::store::StoreError;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

/// A capped list of each room's latest messages, kept where every gateway can read it (Redis
/// `room:recent:{room}` in the distributed mode): a join's history without a database read. A
/// cache, not a store — the database stays the record; a room the cache lost (evicted, expired,
/// a Redis that restarted without persistence) answers empty and the reader falls back to the
/// message store.
pub trait RecentMessages: Send + Sync {
    /// Appends a batch's messages in order and drops the oldest beyond `cap`; `ttl` after the
    /// last push the room's list expires (an idle room costs nothing).
    fn push<'a>(
        &'a self,
        batch: &'a RoomBatch,
        cap: usize,
        ttl: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>>;
    /// The room's last `limit` messages, oldest first (empty when unknown).
    fn recent<'a>(
        &'a self,
        room: &'a RoomId,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<RoomMsg>, StoreError>>;
}
