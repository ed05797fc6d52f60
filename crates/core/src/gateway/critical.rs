//! Critical messages (system notices, bans, gifts that must arrive): per-user acknowledgement
//! and retry.
//!
//! Before a critical message is written to a user's connections it is recorded in the user's
//! pending set (the [`AckStore`] port: `ack:pending:{user}`, msg_id → next-retry deadline, the
//! message beside it). `ack {msg_id}` removes it. Unacknowledged messages are resent with
//! exponential backoff plus jitter, only while the user has a live connection on this node, up
//! to `critical_max_attempts`; then they are recorded as failed (metric and log). At login every
//! pending message of the user is delivered. Clients de-duplicate by `msg_id`.

use std::cmp::Reverse;

use roomcast_proto::Op;
use roomcast_proto::body;
use roomcast_proto::wire::single_frame;

use super::Gateway;
use crate::clock::now_ms;
use crate::ids::UserId;
use crate::ports::{PendingCritical, StoreError};

/// Retries handled per background tick, so a burst cannot stall the sweeper.
const RETRIES_PER_TICK: usize = 4096;

impl Gateway {
    /// Delay before attempt `attempts + 1`: base × 2^(attempts-1), capped, ±20% jitter.
    fn retry_delay_ms(&self, attempts: u32) -> u64 {
        let base = self.cfg.critical_retry_base_ms.max(1);
        let exp = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        let d = exp.min(self.cfg.critical_retry_max_ms.max(base));
        let jitter = d / 5;
        if jitter == 0 {
            return d;
        }
        let mut r = [0u8; 8];
        let r = match getrandom::fill(&mut r) {
            Ok(()) => u64::from_le_bytes(r),
            Err(_) => now_ms(),
        };
        d - jitter + r % (2 * jitter + 1)
    }

    fn write_critical(&self, p: &PendingCritical) -> usize {
        let conns = self.user_connections(&p.user);
        if conns.is_empty() {
            return 0;
        }
        let msg = body::Critical {
            msg_id: p.msg_id,
            kind: p.kind.clone(),
            room_id: p.room.as_ref().map(|r| r.as_str().to_owned()),
            text: p.text.clone(),
            payload: p.payload.clone(),
            ts: p.ts,
        };
        for conn in &conns {
            let frame = self.for_conn(conn, single_frame(conn.wire(), Op::Critical, 0, &msg));
            if conn.send(&frame, false, &self.limits, &self.deps.metrics)
                == super::conn::Sent::TooSlow
            {
                self.drop_slow(conn);
            }
        }
        self.deps.metrics.critical_sent.inc();
        conns.len()
    }

    fn schedule_retry(&self, p: &PendingCritical) {
        self.critical_schedule
            .lock()
            .push(Reverse((p.next_retry_ms, p.user.clone(), p.msg_id)));
    }

    /// Records a critical message for its user and sends it to the user's live connections
    /// (none: it waits for the next login). Returns how many connections it was written to.
    pub async fn send_critical(&self, mut p: PendingCritical) -> Result<usize, StoreError> {
        let online = !self.user_connections(&p.user).is_empty();
        p.attempts = u32::from(online);
        p.next_retry_ms = if online {
            now_ms() + self.retry_delay_ms(1)
        } else {
            0
        };
        // Durable before it is sent: an ack can never race ahead of the record.
        self.deps.acks.put(p.clone()).await?;
        self.deps.metrics.acks_pending.inc();
        if !online {
            tracing::debug!(user = %p.user, msg_id = p.msg_id, "critical message for a user with no connection here; recorded");
            // A login may have read the store just before the record existed.
            if !self.user_connections(&p.user).is_empty() {
                self.attempt(p).await;
                return Ok(1);
            }
            return Ok(0);
        }
        let n = self.write_critical(&p);
        tracing::debug!(user = %p.user, msg_id = p.msg_id, connections = n, "critical message sent");
        self.schedule_retry(&p);
        Ok(n)
    }

    /// At login: every pending critical message of the user, again.
    pub(crate) async fn deliver_pending(&self, user: &UserId) {
        let pending = match self.deps.acks.pending(user).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "cannot read pending critical messages");
                return;
            }
        };
        for p in pending {
            self.attempt(p).await;
        }
    }

    /// Sends one more attempt, or gives up after the last one.
    async fn attempt(&self, mut p: PendingCritical) {
        if p.attempts >= self.cfg.critical_max_attempts.max(1) {
            tracing::warn!(user = %p.user, msg_id = p.msg_id, attempts = p.attempts,
                "critical message never acknowledged; giving up");
            self.deps.metrics.ack_failures.inc();
            if let Ok(true) = self.deps.acks.remove(&p.user, p.msg_id).await {
                self.deps.metrics.acks_pending.dec();
            }
            return;
        }
        if self.user_connections(&p.user).is_empty() {
            return; // offline: it waits in the store for the next login
        }
        // Recorded before it is sent, and only if still pending: an ack that arrives meanwhile
        // is never undone by this attempt.
        let retry = p.attempts > 0;
        p.attempts += 1;
        p.next_retry_ms = now_ms() + self.retry_delay_ms(p.attempts);
        match self.deps.acks.update(&p).await {
            Ok(true) => {}
            Ok(false) => return, // acknowledged meanwhile
            Err(e) => {
                tracing::warn!(user = %p.user, error = %e, "cannot record a critical retry; trying later");
                self.schedule_retry(&p);
                return;
            }
        }
        if retry {
            self.deps.metrics.ack_retries.inc();
        }
        self.write_critical(&p);
        self.schedule_retry(&p);
    }

    /// `ack {msg_id}` from the user: done with it. Returns whether it was pending.
    pub(crate) async fn acknowledge(&self, user: &UserId, msg_id: u64) -> Result<bool, StoreError> {
        let found = self.deps.acks.remove(user, msg_id).await?;
        self.deps.metrics.acks_received.inc();
        if found {
            self.deps.metrics.acks_pending.dec();
        }
        Ok(found)
    }

    /// Resends what is due (called by the background sweeper).
    pub(crate) async fn retry_due_critical(&self) {
        let now = now_ms();
        let due: Vec<(UserId, u64)> = {
            let mut heap = self.critical_schedule.lock();
            let mut due = Vec::new();
            while due.len() < RETRIES_PER_TICK {
                match heap.peek() {
                    Some(Reverse((t, _, _))) if *t <= now => {}
                    _ => break,
                }
                if let Some(Reverse((_, user, id))) = heap.pop() {
                    due.push((user, id));
                }
            }
            due
        };
        for (user, msg_id) in due {
            if self.user_connections(&user).is_empty() {
                continue; // no retries while offline; login delivers it
            }
            let pending = match self.deps.acks.pending(&user).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(user = %user, error = %e, "cannot read pending critical messages");
                    // Try again in a second rather than waiting for the next login.
                    self.critical_schedule
                        .lock()
                        .push(Reverse((now + 1000, user, msg_id)));
                    continue;
                }
            };
            // Gone: acknowledged. A later deadline: an entry rescheduled meanwhile (login).
            if let Some(p) = pending.into_iter().find(|p| p.msg_id == msg_id)
                && p.next_retry_ms <= now
            {
                self.attempt(p).await;
            }
        }
    }

    /// Critical messages for every user with a connection on this node (a broadcast notice).
    pub fn online_users(&self) -> Vec<UserId> {
        self.users
            .iter()
            .flat_map(|s| s.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Users with a connection in the room on this node.
    pub fn room_users(&self, room: &crate::ids::RoomId) -> Vec<UserId> {
        let Some(r) = self.registry.get(room) else {
            return Vec::new();
        };
        let mut users: Vec<UserId> = r.snapshot().iter().filter_map(|c| c.user()).collect();
        users.sort();
        users.dedup();
        users
    }
}
