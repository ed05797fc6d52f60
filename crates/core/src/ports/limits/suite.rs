//! The rate limiter's suite: what every [`RateLimiter`] adapter (in memory, Redis) must do. It
//! takes a fresh adapter (tests of a shared service give it a unique key prefix).

use std::time::Duration;

use crate::ports::{Limit, LimitError, RateLimiter};

/// What every [`RateLimiter`] must do.
pub async fn rate_limiter_suite(limiter: &dyn RateLimiter) {
    let l = |rate: f64, burst: f64| Limit { rate, burst };
    let user = ("user:a".to_owned(), l(1.0, 3.0));
    // The burst, then a refusal that says when to come back.
    for _ in 0..3 {
        limiter.acquire(std::slice::from_ref(&user)).await.unwrap();
    }
    match limiter.acquire(std::slice::from_ref(&user)).await {
        Err(LimitError::Limited(l)) => {
            assert_eq!((l.index, l.key.as_str()), (0, "user:a"));
            assert!(
                l.retry_after > Duration::from_millis(500)
                    && l.retry_after <= Duration::from_secs(1),
                "about one token's time: {:?}",
                l.retry_after
            );
        }
        other => panic!("limited expected: {other:?}"),
    }

    // All or nothing: a refusal on the second bucket takes nothing from the first.
    let room = ("room:r".to_owned(), l(1.0, 1.0));
    let fresh = ("user:b".to_owned(), l(1.0, 2.0));
    limiter.acquire(std::slice::from_ref(&room)).await.unwrap();
    let both = [fresh.clone(), room.clone()];
    match limiter.acquire(&both).await {
        Err(LimitError::Limited(l)) => assert_eq!((l.index, l.key.as_str()), (1, "room:r")),
        other => panic!("limited on the room expected: {other:?}"),
    }
    for _ in 0..2 {
        limiter.acquire(std::slice::from_ref(&fresh)).await.unwrap();
    }
    assert!(
        limiter.acquire(std::slice::from_ref(&fresh)).await.is_err(),
        "user:b still had its whole burst"
    );

    // A disabled bucket (rate 0) never limits, alone or beside others.
    let off = ("user:off".to_owned(), l(0.0, 0.0));
    for _ in 0..50 {
        limiter.acquire(std::slice::from_ref(&off)).await.unwrap();
    }

    // Tokens come back at the rate: wait as long as the limiter says, then it gives one.
    let fast = ("user:fast".to_owned(), l(20.0, 1.0));
    limiter.acquire(std::slice::from_ref(&fast)).await.unwrap();
    let wait = match limiter.acquire(std::slice::from_ref(&fast)).await {
        Err(LimitError::Limited(l)) => l.retry_after,
        other => panic!("limited expected: {other:?}"),
    };
    assert!(wait <= Duration::from_millis(50), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    limiter.acquire(std::slice::from_ref(&fast)).await.unwrap();
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_limiter_passes() {
        super::rate_limiter_suite(&crate::memory::MemoryRateLimiter::default()).await;
    }
}
