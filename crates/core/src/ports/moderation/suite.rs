//! Moderation's suite: what every [`Moderation`] adapter (in memory, Redis) must do. It takes a
//! fresh adapter (tests of a shared service give it a unique key prefix).

use crate::clock::now_ms;
use crate::ids::{RoomId, UserId};
use crate::ports::{Moderation, Sanction};

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
    async fn memory_moderation_passes() {
        super::moderation_suite(&crate::memory::MemoryModeration::default()).await;
    }
}
