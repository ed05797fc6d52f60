//! Room-wide online counts on a gateway (B2). Every `online_push_interval_ms` the gateway
//! reports the rooms whose local count changed to the [`RoomCounts`](crate::ports::RoomCounts)
//! port, reads the sums of all its rooms, and pushes `online` to a room's local members when
//! its room-wide count changed (and always after a local join or leave, so a joiner hears the
//! count soon after `join_ok`): at most one push per room per interval, whatever the churn.
//! Between reads, a room's count is its local members plus what the other nodes had at the
//! last read. In standalone the port is in memory and the sums are the local counts.
//!
//! What it must not do: talk to the service per join or per viewer, or hold a lock across an
//! `.await` (the refresh runs in its own task, one at a time).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Gateway;
use super::outgoing::Outgoing;
use crate::ids::RoomId;

/// What the gateway knows of a room's room-wide count.
#[derive(Default, Clone, Copy)]
pub(super) struct Known {
    /// The other nodes' connections at the last read.
    others: u64,
    /// The count last pushed to the room's local members.
    pushed: u64,
}

#[derive(Default)]
pub(super) struct OnlineState {
    rooms: parking_lot::Mutex<HashMap<RoomId, Known>>,
}

impl Gateway {
    /// The room's online count over every gateway, as this node knows it (exact for its own
    /// members, the others' as of the last read, at most `online_push_interval_ms` old).
    pub fn room_online(&self, room: &RoomId) -> u64 {
        let local = self.registry.members(room) as u64;
        let others = self
            .online
            .rooms
            .lock()
            .get(room)
            .map(|k| k.others)
            .unwrap_or(0);
        local + others
    }

    /// Starts a refresh of the online counts unless one is running (background duties).
    pub(super) fn push_online(self: &Arc<Self>) {
        if self.online_refreshing.swap(true, Relaxed) {
            return;
        }
        let gw = self.clone();
        tokio::spawn(async move {
            gw.refresh_online().await;
            gw.online_refreshing.store(false, Relaxed);
        });
    }

    /// Reports every local room's count (after the service lost them: a reconciliation).
    pub(super) async fn report_all_counts(&self) {
        let counts: Vec<(RoomId, u64)> = self
            .registry
            .rooms()
            .into_iter()
            .map(|r| {
                let n = self.registry.members(&r) as u64;
                (r, n)
            })
            .collect();
        if let Err(e) = self.deps.counts.report(&self.deps.node, &counts).await {
            tracing::warn!(error = %e, "cannot report room counts; they are reported again when they change");
        }
    }

    async fn refresh_online(self: &Arc<Self>) {
        let dirty: Vec<RoomId> = std::mem::take(&mut *self.online_dirty.lock())
            .into_iter()
            .collect();
        let reports: Vec<(RoomId, u64)> = dirty
            .iter()
            .map(|r| (r.clone(), self.registry.members(r) as u64))
            .collect();
        if let Err(e) = self.deps.counts.report(&self.deps.node, &reports).await {
            tracing::warn!(rooms = reports.len(), error = %e, "cannot report room counts; trying again");
            self.online_dirty.lock().extend(dirty.iter().cloned());
        }
        let rooms = self.registry.rooms();
        let totals = match self.deps.counts.totals(&rooms).await {
            Ok(t) if t.len() == rooms.len() => Some(t),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read room counts; pushing what this node knows");
                None
            }
        };
        let mut pushes = Vec::new();
        {
            let mut known = self.online.rooms.lock();
            let mut next = HashMap::with_capacity(rooms.len());
            for (i, room) in rooms.iter().enumerate() {
                let local = self.registry.members(room) as u64;
                let mut k = known.remove(room).unwrap_or_default();
                if let Some(t) = &totals {
                    // The sum includes this node's reported count; what it has now replaces it.
                    let reported = reports.iter().find(|(r, _)| r == room).map(|(_, n)| *n);
                    let mine = reported.unwrap_or(local);
                    k.others = t[i].saturating_sub(mine);
                }
                let total = local + k.others;
                if local > 0 && (total != k.pushed || dirty.contains(room)) {
                    k.pushed = total;
                    pushes.push((room.clone(), total));
                }
                next.insert(room.clone(), k);
            }
            *known = next;
        }
        for (room, count) in pushes {
            self.publish(&room, Arc::new(Outgoing::online(room.clone(), count)));
        }
    }
}
