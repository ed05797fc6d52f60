//! Bans (`ban:{user}`) and mutes (`mute:{room}:{user}`) in Redis, each a small JSON value that
//! expires with its sanction (`PXAT`), so nothing needs sweeping.

use redis::AsyncCommands;
use roomcast_core::BoxFut;
use roomcast_core::clock::now_ms;
use roomcast_core::ids::{RoomId, UserId};
use roomcast_core::ports::{Moderation, ModerationError, Sanction};
use serde_json::{Value, json};

use super::RedisConn;

pub struct RedisModeration {
    redis: RedisConn,
}

impl RedisModeration {
    pub fn new(redis: RedisConn) -> Self {
        RedisModeration { redis }
    }

    async fn set(&self, key: String, s: Sanction) -> Result<(), ModerationError> {
        let value = json!({ "until_ms": s.until_ms, "reason": s.reason }).to_string();
        let mut conn = self.redis.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value);
        if let Some(until) = s.until_ms {
            // An end in the past is a sanction that is already over.
            cmd.arg("PXAT").arg(until.max(1));
        }
        cmd.query_async::<()>(&mut conn).await.map_err(err)
    }

    async fn get(&self, key: String) -> Result<Option<Sanction>, ModerationError> {
        let mut conn = self.redis.conn();
        let raw: Option<String> = conn.get(&key).await.map_err(err)?;
        let Some(raw) = raw else { return Ok(None) };
        let v: Value = serde_json::from_str(&raw)
            .map_err(|e| ModerationError(format!("{key} holds invalid JSON: {e}")))?;
        let s = Sanction {
            until_ms: v["until_ms"].as_u64(),
            reason: v["reason"].as_str().unwrap_or("").to_owned(),
        };
        // Redis expires the key; this guards against a clock ahead of the server's.
        Ok(s.until_ms.is_none_or(|u| u > now_ms()).then_some(s))
    }

    async fn del(&self, key: String) -> Result<bool, ModerationError> {
        let mut conn = self.redis.conn();
        let n: u64 = conn.del(&key).await.map_err(err)?;
        Ok(n > 0)
    }

    fn ban_key(&self, user: &UserId) -> String {
        self.redis.key(&["ban", user.as_str()])
    }

    fn mute_key(&self, room: &RoomId, user: &UserId) -> String {
        self.redis.key(&["mute", room.as_str(), user.as_str()])
    }
}

fn err(e: redis::RedisError) -> ModerationError {
    ModerationError(e.to_string())
}

impl Moderation for RedisModeration {
    fn ban(&self, user: &UserId, sanction: Sanction) -> BoxFut<'_, Result<(), ModerationError>> {
        let key = self.ban_key(user);
        Box::pin(self.set(key, sanction))
    }

    fn unban(&self, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>> {
        let key = self.ban_key(user);
        Box::pin(self.del(key))
    }

    fn banned(&self, user: &UserId) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>> {
        let key = self.ban_key(user);
        Box::pin(self.get(key))
    }

    fn mute(
        &self,
        room: &RoomId,
        user: &UserId,
        sanction: Sanction,
    ) -> BoxFut<'_, Result<(), ModerationError>> {
        let key = self.mute_key(room, user);
        Box::pin(self.set(key, sanction))
    }

    fn unmute(&self, room: &RoomId, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>> {
        let key = self.mute_key(room, user);
        Box::pin(self.del(key))
    }

    fn muted(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>> {
        let key = self.mute_key(room, user);
        Box::pin(self.get(key))
    }
}
