//! Room-wide online counts in Redis (B2): `room:online:{roomId}` is a hash of gateway node →
//! connections in the room. Sums count only nodes whose route lease (`node:lease:{nodeId}`, see
//! the route table) is alive, so a crashed gateway's viewers stop counting within its lease;
//! the route table's `collect_dead` deletes their entries. A gateway reports the rooms whose
//! count changed and reads the sums of its rooms about once a second (one pipeline and one
//! script per gateway, not per viewer).

use redis::Script;
use roomcast_core::BoxFut;
use roomcast_core::ids::{NodeId, RoomId};
use roomcast_core::ports::{RoomCounts, RouteError};

use super::RedisConn;

/// KEYS: room prefix, lease prefix. ARGV: the rooms. Returns one sum per room.
const TOTALS: &str = r#"
local out = {}
for i, r in ipairs(ARGV) do
  local kv = redis.call('HGETALL', KEYS[1] .. r)
  local sum = 0
  for j = 1, #kv, 2 do
    if redis.call('EXISTS', KEYS[2] .. kv[j]) == 1 then sum = sum + tonumber(kv[j + 1]) end
  end
  out[i] = sum
end
return out
"#;

pub struct RedisRoomCounts {
    redis: RedisConn,
    totals: Script,
}

impl RedisRoomCounts {
    pub fn new(redis: RedisConn) -> Self {
        RedisRoomCounts {
            redis,
            totals: Script::new(TOTALS),
        }
    }
}

fn err(e: redis::RedisError) -> RouteError {
    RouteError(e.to_string())
}

impl RoomCounts for RedisRoomCounts {
    fn report<'a>(
        &'a self,
        node: &'a NodeId,
        counts: &'a [(RoomId, u64)],
    ) -> BoxFut<'a, Result<(), RouteError>> {
        Box::pin(async move {
            if counts.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            for (room, n) in counts {
                let key = self.redis.key(&["room", "online", room.as_str()]);
                if *n == 0 {
                    pipe.hdel(key, node.as_str()).ignore();
                } else {
                    pipe.hset(key, node.as_str(), *n).ignore();
                }
            }
            let mut conn = self.redis.conn();
            pipe.query_async::<()>(&mut conn).await.map_err(err)
        })
    }

    fn totals<'a>(&'a self, rooms: &'a [RoomId]) -> BoxFut<'a, Result<Vec<u64>, RouteError>> {
        Box::pin(async move {
            if rooms.is_empty() {
                return Ok(Vec::new());
            }
            let mut call = self.totals.prepare_invoke();
            call.key(self.redis.key(&["room", "online", ""]))
                .key(self.redis.key(&["node", "lease", ""]));
            for r in rooms {
                call.arg(r.as_str());
            }
            let mut conn = self.redis.conn();
            call.invoke_async(&mut conn).await.map_err(err)
        })
    }
}
