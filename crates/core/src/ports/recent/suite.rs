//! The recent-messages cache's suite: what every [`RecentMessages`](crate::ports::RecentMessages)
//! adapter must do (capped, oldest first, expiring when idle).

use crate::ids::RoomId;
use crate::ports::store::suite::batch;

/// What every [`crate::ports::RecentMessages`] must do. `ttl` is how long the adapter's clock
/// takes to expire a list — the suite waits that long (under tokio's paused clock for the memory
/// adapter, for real for Redis: keep it short).
pub async fn recent_messages_suite(
    recent: &dyn crate::ports::RecentMessages,
    ttl: std::time::Duration,
) {
    let room = RoomId::parse(&format!("recent-{}", fastrand::u64(..))).expect("valid");
    let long = std::time::Duration::from_secs(3600);
    assert!(
        recent.recent(&room, 10).await.expect("read").is_empty(),
        "unknown room"
    );
    let first = batch(room.as_str(), 9, 1..=3);
    recent.push(&first, 5, long).await.expect("push");
    recent
        .push(&batch(room.as_str(), 9, 4..=7), 5, long)
        .await
        .expect("push");
    let got = recent.recent(&room, 10).await.expect("read");
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4, 5, 6, 7], "capped at 5, oldest first");
    assert_eq!(got[0], *first.msgs[2], "every field round-trips");
    let seqs: Vec<u64> = recent
        .recent(&room, 2)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [6, 7], "the last `limit`");
    // A new epoch is appended after the old one's messages (the list is what was delivered).
    recent
        .push(&batch(room.as_str(), 10, 1..=1), 5, long)
        .await
        .expect("push");
    let got = recent.recent(&room, 10).await.expect("read");
    assert_eq!(
        got.iter().map(|m| (m.epoch, m.seq)).collect::<Vec<_>>(),
        [(9, 4), (9, 5), (9, 6), (9, 7), (10, 1)]
    );
    // An idle room's list expires.
    let other = RoomId::parse(&format!("recent-{}", fastrand::u64(..))).expect("valid");
    recent
        .push(&batch(other.as_str(), 1, 1..=2), 5, ttl)
        .await
        .expect("push");
    assert_eq!(recent.recent(&other, 10).await.expect("read").len(), 2);
    tokio::time::sleep(ttl * 3).await;
    assert!(
        recent.recent(&other, 10).await.expect("read").is_empty(),
        "expired after its ttl"
    );
    assert_eq!(
        recent.recent(&room, 10).await.expect("read").len(),
        5,
        "others stay"
    );
}

#[cfg(test)]
mod tests {
    #[tokio::test(start_paused = true)]
    async fn memory_recent_messages_pass() {
        super::recent_messages_suite(
            &crate::memory::MemoryRecent::default(),
            std::time::Duration::from_secs(60),
        )
        .await;
    }
}
