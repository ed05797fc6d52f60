//! Token buckets owned by one connection or one node (no map, no lock of their own): joins per
//! connection, costly requests (`ack`, `login`) per connection, rooms created per node.
//!
//! A rate of 0 turns a bucket off. Refill times are computed without panicking whatever the
//! rate (a tiny positive rate is refused at start by the config check, and saturates here).

use std::time::Duration;

use crate::config::LimitConfig;

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: &LimitConfig, now_ms: u64) -> Self {
        Bucket {
            tokens: limit.burst.max(1.0),
            at_ms: now_ms,
        }
    }

    /// Takes one token; `Err(retry_after)` when there is none.
    pub fn take(&mut self, limit: &LimitConfig, now_ms: u64) -> Result<(), Duration> {
        if limit.rate <= 0.0 {
            return Ok(());
        }
        let burst = limit.burst.max(1.0);
        let elapsed_s = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed_s * limit.rate).min(burst);
        self.at_ms = now_ms.max(self.at_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / limit.rate;
            Err(Duration::try_from_secs_f64(wait)
                .unwrap_or(Duration::MAX)
                .max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let l = LimitConfig {
            rate: 2.0,
            burst: 3.0,
        };
        let mut b = Bucket::new(&l, 0);
        for _ in 0..3 {
            assert!(b.take(&l, 0).is_ok());
        }
        let wait = b.take(&l, 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(&l, 500).is_ok(), "refilled at the rate");
        assert!(b.take(&l, 500).is_err());
    }

    #[test]
    fn zero_rate_is_off_and_tiny_rates_do_not_panic() {
        let off = LimitConfig {
            rate: 0.0,
            burst: 0.0,
        };
        let mut b = Bucket::new(&off, 0);
        for _ in 0..1000 {
            assert!(b.take(&off, 0).is_ok());
        }
        let tiny = LimitConfig {
            rate: 1e-300,
            burst: 1.0,
        };
        let mut b = Bucket::new(&tiny, 0);
        assert!(b.take(&tiny, 0).is_ok());
        assert_eq!(b.take(&tiny, 0).unwrap_err(), Duration::MAX);
    }
}
