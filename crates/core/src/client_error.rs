//! What a client is told when a request is refused: the error codes of the protocol's `error`
//! reply (the HTTP endpoints' error bodies use the same codes), and the one mapping from
//! ingest's refusals to a code, a message, a `retry_after_ms` and an HTTP status.
//!
//! Every way into ingest — the `chat` op, `POST /dev/gift`, the server API's publish — answers
//! a refusal through [`ClientError::from`], so a client hears the same thing whichever door it
//! used. This module only describes the answer; sending it is the caller's business.

use crate::clock::now_ms;
use crate::ingest::IngestError;

/// Machine-readable error codes of the `error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    BadRequest,
    UnknownOp,
    TooLarge,
    NotJoined,
    TooManyRooms,
    RateLimited,
    Muted,
    Banned,
    ContentRejected,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::Unauthenticated,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::TooLarge,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::Muted,
        ErrorCode::Banned,
        ErrorCode::ContentRejected,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Muted => "muted",
            ErrorCode::Banned => "banned",
            ErrorCode::ContentRejected => "content_rejected",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Errors that mean the client sent something malformed (they count against its budget).
    pub(crate) fn is_malformed(self) -> bool {
        matches!(
            self,
            ErrorCode::BadRequest | ErrorCode::UnknownOp | ErrorCode::TooLarge
        )
    }
}

/// A refusal as a client sees it: `{code, message, retry_after_ms}`, and the status an HTTP
/// endpoint answers it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    /// When retrying makes sense: milliseconds to wait.
    pub retry_after_ms: Option<u64>,
    pub http_status: u16,
}

/// `retry_after_ms` of every `unavailable` refusal: a back-end failed, and a client that tries
/// again at once only adds load while it recovers.
pub const UNAVAILABLE_RETRY_MS: u64 = 1000;

/// The `retry_after_ms` a refusal with `code` carries when nothing more precise is known.
pub fn default_retry_after(code: ErrorCode) -> Option<u64> {
    (code == ErrorCode::Unavailable).then_some(UNAVAILABLE_RETRY_MS)
}

impl ClientError {
    /// A back-end the request needs failed (HTTP 503), with the usual `retry_after_ms`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ClientError::new(ErrorCode::Unavailable, message.into(), 503)
    }

    fn new(code: ErrorCode, message: String, http_status: u16) -> Self {
        ClientError {
            code,
            message,
            retry_after_ms: default_retry_after(code),
            http_status,
        }
    }
}

impl From<IngestError> for ClientError {
    fn from(e: IngestError) -> Self {
        let message = e.to_string();
        match e {
            IngestError::BadRequest(m) => ClientError::new(ErrorCode::BadRequest, m, 400),
            IngestError::RateLimited { retry_after_ms, .. } => ClientError {
                retry_after_ms: Some(retry_after_ms),
                ..ClientError::new(ErrorCode::RateLimited, message, 429)
            },
            IngestError::Muted { until_ms, reason } => ClientError {
                retry_after_ms: until_ms.map(|u| u.saturating_sub(now_ms())),
                ..ClientError::new(ErrorCode::Muted, format!("muted: {reason}"), 403)
            },
            IngestError::Banned { reason, .. } => {
                ClientError::new(ErrorCode::Banned, format!("banned: {reason}"), 403)
            }
            IngestError::ContentRejected => {
                ClientError::new(ErrorCode::ContentRejected, message, 400)
            }
            IngestError::Unavailable(m) => ClientError::unavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(e: IngestError) -> (&'static str, String, Option<u64>, u16) {
        let c = ClientError::from(e);
        (c.code.as_str(), c.message, c.retry_after_ms, c.http_status)
    }

    /// Pins what docs/protocol.md (section 9 and 15.2) promises for each refusal.
    #[test]
    fn every_ingest_refusal_has_its_code_message_and_status() {
        assert_eq!(
            client(IngestError::BadRequest("text must not be empty".into())),
            ("bad_request", "text must not be empty".into(), None, 400)
        );
        assert_eq!(
            client(IngestError::RateLimited {
                retry_after_ms: 412,
                scope: "user"
            }),
            (
                "rate_limited",
                "rate limited (user); retry in 412 ms".into(),
                Some(412),
                429
            )
        );
        assert_eq!(
            client(IngestError::Muted {
                until_ms: None,
                reason: "spam".into()
            }),
            ("muted", "muted: spam".into(), None, 403)
        );
        assert_eq!(
            client(IngestError::Banned {
                until_ms: Some(1),
                reason: "abuse".into()
            }),
            ("banned", "banned: abuse".into(), None, 403)
        );
        assert_eq!(
            client(IngestError::ContentRejected),
            (
                "content_rejected",
                "message contains words that are not allowed here".into(),
                None,
                400
            )
        );
        assert_eq!(
            client(IngestError::Unavailable("server is shutting down".into())),
            (
                "unavailable",
                "server is shutting down".into(),
                Some(UNAVAILABLE_RETRY_MS),
                503
            )
        );
    }

    /// A mute with an end says how long it has left; one already over says 0, not a wrap.
    #[test]
    fn a_mute_with_an_end_says_when_to_retry() {
        let (_, _, retry, _) = client(IngestError::Muted {
            until_ms: Some(now_ms() + 60_000),
            reason: String::new(),
        });
        let retry = retry.expect("a mute with an end has a retry_after_ms");
        assert!((50_000..=60_000).contains(&retry), "{retry}");
        let (_, _, retry, _) = client(IngestError::Muted {
            until_ms: Some(1),
            reason: String::new(),
        });
        assert_eq!(retry, Some(0));
    }

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
