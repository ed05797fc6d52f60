//! One client connection: its socket, its outbox, and what other components may know about it.
//!
//! Writes do not go through a per-connection task. Whoever has a frame for the connection (the
//! room fan-out, a reply) calls [`Conn::send`], which writes straight to the non-blocking socket
//! when nothing is queued — one `write` per batch per connection, no wake-up, no copy (the frame
//! is a shared `Bytes`). Only when the kernel buffer is full does the frame go into the bounded
//! outbox, and only then is a small flush task started, which ends when the outbox is empty.
//!
//! Slow readers: past `send_queue_bytes`, the oldest droppable frames (room messages, online
//! counts) are discarded; frames that must arrive (replies, critical messages, close) are kept.
//! A reader that stays behind for `slow_reader_timeout`, or needs four times the budget for
//! frames that cannot be dropped, is disconnected with close code 4004.
//!
//! Idle connections hold no buffers: the read buffer exists only while bytes are being parsed.
//!
//! Ending: once the connection has ended ([`Conn::finish`]), what is still queued gets until the
//! close deadline (`close_grace_ms` after the server decided to close) to go out; then the socket
//! is aborted (RST), whatever the peer does, and its descriptor is released when the last
//! reference goes. Until then it counts as an open socket (`roomcast_sockets_open`), which is what
//! the connection limit checks. Pongs: at most one waits in the outbox (a newer ping replaces the
//! waiting answer, as RFC 6455 5.5.3 allows), so a client that pings without reading cannot grow
//! the queue.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use roomcast_proto::deflate::Deflate;
use roomcast_proto::ws::{self, Opcode};
use roomcast_proto::{BodyFormat, Wire};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ids::ConnId;
use crate::metrics::{DropReason, Metrics};

/// Limits applied when frames queue up for a connection.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    pub queue_bytes: usize,
    pub slow_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    Open,
    /// Our close frame is queued or sent; waiting for the peer's.
    Closing,
    /// Done: nothing more is accepted.
    Closed,
}

struct Queued {
    bytes: Bytes,
    droppable: bool,
    /// An answer to a ping (at most one waits; a newer ping replaces it).
    pong: bool,
}

struct Outbox {
    queue: VecDeque<Queued>,
    bytes: usize,
    pinned_bytes: usize,
    /// The first queued frame was partly written; it must be finished, never dropped.
    head_partial: bool,
    flushing: bool,
    state: OutState,
    behind_since: Option<Instant>,
    /// Set once the connection has ended: the queue is written until this instant, then the
    /// socket is aborted.
    deadline: Option<Instant>,
}

/// How to close a connection.
pub struct Closing<'a> {
    pub code: u16,
    pub reason: &'a str,
    /// A last frame before the close frame (a `kicked` notice).
    pub notice: Option<Bytes>,
    /// Discard queued droppable frames first.
    pub discard: bool,
}

/// What happened to a frame handed to [`Conn::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Written,
    Queued,
    /// The connection is closing or closed; the frame was discarded.
    Closed,
    /// The reader is hopelessly behind; the caller should close the connection (4004).
    TooSlow,
}

/// What a pong handed to [`Conn::send_pong`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pong {
    /// Written or queued; no other pong was waiting.
    Sent,
    /// An earlier pong was still waiting (the peer is not reading): it was replaced.
    Replaced,
    /// The connection is closing; nothing was sent.
    Closed,
}

/// Held by a connection for as long as its socket is open: counts it in `sockets_open` (and
/// whatever the HTTP layer attached, e.g. the per-address count) until the descriptor closes.
pub struct SocketHold {
    metrics: Arc<Metrics>,
    _extra: Option<Box<dyn Send + Sync>>,
}

impl SocketHold {
    pub fn new(metrics: Arc<Metrics>, extra: Option<Box<dyn Send + Sync>>) -> Self {
        metrics.sockets_open.inc();
        SocketHold {
            metrics,
            _extra: extra,
        }
    }
}

impl Drop for SocketHold {
    fn drop(&mut self) {
        self.metrics.sockets_open.dec();
    }
}

pub struct Conn {
    pub id: ConnId,
    pub peer: SocketAddr,
    stream: TcpStream,
    /// `Wire` as u8, plus `WIRE_FIXED` once the output frame type is settled.
    wire: AtomicU8,
    out: Mutex<Outbox>,
    /// Tells the connection's reader task to stop.
    kill: Notify,
    /// Wakes the flush task when the connection ends (it then works to a deadline).
    flush_wake: Notify,
    /// The peer never completed the close: abort the socket instead of a graceful shutdown.
    abort: AtomicBool,
    /// Milliseconds (gateway clock) of the last frame received.
    last_seen_ms: AtomicU64,
    pub(crate) connected_ms: u64,
    /// Token expiry (seconds since the Unix epoch) once logged in; 0 before.
    pub(crate) token_exp_s: AtomicU64,
    /// When our close frame was sent (gateway clock ms); 0 while open.
    pub(crate) closing_since_ms: AtomicU64,
    /// The logged-in user.
    user: std::sync::OnceLock<crate::ids::UserId>,
    /// A conformance (echo) connection: data frames are echoed, no login.
    pub(crate) echo: bool,
    /// permessage-deflate, as negotiated on upgrade.
    pub(crate) deflate: Deflate,
    /// Declared last: released after the socket closes.
    _hold: SocketHold,
}

const WIRE_FIXED: u8 = 0x80;

impl Conn {
    /// The logged-in user, once there is one.
    pub fn user(&self) -> Option<crate::ids::UserId> {
        self.user.get().cloned()
    }

    pub(crate) fn set_user(&self, user: &crate::ids::UserId) {
        let _ = self.user.set(user.clone());
    }

    pub(crate) fn new(
        id: ConnId,
        stream: TcpStream,
        peer: SocketAddr,
        wire: Wire,
        now_ms: u64,
        hold: SocketHold,
    ) -> Self {
        // Protobuf is settled by the subprotocol; JSON follows the client's first data frame.
        let fixed = if wire == Wire::Proto { WIRE_FIXED } else { 0 };
        Conn {
            id,
            peer,
            stream,
            wire: AtomicU8::new(wire as u8 | fixed),
            out: Mutex::new(Outbox {
                queue: VecDeque::new(),
                bytes: 0,
                pinned_bytes: 0,
                head_partial: false,
                flushing: false,
                state: OutState::Open,
                behind_since: None,
                deadline: None,
            }),
            kill: Notify::new(),
            flush_wake: Notify::new(),
            abort: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now_ms),
            connected_ms: now_ms,
            token_exp_s: AtomicU64::new(0),
            closing_since_ms: AtomicU64::new(0),
            user: std::sync::OnceLock::new(),
            echo: false,
            deflate: Deflate::Off,
            _hold: hold,
        }
    }

    pub fn wire(&self) -> Wire {
        match self.wire.load(Relaxed) & !WIRE_FIXED {
            0 => Wire::JsonText,
            1 => Wire::JsonBinary,
            _ => Wire::Proto,
        }
    }

    /// Whether (and how) frames to this connection may be compressed.
    pub fn deflate(&self) -> Deflate {
        self.deflate
    }

    pub fn body_format(&self) -> BodyFormat {
        self.wire().body_format()
    }

    /// A JSON client's first data frame decides whether it gets text or binary frames.
    pub(crate) fn note_frame_type(&self, opcode: Opcode) {
        let w = self.wire.load(Relaxed);
        if w & WIRE_FIXED == 0 {
            let wire = if opcode == Opcode::Binary {
                Wire::JsonBinary
            } else {
                Wire::JsonText
            };
            self.wire.store(wire as u8 | WIRE_FIXED, Relaxed);
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Relaxed);
    }

    pub(crate) fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Relaxed)
    }

    pub fn is_logged_in(&self) -> bool {
        self.token_exp_s.load(Relaxed) != 0
    }

    pub fn is_open(&self) -> bool {
        self.out.lock().state == OutState::Open
    }

    /// Asks the reader task to stop (it then cleans up and closes the socket) — for a peer that
    /// did not complete the close in time: the socket is aborted rather than shut down
    /// gracefully.
    pub(crate) fn abort(&self) {
        self.abort.store(true, Relaxed);
        self.kill.notify_one();
    }

    pub(crate) async fn killed(&self) {
        self.kill.notified().await
    }

    /// Bytes waiting in the outbox.
    pub fn queued_bytes(&self) -> usize {
        self.out.lock().bytes
    }

    /// Sends one frame.
    pub fn send(
        self: &Arc<Self>,
        frame: &Bytes,
        droppable: bool,
        limits: &SendLimits,
        metrics: &Metrics,
    ) -> Sent {
        self.send_many(&[(frame, droppable)], limits, metrics)
    }

    /// Sends several frames with one `writev` when possible; they stay in order.
    pub fn send_many(
        self: &Arc<Self>,
        frames: &[(&Bytes, bool)],
        limits: &SendLimits,
        metrics: &Metrics,
    ) -> Sent {
        let mut out = self.out.lock();
        if out.state != OutState::Open {
            return Sent::Closed;
        }
        self.send_locked(&mut out, frames, limits, metrics)
    }

    fn send_locked(
        self: &Arc<Self>,
        out: &mut Outbox,
        frames: &[(&Bytes, bool)],
        limits: &SendLimits,
        metrics: &Metrics,
    ) -> Sent {
        let mut first_unwritten = 0;
        let mut offset = 0;
        if out.queue.is_empty() {
            let result = if frames.len() == 1 {
                self.stream.try_write(frames[0].0)
            } else {
                let slices: Vec<IoSlice<'_>> =
                    frames.iter().map(|(f, _)| IoSlice::new(f)).collect();
                self.stream.try_write_vectored(&slices)
            };
            match result {
                Ok(mut n) => {
                    while first_unwritten < frames.len() && n >= frames[first_unwritten].0.len() {
                        n -= frames[first_unwritten].0.len();
                        first_unwritten += 1;
                    }
                    if first_unwritten == frames.len() {
                        return Sent::Written;
                    }
                    offset = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // The peer is gone; the reader task will see it too.
                    out.state = OutState::Closed;
                    self.kill.notify_one();
                    return Sent::Closed;
                }
            }
        }
        for (i, (frame, droppable)) in frames.iter().enumerate().skip(first_unwritten) {
            if i == first_unwritten && offset > 0 {
                out.head_partial = true;
                enqueue(out, frame.slice(offset..), false);
            } else {
                enqueue(out, (*frame).clone(), *droppable);
            }
        }
        let verdict = enforce_limits(out, limits, metrics);
        if !out.flushing {
            out.flushing = true;
            tokio::spawn(flush(self.clone()));
        }
        verdict
    }

    /// Answers a ping. At most one pong waits in the outbox: when one is still queued (the peer
    /// is not reading), it is replaced by this one.
    pub fn send_pong(
        self: &Arc<Self>,
        frame: Bytes,
        limits: &SendLimits,
        metrics: &Metrics,
    ) -> Pong {
        let mut out = self.out.lock();
        if out.state != OutState::Open {
            return Pong::Closed;
        }
        let skip = usize::from(out.head_partial);
        if let Some(q) = out.queue.iter_mut().skip(skip).find(|q| q.pong) {
            let (old, new) = (q.bytes.len(), frame.len());
            q.bytes = frame;
            out.bytes = out.bytes - old + new;
            out.pinned_bytes = out.pinned_bytes - old + new;
            return Pong::Replaced;
        }
        let before = out.queue.len();
        self.send_locked(&mut out, &[(&frame, false)], limits, metrics);
        // Mark it, if it had to wait (a partly written pong is finished, never replaced).
        let partial = out.head_partial && out.queue.len() == 1;
        if out.queue.len() > before
            && !partial
            && let Some(q) = out.queue.back_mut()
        {
            q.pong = true;
        }
        Pong::Sent
    }

    /// Starts the closing handshake: queued droppable frames are discarded when
    /// `close.discard`, then an optional last frame (a `kicked` notice) and the close frame are
    /// sent. The reader task ends when the peer answers or the gateway's grace period runs out.
    pub fn close(
        self: &Arc<Self>,
        close: Closing<'_>,
        limits: &SendLimits,
        metrics: &Metrics,
        now_ms: u64,
    ) {
        let mut out = self.out.lock();
        if out.state != OutState::Open {
            return;
        }
        out.state = OutState::Closing;
        self.closing_since_ms.store(now_ms.max(1), Relaxed);
        if close.discard {
            let dropped = discard_droppable(&mut out);
            metrics.count_drop(DropReason::Closed, dropped);
        }
        let frame = Bytes::from(ws::server_frame(
            Opcode::Close,
            &ws::close_payload(close.code, close.reason),
        ));
        let unlimited = SendLimits {
            queue_bytes: usize::MAX,
            slow_timeout: limits.slow_timeout,
        };
        match close.notice {
            Some(notice) => self.send_locked(
                &mut out,
                &[(&notice, false), (&frame, false)],
                &unlimited,
                metrics,
            ),
            None => self.send_locked(&mut out, &[(&frame, false)], &unlimited, metrics),
        };
    }

    /// Whether our close frame went out (the closing handshake started).
    pub fn is_closing(&self) -> bool {
        self.out.lock().state != OutState::Open
    }

    /// Ends the connection for good: nothing more is accepted; what must still go out (a close
    /// frame) gets until `deadline` (`close_grace_ms` after the server decided to close), then
    /// the socket is aborted, whatever the peer does.
    pub(crate) fn finish(&self, metrics: &Metrics, deadline: Instant) {
        let mut out = self.out.lock();
        out.state = OutState::Closed;
        let dropped = discard_droppable(&mut out);
        metrics.count_drop(DropReason::Closed, dropped);
        if out.queue.is_empty() || !out.flushing || deadline <= Instant::now() {
            let abort = !out.queue.is_empty() || self.abort.load(Relaxed);
            clear(&mut out);
            drop(out);
            self.end_socket(abort);
        } else {
            out.deadline = Some(deadline);
            drop(out);
            // The flush task may be parked on `writable()` for a peer that never reads.
            self.flush_wake.notify_one();
        }
    }

    /// Shuts the socket down; `abort`: with an RST (SO_LINGER 0), dropping whatever the kernel
    /// still holds for a peer that does not read.
    fn end_socket(&self, abort: bool) {
        let sock = socket2::SockRef::from(&self.stream);
        if abort {
            let _ = sock.set_linger(Some(Duration::ZERO));
        }
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the outbox has been behind for longer than the limit (checked by the sweeper,
    /// since a stuck reader may never get another frame).
    pub(crate) fn behind_too_long(&self, limit: Duration) -> bool {
        self.out
            .lock()
            .behind_since
            .is_some_and(|t| t.elapsed() > limit)
    }
}

fn enqueue(out: &mut Outbox, bytes: Bytes, droppable: bool) {
    out.bytes += bytes.len();
    if !droppable {
        out.pinned_bytes += bytes.len();
    }
    out.queue.push_back(Queued {
        bytes,
        droppable,
        pong: false,
    });
    if out.behind_since.is_none() {
        out.behind_since = Some(Instant::now());
    }
}

/// Drops the oldest droppable frames until the queue fits; reports a hopeless reader.
fn enforce_limits(out: &mut Outbox, limits: &SendLimits, metrics: &Metrics) -> Sent {
    if out.bytes > limits.queue_bytes {
        let mut i = usize::from(out.head_partial);
        let mut dropped = 0;
        while out.bytes > limits.queue_bytes && i < out.queue.len() {
            if out.queue[i].droppable {
                if let Some(q) = out.queue.remove(i) {
                    out.bytes -= q.bytes.len();
                    dropped += 1;
                }
            } else {
                i += 1;
            }
        }
        metrics.count_drop(DropReason::SlowReader, dropped);
    }
    // A partly written frame must be finished whatever its size; it does not count.
    let head = if out.head_partial {
        out.queue.front().map_or(0, |q| q.bytes.len())
    } else {
        0
    };
    let too_slow = out.pinned_bytes.saturating_sub(head) > limits.queue_bytes.saturating_mul(4)
        || out
            .behind_since
            .is_some_and(|t| t.elapsed() > limits.slow_timeout);
    if too_slow {
        Sent::TooSlow
    } else {
        Sent::Queued
    }
}

fn discard_droppable(out: &mut Outbox) -> u64 {
    let keep_head = out.head_partial;
    let mut dropped = 0;
    let mut i = 0;
    out.queue.retain(|q| {
        let keep = (i == 0 && keep_head) || !q.droppable;
        i += 1;
        if !keep {
            dropped += 1;
        }
        keep
    });
    out.bytes = out.queue.iter().map(|q| q.bytes.len()).sum();
    dropped
}

fn clear(out: &mut Outbox) {
    out.queue.clear();
    out.bytes = 0;
    out.pinned_bytes = 0;
    out.head_partial = false;
}

/// Writes the outbox out as the socket accepts it; ends when the outbox is empty, or — once the
/// connection has ended — at its deadline, aborting the socket.
async fn flush(conn: Arc<Conn>) {
    const MAX_SLICES: usize = 64;
    loop {
        let deadline = conn.out.lock().deadline;
        let ready = match deadline {
            Some(deadline) => tokio::select! {
                r = conn.stream.writable() => r,
                _ = tokio::time::sleep_until(deadline) => Err(io::ErrorKind::TimedOut.into()),
            },
            None => tokio::select! {
                r = conn.stream.writable() => r,
                // Ended meanwhile: look at the deadline.
                _ = conn.flush_wake.notified() => continue,
            },
        };
        let mut out = conn.out.lock();
        let mut abort = false;
        let done = match ready {
            Err(_) => {
                out.state = OutState::Closed;
                abort = true;
                clear(&mut out);
                true
            }
            Ok(()) => loop {
                if out.queue.is_empty() {
                    break true;
                }
                let n = out.queue.len().min(MAX_SLICES);
                let result = {
                    let slices: Vec<IoSlice<'_>> = out
                        .queue
                        .iter()
                        .take(n)
                        .map(|q| IoSlice::new(&q.bytes))
                        .collect();
                    conn.stream.try_write_vectored(&slices)
                };
                match result {
                    Ok(written) => consume(&mut out, written),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => {
                        out.state = OutState::Closed;
                        clear(&mut out);
                        break true;
                    }
                }
            },
        };
        if done {
            // In the same critical section as the empty check: a sender that queues after this
            // sees `flushing == false` and starts a new flush.
            out.flushing = false;
            out.behind_since = None;
            let shut = out.deadline.is_some() || out.state == OutState::Closed;
            drop(out);
            if shut {
                conn.end_socket(abort || conn.abort.load(Relaxed));
                conn.kill.notify_one();
            }
            return;
        }
    }
}

fn consume(out: &mut Outbox, mut written: usize) {
    while written > 0 {
        let Some(front) = out.queue.front_mut() else {
            return;
        };
        let len = front.bytes.len();
        if written >= len {
            written -= len;
            out.bytes -= len;
            if !front.droppable {
                out.pinned_bytes -= len;
            }
            out.queue.pop_front();
            out.head_partial = false;
        } else {
            let _ = front.bytes.split_to(written);
            out.bytes -= written;
            if !front.droppable {
                out.pinned_bytes -= written;
            } else {
                // Partly written: it can no longer be dropped.
                front.droppable = false;
                out.pinned_bytes += len - written;
            }
            out.head_partial = true;
            written = 0;
        }
    }
}
