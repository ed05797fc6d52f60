//! Port suites for the rate limiter and moderation: what every adapter (in memory, Redis) must
//! do. Each takes a fresh adapter (tests of shared services give it a unique key prefix).

use std::time::Duration;

use crate::clock::now_ms;
use crate::ids::{RoomId, UserId};
use crate::ports::{Limit, LimitError, Moderation, RateLimiter, Sanction};

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

/// What every [`Moderation`] must do.
pub async fn moderation_suite(m: &dyn Moderation) {
    let (alice, bob) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let (r1, r2) = (RoomId::parse("r1").unwrap(), RoomId::parse("r2").unwrap());
    let s = |until_ms: Option<u64>, reason: &str| Sanction {
        until_ms,
        reason: reason.to_owned(),
    };
    let later = now_ms() + 3_600_000;

    assert_eq!(m.banned(&alice).await.unwrap(), None);
    assert!(!m.unban(&alice).await.unwrap(), "nothing to lift");
    m.ban(&alice, s(Some(later), "spam — ünïcödé"))
        .await
        .unwrap();
    assert_eq!(
        m.banned(&alice).await.unwrap(),
        Some(s(Some(later), "spam — ünïcödé"))
    );
    assert_eq!(m.banned(&bob).await.unwrap(), None, "per user");
    assert!(m.unban(&alice).await.unwrap());
    assert_eq!(m.banned(&alice).await.unwrap(), None);

    // Indefinite, and already over.
    m.ban(&bob, s(None, "")).await.unwrap();
    assert_eq!(m.banned(&bob).await.unwrap(), Some(s(None, "")));
    m.ban(&alice, s(Some(now_ms() - 1000), "past"))
        .await
        .unwrap();
    assert_eq!(
        m.banned(&alice).await.unwrap(),
        None,
        "an ended ban is no ban"
    );

    // Mutes are per room.
    m.mute(&r1, &alice, s(Some(later), "flood")).await.unwrap();
    assert_eq!(
        m.muted(&r1, &alice).await.unwrap(),
        Some(s(Some(later), "flood"))
    );
    assert_eq!(m.muted(&r2, &alice).await.unwrap(), None);
    assert_eq!(m.muted(&r1, &bob).await.unwrap(), None);
    assert!(m.unmute(&r1, &alice).await.unwrap());
    assert!(!m.unmute(&r1, &alice).await.unwrap());
    assert_eq!(m.muted(&r1, &alice).await.unwrap(), None);
    m.mute(&r2, &bob, s(Some(now_ms() - 1), "over"))
        .await
        .unwrap();
    assert_eq!(m.muted(&r2, &bob).await.unwrap(), None);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_adapters_pass() {
        super::rate_limiter_suite(&crate::memory::MemoryRateLimiter::default()).await;
        super::moderation_suite(&crate::memory::MemoryModeration::default()).await;
    }
}
