//! The outbox store (`room_chat_outbox`): rows a backend wants published exactly once, and the
//! lease that lets one relay at a time publish them. The relay itself is
//! [`crate::outbox::OutboxRelay`].

use std::time::Duration;

use crate::BoxFut;
use crate::ids::{RoomId, UserId};
use crate::model::MsgKind;

pub use super::store::StoreError;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Assigned by the store, increasing: the publishing order.
    pub id: i64,
    /// What was written.
    pub event: NewOutboxRow,
    /// Milliseconds since the Unix epoch when the row was written.
    pub created_ms: u64,
    /// Fixed before the first publication (see the module docs).
    pub msg_id: Option<u64>,
}

/// A row to write (the store assigns `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxRow {
    pub room: RoomId,
    pub kind: MsgKind,
    pub user: UserId,
    pub name: Option<String>,
    pub text: String,
    /// JSON text.
    pub payload: Option<String>,
}

impl NewOutboxRow {
    /// A row's columns as a backend wrote them, checked: the reason when one can never be
    /// published (an invalid room, kind or user, a payload that is not JSON). Every outbox
    /// adapter sets such a row aside rather than letting it block the rows behind it.
    pub fn from_columns(
        room: &str,
        kind: &str,
        user: &str,
        name: Option<String>,
        text: String,
        payload: Option<String>,
    ) -> Result<Self, String> {
        let room = RoomId::parse(room).map_err(|e| format!("room_id {room:?}: {e}"))?;
        let kind = MsgKind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
        let user = UserId::parse(user).map_err(|e| format!("uid {user:?}: {e}"))?;
        if let Some(p) = &payload {
            serde_json::from_str::<&serde_json::value::RawValue>(p)
                .map_err(|e| format!("payload is not JSON: {e}"))?;
        }
        Ok(NewOutboxRow {
            room,
            kind,
            user,
            name,
            text,
            payload,
        })
    }
}

/// Where outbox rows live (the backend's database: SQLite in standalone, the MySQL-protocol
/// database beside the message store otherwise).
///
/// Contract (every adapter; [`suite::outbox_store_suite`] checks it): ids grow in insertion
/// order; `pending` lists rows neither stored nor failed, oldest first, every field as written;
/// a row's `msg_id` is set once and never changed; the message store sharing the database marks
/// a row sent when it stores the row's message (see [`crate::ports::MessageStore`]); the lease
/// has one holder at a time, judged by one clock (the database server's when relays on several
/// hosts share it).
pub trait OutboxStore: Send + Sync {
    /// Appends a row; returns its id.
    fn insert(&self, row: NewOutboxRow) -> BoxFut<'_, Result<i64, StoreError>>;
    /// Takes or renews the lease for `holder` until `now + ttl`; false while another holder's
    /// lease is still valid.
    fn acquire_lease<'a>(
        &'a self,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFut<'a, Result<bool, StoreError>>;
    /// Gives the lease up (a clean stop), so another relay need not wait for it to expire.
    fn release_lease<'a>(&'a self, holder: &'a str) -> BoxFut<'a, Result<(), StoreError>>;
    /// The oldest pending rows, in id order.
    fn pending(&self, limit: usize) -> BoxFut<'_, Result<Vec<OutboxRow>, StoreError>>;
    /// Records the message id a row will be published with.
    fn assign_msg_id(&self, id: i64, msg_id: u64) -> BoxFut<'_, Result<(), StoreError>>;
    // No `mark_sent`: the message store marks a row sent in the transaction that stores it.
    /// Marks a row that can never be published (it stays in the table, out of the queue).
    fn mark_failed(&self, id: i64) -> BoxFut<'_, Result<(), StoreError>>;
    /// Rows not yet published.
    fn pending_count(&self) -> BoxFut<'_, Result<u64, StoreError>>;
}
