//! Rate limits: token buckets, taken from all-or-nothing over several keys (so that ingest's
//! per-user and per-room limits hold across ingest nodes).

use std::time::Duration;

use crate::BoxFut;

#[cfg(any(test, feature = "testkit"))]
pub mod suite;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("rate limited on {key} for {retry_after:?}")]
pub struct Limited {
    /// Index into the keys passed to [`RateLimiter::acquire`].
    pub index: usize,
    pub key: String,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

pub trait RateLimiter: Send + Sync {
    /// Takes one token from every bucket, or from none of them.
    fn acquire<'a>(&'a self, keys: &'a [(String, Limit)]) -> BoxFut<'a, Result<(), LimitError>>;
}
