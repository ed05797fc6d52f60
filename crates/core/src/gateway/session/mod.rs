//! A connection's session: the reader task, request decoding, and the handler table.
//!
//! The reader task ([`reader`]) owns what only the connection itself needs (its user, its rooms,
//! its error budget) and reads only when the socket is readable; the read buffer is allocated
//! while bytes are being parsed and released when the connection goes idle. Each request is
//! decoded (binary packets or JSON text), looked up in the `op → handler` table built at
//! start-up, and answered with the handler's reply or an `error` that echoes the request's `seq`.
//! Each op's handler has a file of its own (`login`, `logout`, `heartbeat`, `join`, `leave`,
//! `chat`, `ack`): what a handler may touch is this module's [`Ctx`], and what it may answer
//! with is a reply through [`Ctx::reply`] or a [`ReplyError`].
//!
//! Violations of the WebSocket protocol close the connection with the RFC's close code;
//! malformed roomcast requests get an `error` reply and count against a budget
//! (`max_errors_per_10s`), past which the connection is closed with 4005. So do requests over
//! the per-connection limits (`join_limit`, `request_limit` for `ack`, `login` and pings) and
//! pings sent while the previous pong still waits for the peer to read.
//!
//! Clean-up (leaving rooms, presence, the connection table) runs when the task ends — also when
//! it ends by a panic in a handler, from a drop guard — so a session can never leak its
//! connection.

mod ack;
mod chat;
mod heartbeat;
mod join;
mod leave;
mod login;
mod logout;
mod reader;

use std::sync::Arc;

use bytes::Bytes;
use roomcast_proto::Op;
use roomcast_proto::wire::{Body, BodyFormat, decode_body, single_frame};

use super::Gateway;
use super::conn::{Conn, Sent};
use super::limits::Bucket;
use crate::BoxFut;
use crate::auth::Identity;
use crate::client_error::ClientError;
use crate::ids::{RoomId, UserId};
use crate::ingest::IngestError;

/// The codes of the `error` reply (the same vocabulary as the HTTP error bodies).
pub use crate::client_error::ErrorCode;
pub(crate) use reader::run;

/// A failed request: the `error` reply to send, and whether to close the connection after it.
#[derive(Debug, Clone)]
pub struct ReplyError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
    pub room_id: Option<String>,
    /// Close with this code after replying.
    pub close: Option<u16>,
    /// Counts against the connection's error budget even though the request was well-formed
    /// (a flood over a per-connection limit).
    pub counts_as_error: bool,
}

impl ReplyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ReplyError {
            code,
            message: message.into(),
            retry_after_ms: crate::client_error::default_retry_after(code),
            room_id: None,
            close: None,
            counts_as_error: false,
        }
    }

    fn in_room(mut self, room: &str) -> Self {
        self.room_id = Some(room.to_owned());
        self
    }
}

/// One decoded request.
pub struct Request<'a> {
    pub op: Op,
    pub seq: u32,
    pub format: BodyFormat,
    pub body: &'a [u8],
}

impl Request<'_> {
    pub fn decode<T: Body>(&self) -> Result<T, ReplyError> {
        decode_body(self.format, self.body)
            .map_err(|e| ReplyError::new(ErrorCode::BadRequest, e.to_string()))
    }
}

/// What a connection's own task knows about it.
#[derive(Default)]
pub struct Session {
    pub identity: Option<Identity>,
    pub rooms: Vec<RoomId>,
    errors_window_ms: u64,
    errors: u32,
    /// Input after a protocol violation is ignored until the peer closes.
    draining: bool,
    /// `gateway.join_limit` (created on first use).
    joins: Option<Bucket>,
    /// `gateway.request_limit`: acks, logins, pings (created on first use).
    requests: Option<Bucket>,
}

impl Session {
    /// Takes a token from `gateway.request_limit`; a request over it is refused and counts
    /// against the error budget.
    fn take_request(&mut self, gw: &Gateway) -> Result<(), ReplyError> {
        let (limit, now) = (&gw.config().request_limit, gw.clock_ms());
        let bucket = self.requests.get_or_insert_with(|| Bucket::new(limit, now));
        bucket.take(limit, now).map_err(|wait| {
            gw.metrics().limited_requests.inc();
            ReplyError {
                retry_after_ms: Some(wait.as_millis().min(u64::MAX as u128) as u64),
                counts_as_error: true,
                ..ReplyError::new(
                    ErrorCode::RateLimited,
                    "too many requests on this connection",
                )
            }
        })
    }
}

impl Session {
    pub fn user(&self) -> Option<&UserId> {
        self.identity.as_ref().map(|i| &i.user)
    }
}

/// Sends a frame that must not be dropped; a client that keeps asking without reading its
/// replies is disconnected as a slow reader instead of growing its queue without bound.
/// Compressed when the connection negotiated permessage-deflate and the frame is big enough.
fn send_reply(gw: &Arc<Gateway>, conn: &Arc<Conn>, frame: &Bytes) {
    let frame = gw.for_conn(conn, frame.clone());
    if conn.send(&frame, false, gw.limits(), gw.metrics()) == Sent::TooSlow {
        gw.drop_slow(conn);
    }
}

/// Everything a handler may use.
pub struct Ctx<'a> {
    pub gw: &'a Arc<Gateway>,
    pub conn: &'a Arc<Conn>,
    pub session: &'a mut Session,
}

impl Ctx<'_> {
    /// Sends a reply (or any frame that must not be dropped) to this connection.
    pub fn reply<T: Body>(&self, op: Op, seq: u32, body: &T) {
        let frame = single_frame(self.conn.wire(), op, seq, body);
        send_reply(self.gw, self.conn, &frame);
    }
}

pub trait Handler: Send + Sync {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>>;
}

/// `op → handler`, built once at start-up.
pub struct HandlerTable {
    table: Vec<Option<Box<dyn Handler>>>,
}

impl HandlerTable {
    pub fn empty() -> Self {
        HandlerTable {
            table: (0..64).map(|_| None).collect(),
        }
    }

    /// The handlers of the protocol: login, logout, heartbeat, join, leave, chat, ack.
    pub fn standard() -> Self {
        let mut t = Self::empty();
        t.register(Op::Login, Box::new(login::LoginHandler));
        t.register(Op::Logout, Box::new(logout::LogoutHandler));
        t.register(Op::Heartbeat, Box::new(heartbeat::HeartbeatHandler));
        t.register(Op::Join, Box::new(join::JoinHandler));
        t.register(Op::Leave, Box::new(leave::LeaveHandler));
        t.register(Op::Chat, Box::new(chat::ChatHandler));
        t.register(Op::Ack, Box::new(ack::AckHandler));
        t
    }

    pub fn register(&mut self, op: Op, handler: Box<dyn Handler>) {
        assert!(op.is_request(), "only request ops have handlers");
        self.table[op.code() as usize] = Some(handler);
    }

    fn get(&self, op: Op) -> Option<&dyn Handler> {
        self.table.get(op.code() as usize)?.as_deref()
    }
}

fn parse_room(room: &str) -> Result<RoomId, ReplyError> {
    RoomId::parse(room).map_err(|e| ReplyError::new(ErrorCode::BadRequest, e.to_string()))
}

/// The `error` reply for an ingest refusal ([`ClientError`] decides its code, message and
/// `retry_after_ms`, for every way into ingest).
pub fn ingest_error(e: IngestError) -> ReplyError {
    let c = ClientError::from(e);
    ReplyError {
        retry_after_ms: c.retry_after_ms,
        ..ReplyError::new(c.code, c.message)
    }
}
