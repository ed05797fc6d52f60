//! Presence in Redis (R5, R21): `presence:{userId}` is a sorted set of the gateway nodes holding
//! the user's connections, each scored with its own expiry (Redis server time, ms), so a crashed
//! node's entry lapses on its own while the others stay; the key itself expires with its last
//! entry.

use std::time::Duration;

use redis::Script;
use roomcast_core::BoxFut;
use roomcast_core::ids::{NodeId, UserId};
use roomcast_core::ports::{Presence, RouteError};

use super::RedisConn;

/// KEYS: presence zset. ARGV: node, ttl ms. Sets the node's expiry, drops lapsed entries.
const TOUCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIREAT', KEYS[1], last)
return 1
"#;

/// KEYS: presence zset. Returns the nodes whose entry has not lapsed.
const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"#;

pub struct RedisPresence {
    redis: RedisConn,
    touch: Script,
    live: Script,
}

impl RedisPresence {
    pub fn new(redis: RedisConn) -> Self {
        RedisPresence {
            redis,
            touch: Script::new(TOUCH),
            live: Script::new(LIVE),
        }
    }

    fn key(&self, user: &UserId) -> String {
        self.redis.key(&["presence", user.as_str()])
    }

    async fn live(&self, user: &UserId) -> Result<Vec<NodeId>, RouteError> {
        let mut conn = self.redis.conn();
        let mut nodes: Vec<String> = self
            .live
            .key(self.key(user))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RouteError(e.to_string()))?;
        nodes.sort();
        Ok(nodes.iter().map(|n| NodeId::new(n)).collect())
    }
}

impl Presence for RedisPresence {
    fn touch(
        &self,
        user: &UserId,
        node: &NodeId,
        ttl: Duration,
    ) -> BoxFut<'_, Result<(), RouteError>> {
        let (key, node) = (self.key(user), node.clone());
        Box::pin(async move {
            let mut conn = self.redis.conn();
            self.touch
                .key(key)
                .arg(node.as_str())
                .arg(ttl.as_millis().max(1) as u64)
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(|e| RouteError(e.to_string()))
        })
    }

    fn remove(&self, user: &UserId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let (key, node) = (self.key(user), node.clone());
        Box::pin(async move {
            let mut conn = self.redis.conn();
            redis::cmd("ZREM")
                .arg(key)
                .arg(node.as_str())
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| RouteError(e.to_string()))
        })
    }

    fn nodes(&self, user: &UserId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        let user = user.clone();
        Box::pin(async move { self.live(&user).await })
    }

    fn is_online(&self, user: &UserId) -> BoxFut<'_, Result<bool, RouteError>> {
        let user = user.clone();
        Box::pin(async move { Ok(!self.live(&user).await?.is_empty()) })
    }
}
