//! Redis adapters (feature `redis`): token buckets for ingest limits, bans and mutes, the
//! per-user ack store of critical messages, the route table with node leases and presence per
//! node — state every ingest, gateway and worker node must share.
//!
//! One [`RedisConn`] per process: redis-rs's `ConnectionManager`, a multiplexed connection that
//! reconnects by itself (a command during the outage fails with `Unavailable`, never hangs past
//! the response timeout). Every key starts with a configurable prefix, so several deployments (or
//! tests) can share one Redis. Multi-key updates are Lua scripts, atomic on the server; the
//! rate limiter reads the Redis server's clock, so buckets agree across nodes whose clocks
//! drift. Keys (R21): `ratelimit:{key}`, `ban:{user}`, `mute:{room}:{user}`,
//! `ack:pending:{user}` (zset msg_id → next retry), `ack:msg:{user}` (hash msg_id → entry),
//! `ack:count`, `room:subs:{room}` (set of nodes), `node:lease:{node}`, `node:rooms:{node}`,
//! `presence:{user}` (zset node → expiry), `room:recent:{room}` (list of the room's latest
//! messages, Protobuf), `room:hot:{room}` (reserved for hot rooms, R16–R20: not written yet);
//! route changes go out on the channel `routes`.
//!
//! Nothing here decides behaviour: each adapter passes the same port suite as its in-memory
//! counterpart (`roomcast_core::testkit`).

mod acks;
mod limiter;
mod moderation;
mod online;
mod presence;
mod recent;
mod routes;

use std::time::Duration;

pub use acks::RedisAckStore;
pub use limiter::RedisRateLimiter;
pub use moderation::RedisModeration;
pub use online::RedisRoomCounts;
pub use presence::RedisPresence;
pub use recent::RedisRecent;
pub use routes::RedisRouteTable;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A shared, self-reconnecting connection and the key prefix.
#[derive(Clone)]
pub struct RedisConn {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid redis url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to redis at {url}: {reason}")]
    Connect { url: String, reason: String },
}

impl RedisConn {
    /// Connects (and checks the connection) to `url` (`redis://host:port/db`); every key gets
    /// `prefix` in front.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisSetupError> {
        let client = redis::Client::open(url).map_err(|e| RedisSetupError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| RedisSetupError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(RedisConn {
            client,
            conn,
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 32);
        k.push_str(&self.prefix);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(p);
        }
        k
    }

    fn client(&self) -> &redis::Client {
        &self.client
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}
