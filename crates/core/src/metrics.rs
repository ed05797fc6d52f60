//! Process metrics as plain atomics, rendered in the Prometheus text format.
//!
//! Hot paths bump a field of a shared struct (one relaxed atomic add, no label lookup, no
//! allocation); per-connection work is counted once per fan-out, not once per connection.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Cumulative buckets with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// Sum in millionths of the unit.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn observe(&self, v: f64) {
        self.observe_n(v, 1);
    }

    /// Records `n` observations of the same value.
    #[inline]
    pub fn observe_n(&self, v: f64, n: u64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(n, Relaxed);
        }
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64 * n, Relaxed);
        self.count.fetch_add(n, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const LATENCY_S: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How long this node's latest pass over a big room took, and when it ended: room workers in the
/// same process (standalone) size their batch window from it.
#[derive(Default)]
pub struct FanoutLoad {
    pass_us: AtomicU64,
    at_ms: AtomicU64,
}

impl FanoutLoad {
    pub fn record(&self, pass: std::time::Duration, now_ms: u64) {
        self.pass_us.store(pass.as_micros() as u64, Relaxed);
        self.at_ms.store(now_ms, Relaxed);
    }

    /// The latest pass's duration, if it ended within `fresh_ms` before `now_ms`.
    pub fn recent(&self, now_ms: u64, fresh_ms: u64) -> Option<std::time::Duration> {
        let at = self.at_ms.load(Relaxed);
        (at > 0 && now_ms.saturating_sub(at) <= fresh_ms)
            .then(|| std::time::Duration::from_micros(self.pass_us.load(Relaxed)))
    }
}

/// Why a message or a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A slow reader's queue overflowed; the oldest ordinary frames were dropped.
    SlowReader = 0,
    /// The connection closed with frames still queued.
    Closed = 1,
    /// Refused by the rate limits.
    RateLimited = 2,
    /// Refused by the content checks or the word filter.
    Rejected = 3,
    /// Refused because the sender is muted or banned.
    Moderated = 4,
}

const DROP_REASONS: [(&str, DropReason); 5] = [
    ("slow_reader", DropReason::SlowReader),
    ("closed", DropReason::Closed),
    ("rate_limited", DropReason::RateLimited),
    ("rejected", DropReason::Rejected),
    ("moderated", DropReason::Moderated),
];

/// Everything roomcast counts. One instance per process, shared by all components.
pub struct Metrics {
    pub connections: Gauge,
    /// WebSocket sockets still open, including connections that ended and are closing.
    pub sockets_open: Gauge,
    /// TCP connections on the HTTP port (WebSocket ones included).
    pub http_connections: Gauge,
    /// TCP connections refused at accept: over the total cap, over the per-address cap.
    pub http_refused_total: Counter,
    pub http_refused_per_ip: Counter,
    /// HTTP requests that ran past `http.request_timeout_ms` (answered 408).
    pub http_timeouts: Counter,
    /// Requests refused by a per-connection or per-node limit (joins, rooms created, acks,
    /// logins, dev endpoints).
    pub limited_requests: Counter,
    pub connections_opened: Counter,
    pub rooms: Gauge,
    pub room_memberships: Gauge,
    pub messages_in: Counter,
    pub batches: Counter,
    /// Route table reads by room workers (their caches answer the other flushes).
    pub route_reads: Counter,
    /// Route table writes by the gateway (adds and removes on a room's 0↔1 edges, node drops).
    pub route_writes: Counter,
    /// Route table writes or lease renewals that failed (the next renewal reconciles).
    pub route_write_failures: Counter,
    /// Full reconciliations of this node's routes with its rooms.
    pub route_reconciles: Counter,
    /// Routes a reconciliation had to add (lost writes, a flushed Redis) or remove (stale).
    pub route_repairs: Counter,
    /// Dead nodes whose routes this node deleted (their lease had run out).
    pub dead_nodes_collected: Counter,
    pub batch_size: Histogram,
    /// The batch window a room worker most recently adapted to, in microseconds.
    pub batch_window_us: Gauge,
    pub frames_out: Counter,
    /// Frames compressed with permessage-deflate (once per frame, whatever the connections).
    pub deflate_frames: Counter,
    /// Their payload bytes before and after compression.
    pub deflate_in_bytes: Counter,
    pub deflate_out_bytes: Counter,
    /// Open connections that negotiated permessage-deflate.
    pub deflate_connections: Gauge,
    pub deliveries: Counter,
    /// One pass writes a room's pending frames to every local member.
    pub fanout_passes: Counter,
    /// Wall time of passes over rooms big enough to be written by parallel tasks.
    pub fanout_pass_big: Histogram,
    /// Bus records a room worker dropped as already processed (redelivered around a rebalance).
    pub bus_duplicates: Counter,
    /// Bus records that did not decode (another version, truncated, garbage): skipped.
    pub bus_undecodable: Counter,
    /// Rebalances a room worker took part in (each `Revoked` event).
    pub bus_revocations: Counter,
    /// Batches a worker pushed to a gateway (distributed mode; one per batch per gateway).
    pub pushed_batches: Counter,
    /// Batches a worker dropped for a registered gateway (queue full, call failed, it left).
    pub push_dropped: Counter,
    /// The latest such pass, for the room workers of the same process (not exported).
    pub fanout_load: FanoutLoad,
    pub drops: [Counter; 5],
    pub slow_disconnects: Counter,
    pub protocol_errors: Counter,
    /// From ingest acceptance to the moment the gateway wrote (or queued) the batch.
    pub delivery_latency: Histogram,
    pub acks_pending: Gauge,
    pub ack_retries: Counter,
    pub ack_failures: Counter,
    pub acks_received: Counter,
    pub critical_sent: Counter,
    /// Failed attempts to write a group of batches to the message store (each is retried).
    pub store_write_failures: Counter,
    /// 1 while the message store cannot write (the last attempt failed), else 0.
    pub store_write_failing: Gauge,
    /// Rooms whose history is cached in memory (capped by `history.max_rooms`).
    pub history_rooms: Gauge,
    /// Recoveries (`join` with `since`) the recent messages could not prove, read from the
    /// message store; and those answered from another viewer's read of the same room.
    pub recovery_store_reads: Counter,
    pub recovery_store_shared: Counter,
    /// Recoveries answered `recovered: false` because neither the recent messages nor the
    /// store proved the gap contiguous (or the store could not be read).
    pub recovery_unproven: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: Gauge::default(),
            sockets_open: Gauge::default(),
            http_connections: Gauge::default(),
            http_refused_total: Counter::default(),
            http_refused_per_ip: Counter::default(),
            http_timeouts: Counter::default(),
            limited_requests: Counter::default(),
            connections_opened: Counter::default(),
            rooms: Gauge::default(),
            room_memberships: Gauge::default(),
            messages_in: Counter::default(),
            batches: Counter::default(),
            route_reads: Counter::default(),
            route_writes: Counter::default(),
            route_write_failures: Counter::default(),
            route_reconciles: Counter::default(),
            route_repairs: Counter::default(),
            dead_nodes_collected: Counter::default(),
            batch_size: Histogram::new(BATCH_SIZES),
            batch_window_us: Gauge::default(),
            frames_out: Counter::default(),
            deflate_frames: Counter::default(),
            deflate_in_bytes: Counter::default(),
            deflate_out_bytes: Counter::default(),
            deflate_connections: Gauge::default(),
            deliveries: Counter::default(),
            fanout_passes: Counter::default(),
            fanout_pass_big: Histogram::new(LATENCY_S),
            bus_duplicates: Counter::default(),
            bus_undecodable: Counter::default(),
            bus_revocations: Counter::default(),
            pushed_batches: Counter::default(),
            push_dropped: Counter::default(),
            fanout_load: FanoutLoad::default(),
            drops: Default::default(),
            slow_disconnects: Counter::default(),
            protocol_errors: Counter::default(),
            delivery_latency: Histogram::new(LATENCY_S),
            acks_pending: Gauge::default(),
            ack_retries: Counter::default(),
            ack_failures: Counter::default(),
            acks_received: Counter::default(),
            critical_sent: Counter::default(),
            store_write_failures: Counter::default(),
            store_write_failing: Gauge::default(),
            history_rooms: Gauge::default(),
            recovery_store_reads: Counter::default(),
            recovery_store_shared: Counter::default(),
            recovery_unproven: Counter::default(),
        }
    }
}

impl Metrics {
    #[inline]
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].add(n);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut o,
            "roomcast_connections",
            "Open WebSocket connections.",
            self.connections.get(),
        );
        gauge(
            &mut o,
            "roomcast_deflate_connections",
            "Open WebSocket connections that negotiated permessage-deflate.",
            self.deflate_connections.get(),
        );
        gauge(
            &mut o,
            "roomcast_sockets_open",
            "WebSocket sockets still open, connections that are closing included.",
            self.sockets_open.get(),
        );
        gauge(
            &mut o,
            "roomcast_http_connections",
            "TCP connections on the HTTP port, WebSocket ones included.",
            self.http_connections.get(),
        );
        let _ = writeln!(
            o,
            "# HELP roomcast_http_refused_total TCP connections refused at accept, by cap.\n# TYPE roomcast_http_refused_total counter\nroomcast_http_refused_total{{cap=\"total\"}} {}\nroomcast_http_refused_total{{cap=\"per_ip\"}} {}",
            self.http_refused_total.get(),
            self.http_refused_per_ip.get()
        );
        gauge(
            &mut o,
            "roomcast_rooms",
            "Rooms with at least one local member.",
            self.rooms.get(),
        );
        gauge(
            &mut o,
            "roomcast_room_memberships",
            "Connection-room memberships on this node.",
            self.room_memberships.get(),
        );
        gauge(
            &mut o,
            "roomcast_batch_window_microseconds",
            "Batch window a room worker most recently adapted to (widens under load).",
            self.batch_window_us.get(),
        );
        gauge(
            &mut o,
            "roomcast_acks_pending",
            "Critical messages waiting for an ack.",
            self.acks_pending.get(),
        );
        gauge(
            &mut o,
            "roomcast_store_write_failing",
            "1 while the message store cannot write (writes are retried; /readyz fails).",
            self.store_write_failing.get(),
        );
        gauge(
            &mut o,
            "roomcast_history_rooms",
            "Rooms whose history is cached in memory.",
            self.history_rooms.get(),
        );
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "roomcast_connections_opened_total",
            "WebSocket connections accepted.",
            self.connections_opened.get(),
        );
        counter(
            &mut o,
            "roomcast_bus_duplicates_total",
            "Bus records a room worker dropped as already processed (redelivered).",
            self.bus_duplicates.get(),
        );
        counter(
            &mut o,
            "roomcast_bus_revocations_total",
            "Times a room worker had its partitions revoked (rebalances of its consumer group it took part in).",
            self.bus_revocations.get(),
        );
        counter(
            &mut o,
            "roomcast_pushed_batches_total",
            "Batches a room worker pushed to gateways over gRPC (one per batch per gateway).",
            self.pushed_batches.get(),
        );
        counter(
            &mut o,
            "roomcast_push_dropped_total",
            "Batches a room worker dropped for a gateway: its queue was full, the call failed, or the gateway left.",
            self.push_dropped.get(),
        );
        counter(
            &mut o,
            "roomcast_bus_undecodable_total",
            "Bus records that did not decode (another encoding version, truncated, garbage); skipped.",
            self.bus_undecodable.get(),
        );
        counter(
            &mut o,
            "roomcast_http_timeouts_total",
            "HTTP requests that ran past the whole-request timeout (answered 408).",
            self.http_timeouts.get(),
        );
        counter(
            &mut o,
            "roomcast_limited_requests_total",
            "Requests refused by a per-connection or per-node limit (joins, new rooms, acks, logins, dev endpoints).",
            self.limited_requests.get(),
        );
        counter(
            &mut o,
            "roomcast_messages_in_total",
            "Room messages accepted by ingest.",
            self.messages_in.get(),
        );
        counter(
            &mut o,
            "roomcast_batches_total",
            "Room batches flushed by room workers.",
            self.batches.get(),
        );
        counter(
            &mut o,
            "roomcast_route_reads_total",
            "Route table reads by room workers (a cached route answers the other batches).",
            self.route_reads.get(),
        );
        counter(
            &mut o,
            "roomcast_route_writes_total",
            "Route table writes by the gateway (a room's first member arrives, its last one left route_linger_ms ago, the node drops its routes).",
            self.route_writes.get(),
        );
        counter(
            &mut o,
            "roomcast_recovery_store_reads_total",
            "Recoveries the recent messages could not prove, read from the message store.",
            self.recovery_store_reads.get(),
        );
        counter(
            &mut o,
            "roomcast_recovery_store_shared_total",
            "Recoveries answered from another viewer's store read of the same room (single-flight).",
            self.recovery_store_shared.get(),
        );
        counter(
            &mut o,
            "roomcast_recovery_unproven_total",
            "Recoveries answered recovered: false: neither the recent messages nor the store proved the gap contiguous.",
            self.recovery_unproven.get(),
        );
        counter(
            &mut o,
            "roomcast_route_write_failures_total",
            "Route writes and lease renewals that failed; the node's next renewal reconciles its routes.",
            self.route_write_failures.get(),
        );
        counter(
            &mut o,
            "roomcast_route_reconciles_total",
            "Full reconciliations of this gateway's routes with the rooms it has members in.",
            self.route_reconciles.get(),
        );
        counter(
            &mut o,
            "roomcast_route_repairs_total",
            "Routes a reconciliation found missing (added back) or stale (removed).",
            self.route_repairs.get(),
        );
        counter(
            &mut o,
            "roomcast_dead_nodes_collected_total",
            "Nodes whose lease had run out and whose routes this gateway deleted.",
            self.dead_nodes_collected.get(),
        );
        counter(
            &mut o,
            "roomcast_frames_out_total",
            "WebSocket frames written or queued to connections.",
            self.frames_out.get(),
        );
        counter(
            &mut o,
            "roomcast_deflate_frames_total",
            "Frames compressed with permessage-deflate: once per frame, shared by every connection that negotiated it.",
            self.deflate_frames.get(),
        );
        counter(
            &mut o,
            "roomcast_deflate_in_bytes_total",
            "Payload bytes of those frames before compression.",
            self.deflate_in_bytes.get(),
        );
        counter(
            &mut o,
            "roomcast_deflate_out_bytes_total",
            "Payload bytes of those frames after compression.",
            self.deflate_out_bytes.get(),
        );
        counter(
            &mut o,
            "roomcast_deliveries_total",
            "Room messages handed to connections (messages x connections).",
            self.deliveries.get(),
        );
        counter(
            &mut o,
            "roomcast_fanout_passes_total",
            "Passes writing a room's pending frames to all its local members (one write each).",
            self.fanout_passes.get(),
        );
        counter(
            &mut o,
            "roomcast_slow_disconnects_total",
            "Connections closed for reading too slowly.",
            self.slow_disconnects.get(),
        );
        counter(
            &mut o,
            "roomcast_protocol_errors_total",
            "Malformed requests answered with an error.",
            self.protocol_errors.get(),
        );
        counter(
            &mut o,
            "roomcast_critical_sent_total",
            "Critical messages written to a user's connections (first sends, resends, login deliveries).",
            self.critical_sent.get(),
        );
        counter(
            &mut o,
            "roomcast_store_write_failures_total",
            "Failed attempts to write messages to the store (each one is retried with backoff).",
            self.store_write_failures.get(),
        );
        counter(
            &mut o,
            "roomcast_acks_received_total",
            "Acks received for critical messages.",
            self.acks_received.get(),
        );
        counter(
            &mut o,
            "roomcast_ack_retries_total",
            "Critical messages resent for lack of an ack.",
            self.ack_retries.get(),
        );
        counter(
            &mut o,
            "roomcast_ack_failures_total",
            "Critical messages given up after the last attempt.",
            self.ack_failures.get(),
        );
        let _ = writeln!(
            o,
            "# HELP roomcast_drops_total Messages or frames not delivered, by reason.\n# TYPE roomcast_drops_total counter"
        );
        for (name, reason) in DROP_REASONS {
            let _ = writeln!(
                o,
                "roomcast_drops_total{{reason=\"{name}\"}} {}",
                self.dropped(reason)
            );
        }
        self.batch_size.render(
            &mut o,
            "roomcast_batch_size_messages",
            "Messages per flushed room batch.",
        );
        self.delivery_latency.render(
            &mut o,
            "roomcast_delivery_latency_seconds",
            "From ingest acceptance to the write to the connections, per message.",
        );
        self.fanout_pass_big.render(
            &mut o,
            "roomcast_fanout_pass_big_seconds",
            "Wall time of a pass over a room bigger than gateway.fanout_chunk members.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connections.inc();
        m.deliveries.add(5);
        m.count_drop(DropReason::SlowReader, 2);
        m.delivery_latency.observe_n(0.004, 3);
        let text = m.render();
        assert!(text.contains("roomcast_connections 1\n"), "{text}");
        assert!(text.contains("roomcast_deliveries_total 5\n"));
        assert!(text.contains("roomcast_drops_total{reason=\"slow_reader\"} 2\n"));
        assert!(text.contains("roomcast_delivery_latency_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("roomcast_delivery_latency_seconds_count 3\n"));
    }
}
