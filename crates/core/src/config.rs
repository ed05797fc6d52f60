//! Settings of the domain components, with the defaults the standalone server runs on.
//!
//! These are plain serde structs (`deny_unknown_fields`, every field defaulted) that the server's
//! config file embeds as sections; docs/configuration.md lists every field. Durations carry their
//! unit in the name (`_ms`, `_s`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ports::Limit;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Heartbeat period told to clients; a connection silent for twice this is closed.
    pub heartbeat_s: u32,
    /// A connection must log in within this time.
    pub login_timeout_s: u32,
    /// Largest WebSocket message a client may send (bigger: close 1009).
    pub max_frame_bytes: usize,
    /// Largest packet body (bigger: `too_large`).
    pub max_body_bytes: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_conn: usize,
    /// Connections this node accepts at once (more: HTTP 503 on upgrade).
    pub max_connections: usize,
    /// Bytes queued for a slow reader before its oldest ordinary messages are dropped.
    pub send_queue_bytes: usize,
    /// A reader that stays behind for this long (or needs more than four times
    /// `send_queue_bytes` of messages that cannot be dropped) is disconnected.
    pub slow_reader_timeout_s: u32,
    /// Malformed requests tolerated per 10 seconds before the connection is closed.
    pub max_errors_per_10s: u32,
    /// Online counts are pushed at most this often per room.
    pub online_push_interval_ms: u64,
    /// Rooms with more members than this are fanned out by several tasks in parallel.
    pub fanout_chunk: usize,
    /// A pass over such a big room starts at least this many times the previous pass's
    /// duration after that pass started; batches arriving in between go out together in the
    /// next pass. 1.0 writes the passes back to back (what arrives during a pass goes out the
    /// moment it ends); the default 1.3 leaves a pause of 0.3 passes, which on a machine whose
    /// cores also carry the readers (the benchmark's loopback) gave a lower p99 at less CPU
    /// (docs/benchmarks.md). The room worker's next batch waits for the pass and the pause.
    pub fanout_spacing: f64,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it (browsers do). Each frame
    /// is compressed once and the same bytes go to every connection that negotiated it.
    pub deflate: bool,
    /// zlib level for it: 1 (fastest) to 9 (smallest).
    pub deflate_level: u32,
    /// Frames with a smaller payload go out uncompressed (compressing them saves little).
    pub deflate_min_bytes: usize,
    /// Time to wait for clients to complete the closing handshake.
    pub close_grace_ms: u64,
    /// Kernel send buffer per connection (`SO_SNDBUF`), so that a stalled reader pins at most
    /// this much kernel memory and the drop-oldest policy takes over; 0 lets the kernel size it
    /// (up to `net.ipv4.tcp_wmem`, 4 MiB by default).
    pub socket_send_buffer: usize,
    /// First resend of an unacknowledged critical message after this long; each later one
    /// waits twice as long (±20% jitter)…
    pub critical_retry_base_ms: u64,
    /// …but never longer than this.
    pub critical_retry_max_ms: u64,
    /// Sends (first one included) before an unacknowledged critical message counts as failed.
    pub critical_max_attempts: u32,
    /// After a room's last local member leaves, the node keeps its route this long before
    /// removing it (a rejoin in between cancels the removal), so a viewer flapping in and out
    /// does not turn into route writes. 0 removes at once.
    pub route_linger_ms: u64,
    /// The lease on this node's routes; renewed every third of it. A node that stops renewing
    /// (crashed, stalled) drops out of every room's route at its end.
    pub route_lease_s: u32,
    /// Every how often a gateway re-asserts its whole route set even when nothing failed (it
    /// always does after a failed route write and when its lease had lapsed).
    pub route_reconcile_s: u32,
    /// `join`s per connection (over it: `rate_limited` with `retry_after_ms`).
    pub join_limit: LimitConfig,
    /// Rooms that get their first member on this node, per second across all connections, so
    /// that joins of random room ids cannot grow the node's room table at will.
    pub new_room_limit: LimitConfig,
    /// Requests that cost a store write or a token check (`ack`, `login`) and pings, per
    /// connection. Over it: `rate_limited`, and the request counts against
    /// `max_errors_per_10s`.
    pub request_limit: LimitConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_s: 30,
            login_timeout_s: 10,
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 4096,
            max_rooms_per_conn: 16,
            max_connections: 100_000,
            send_queue_bytes: 256 * 1024,
            slow_reader_timeout_s: 30,
            max_errors_per_10s: 20,
            online_push_interval_ms: 1000,
            fanout_chunk: 512,
            fanout_spacing: 1.3,
            deflate: true,
            deflate_level: 6,
            deflate_min_bytes: 256,
            close_grace_ms: 2000,
            socket_send_buffer: 128 * 1024,
            critical_retry_base_ms: 2000,
            critical_retry_max_ms: 60_000,
            critical_max_attempts: 6,
            route_linger_ms: 1000,
            route_lease_s: 30,
            route_reconcile_s: 30,
            join_limit: LimitConfig {
                rate: 5.0,
                burst: 20.0,
            },
            new_room_limit: LimitConfig {
                rate: 500.0,
                burst: 5000.0,
            },
            request_limit: LimitConfig {
                rate: 20.0,
                burst: 100.0,
            },
        }
    }
}

impl GatewayConfig {
    /// The compression settings of the frames this gateway sends.
    pub fn deflate_settings(&self) -> roomcast_proto::deflate::Settings {
        roomcast_proto::deflate::Settings {
            level: self.deflate_level.clamp(1, 9),
            min_bytes: self.deflate_min_bytes,
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s.max(1) as u64)
    }

    /// The lease on this node's routes (at least one second).
    pub fn route_lease(&self) -> Duration {
        Duration::from_secs(self.route_lease_s.max(1) as u64)
    }

    /// Presence TTL and silence timeout: twice the heartbeat period.
    pub fn silence_timeout(&self) -> Duration {
        self.heartbeat() * 2
    }
}

/// A token bucket in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Messages per second (0 disables the limit).
    pub rate: f64,
    /// Messages that may be sent at once after a quiet period.
    pub burst: f64,
}

impl LimitConfig {
    /// The smallest positive rate accepted (one per ~11.5 days); below it refill times overflow.
    pub const MIN_RATE: f64 = 1e-6;

    /// Why this limit cannot be used, if it cannot (`name` is its config key).
    pub fn check(&self, name: &str) -> Result<(), String> {
        if !(self.rate.is_finite() && self.burst.is_finite()) || self.rate < 0.0 || self.burst < 0.0
        {
            return Err(format!(
                "{name}: rate and burst must be finite and not negative"
            ));
        }
        if self.rate > 0.0 && self.rate < Self::MIN_RATE {
            return Err(format!(
                "{name}: rate must be 0 (off) or at least {}",
                Self::MIN_RATE
            ));
        }
        Ok(())
    }
}

impl From<LimitConfig> for Limit {
    fn from(l: LimitConfig) -> Limit {
        Limit {
            rate: l.rate,
            burst: l.burst.max(1.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Refuse the message with `content_rejected`.
    Reject,
    /// Replace each character of a listed word with `*` and deliver.
    Mask,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Longest chat text, in characters.
    pub max_text_chars: usize,
    /// Per user, across rooms.
    pub user_limit: LimitConfig,
    /// Per room, across users.
    pub room_limit: LimitConfig,
    /// A word list (one word or phrase per line, `#` comments); empty: no filter.
    pub words_file: Option<std::path::PathBuf>,
    pub filter_mode: FilterMode,
    /// Node number (0–1023) in message ids. Unset (the default): standalone uses 0, and in
    /// the distributed mode every ingest and gateway node claims a free one in etcd. Set: the
    /// node claims exactly that one and refuses to start while another node holds it.
    pub node_number: Option<u16>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_text_chars: 300,
            user_limit: LimitConfig {
                rate: 2.0,
                burst: 5.0,
            },
            room_limit: LimitConfig {
                rate: 500.0,
                burst: 1000.0,
            },
            words_file: None,
            filter_mode: FilterMode::Reject,
            node_number: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Room worker tasks; with the in-memory bus also its partition count (Kafka: group
    /// members of this process, at most the topic's partition count).
    pub partitions: usize,
    /// Messages a partition may hold before publishers wait.
    pub partition_capacity: usize,
    /// A room's batch is flushed at this many messages…
    pub batch_max: usize,
    /// …or this long after the previous flush (at once when the room was idle). This is the
    /// window under light load; see `batch_window_max_ms`.
    pub batch_window_ms: u64,
    /// Under load the window widens, up to this, so that each connection gets fewer, larger
    /// frames: it grows while flushes run late (the worker or the machine cannot keep up) and
    /// shrinks back to `batch_window_ms` when they run on time. Equal to `batch_window_ms`:
    /// a fixed window.
    pub batch_window_max_ms: u64,
    /// In one process with the gateway (standalone): while the gateway is writing to a big
    /// room (more than `gateway.fanout_chunk` local members), the window is at least this many
    /// times its latest pass over such a room (up to `batch_window_max_ms`), so that a hot
    /// room's passes take at most 1/factor of the node's time and the rest stays for reading,
    /// ingest and the other rooms. In every mode the window is also at least this many times
    /// the worker's slowest recent `deliver` call (how long a gateway takes to take a batch).
    /// 0 turns both off.
    pub pass_window_factor: f64,
    /// A worker reads a room's gateway nodes from the route table at most this often, and at
    /// once when the table reports a change to the room; 0 reads on every flush.
    pub route_cache_ms: u64,
    /// How often a room worker commits its bus offsets (each commit waits for the message
    /// store's flush first). A crashed worker's successor takes again what came after the last
    /// commit.
    pub commit_interval_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            partitions: 8,
            partition_capacity: 8192,
            batch_max: 128,
            batch_window_ms: 20,
            batch_window_max_ms: 200,
            pass_window_factor: 2.0,
            route_cache_ms: 1000,
            commit_interval_ms: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages returned on join when the client does not say.
    pub default_count: usize,
    /// Most messages a join may ask for, and how many a room keeps in memory (the worker's ring,
    /// the recent list in Redis) to answer joins and recoveries without the store.
    pub max_count: usize,
    /// Most messages a recovery (`join` with `since`) returns. A gap the recent messages do not
    /// prove they cover is read from the message store; a longer one is `recovered: false`.
    pub recover_max_count: usize,
    /// Rooms untouched this long drop their in-memory history (it is reloaded from the store).
    pub idle_evict_s: u64,
    /// Most rooms whose history is cached in memory; past it, the least recently used room not
    /// in use is dropped (and reloaded from the store when touched again).
    pub max_rooms: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            default_count: 50,
            max_count: 200,
            recover_max_count: 2000,
            idle_evict_s: 600,
            max_rooms: 10_000,
        }
    }
}
