//! In-memory token buckets.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxFut;
use crate::ports::{Limit, LimitError, Limited, RateLimiter};
use crate::shard::Sharded;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct MemoryRateLimiter {
    buckets: Sharded<HashMap<String, Bucket>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        MemoryRateLimiter {
            buckets: Sharded::new(64),
        }
    }
}

fn refill(b: &Bucket, limit: Limit, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * limit.rate).min(limit.burst)
}

impl MemoryRateLimiter {
    /// Forgets buckets untouched for `max_idle`; with `max_idle` at least the longest refill time
    /// (`burst / rate`) they are full again and hold no information. Call periodically.
    pub fn sweep(&self, max_idle: Duration) {
        let now = Instant::now();
        for shard in self.buckets.iter() {
            shard
                .lock()
                .retain(|_, b| now.saturating_duration_since(b.at) < max_idle);
        }
    }

    fn acquire_now(&self, keys: &[(String, Limit)]) -> Result<(), Limited> {
        let now = Instant::now();
        let mut order: Vec<(usize, usize)> = keys
            .iter()
            .enumerate()
            .filter(|(_, (_, l))| l.rate > 0.0)
            .map(|(i, (k, _))| (self.buckets.index_for(k.as_str()), i))
            .collect();
        order.sort_unstable();
        let mut shard_ids: Vec<usize> = order.iter().map(|(s, _)| *s).collect();
        shard_ids.dedup();
        // Lock every shard involved, in index order, so that the check and the take are one step.
        let mut guards: Vec<_> = shard_ids
            .iter()
            .map(|s| (*s, self.buckets.at(*s).lock()))
            .collect();
        for &(shard, i) in &order {
            let (key, limit) = &keys[i];
            let map = &guards.iter().find(|(s, _)| *s == shard).expect("locked").1;
            let tokens = map
                .get(key.as_str())
                .map(|b| refill(b, *limit, now))
                .unwrap_or(limit.burst);
            if tokens < 1.0 {
                let wait = (1.0 - tokens) / limit.rate;
                return Err(Limited {
                    index: i,
                    key: key.clone(),
                    retry_after: Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
                });
            }
        }
        for &(shard, i) in &order {
            let (key, limit) = &keys[i];
            let map = &mut guards
                .iter_mut()
                .find(|(s, _)| *s == shard)
                .expect("locked")
                .1;
            let b = map.entry(key.clone()).or_insert(Bucket {
                tokens: limit.burst,
                at: now,
            });
            b.tokens = refill(b, *limit, now) - 1.0;
            b.at = now;
        }
        Ok(())
    }
}

impl RateLimiter for MemoryRateLimiter {
    fn acquire<'a>(&'a self, keys: &'a [(String, Limit)]) -> BoxFut<'a, Result<(), LimitError>> {
        Box::pin(std::future::ready(
            self.acquire_now(keys).map_err(LimitError::from),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(user: Limit, room: Limit) -> Vec<(String, Limit)> {
        vec![("u:a".into(), user), ("r:x".into(), room)]
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_limited_then_refilled() {
        let l = MemoryRateLimiter::default();
        let k = keys(
            Limit {
                rate: 1.0,
                burst: 3.0,
            },
            Limit {
                rate: 100.0,
                burst: 100.0,
            },
        );
        for _ in 0..3 {
            l.acquire(&k).await.unwrap();
        }
        let Err(LimitError::Limited(e)) = l.acquire(&k).await else {
            panic!("expected a limit")
        };
        assert_eq!(e.index, 0);
        assert!(
            e.retry_after > Duration::from_millis(900) && e.retry_after <= Duration::from_secs(1)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        l.acquire(&k).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn all_or_nothing() {
        let l = MemoryRateLimiter::default();
        let k = keys(
            Limit {
                rate: 1.0,
                burst: 2.0,
            },
            Limit {
                rate: 1.0,
                burst: 1.0,
            },
        );
        l.acquire(&k).await.unwrap();
        // The room bucket is empty: the user bucket must not be charged.
        let Err(LimitError::Limited(e)) = l.acquire(&k).await else {
            panic!("expected a limit")
        };
        assert_eq!(e.index, 1);
        let only_user = vec![k[0].clone()];
        l.acquire(&only_user).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_means_unlimited() {
        let l = MemoryRateLimiter::default();
        let k = vec![(
            "u:a".to_string(),
            Limit {
                rate: 0.0,
                burst: 0.0,
            },
        )];
        for _ in 0..1000 {
            l.acquire(&k).await.unwrap();
        }
    }
}
