//! The recent-messages cache (`room:recent:{room}`): a list of Protobuf-encoded `RoomMsg`s per
//! room, appended and trimmed in one `MULTI` (RPUSH, LTRIM, PEXPIRE), so a reader never sees a
//! half-applied batch and the list never exceeds its cap. Written by the room's one worker, read
//! by every gateway on join.

use prost::Message;
use roomcast_core::BoxFut;
use roomcast_core::ids::RoomId;
use roomcast_core::model::{RoomBatch, RoomMsg};
use roomcast_core::ports::{RecentMessages, StoreError};

use super::RedisConn;

pub struct RedisRecent {
    redis: RedisConn,
}

impl RedisRecent {
    pub fn new(redis: RedisConn) -> Self {
        RedisRecent { redis }
    }
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RecentMessages for RedisRecent {
    fn push<'a>(
        &'a self,
        batch: &'a RoomBatch,
        cap: usize,
        ttl: std::time::Duration,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if batch.msgs.is_empty() {
                return Ok(());
            }
            let key = self.redis.key(&["room", "recent", batch.room.as_str()]);
            let values: Vec<Vec<u8>> = batch.msgs.iter().map(|m| m.encode_to_vec()).collect();
            let cap = cap.max(1) as isize;
            let mut conn = self.redis.conn();
            redis::pipe()
                .atomic()
                .rpush(&key, values)
                .ignore()
                .ltrim(&key, -cap, -1)
                .ignore()
                .pexpire(&key, ttl.as_millis().max(1) as i64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(err)
        })
    }

    fn recent<'a>(
        &'a self,
        room: &'a RoomId,
        limit: usize,
    ) -> BoxFut<'a, Result<Vec<RoomMsg>, StoreError>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let key = self.redis.key(&["room", "recent", room.as_str()]);
            let mut conn = self.redis.conn();
            let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(-(limit as isize))
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            let mut out = Vec::with_capacity(raw.len());
            for bytes in raw {
                match RoomMsg::decode(bytes.as_slice()) {
                    Ok(m) => out.push(m),
                    // A value that is not ours (another writer under the same prefix): skipped,
                    // the rest of the history still answers.
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "undecodable entry in the recent list; skipped")
                    }
                }
            }
            Ok(out)
        })
    }
}
