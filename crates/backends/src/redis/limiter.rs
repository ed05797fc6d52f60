//! Token buckets in Redis: one Lua script takes a token from every bucket or from none, so a
//! user's and a room's limits hold across every ingest node at once.

use std::time::Duration;

use redis::Script;
use roomcast_core::BoxFut;
use roomcast_core::ports::{Limit, LimitError, Limited, RateLimiter};

use super::RedisConn;

/// KEYS: the buckets. ARGV: rate and burst per bucket, in order. A bucket is a hash
/// {tokens, at_us}; the clock is the Redis server's (`TIME`). Returns 0 when every bucket gave a
/// token, else {index (1-based), wait in microseconds} of the first bucket that could not.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tokens = {}
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', KEYS[i], 'tokens', 'at_us')
  local have = burst
  if b[1] then
    local elapsed = math.max(0, now - tonumber(b[2])) / 1000000
    have = math.min(burst, tonumber(b[1]) + elapsed * rate)
  end
  if have < 1 then
    return {i, math.ceil((1 - have) / rate * 1000000)}
  end
  tokens[i] = have
end
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i] - 1), 'at_us', tostring(now))
  -- Once full again the bucket holds no information: let it expire.
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
return 0
"#;

pub struct RedisRateLimiter {
    redis: RedisConn,
    script: Script,
}

impl RedisRateLimiter {
    pub fn new(redis: RedisConn) -> Self {
        RedisRateLimiter {
            redis,
            script: Script::new(ACQUIRE),
        }
    }
}

impl RateLimiter for RedisRateLimiter {
    fn acquire<'a>(&'a self, keys: &'a [(String, Limit)]) -> BoxFut<'a, Result<(), LimitError>> {
        Box::pin(async move {
            // Disabled buckets (rate 0) are not limits at all.
            let active: Vec<(usize, &(String, Limit))> = keys
                .iter()
                .enumerate()
                .filter(|(_, (_, l))| l.rate > 0.0)
                .collect();
            if active.is_empty() {
                return Ok(());
            }
            let mut inv = self.script.prepare_invoke();
            for (_, (key, limit)) in &active {
                inv.key(self.redis.key(&["ratelimit", key]));
                inv.arg(limit.rate).arg(limit.burst.max(1.0));
            }
            let mut conn = self.redis.conn();
            let r: redis::Value = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| LimitError::Unavailable(e.to_string()))?;
            match r {
                redis::Value::Int(0) => Ok(()),
                redis::Value::Array(v) if v.len() == 2 => {
                    let (i, wait_us) = match (&v[0], &v[1]) {
                        (redis::Value::Int(i), redis::Value::Int(w)) => (*i, *w),
                        _ => {
                            return Err(LimitError::Unavailable(format!(
                                "unexpected reply from the rate-limit script: {v:?}"
                            )));
                        }
                    };
                    let (index, (key, _)) = active[(i as usize).saturating_sub(1)];
                    Err(LimitError::Limited(Limited {
                        index,
                        key: key.clone(),
                        retry_after: Duration::from_micros(wait_us.max(1000) as u64),
                    }))
                }
                other => Err(LimitError::Unavailable(format!(
                    "unexpected reply from the rate-limit script: {other:?}"
                ))),
            }
        })
    }
}
