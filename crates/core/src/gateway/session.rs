//! A connection's session: the reader task, request decoding, and the handler table.
//!
//! The reader task owns what only the connection itself needs (its user, its rooms, its error
//! budget) and reads only when the socket is readable; the read buffer is allocated while
//! bytes are being parsed and released when the connection goes idle. Each request is decoded
//! (binary packets or JSON text), looked up in the `op → handler` table built at start-up, and
//! answered with the handler's reply or an `error` that echoes the request's `seq`.
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

use std::sync::Arc;

use bytes::Bytes;
use roomcast_proto::body;
use roomcast_proto::packet::Packets;
use roomcast_proto::wire::{Body, BodyFormat, decode_body, single_frame};
use roomcast_proto::ws::{self, Decoder, Message, Opcode, close};
use roomcast_proto::{Op, text};

use super::Gateway;
use super::conn::{Closing, Conn, Pong, Sent};
use super::limits::Bucket;
use crate::BoxFut;
use crate::auth::Identity;
use crate::history::HistoryQuery;
use crate::ids::{RoomId, UserId};
use crate::ingest::{ChatRequest, IngestError};
use crate::model::MsgKind;

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
    fn is_malformed(self) -> bool {
        matches!(
            self,
            ErrorCode::BadRequest | ErrorCode::UnknownOp | ErrorCode::TooLarge
        )
    }
}

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
            retry_after_ms: None,
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
fn send_reply(gw: &Arc<Gateway>, conn: &Arc<Conn>, frame: &Bytes) {
    if conn.send(frame, false, gw.limits(), gw.metrics()) == Sent::TooSlow {
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
        t.register(Op::Login, Box::new(LoginHandler));
        t.register(Op::Logout, Box::new(LogoutHandler));
        t.register(Op::Heartbeat, Box::new(HeartbeatHandler));
        t.register(Op::Join, Box::new(JoinHandler));
        t.register(Op::Leave, Box::new(LeaveHandler));
        t.register(Op::Chat, Box::new(ChatHandler));
        t.register(Op::Ack, Box::new(AckHandler));
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

// ---- the reader task -----------------------------------------------------------------------

/// Read at most this much before parsing, so that one busy connection cannot hog a thread.
const READ_CHUNK: usize = 64 * 1024;

/// Runs the connection's clean-up if the session task ends without doing it (a panic in a
/// handler unwinds through here).
struct CleanupGuard {
    gw: Arc<Gateway>,
    conn: Arc<Conn>,
    session: Session,
    done: bool,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        tracing::error!(conn = %self.conn.id, "session ended abnormally; cleaning up");
        let (gw, conn) = (self.gw.clone(), self.conn.clone());
        let user = self.session.user().cloned();
        let rooms = std::mem::take(&mut self.session.rooms);
        // Abort: the peer gets no close handshake from a session that failed.
        conn.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { gw.cleanup(&conn, user.as_ref(), &rooms).await });
        }
    }
}

pub(crate) async fn run(
    gw: Arc<Gateway>,
    conn: Arc<Conn>,
    read_ahead: Bytes,
    identity: Option<Identity>,
) {
    let mut guard = CleanupGuard {
        gw: gw.clone(),
        conn: conn.clone(),
        session: Session::default(),
        done: false,
    };
    let session = &mut guard.session;
    if let Some(identity) = identity {
        // A token on the upgrade URL gets the same checks as the `login` op.
        match Box::pin(check_ban(&gw, &identity)).await {
            Ok(()) => Box::pin(complete_login(&gw, &conn, session, identity, 0)).await,
            Err(e) => send_error(&gw, &conn, session, 0, Some(Op::Login), e),
        }
    }
    let mut decoder = Decoder::server(gw.config().max_frame_bytes);
    let mut buf: Vec<u8> = read_ahead.to_vec();
    // It may be a view into the HTTP server's 8 KiB read buffer: let that go now rather than
    // keep it for the connection's lifetime (idle memory per connection is a target).
    drop(read_ahead);
    let mut eof = false;
    loop {
        if !buf.is_empty() {
            // Boxed: an idle connection's task then holds a pointer-sized slot, not the
            // largest handler's state (idle memory per connection is a target).
            let (used, stop) = Box::pin(process(&gw, &conn, session, &mut decoder, &mut buf)).await;
            buf.drain(..used);
            if stop {
                break;
            }
        }
        if eof {
            break;
        }
        if buf.is_empty() && buf.capacity() > 0 {
            buf = Vec::new();
        }
        tokio::select! {
            r = conn.stream().readable() => if r.is_err() { break },
            _ = conn.killed() => break,
        }
        eof = read_available(&conn, &mut buf);
        conn.touch(gw.clock_ms());
    }
    guard.done = true;
    let user = guard.session.user().cloned();
    let rooms = std::mem::take(&mut guard.session.rooms);
    Box::pin(gw.cleanup(&conn, user.as_ref(), &rooms)).await;
}

/// Reads what the socket has (up to `READ_CHUNK`) into `buf`; returns whether the peer is gone.
///
/// Reads go through a stack buffer and only the bytes received are copied to the heap, so an
/// idle connection's occasional heartbeat costs a few dozen bytes, not a fresh 8 KiB buffer
/// (which the allocator would keep resident, one per connection, at 15,000 connections).
/// Not async, so the stack buffer is never part of the connection task's saved state.
fn read_available(conn: &Conn, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream().try_read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() >= READ_CHUNK {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Handles the complete messages in `buf`; returns the bytes used and whether to stop.
async fn process(
    gw: &Arc<Gateway>,
    conn: &Arc<Conn>,
    s: &mut Session,
    decoder: &mut Decoder,
    buf: &mut [u8],
) -> (usize, bool) {
    if s.draining {
        return (buf.len(), false);
    }
    let mut pos = 0;
    loop {
        let decoded = match decoder.decode(&mut buf[pos..]) {
            Ok(d) => d,
            Err(e) => {
                gw.metrics().protocol_errors.inc();
                conn.close(
                    Closing {
                        code: e.close_code(),
                        reason: &e.to_string(),
                        notice: None,
                        discard: true,
                    },
                    gw.limits(),
                    gw.metrics(),
                    gw.clock_ms(),
                );
                s.draining = true;
                return (buf.len(), false);
            }
        };
        pos += decoded.consumed;
        let Some(message) = decoded.message else {
            return (pos, false);
        };
        match message {
            Message::Text(t) if conn.echo => echo(gw, conn, Opcode::Text, t.as_bytes()),
            Message::Binary(b) if conn.echo => echo(gw, conn, Opcode::Binary, b),
            Message::Text(t) => {
                if conn.is_closing() {
                    continue;
                }
                conn.note_frame_type(Opcode::Text);
                handle_text(gw, conn, s, t).await;
            }
            Message::Binary(b) => {
                if conn.is_closing() {
                    continue;
                }
                conn.note_frame_type(Opcode::Binary);
                handle_binary(gw, conn, s, b).await;
            }
            Message::Ping(p) => {
                let pong = Bytes::from(ws::server_frame(Opcode::Pong, p));
                // At most one pong waits; a ping while one still waits (the peer is not
                // reading) or over the request limit counts against the error budget.
                let replaced = conn.send_pong(pong, gw.limits(), gw.metrics()) == Pong::Replaced;
                let over = s.take_request(gw).is_err();
                if replaced || over {
                    count_error(gw, conn, s);
                }
            }
            Message::Pong(_) => {}
            Message::Close(c) => {
                if !conn.is_closing() {
                    // Echo the peer's code, as the RFC asks.
                    let code = c.map(|(code, _)| code).unwrap_or(close::NORMAL);
                    conn.close(
                        Closing {
                            code,
                            reason: "",
                            notice: None,
                            discard: false,
                        },
                        gw.limits(),
                        gw.metrics(),
                        gw.clock_ms(),
                    );
                }
                return (buf.len(), true);
            }
        }
        if s.draining {
            return (buf.len(), false);
        }
    }
}

/// The conformance endpoint: a data message goes back as it came.
fn echo(gw: &Arc<Gateway>, conn: &Arc<Conn>, opcode: Opcode, payload: &[u8]) {
    if conn.is_closing() {
        return;
    }
    let frame = Bytes::from(ws::server_frame(opcode, payload));
    send_reply(gw, conn, &frame);
}

async fn handle_binary(gw: &Arc<Gateway>, conn: &Arc<Conn>, s: &mut Session, frame: &[u8]) {
    let format = conn.body_format();
    for p in Packets::new(frame, gw.config().max_body_bytes) {
        match p {
            Ok(p) => {
                let Some(op) = Op::from_code(p.op) else {
                    let e =
                        ReplyError::new(ErrorCode::UnknownOp, format!("unknown op code {}", p.op));
                    send_error(gw, conn, s, p.seq, None, e);
                    continue;
                };
                dispatch(
                    gw,
                    conn,
                    s,
                    Request {
                        op,
                        seq: p.seq,
                        format,
                        body: p.body,
                    },
                )
                .await;
            }
            Err(e) => {
                let op = match &e {
                    roomcast_proto::PacketError::TooLarge { op, .. } => Op::from_code(*op),
                    _ => None,
                };
                let code = match e {
                    roomcast_proto::PacketError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::BadRequest,
                };
                send_error(
                    gw,
                    conn,
                    s,
                    e.seq(),
                    op,
                    ReplyError::new(code, e.to_string()),
                );
            }
        }
        if s.draining || conn.is_closing() {
            return;
        }
    }
}

async fn handle_text(gw: &Arc<Gateway>, conn: &Arc<Conn>, s: &mut Session, text: &str) {
    let packets = match text::parse(text) {
        Ok(p) => p,
        Err(e) => {
            send_error(
                gw,
                conn,
                s,
                0,
                None,
                ReplyError::new(ErrorCode::BadRequest, e.to_string()),
            );
            return;
        }
    };
    for p in packets {
        let Some(op) = Op::from_name(&p.op) else {
            let e = ReplyError::new(ErrorCode::UnknownOp, format!("unknown op {:?}", p.op));
            send_error(gw, conn, s, p.seq, None, e);
            continue;
        };
        let body = p.body_json();
        if body.len() > gw.config().max_body_bytes {
            let e = ReplyError::new(
                ErrorCode::TooLarge,
                format!(
                    "packet body of {} bytes exceeds the limit of {}",
                    body.len(),
                    gw.config().max_body_bytes
                ),
            );
            send_error(gw, conn, s, p.seq, Some(op), e);
            continue;
        }
        dispatch(
            gw,
            conn,
            s,
            Request {
                op,
                seq: p.seq,
                format: BodyFormat::Json,
                body,
            },
        )
        .await;
        if s.draining || conn.is_closing() {
            return;
        }
    }
}

async fn dispatch(gw: &Arc<Gateway>, conn: &Arc<Conn>, s: &mut Session, req: Request<'_>) {
    let (op, seq) = (req.op, req.seq);
    let handler = if op.is_request() {
        gw.handlers.get(op)
    } else {
        None
    };
    let Some(handler) = handler else {
        let message = if op.is_request() {
            format!("{} is not served by this server", op.name())
        } else {
            format!("{} is not a request op", op.name())
        };
        let e = ReplyError::new(ErrorCode::UnknownOp, message);
        send_error(gw, conn, s, seq, Some(op), e);
        return;
    };
    if op != Op::Login && s.identity.is_none() {
        let e = ReplyError::new(ErrorCode::Unauthenticated, "log in first");
        send_error(gw, conn, s, seq, Some(op), e);
        return;
    }
    let result = handler
        .handle(
            Ctx {
                gw,
                conn,
                session: s,
            },
            req,
        )
        .await;
    if let Err(e) = result {
        send_error(gw, conn, s, seq, Some(op), e);
    }
}

fn send_error(
    gw: &Arc<Gateway>,
    conn: &Arc<Conn>,
    s: &mut Session,
    seq: u32,
    op: Option<Op>,
    e: ReplyError,
) {
    let frame = single_frame(
        conn.wire(),
        Op::Error,
        seq,
        &body::Error {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
            op: op.map(|o| o.name().to_owned()),
            room_id: e.room_id.clone(),
        },
    );
    send_reply(gw, conn, &frame);
    if let Some(code) = e.close {
        conn.close(
            Closing {
                code,
                reason: &e.message,
                notice: None,
                discard: true,
            },
            gw.limits(),
            gw.metrics(),
            gw.clock_ms(),
        );
        s.draining = true;
        return;
    }
    if e.code.is_malformed() || e.counts_as_error {
        count_error(gw, conn, s);
    }
}

/// Counts one malformed (or abusive) request; past `max_errors_per_10s` the connection is
/// closed with 4005.
fn count_error(gw: &Arc<Gateway>, conn: &Arc<Conn>, s: &mut Session) {
    if s.draining {
        return;
    }
    gw.metrics().protocol_errors.inc();
    let now = gw.clock_ms();
    if now.saturating_sub(s.errors_window_ms) > 10_000 {
        s.errors_window_ms = now;
        s.errors = 0;
    }
    s.errors += 1;
    if s.errors > gw.config().max_errors_per_10s {
        gw.close_conn(
            conn,
            close::TOO_MANY_ERRORS,
            "too_many_errors",
            "too many malformed requests",
            true,
        );
        s.draining = true;
    }
}

// ---- handlers --------------------------------------------------------------------------------

/// A banned user may not log in: `banned`, then close 4003.
async fn check_ban(gw: &Arc<Gateway>, identity: &Identity) -> Result<(), ReplyError> {
    let banned = gw
        .deps()
        .moderation
        .banned(&identity.user)
        .await
        .map_err(|e| ReplyError::new(ErrorCode::Unavailable, e.to_string()))?;
    match banned {
        Some(ban) => Err(ReplyError {
            close: Some(close::BANNED),
            ..ReplyError::new(
                ErrorCode::Banned,
                if ban.reason.is_empty() {
                    "banned".to_owned()
                } else {
                    format!("banned: {}", ban.reason)
                },
            )
        }),
        None => Ok(()),
    }
}

async fn complete_login(
    gw: &Arc<Gateway>,
    conn: &Arc<Conn>,
    s: &mut Session,
    identity: Identity,
    seq: u32,
) {
    gw.register_user(&identity.user, conn);
    conn.token_exp_s
        .store(identity.exp, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = gw
        .deps()
        .presence
        .touch(&identity.user, gw.node(), gw.config().silence_timeout())
        .await
    {
        tracing::warn!(user = %identity.user, error = %e, "cannot record presence");
    }
    let reply = body::LoginOk {
        user_id: identity.user.as_str().to_owned(),
        heartbeat_s: gw.config().heartbeat_s,
        name: identity.name.as_deref().map(str::to_owned),
    };
    conn.set_user(&identity.user);
    let user = identity.user.clone();
    s.identity = Some(identity);
    let frame = single_frame(conn.wire(), Op::LoginOk, seq, &reply);
    send_reply(gw, conn, &frame);
    // Whatever critical messages wait for this user, after login_ok.
    gw.deliver_pending(&user).await;
}

/// `ack {msg_id}`: the user has a critical message. No reply (an ack of an unknown or already
/// acknowledged id is not an error: retries and reconnects make duplicates normal).
struct AckHandler;

impl Handler for AckHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let ack: body::Ack = req.decode()?;
            cx.session.take_request(cx.gw)?;
            let Some(user) = cx.session.user() else {
                return Err(ReplyError::new(ErrorCode::Unauthenticated, "log in first"));
            };
            cx.gw
                .acknowledge(user, ack.msg_id)
                .await
                .map_err(|e| ReplyError::new(ErrorCode::Unavailable, e.to_string()))?;
            Ok(())
        })
    }
}

struct LoginHandler;

impl Handler for LoginHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let login: body::Login = req.decode()?;
            cx.session.take_request(cx.gw)?;
            let identity = cx
                .gw
                .authenticate(&login.token)
                .map_err(|e| ReplyError::new(ErrorCode::Unauthenticated, e.to_string()))?;
            if let Some(current) = &cx.session.identity
                && current.user != identity.user
            {
                return Err(ReplyError::new(
                    ErrorCode::BadRequest,
                    "already logged in as another user; open a new connection",
                ));
            }
            check_ban(cx.gw, &identity).await?;
            complete_login(cx.gw, cx.conn, cx.session, identity, req.seq).await;
            Ok(())
        })
    }
}

/// `logout`: ends the session cleanly — leaves every room at once (routes and online counts
/// follow), drops presence, answers `logout_ok` and closes with 1000. Requests after it are
/// ignored.
struct LogoutHandler;

impl Handler for LogoutHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let _: body::Logout = req.decode()?;
            let rooms = std::mem::take(&mut cx.session.rooms);
            let user = cx.session.identity.take().map(|i| i.user);
            cx.gw.logout(cx.conn, user.as_ref(), &rooms).await;
            cx.reply(Op::LogoutOk, req.seq, &body::LogoutOk {});
            cx.conn.close(
                Closing {
                    code: close::NORMAL,
                    reason: "logged out",
                    notice: None,
                    discard: false,
                },
                cx.gw.limits(),
                cx.gw.metrics(),
                cx.gw.clock_ms(),
            );
            cx.session.draining = true;
            Ok(())
        })
    }
}

struct HeartbeatHandler;

impl Handler for HeartbeatHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let _: body::Heartbeat = req.decode()?;
            if let Some(user) = cx.session.user()
                && let Err(e) = cx
                    .gw
                    .deps()
                    .presence
                    .touch(user, cx.gw.node(), cx.gw.config().silence_timeout())
                    .await
            {
                tracing::warn!(user = %user, error = %e, "cannot refresh presence");
            }
            cx.reply(Op::HeartbeatOk, req.seq, &body::HeartbeatOk {});
            Ok(())
        })
    }
}

fn parse_room(room: &str) -> Result<RoomId, ReplyError> {
    RoomId::parse(room).map_err(|e| ReplyError::new(ErrorCode::BadRequest, e.to_string()))
}

struct JoinHandler;

impl Handler for JoinHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let join: body::Join = req.decode()?;
            let room = parse_room(&join.room_id)?;
            let (limit, now) = (&cx.gw.config().join_limit, cx.gw.clock_ms());
            let joins = cx
                .session
                .joins
                .get_or_insert_with(|| Bucket::new(limit, now));
            if let Err(wait) = joins.take(limit, now) {
                cx.gw.metrics().limited_requests.inc();
                return Err(ReplyError {
                    retry_after_ms: Some(wait.as_millis().min(u64::MAX as u128) as u64),
                    counts_as_error: true,
                    ..ReplyError::new(ErrorCode::RateLimited, "too many joins on this connection")
                }
                .in_room(room.as_str()));
            }
            let already = cx.session.rooms.contains(&room);
            if !already && cx.session.rooms.len() >= cx.gw.config().max_rooms_per_conn {
                return Err(ReplyError::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "a connection may be in at most {} rooms",
                        cx.gw.config().max_rooms_per_conn
                    ),
                )
                .in_room(room.as_str()));
            }
            if !already && let Err(wait) = cx.gw.admit_new_room(&room) {
                cx.gw.metrics().limited_requests.inc();
                return Err(ReplyError {
                    retry_after_ms: Some(wait.as_millis().min(u64::MAX as u128) as u64),
                    ..ReplyError::new(
                        ErrorCode::RateLimited,
                        "too many new rooms on this server right now",
                    )
                }
                .in_room(room.as_str()));
            }
            // Member first, history second: a message flushed in between shows up in both
            // (clients drop duplicates by seq), never in neither.
            let online = if already {
                cx.gw.room_members(&room)
            } else {
                cx.session.rooms.push(room.clone());
                cx.gw.join_room(&room, cx.conn).await
            };
            let query = HistoryQuery {
                limit: join.history,
                since: join.since.clone(),
                secs: join.history_secs,
            };
            let page = match cx.gw.deps().history.query(&room, &query).await {
                Ok(page) => page,
                Err(e) => {
                    // A failed join leaves no membership behind.
                    if !already {
                        cx.session.rooms.retain(|r| r != &room);
                        cx.gw.leave_room(&room, cx.conn).await;
                    }
                    return Err(ReplyError::new(
                        ErrorCode::Unavailable,
                        format!("history unavailable: {e}"),
                    )
                    .in_room(room.as_str()));
                }
            };
            let reply = body::JoinOk {
                room_id: room.as_str().to_owned(),
                online: online as u64,
                epoch: page.epoch,
                recovered: page.recovered,
                history: page.msgs.iter().map(|m| (**m).clone()).collect(),
                last_seq: page.last_seq,
            };
            cx.reply(Op::JoinOk, req.seq, &reply);
            Ok(())
        })
    }
}

struct LeaveHandler;

impl Handler for LeaveHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let leave: body::Leave = req.decode()?;
            let room = parse_room(&leave.room_id)?;
            let Some(i) = cx.session.rooms.iter().position(|r| *r == room) else {
                return Err(ReplyError::new(ErrorCode::NotJoined, "not in this room")
                    .in_room(room.as_str()));
            };
            cx.session.rooms.swap_remove(i);
            cx.gw.leave_room(&room, cx.conn).await;
            cx.reply(
                Op::LeaveOk,
                req.seq,
                &body::LeaveOk {
                    room_id: leave.room_id,
                },
            );
            Ok(())
        })
    }
}

struct ChatHandler;

impl Handler for ChatHandler {
    fn handle<'a>(&'a self, cx: Ctx<'a>, req: Request<'a>) -> BoxFut<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let chat: body::Chat = req.decode()?;
            let room = parse_room(&chat.room_id)?;
            if !cx.session.rooms.contains(&room) {
                return Err(ReplyError::new(
                    ErrorCode::NotJoined,
                    "join the room before sending to it",
                )
                .in_room(room.as_str()));
            }
            let Some(identity) = cx.session.identity.as_ref() else {
                return Err(ReplyError::new(ErrorCode::Unauthenticated, "log in first"));
            };
            let request = ChatRequest {
                room,
                user: identity.user.clone(),
                name: identity.name.clone(),
                text: chat.text,
                kind: MsgKind::Chat,
                payload: None,
                trusted: false,
                msg_id: None,
            };
            match cx.gw.deps().ingest.submit(request).await {
                Ok(accepted) => {
                    cx.reply(
                        Op::ChatOk,
                        req.seq,
                        &body::ChatOk {
                            msg_id: accepted.msg_id.0,
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(ingest_error(e).in_room(&chat.room_id)),
            }
        })
    }
}

/// The `error` reply for an ingest refusal.
pub fn ingest_error(e: IngestError) -> ReplyError {
    let message = e.to_string();
    match e {
        IngestError::BadRequest(m) => ReplyError::new(ErrorCode::BadRequest, m),
        IngestError::RateLimited { retry_after_ms, .. } => ReplyError {
            retry_after_ms: Some(retry_after_ms),
            ..ReplyError::new(ErrorCode::RateLimited, message)
        },
        IngestError::Muted { until_ms, reason } => ReplyError {
            retry_after_ms: until_ms.map(|u| u.saturating_sub(crate::clock::now_ms())),
            ..ReplyError::new(ErrorCode::Muted, format!("muted: {reason}"))
        },
        IngestError::Banned { reason, .. } => {
            ReplyError::new(ErrorCode::Banned, format!("banned: {reason}"))
        }
        IngestError::ContentRejected => ReplyError::new(ErrorCode::ContentRejected, message),
        IngestError::Unavailable(m) => ReplyError::new(ErrorCode::Unavailable, m),
    }
}
