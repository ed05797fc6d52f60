//! The ingest port: how a gateway (or the server API, or the outbox relay) hands a message to
//! ingest — a direct call in standalone, a network call in the distributed mode — and how ingest
//! refuses one. The pipeline behind it is [`crate::ingest::IngestService`].

use std::sync::Arc;

use crate::BoxFut;
use crate::ids::{MsgId, RoomId, UserId};
use crate::model::MsgKind;

/// A message someone wants in a room.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub room: RoomId,
    pub user: UserId,
    pub name: Option<Arc<str>>,
    pub text: String,
    pub kind: MsgKind,
    /// JSON text (already validated as JSON by whoever built the request).
    pub payload: Option<String>,
    /// From the server API: no rate limits, no word filter.
    pub trusted: bool,
    /// An id chosen beforehand (trusted sources only: the outbox relay, so that a row published
    /// twice carries the same id both times; such a message counts as from the outbox).
    /// `None`: ingest assigns one.
    pub msg_id: Option<MsgId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub msg_id: MsgId,
    /// The text as it will be delivered (masked, if the filter masked it).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("rate limited ({scope}); retry in {retry_after_ms} ms")]
    RateLimited {
        retry_after_ms: u64,
        /// `user` or `room`.
        scope: &'static str,
    },
    #[error("muted in this room")]
    Muted {
        until_ms: Option<u64>,
        reason: String,
    },
    #[error("banned")]
    Banned {
        until_ms: Option<u64>,
        reason: String,
    },
    #[error("message contains words that are not allowed here")]
    ContentRejected,
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

/// Gateway → ingest.
pub trait Ingest: Send + Sync {
    fn submit(&self, req: ChatRequest) -> BoxFut<'_, Result<Accepted, IngestError>>;
}
