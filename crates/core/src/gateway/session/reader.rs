//! The reader task of a connection: reads when the socket is readable, decodes WebSocket
//! frames and the roomcast requests in them, dispatches each to its handler, and sends the
//! `error` replies (counting malformed requests against the connection's budget).

use std::sync::Arc;

use bytes::Bytes;
use roomcast_proto::body;
use roomcast_proto::packet::Packets;
use roomcast_proto::wire::{BodyFormat, single_frame};
use roomcast_proto::ws::{self, Decoder, Message, Opcode, close};
use roomcast_proto::{Op, text};

use super::login::{check_ban, complete_login};
use super::{Ctx, ErrorCode, ReplyError, Request, Session, send_reply};
use crate::auth::Identity;
use crate::gateway::Gateway;
use crate::gateway::conn::{Closing, Conn, Pong};

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
    let mut decoder =
        Decoder::server(gw.config().max_frame_bytes).with_deflate(conn.deflate().is_on());
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
