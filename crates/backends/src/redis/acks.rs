//! Pending critical messages per user in Redis (R8): `ack:pending:{user}` is the design's zset
//! msg_id → next-retry deadline; `ack:msg:{user}` holds each entry (JSON) beside it; `ack:count`
//! counts entries of all users. Each change is one Lua script, so the three never disagree.

use redis::{AsyncCommands, Script};
use roomcast_core::BoxFut;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::ports::{AckStore, PendingCritical, StoreError};
use serde_json::{Value, json};

use super::RedisConn;

/// KEYS: pending zset, entries hash, count. ARGV: msg_id, entry JSON, next_retry_ms, mode
/// ("put": insert or replace; "update": only if present). Returns 1 when written.
const WRITE: &str = r#"
local exists = redis.call('HEXISTS', KEYS[2], ARGV[1])
if ARGV[4] == 'update' and exists == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if exists == 0 then redis.call('INCR', KEYS[3]) end
return 1
"#;

/// KEYS: pending zset, entries hash, count. ARGV: msg_id. Returns 1 when it was there.
const REMOVE: &str = r#"
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DECR', KEYS[3])
return 1
"#;

pub struct RedisAckStore {
    redis: RedisConn,
    write: Script,
    remove: Script,
}

impl RedisAckStore {
    pub fn new(redis: RedisConn) -> Self {
        RedisAckStore {
            redis,
            write: Script::new(WRITE),
            remove: Script::new(REMOVE),
        }
    }

    fn keys(&self, user: &UserId) -> [String; 3] {
        [
            self.redis.key(&["ack", "pending", user.as_str()]),
            self.redis.key(&["ack", "msg", user.as_str()]),
            self.redis.key(&["ack", "count"]),
        ]
    }

    async fn write(&self, p: &PendingCritical, mode: &str) -> Result<bool, StoreError> {
        let [pending, entries, count] = self.keys(&p.user);
        let entry = json!({
            "kind": p.kind,
            "room": p.room.as_ref().map(|r| r.as_str()),
            "text": p.text,
            "payload": p.payload,
            "ts": p.ts,
            "attempts": p.attempts,
            "next_retry_ms": p.next_retry_ms,
        })
        .to_string();
        let mut conn = self.redis.conn();
        let n: i64 = self
            .write
            .key(pending)
            .key(entries)
            .key(count)
            .arg(p.msg_id)
            .arg(entry)
            .arg(p.next_retry_ms)
            .arg(mode)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn parse(user: &UserId, msg_id: &str, raw: &str) -> Result<PendingCritical, StoreError> {
    let bad = |what: &str| StoreError::Unavailable(format!("ack entry {user}/{msg_id}: {what}"));
    let v: Value = serde_json::from_str(raw).map_err(|e| bad(&e.to_string()))?;
    let room = match v["room"].as_str() {
        Some(r) => Some(RoomId::parse(r).map_err(|e| bad(&e.to_string()))?),
        None => None,
    };
    Ok(PendingCritical {
        user: user.clone(),
        msg_id: msg_id.parse().map_err(|_| bad("msg_id is not a number"))?,
        kind: v["kind"].as_str().ok_or_else(|| bad("no kind"))?.to_owned(),
        room,
        text: v["text"].as_str().map(str::to_owned),
        payload: v["payload"].as_str().map(str::to_owned),
        ts: v["ts"].as_u64().ok_or_else(|| bad("no ts"))?,
        attempts: v["attempts"].as_u64().ok_or_else(|| bad("no attempts"))? as u32,
        next_retry_ms: v["next_retry_ms"]
            .as_u64()
            .ok_or_else(|| bad("no next_retry_ms"))?,
    })
}

impl AckStore for RedisAckStore {
    fn put(&self, p: PendingCritical) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move { self.write(&p, "put").await.map(|_| ()) })
    }

    fn remove<'a>(&'a self, user: &'a UserId, msg_id: u64) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let [pending, entries, count] = self.keys(user);
            let mut conn = self.redis.conn();
            let n: i64 = self
                .remove
                .key(pending)
                .key(entries)
                .key(count)
                .arg(msg_id)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(n == 1)
        })
    }

    fn pending<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingCritical>, StoreError>> {
        Box::pin(async move {
            let [_, entries, _] = self.keys(user);
            let mut conn = self.redis.conn();
            let raw: Vec<(String, String)> = conn.hgetall(&entries).await.map_err(unavailable)?;
            let mut out = raw
                .iter()
                .map(|(id, e)| parse(user, id, e))
                .collect::<Result<Vec<_>, _>>()?;
            // Message ids grow with time: oldest first.
            out.sort_by_key(|p| p.msg_id);
            Ok(out)
        })
    }

    fn update(&self, p: &PendingCritical) -> BoxFut<'_, Result<bool, StoreError>> {
        let p = p.clone();
        Box::pin(async move { self.write(&p, "update").await })
    }

    fn count(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let key = self.redis.key(&["ack", "count"]);
            let mut conn = self.redis.conn();
            let n: Option<i64> = conn.get(&key).await.map_err(unavailable)?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
    }
}
