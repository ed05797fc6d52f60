//! The transactional outbox (R22): "event committed ⇒ event delivered".
//!
//! A backend that must never lose an event (a paid gift, say) writes a `room_chat_outbox` row in
//! the same database transaction as its own change — or asks the server API to write it. The
//! relay publishes pending rows to the bus in id order; it never marks a row sent itself:
//!
//! - sent means stored: the message store marks a row sent in the same transaction that stores
//!   its message (the batch names its outbox `msg_id`s, see [`crate::ports::MessageStore`]), so
//!   a crash anywhere between the relay and the store's commit (bus, room worker, writer queue)
//!   leaves the row pending, and the next run publishes it again;
//! - one copy: the row's `msg_id` is fixed (and stored) before its first publication, so a
//!   re-published row carries the same `msg_id`; a room worker drops a copy it has seen, and the
//!   store never stores a message whose row is already marked;
//! - the relay remembers in memory which rows it has in flight and does not publish them again
//!   each cycle; a row still pending `resend_after` after its publication (its copy was lost,
//!   or the store is failing) is published again, and so is every pending row after a restart;
//! - one relay at a time: a relay publishes only while it holds the outbox lease (renewed before
//!   every row, taken over when it expires), so two relays never both publish a row;
//! - nothing lost: a row stays pending until its message is stored, across any number of
//!   restarts. The relay must not mark rows itself: that was the crash window this design
//!   closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ids::MsgId;
use crate::ingest::{ChatRequest, Ingest, IngestError};
use crate::ports::StoreError;

/// The port this relay publishes from (defined with the other ports).
pub use crate::ports::{NewOutboxRow, OutboxRow, OutboxStore};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This relay's name in the lease.
    pub holder: String,
    pub lease_ttl: Duration,
    /// Pause between polls when the outbox is empty (or the lease is someone else's).
    pub idle_poll: Duration,
    /// Rows per cycle.
    pub batch: usize,
    /// A published row still pending after this long is published again (same `msg_id`).
    pub resend_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            holder: "relay".into(),
            lease_ttl: Duration::from_secs(10),
            idle_poll: Duration::from_millis(100),
            batch: 256,
            resend_after: Duration::from_secs(30),
        }
    }
}

/// What one cycle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cycle {
    /// Another relay holds the lease.
    NotLeader,
    /// Published this many rows (0: nothing pending, or every pending row is in flight).
    Published(usize),
}

/// Publishes outbox rows through ingest (as a trusted source).
pub struct OutboxRelay {
    cfg: RelayConfig,
    store: Arc<dyn OutboxStore>,
    ingest: Arc<dyn Ingest>,
    next_id: Box<dyn Fn() -> MsgId + Send + Sync>,
    wake: tokio::sync::Notify,
    /// Rows published and not yet seen stored: row id → when.
    in_flight: Mutex<HashMap<i64, Instant>>,
}

impl OutboxRelay {
    /// `next_id`: the message-id generator (ingest's).
    pub fn new(
        cfg: RelayConfig,
        store: Arc<dyn OutboxStore>,
        ingest: Arc<dyn Ingest>,
        next_id: impl Fn() -> MsgId + Send + Sync + 'static,
    ) -> Self {
        OutboxRelay {
            cfg,
            store,
            ingest,
            next_id: Box::new(next_id),
            wake: tokio::sync::Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn OutboxStore> {
        &self.store
    }

    /// Asks for a cycle now (after an insert through the API).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Rows published by this relay and not yet stored.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().len()
    }

    /// One cycle: lease, then publish the pending rows not already in flight, in order. Stops
    /// at the first failure (the row stays pending and is retried next cycle).
    pub async fn cycle(&self) -> Result<Cycle, StoreError> {
        if !self
            .store
            .acquire_lease(&self.cfg.holder, self.cfg.lease_ttl)
            .await?
        {
            // Whoever holds the lease publishes; after a takeover, everything is published anew.
            self.in_flight.lock().clear();
            return Ok(Cycle::NotLeader);
        }
        let limit = self.cfg.batch.max(1);
        let rows = self.store.pending(limit).await?;
        {
            // Rows no longer pending were stored (or set aside): forget them. Rows past this
            // page cannot be judged yet.
            let beyond = (rows.len() == limit).then(|| rows.last().map_or(i64::MAX, |r| r.id));
            let ids: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
            self.in_flight
                .lock()
                .retain(|id, _| ids.contains(id) || beyond.is_some_and(|last| *id > last));
        }
        let mut done = 0;
        let mut first = true;
        for row in rows {
            let id = row.id;
            let due = self
                .in_flight
                .lock()
                .get(&id)
                .is_none_or(|at| at.elapsed() >= self.cfg.resend_after);
            if !due {
                continue;
            }
            // Still ours? (Renewed before every row, so a relay that stalled past its lease
            // stops instead of publishing alongside its successor.)
            if !first
                && !self
                    .store
                    .acquire_lease(&self.cfg.holder, self.cfg.lease_ttl)
                    .await?
            {
                self.in_flight.lock().clear();
                break;
            }
            first = false;
            let msg_id = match row.msg_id {
                Some(m) => MsgId(m),
                None => {
                    let m = (self.next_id)();
                    self.store.assign_msg_id(id, m.0).await?;
                    m
                }
            };
            let e = row.event;
            let req = ChatRequest {
                room: e.room,
                user: e.user,
                name: e.name.map(Into::into),
                text: e.text,
                kind: e.kind,
                payload: e.payload,
                trusted: true,
                msg_id: Some(msg_id),
            };
            match self.ingest.submit(req).await {
                // In flight until the store marks it sent (with its message, one transaction).
                Ok(_) => {
                    self.in_flight.lock().insert(id, Instant::now());
                }
                Err(IngestError::Unavailable(why)) => {
                    tracing::warn!(row = id, error = %why, "outbox: bus unavailable; will retry");
                    break;
                }
                Err(e) => {
                    // A row that can never be published (its text fails the checks): set aside
                    // so it cannot block the outbox, kept in the table, and reported loudly.
                    tracing::error!(row = id, error = %e, "outbox: row refused by ingest; marked failed");
                    self.store.mark_failed(id).await?;
                }
            }
            done += 1;
        }
        Ok(Cycle::Published(done))
    }

    /// Runs cycles until `stop` resolves; then gives up the lease.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let pause = match self.cycle().await {
                Ok(Cycle::Published(n)) if n > 0 => Duration::ZERO,
                Ok(_) => self.cfg.idle_poll,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cycle failed");
                    self.cfg.idle_poll * 5
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            } else if futures_ready(&mut stop) {
                break;
            }
        }
        if let Err(e) = self.store.release_lease(&self.cfg.holder).await {
            tracing::warn!(error = %e, "outbox relay could not release its lease");
        }
    }
}

/// Whether a pinned future is already complete (without waiting).
fn futures_ready<F: std::future::Future<Output = ()>>(f: &mut std::pin::Pin<&mut F>) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    f.as_mut().poll(&mut cx).is_ready()
}
