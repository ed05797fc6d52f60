//! The gateway: holds client connections, knows which local connections are in which room, and
//! fans each room batch out to them.
//!
//! One call per batch arrives from a room worker ([`Gateway::deliver`]); the batch is encoded
//! once per wire format and the same frame is written to every member (see [`conn`] for the
//! write path and [`registry`] for ordering). Requests from clients go through the handler
//! table in [`session`]. Background duties — heartbeat and login timeouts, slow readers stuck
//! with no new frames, online-count pushes at most once per interval per room — run in
//! [`Gateway::run_background`].
//!
//! The gateway never decides what a message is allowed to say (that is ingest) nor where it
//! goes beyond this node (that is the room worker and the route table).

pub mod conn;
mod control;
mod critical;
pub mod limits;
mod online;
pub mod outgoing;
pub mod registry;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use roomcast_proto::Wire;
use roomcast_proto::body::Kicked;
use roomcast_proto::deflate::{self, Deflate};
use roomcast_proto::ws::close;
use tokio::net::TcpStream;

use crate::BoxFut;
use crate::auth::{AuthError, Identity, JwtAuth};
use crate::clock::{now_ms, now_s};
use crate::config::GatewayConfig;
use crate::history::HistoryReader;
use crate::ids::{ConnId, NodeId, RoomId, UserId};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::model::RoomBatch;
use crate::ports::{Delivery, DeliveryError, Moderation, Presence, RouteTable, Written};
use crate::shard::Sharded;
use conn::{Closing, Conn, SendLimits, Sent};
pub use control::{LocalControl, NodeCommands, RoutedControl};
use outgoing::Outgoing;
use registry::{Registry, Room, Snapshot};
pub use session::{Handler, HandlerTable};

/// What the gateway needs from the rest of the system.
pub struct GatewayDeps {
    pub node: NodeId,
    pub auth: Arc<JwtAuth>,
    pub ingest: Arc<dyn Ingest>,
    pub history: Arc<dyn HistoryReader>,
    pub routes: Arc<dyn RouteTable>,
    pub presence: Arc<dyn Presence>,
    pub moderation: Arc<dyn Moderation>,
    pub acks: Arc<dyn crate::ports::AckStore>,
    /// Room-wide online counts (per-node counts summed).
    pub counts: Arc<dyn crate::ports::RoomCounts>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("connection limit reached")]
    Full,
}

/// An upgraded WebSocket connection handed to [`Gateway::accept`].
pub struct Upgraded {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes already read from the socket after the handshake.
    pub read_ahead: Bytes,
    pub wire: Wire,
    /// Set when the upgrade URL carried a valid token.
    pub identity: Option<Identity>,
    /// Released when the socket closes (the HTTP layer's per-address count).
    pub hold: Option<Box<dyn Send + Sync>>,
    /// The conformance endpoint (`/dev/echo`): the same connection code, data frames echoed,
    /// no login.
    pub echo: bool,
    /// What the upgrade negotiated (see [`Gateway::negotiate_deflate`]).
    pub deflate: Deflate,
}

pub struct Gateway {
    cfg: GatewayConfig,
    deps: GatewayDeps,
    handlers: HandlerTable,
    registry: Registry,
    conns: Sharded<HashMap<ConnId, Arc<Conn>>>,
    users: Sharded<HashMap<UserId, Vec<Arc<Conn>>>>,
    next_conn: AtomicU64,
    conn_count: AtomicUsize,
    online_dirty: Mutex<HashSet<RoomId>>,
    online: online::OnlineState,
    /// An online refresh is running (one at a time, in its own task).
    online_refreshing: AtomicBool,
    started: std::time::Instant,
    shutting_down: AtomicBool,
    /// Notified when the last connection ends.
    all_closed: tokio::sync::Notify,
    limits: SendLimits,
    deflate: deflate::Settings,
    /// Retry deadlines of critical messages sent from this node: (ms, user, msg_id).
    critical_schedule: Mutex<std::collections::BinaryHeap<std::cmp::Reverse<(u64, UserId, u64)>>>,
    /// A retry pass is running (passes run in their own task, never two at once).
    retrying: AtomicBool,
    /// Rooms created on this node (`gateway.new_room_limit`).
    new_rooms: Mutex<limits::Bucket>,
    /// Rooms whose last local member left, whose route is removed `route_linger_ms` later
    /// unless a join comes first: room → the token of the pending removal.
    lingering: Mutex<HashMap<RoomId, u64>>,
    next_linger: AtomicU64,
    /// A route write failed (or none was checked yet, at start): the next renewal reconciles
    /// the whole route set.
    routes_dirty: AtomicBool,
    /// Lease renewals so far: every `route_reconcile_s` worth of them reconciles anyway.
    renewals: AtomicU64,
}

impl Gateway {
    pub fn new(cfg: GatewayConfig, deps: GatewayDeps, handlers: HandlerTable) -> Arc<Self> {
        let limits = SendLimits {
            queue_bytes: cfg.send_queue_bytes,
            slow_timeout: Duration::from_secs(cfg.slow_reader_timeout_s as u64),
        };
        Arc::new(Gateway {
            deps,
            handlers,
            registry: Registry::default(),
            conns: Sharded::new(64),
            users: Sharded::new(64),
            next_conn: AtomicU64::new(1),
            conn_count: AtomicUsize::new(0),
            online_dirty: Mutex::new(HashSet::new()),
            online: online::OnlineState::default(),
            online_refreshing: AtomicBool::new(false),
            started: std::time::Instant::now(),
            shutting_down: AtomicBool::new(false),
            all_closed: tokio::sync::Notify::new(),
            limits,
            deflate: cfg.deflate_settings(),
            critical_schedule: Mutex::new(std::collections::BinaryHeap::new()),
            retrying: AtomicBool::new(false),
            new_rooms: Mutex::new(limits::Bucket::new(&cfg.new_room_limit, 0)),
            lingering: Mutex::new(HashMap::new()),
            next_linger: AtomicU64::new(1),
            routes_dirty: AtomicBool::new(true),
            renewals: AtomicU64::new(0),
            cfg,
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    pub fn deps(&self) -> &GatewayDeps {
        &self.deps
    }

    pub fn node(&self) -> &NodeId {
        &self.deps.node
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.deps.metrics
    }

    pub(crate) fn limits(&self) -> &SendLimits {
        &self.limits
    }

    /// Milliseconds since the gateway started (the clock of heartbeats and timeouts).
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn connection_count(&self) -> usize {
        self.conn_count.load(Relaxed)
    }

    /// WebSocket sockets still open: the connections, plus those that ended and whose socket
    /// has not closed yet (at most `close_grace_ms` later). The connection limit counts these.
    pub fn socket_count(&self) -> usize {
        self.deps.metrics.sockets_open.get().max(0) as usize
    }

    /// Whether a new connection would be accepted now.
    pub fn can_accept(&self) -> Result<(), AcceptError> {
        if self.shutting_down.load(Relaxed) {
            Err(AcceptError::ShuttingDown)
        } else if self.socket_count() >= self.cfg.max_connections {
            Err(AcceptError::Full)
        } else {
            Ok(())
        }
    }

    /// The permessage-deflate offer to accept from the values of an upgrade request's
    /// `Sec-WebSocket-Extensions` headers (none when `gateway.deflate` is off).
    pub fn negotiate_deflate<'a>(
        &self,
        offers: impl IntoIterator<Item = &'a str>,
    ) -> Option<deflate::Agreed> {
        if self.cfg.deflate {
            deflate::negotiate(offers)
        } else {
            None
        }
    }

    /// `frame` as this connection should get it: compressed when it negotiated
    /// permessage-deflate and the frame is big enough (for frames sent to one connection).
    pub(crate) fn for_conn(&self, conn: &Conn, frame: Bytes) -> Bytes {
        match conn.deflate() {
            Deflate::Off => frame,
            mode => outgoing::compress(&frame, mode, &self.deflate, &self.deps.metrics),
        }
    }

    pub fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.deps.auth.verify(token, now_s())
    }

    /// Takes over an upgraded WebSocket connection.
    pub fn accept(self: &Arc<Self>, up: Upgraded) -> Result<ConnId, AcceptError> {
        self.can_accept()?;
        let Upgraded {
            stream,
            peer,
            read_ahead,
            wire,
            identity,
            hold,
            echo,
            deflate,
        } = up;
        if self.cfg.socket_send_buffer > 0
            && let Err(e) =
                socket2::SockRef::from(&stream).set_send_buffer_size(self.cfg.socket_send_buffer)
        {
            tracing::debug!(error = %e, "cannot set the socket send buffer");
        }
        let id = ConnId(self.next_conn.fetch_add(1, Relaxed));
        let hold = conn::SocketHold::new(self.deps.metrics.clone(), hold);
        let mut conn = Conn::new(id, stream, peer, wire, self.clock_ms(), hold);
        conn.echo = echo;
        conn.deflate = deflate;
        if deflate.is_on() {
            self.deps.metrics.deflate_connections.inc();
        }
        let conn = Arc::new(conn);
        self.conns.for_index(id.0).lock().insert(id, conn.clone());
        self.conn_count.fetch_add(1, Relaxed);
        self.deps.metrics.connections.inc();
        self.deps.metrics.connections_opened.inc();
        tokio::spawn(session::run(self.clone(), conn, read_ahead, identity));
        Ok(id)
    }

    /// Whether a join that would give `room` its first member on this node may create it now
    /// (`gateway.new_room_limit`); `Err(retry_after)` otherwise.
    pub(crate) fn admit_new_room(&self, room: &RoomId) -> Result<(), Duration> {
        if self.registry.members(room) > 0 {
            return Ok(());
        }
        let now = self.clock_ms();
        self.new_rooms.lock().take(&self.cfg.new_room_limit, now)
    }

    // ---- membership (used by the session handlers) ------------------------------------------

    pub(crate) fn register_user(&self, user: &UserId, conn: &Arc<Conn>) {
        let mut shard = self.users.for_key(user).lock();
        let conns = shard.entry(user.clone()).or_default();
        if !conns.iter().any(|c| c.id == conn.id) {
            conns.push(conn.clone());
        }
    }

    /// Returns whether that was the user's last connection on this node.
    fn unregister_user(&self, user: &UserId, conn: &Conn) -> bool {
        let mut shard = self.users.for_key(user).lock();
        let Some(conns) = shard.get_mut(user) else {
            return true;
        };
        conns.retain(|c| c.id != conn.id);
        if conns.is_empty() {
            shard.remove(user);
            true
        } else {
            false
        }
    }

    /// The user's live connections on this node.
    pub fn user_connections(&self, user: &UserId) -> Vec<Arc<Conn>> {
        self.users
            .for_key(user)
            .lock()
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) async fn join_room(&self, room: &RoomId, conn: &Arc<Conn>) -> usize {
        let change = self.registry.add(room, conn);
        self.deps.metrics.room_memberships.inc();
        if change.edge {
            self.deps.metrics.rooms.inc();
            // A route kept after the last member left is still there: nothing to write.
            let kept = self.lingering.lock().remove(room).is_some();
            if !kept {
                self.deps.metrics.route_writes.inc();
                if let Err(e) = self.deps.routes.add(room, &self.deps.node).await {
                    self.route_write_failed();
                    tracing::error!(room = %room, error = %e, "cannot add route; the next lease renewal repairs it");
                }
            }
        }
        self.online_dirty.lock().insert(room.clone());
        change.members
    }

    pub(crate) async fn leave_room(self: &Arc<Self>, room: &RoomId, conn: &Conn) -> bool {
        let Some(change) = self.registry.remove(room, conn) else {
            return false;
        };
        self.deps.metrics.room_memberships.dec();
        if change.edge {
            self.deps.metrics.rooms.dec();
            let linger = self.cfg.route_linger_ms;
            if linger == 0 {
                self.remove_route(room).await;
            } else {
                // Damped: the route goes only if the room is still empty `linger` from now.
                let token = self.next_linger.fetch_add(1, Relaxed);
                self.lingering.lock().insert(room.clone(), token);
                let (gw, room) = (self.clone(), room.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(linger)).await;
                    {
                        let mut lingering = gw.lingering.lock();
                        if lingering.get(&room) != Some(&token) {
                            return; // a join took the route back (or a later leave owns it)
                        }
                        lingering.remove(&room);
                    }
                    if gw.registry.members(&room) == 0 {
                        gw.remove_route(&room).await;
                    }
                });
            }
        }
        self.online_dirty.lock().insert(room.clone());
        true
    }

    async fn remove_route(&self, room: &RoomId) {
        self.deps.metrics.route_writes.inc();
        if let Err(e) = self.deps.routes.remove(room, &self.deps.node).await {
            self.route_write_failed();
            tracing::error!(room = %room, error = %e, "cannot remove route; the next lease renewal repairs it");
        }
        // Someone may have joined while the route was being removed.
        if self.registry.members(room) > 0 {
            self.deps.metrics.route_writes.inc();
            if let Err(e) = self.deps.routes.add(room, &self.deps.node).await {
                self.route_write_failed();
                tracing::error!(room = %room, error = %e, "cannot restore route; the next lease renewal repairs it");
            }
        }
    }

    /// Rooms whose route is kept for a while after their last local member left.
    pub fn lingering_routes(&self) -> usize {
        self.lingering.lock().len()
    }

    fn route_write_failed(&self) {
        self.deps.metrics.route_write_failures.inc();
        self.routes_dirty.store(true, Relaxed);
    }

    /// Starts or extends the lease on this node's routes (`route_lease_s`); the background
    /// duties call it every third of the lease. Routes live in another service, so they are
    /// re-asserted, not written once: the whole set is reconciled with the rooms this node has
    /// members in (missing ones added, stale ones removed) when a route write failed since the
    /// last reconciliation, when the lease had lapsed (expired, or lost with Redis's data), at
    /// the first renewal (a restart with the same node id drops what the last run left), and
    /// every `route_reconcile_s` anyway (a fail-over to a replica that lagged). Each
    /// reconciliation also deletes dead nodes' routes.
    pub async fn renew_routes(&self) {
        let ttl = self.cfg.route_lease();
        let n = self.renewals.fetch_add(1, Relaxed);
        let every = (self.cfg.route_reconcile_s.max(1) as u64 * 3)
            .div_ceil(self.cfg.route_lease_s.max(1) as u64)
            .max(1);
        let mut due = self.routes_dirty.swap(false, Relaxed) || n % every == every - 1;
        if !due {
            match self.deps.routes.renew(&self.deps.node, ttl).await {
                Ok(lapsed) => {
                    if lapsed {
                        tracing::warn!(node = %self.deps.node, "the route lease had lapsed; reconciling this node's routes");
                    }
                    due = lapsed;
                }
                Err(e) => {
                    self.route_write_failed();
                    tracing::error!(node = %self.deps.node, error = %e, "cannot renew the route lease");
                    return;
                }
            }
        }
        if due {
            self.reconcile_routes(ttl).await;
        }
    }

    async fn reconcile_routes(&self, ttl: Duration) {
        let mut rooms = self.registry.rooms();
        // A lingering route stays until its removal is due.
        rooms.extend(self.lingering.lock().keys().cloned());
        rooms.sort();
        rooms.dedup();
        self.deps.metrics.route_reconciles.inc();
        match self
            .deps
            .routes
            .reconcile(&self.deps.node, &rooms, ttl)
            .await
        {
            Ok(done) => {
                // Counts live beside the routes: re-asserted with them.
                self.report_all_counts().await;
                let repaired = done.added + done.removed;
                self.deps.metrics.route_repairs.add(repaired as u64);
                if repaired > 0 {
                    tracing::warn!(
                        node = %self.deps.node,
                        rooms = rooms.len(),
                        added = done.added,
                        removed = done.removed,
                        "routes repaired"
                    );
                }
            }
            Err(e) => {
                self.route_write_failed();
                tracing::error!(node = %self.deps.node, error = %e, "cannot reconcile routes; trying again at the next renewal");
                return;
            }
        }
        match self.deps.routes.collect_dead().await {
            Ok(dead) if !dead.is_empty() => {
                self.deps
                    .metrics
                    .dead_nodes_collected
                    .add(dead.len() as u64);
                tracing::info!(nodes = ?dead, "routes of dead nodes deleted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot delete dead nodes' routes"),
        }
    }

    /// Removes every route of this node at once (after a drain, when nothing more will be
    /// delivered here).
    pub async fn drop_routes(&self) {
        self.lingering.lock().clear();
        self.deps.metrics.route_writes.inc();
        match self.deps.routes.drop_node(&self.deps.node).await {
            Ok(n) => tracing::info!(node = %self.deps.node, rooms = n, "routes removed"),
            Err(e) => tracing::error!(node = %self.deps.node, error = %e, "cannot remove routes"),
        }
    }

    /// Members of a room on this node.
    pub fn room_members(&self, room: &RoomId) -> usize {
        self.registry.members(room)
    }

    /// Local rooms by member count, largest first.
    pub fn top_rooms(&self, n: usize) -> Vec<(RoomId, usize)> {
        self.registry.top(n)
    }

    pub fn room_count(&self) -> usize {
        self.registry.room_count()
    }

    /// `logout`: leaves the rooms and forgets the user on this connection (presence too when it
    /// was the user's last connection here); the connection itself stays until it closes.
    pub(crate) async fn logout(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        user: Option<&UserId>,
        rooms: &[RoomId],
    ) {
        for room in rooms {
            self.leave_room(room, conn).await;
        }
        if let Some(user) = user
            && self.unregister_user(user, conn)
            && let Err(e) = self.deps.presence.remove(user, &self.deps.node).await
        {
            tracing::warn!(user = %user, error = %e, "cannot clear presence");
        }
    }

    /// Called by the session when a connection ends.
    pub(crate) async fn cleanup(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        user: Option<&UserId>,
        rooms: &[RoomId],
    ) {
        self.logout(conn, user, rooms).await;
        if self
            .conns
            .for_index(conn.id.0)
            .lock()
            .remove(&conn.id)
            .is_some()
        {
            if self.conn_count.fetch_sub(1, Relaxed) == 1 {
                self.all_closed.notify_waiters();
            }
            self.deps.metrics.connections.dec();
            if conn.deflate().is_on() {
                self.deps.metrics.deflate_connections.dec();
            }
        }
        // What is still queued gets until `close_grace_ms` after the server decided to close
        // (now, if the end came from the peer), never longer.
        let now = self.clock_ms();
        let closing_since = conn.closing_since_ms.load(Relaxed);
        let since = if closing_since == 0 {
            now
        } else {
            closing_since
        };
        let left = (since + self.cfg.close_grace_ms).saturating_sub(now);
        conn.finish(
            &self.deps.metrics,
            tokio::time::Instant::now() + Duration::from_millis(left),
        );
    }

    // ---- fan-out -----------------------------------------------------------------------------

    /// Hands a room batch to every local member (the `PushRoomMessage` of the design).
    pub fn deliver(self: &Arc<Self>, batch: Arc<RoomBatch>) {
        self.deliver_inner(batch, None);
    }

    /// [`Gateway::deliver`], and when the pass that writes the batch to the room's members is
    /// done and the room is ready for its next one (at once for a room written inline, or
    /// nobody here; after `fanout_spacing`'s pause for a big room).
    pub fn deliver_written(self: &Arc<Self>, batch: Arc<RoomBatch>) -> Written {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.deliver_inner(batch, Some(tx));
        Written::when(rx)
    }

    fn deliver_inner(
        self: &Arc<Self>,
        batch: Arc<RoomBatch>,
        written: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let latency_now = now_ms();
        for m in &batch.msgs {
            let ms = latency_now.saturating_sub(m.ts);
            self.deps
                .metrics
                .delivery_latency
                .observe(ms as f64 / 1000.0);
        }
        let room = batch.room.clone();
        self.publish_with(&room, Arc::new(Outgoing::batch(batch)), written);
    }

    /// Sends something to every local member of a room, in order with everything else sent to
    /// that room.
    pub fn publish(self: &Arc<Self>, room: &RoomId, item: Arc<Outgoing>) {
        self.publish_with(room, item, None);
    }

    /// [`Gateway::publish`]; `written` is told when the pass that writes `item` is done.
    fn publish_with(
        self: &Arc<Self>,
        room: &RoomId,
        item: Arc<Outgoing>,
        written: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let Some(room) = self.registry.get(room) else {
            return;
        };
        {
            let mut q = room.fanout.lock();
            if q.busy {
                q.pending.push(item);
                q.written.extend(written);
                return;
            }
            q.busy = true;
        }
        self.run_fanout(room, vec![item], written.into_iter().collect());
    }

    /// Writes `items` to the room, then whatever queued up meanwhile, until the queue is empty.
    /// Small rooms are written inline by the caller; big ones by parallel tasks. Each pass
    /// writes one frame per connection for all the batches it takes (merged), and tells those
    /// batches' `written` when it is done.
    fn run_fanout(
        self: &Arc<Self>,
        room: Arc<Room>,
        mut items: Vec<Arc<Outgoing>>,
        mut written: Vec<tokio::sync::oneshot::Sender<()>>,
    ) {
        loop {
            let snapshot = room.snapshot();
            if snapshot.len() > self.cfg.fanout_chunk.max(1) {
                let gw = self.clone();
                tokio::spawn(
                    async move { gw.fanout_parallel(room, items, written, snapshot).await },
                );
                return;
            }
            let _ = self.write_items(&snapshot, &merge_batches(items));
            self.deps.metrics.fanout_passes.inc();
            for w in written.drain(..) {
                let _ = w.send(());
            }
            match next_items(&room) {
                Some((next, ws)) => (items, written) = (next, ws),
                None => return,
            }
        }
    }

    async fn fanout_parallel(
        self: Arc<Self>,
        room: Arc<Room>,
        mut items: Vec<Arc<Outgoing>>,
        mut written: Vec<tokio::sync::oneshot::Sender<()>>,
        mut snapshot: Snapshot,
    ) {
        let chunk = self.cfg.fanout_chunk.max(1);
        loop {
            let started = tokio::time::Instant::now();
            let shared = Arc::new(merge_batches(items));
            let mut tasks = Vec::new();
            let mut start = chunk;
            while start < snapshot.len() {
                let end = (start + chunk).min(snapshot.len());
                let (gw, snap, its) = (self.clone(), snapshot.clone(), shared.clone());
                tasks.push(tokio::spawn(async move {
                    gw.write_items(&snap[start..end], &its)
                }));
                start = end;
            }
            let mut queued = self.write_items(&snapshot[..chunk.min(snapshot.len())], &shared);
            for t in tasks {
                queued += t.await.unwrap_or(0);
            }
            let took = started.elapsed();
            let metrics = &self.deps.metrics;
            metrics.fanout_passes.inc();
            metrics.fanout_pass_big.observe(took.as_secs_f64());
            metrics.fanout_load.record(took, now_ms());
            // Pace the passes: batches that arrive meanwhile queue up and go out together in
            // the next pass, so a big room's writes never take more than 1/spacing of the
            // node's time, whatever the message rate (see `GatewayConfig::fanout_spacing`).
            let mut spacing = self.cfg.fanout_spacing.max(1.0);
            // The sockets did not take it: more than a tenth of the members' socket buffers
            // were full, so their readers are behind. Wait a whole pass before the next one —
            // fewer, bigger frames — rather than pile more onto their outboxes.
            if queued * 10 > snapshot.len() {
                spacing = spacing.max(BEHIND_SPACING);
            }
            if spacing > 1.0 {
                // A pass slowed down by something else must not stall the room for long.
                let pause = took.mul_f64(spacing - 1.0).min(MAX_PASS_PAUSE);
                tokio::time::sleep(pause).await;
            }
            // Written, and the room is ready for its next pass: what the worker sends now goes
            // out at once (telling it before a pause would make it wait a pass more).
            for w in written.drain(..) {
                let _ = w.send(());
            }
            match next_items(&room) {
                Some((next, ws)) => (items, written) = (next, ws),
                None => return,
            }
            snapshot = room.snapshot();
            if snapshot.len() <= chunk {
                let gw = self.clone();
                gw.run_fanout(room, items, written);
                return;
            }
        }
    }

    /// Writes the items to each connection; returns how many could not take them whole (their
    /// socket buffer was full, so what is left waits in their outbox).
    fn write_items(&self, conns: &[Arc<Conn>], items: &[Arc<Outgoing>]) -> usize {
        let metrics = &self.deps.metrics;
        let mut slow = Vec::new();
        let mut queued = 0;
        let z = &self.deflate;
        for conn in conns {
            let (wire, mode) = (conn.wire(), conn.deflate());
            let sent = if items.len() == 1 {
                conn.send(
                    items[0].frame(wire, mode, z, metrics),
                    items[0].droppable,
                    &self.limits,
                    metrics,
                )
            } else {
                let frames: Vec<(&Bytes, bool)> = items
                    .iter()
                    .map(|i| (i.frame(wire, mode, z, metrics), i.droppable))
                    .collect();
                conn.send_many(&frames, &self.limits, metrics)
            };
            match sent {
                Sent::TooSlow => {
                    queued += 1;
                    slow.push(conn.clone());
                }
                Sent::Queued => queued += 1,
                Sent::Written | Sent::Closed => {}
            }
        }
        let n = conns.len() as u64;
        metrics.frames_out.add(n * items.len() as u64);
        metrics
            .deliveries
            .add(n * items.iter().map(|i| i.message_count() as u64).sum::<u64>());
        for conn in slow {
            self.drop_slow(&conn);
        }
        queued
    }

    pub(crate) fn drop_slow(&self, conn: &Arc<Conn>) {
        tracing::info!(conn = %conn.id, peer = %conn.peer, "disconnecting a slow reader");
        self.deps.metrics.slow_disconnects.inc();
        self.close_conn(
            conn,
            close::SLOW_CONSUMER,
            "slow_consumer",
            "reading too slowly",
            true,
        );
    }

    /// Closes a connection with a `kicked` notice (for deliberate closes) and a close frame.
    pub fn close_conn(
        &self,
        conn: &Arc<Conn>,
        code: u16,
        kicked_code: &str,
        reason: &str,
        discard: bool,
    ) {
        let notice = roomcast_proto::wire::single_frame(
            conn.wire(),
            roomcast_proto::Op::Kicked,
            0,
            &Kicked {
                code: kicked_code.to_owned(),
                reason: reason.to_owned(),
                reconnect: Vec::new(),
            },
        );
        conn.close(
            Closing {
                code,
                reason,
                notice: Some(notice),
                discard,
            },
            &self.limits,
            &self.deps.metrics,
            self.clock_ms(),
        );
    }

    /// Closes every connection of a user on this node; returns how many.
    pub fn kick_user(&self, user: &UserId, code: u16, kicked_code: &str, reason: &str) -> usize {
        let conns = self.user_connections(user);
        for c in &conns {
            self.close_conn(c, code, kicked_code, reason, true);
        }
        conns.len()
    }

    /// Bytes waiting in every connection's outbox (walks all connections: for tests and
    /// diagnostics, not for hot paths).
    pub fn queued_bytes(&self) -> usize {
        self.all_connections()
            .iter()
            .map(|c| c.queued_bytes())
            .sum()
    }

    fn all_connections(&self) -> Vec<Arc<Conn>> {
        self.conns
            .iter()
            .flat_map(|s| s.lock().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    // ---- background duties --------------------------------------------------------------------

    /// Runs timeouts and online pushes until `stop` resolves.
    pub async fn run_background(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let sweep_every =
            Duration::from_millis((self.cfg.heartbeat().as_millis() as u64 / 4).clamp(50, 1000));
        let online_every = Duration::from_millis(self.cfg.online_push_interval_ms.max(10));
        let mut sweep = tokio::time::interval(sweep_every);
        let mut online = tokio::time::interval(online_every);
        let retry_every =
            Duration::from_millis((self.cfg.critical_retry_base_ms / 10).clamp(10, 250));
        let mut retry = tokio::time::interval(retry_every);
        let mut lease = tokio::time::interval(self.cfg.route_lease() / 3);
        let renewing = Arc::new(AtomicBool::new(false));
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        online.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = sweep.tick() => self.sweep(),
                _ = online.tick() => self.push_online(),
                // In its own task: store round trips must not delay timeouts or shutdown.
                // Also in its own task: a slow route table must not delay the rest.
                _ = lease.tick() => if !renewing.swap(true, Relaxed) {
                    let (gw, renewing) = (self.clone(), renewing.clone());
                    tokio::spawn(async move {
                        gw.renew_routes().await;
                        renewing.store(false, Relaxed);
                    });
                },
                _ = retry.tick() => if !self.retrying.swap(true, Relaxed) {
                    let gw = self.clone();
                    tokio::spawn(async move {
                        gw.retry_due_critical().await;
                        gw.retrying.store(false, Relaxed);
                    });
                },
            }
        }
    }

    fn sweep(&self) {
        let now = self.clock_ms();
        let now_s = now_s();
        let silence = self.cfg.silence_timeout().as_millis() as u64;
        let login = self.cfg.login_timeout_s as u64 * 1000;
        let grace = self.cfg.close_grace_ms;
        let slow = self.limits.slow_timeout;
        for conn in self.all_connections() {
            let closing_since = conn.closing_since_ms.load(Relaxed);
            if closing_since != 0 {
                if now.saturating_sub(closing_since) > grace {
                    // The peer did not answer our close in time.
                    conn.abort();
                }
                continue;
            }
            let exp = conn.token_exp_s.load(Relaxed);
            if now.saturating_sub(conn.last_seen_ms()) > silence {
                self.close_conn(
                    &conn,
                    close::HEARTBEAT_TIMEOUT,
                    "heartbeat_timeout",
                    "no heartbeat",
                    true,
                );
            } else if exp == 0 && !conn.echo && now.saturating_sub(conn.connected_ms) > login {
                self.close_conn(
                    &conn,
                    close::LOGIN_TIMEOUT,
                    "login_timeout",
                    "no login",
                    true,
                );
            } else if exp != 0 && exp.saturating_add(crate::auth::LEEWAY_S) <= now_s {
                self.close_conn(
                    &conn,
                    close::TOKEN_EXPIRED,
                    "token_expired",
                    "token expired; reconnect with a new one",
                    false,
                );
            } else if conn.behind_too_long(slow) {
                self.drop_slow(&conn);
            }
        }
    }

    /// Stops accepting, closes every connection with "going away", and waits for them to end
    /// (at most `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        self.close_all(grace, None).await
    }

    /// Drains the node (distributed mode): every connection gets a `kicked` notice `draining`
    /// naming `reconnect` (other gateways' URLs) and is closed with 1012, so clients reconnect
    /// elsewhere and recover with `since`; then as [`Gateway::shutdown`].
    pub async fn drain(&self, grace: Duration, reconnect: Vec<String>) {
        self.close_all(grace, Some(reconnect)).await
    }

    async fn close_all(&self, grace: Duration, reconnect: Option<Vec<String>>) {
        self.shutting_down.store(true, Relaxed);
        let conns = self.all_connections();
        for c in &conns {
            let closing = match &reconnect {
                None => Closing {
                    code: close::GOING_AWAY,
                    reason: "server shutting down",
                    notice: None,
                    discard: false,
                },
                Some(urls) => Closing {
                    code: close::SERVICE_RESTART,
                    reason: "server restarting",
                    notice: Some(roomcast_proto::wire::single_frame(
                        c.wire(),
                        roomcast_proto::Op::Kicked,
                        0,
                        &Kicked {
                            code: "draining".into(),
                            reason: "server restarting; reconnect".into(),
                            reconnect: urls.clone(),
                        },
                    )),
                    discard: false,
                },
            };
            c.close(closing, &self.limits, &self.deps.metrics, self.clock_ms());
        }
        let _ = tokio::time::timeout(grace, async {
            loop {
                let closed = self.all_closed.notified();
                if self.connection_count() == 0 {
                    return;
                }
                closed.await;
            }
        })
        .await;
        for c in self.all_connections() {
            c.abort();
        }
    }
}

/// The spacing of a big room's passes while its readers are behind (their sockets full).
const BEHIND_SPACING: f64 = 2.0;

/// The longest pause `fanout_spacing` puts between two passes over a room.
const MAX_PASS_PAUSE: Duration = Duration::from_millis(500);

type Next = (Vec<Arc<Outgoing>>, Vec<tokio::sync::oneshot::Sender<()>>);

fn next_items(room: &Room) -> Option<Next> {
    let mut q = room.fanout.lock();
    if q.pending.is_empty() {
        q.busy = false;
        None
    } else {
        Some((
            std::mem::take(&mut q.pending),
            std::mem::take(&mut q.written),
        ))
    }
}

/// Consecutive batches of the same room and epoch as one batch: one frame per connection per
/// pass, whatever queued up while the previous pass was written (fewer frames for the readers,
/// and a bigger frame compresses better).
fn merge_batches(items: Vec<Arc<Outgoing>>) -> Vec<Arc<Outgoing>> {
    if items.len() < 2 {
        return items;
    }
    let mut out: Vec<Arc<Outgoing>> = Vec::with_capacity(items.len());
    let mut run: Vec<Arc<RoomBatch>> = Vec::new();
    let flush = |run: &mut Vec<Arc<RoomBatch>>, out: &mut Vec<Arc<Outgoing>>| match run.len() {
        0 => {}
        1 => out.extend(run.pop().map(|b| Arc::new(Outgoing::batch(b)))),
        _ => {
            let first = &run[0];
            let merged = RoomBatch {
                room: first.room.clone(),
                epoch: first.epoch,
                msgs: run.iter().flat_map(|b| b.msgs.iter().cloned()).collect(),
                outbox_ids: Vec::new(),
            };
            run.clear();
            out.push(Arc::new(Outgoing::batch(Arc::new(merged))));
        }
    };
    for item in items {
        match item.content() {
            outgoing::Content::Batch(b)
                if run
                    .last()
                    .is_none_or(|last| last.room == b.room && last.epoch == b.epoch) =>
            {
                run.push(b.clone());
            }
            outgoing::Content::Batch(b) => {
                flush(&mut run, &mut out);
                run.push(b.clone());
            }
            outgoing::Content::Online { .. } => {
                flush(&mut run, &mut out);
                out.push(item);
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Delivery to the gateway in this process (standalone).
pub struct LocalDelivery {
    gateway: Arc<Gateway>,
}

impl LocalDelivery {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        LocalDelivery { gateway }
    }
}

impl Delivery for LocalDelivery {
    fn deliver_tracked(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<Written, DeliveryError>> {
        let r = if node == self.gateway.node() {
            Ok(self.gateway.deliver_written(batch))
        } else {
            Err(DeliveryError::UnknownNode(node.clone()))
        };
        Box::pin(std::future::ready(r))
    }

    fn deliver(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<(), DeliveryError>> {
        let r = if node == self.gateway.node() {
            self.gateway.deliver(batch);
            Ok(())
        } else {
            Err(DeliveryError::UnknownNode(node.clone()))
        };
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RoomMsg;

    fn batch(epoch: u32, seqs: &[u64], kind: &str) -> Arc<Outgoing> {
        Arc::new(Outgoing::batch(Arc::new(RoomBatch {
            room: RoomId::parse("r").unwrap(),
            epoch,
            msgs: seqs
                .iter()
                .map(|&seq| {
                    Arc::new(RoomMsg {
                        room_id: "r".into(),
                        msg_id: seq,
                        seq,
                        user_id: "u".into(),
                        name: None,
                        text: "t".into(),
                        kind: kind.into(),
                        ts: 0,
                        epoch,
                        payload: None,
                    })
                })
                .collect(),
            outbox_ids: Vec::new(),
        })))
    }

    fn shape(items: &[Arc<Outgoing>]) -> Vec<(Option<u32>, Vec<u64>, bool)> {
        items
            .iter()
            .map(|i| match i.content() {
                outgoing::Content::Batch(b) => (
                    Some(b.epoch),
                    b.msgs.iter().map(|m| m.seq).collect(),
                    i.droppable,
                ),
                outgoing::Content::Online { .. } => (None, Vec::new(), i.droppable),
            })
            .collect()
    }

    #[test]
    fn what_queued_during_a_pass_goes_out_as_one_frame_per_epoch() {
        let online = Arc::new(Outgoing::online(RoomId::parse("r").unwrap(), 3));
        let items = vec![
            batch(1, &[1, 2], "chat"),
            batch(1, &[3], "gift"),
            batch(1, &[4], "chat"),
            online,
            batch(1, &[5], "chat"),
            batch(2, &[1], "chat"),
            batch(2, &[2, 3], "chat"),
        ];
        assert_eq!(
            shape(&merge_batches(items)),
            vec![
                // A gift in the merged batch: it may not be dropped for a slow reader.
                (Some(1), vec![1, 2, 3, 4], false),
                (None, vec![], true),
                (Some(1), vec![5], true),
                (Some(2), vec![1, 2, 3], true),
            ]
        );
        let one = vec![batch(1, &[9], "chat")];
        assert_eq!(shape(&merge_batches(one)), vec![(Some(1), vec![9], true)]);
    }
}
