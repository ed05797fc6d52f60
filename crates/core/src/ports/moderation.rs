//! Moderation: bans (global) and mutes (per room), each with an optional end.

use crate::BoxFut;
use crate::ids::{RoomId, UserId};

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

#[derive(Debug, Clone, thiserror::Error)]
#[error("moderation store unavailable: {0}")]
pub struct ModerationError(pub String);

/// A ban or mute: until when (ms since the Unix epoch; `None` = indefinitely) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sanction {
    pub until_ms: Option<u64>,
    pub reason: String,
}

/// Bans (global) and mutes (per room), with expiry.
pub trait Moderation: Send + Sync {
    fn ban(&self, user: &UserId, sanction: Sanction) -> BoxFut<'_, Result<(), ModerationError>>;
    fn unban(&self, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>>;
    fn banned(&self, user: &UserId) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>>;
    fn mute(
        &self,
        room: &RoomId,
        user: &UserId,
        sanction: Sanction,
    ) -> BoxFut<'_, Result<(), ModerationError>>;
    fn unmute(&self, room: &RoomId, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>>;
    fn muted(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>>;
}
