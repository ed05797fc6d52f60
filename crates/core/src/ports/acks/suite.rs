//! The ack store's suite: what every [`AckStore`](crate::ports::AckStore) adapter must do.

use crate::ids::RoomId;

/// What every [`crate::ports::AckStore`] must do.
pub async fn ack_store_suite(store: &dyn crate::ports::AckStore) {
    use crate::ids::UserId;
    use crate::ports::PendingCritical;
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let entry = |user: &UserId, msg_id: u64| PendingCritical {
        user: user.clone(),
        msg_id,
        kind: "gift".into(),
        room: msg_id
            .is_multiple_of(2)
            .then(|| RoomId::parse("room-1").unwrap()),
        text: Some(format!("notice {msg_id} — ünïcödé")),
        payload: msg_id
            .is_multiple_of(3)
            .then(|| r#"{"gift":"rose","count":3}"#.to_owned()),
        ts: 1_700_000_000_000 + msg_id,
        attempts: 1,
        next_retry_ms: 1_700_000_001_000 + msg_id,
    };
    assert!(store.pending(&alice).await.unwrap().is_empty());
    for id in [30, 10, 20] {
        store.put(entry(&alice, id)).await.unwrap();
    }
    store.put(entry(&bob, 10)).await.unwrap();
    let got = store.pending(&alice).await.unwrap();
    assert_eq!(
        got,
        vec![entry(&alice, 10), entry(&alice, 20), entry(&alice, 30)],
        "oldest first, every field kept"
    );
    assert_eq!(store.count().await.unwrap(), 4);

    // Replacing updates the retry state.
    let mut again = entry(&alice, 20);
    again.attempts = 3;
    again.next_retry_ms += 5000;
    store.put(again.clone()).await.unwrap();
    assert_eq!(store.pending(&alice).await.unwrap()[1], again);
    assert_eq!(store.count().await.unwrap(), 4);

    // Recording an attempt updates an entry but never re-creates an acknowledged one.
    let mut third = again.clone();
    third.attempts = 4;
    assert!(store.update(&third).await.unwrap());
    assert_eq!(store.pending(&alice).await.unwrap()[1].attempts, 4);
    let gone = entry(&alice, 99);
    assert!(!store.update(&gone).await.unwrap());
    assert_eq!(store.count().await.unwrap(), 4);

    // Acks are per user.
    assert!(store.remove(&alice, 10).await.unwrap());
    assert!(!store.remove(&alice, 10).await.unwrap(), "only once");
    assert!(!store.remove(&bob, 20).await.unwrap(), "not bob's");
    assert_eq!(store.pending(&bob).await.unwrap(), vec![entry(&bob, 10)]);
    assert_eq!(
        store
            .pending(&alice)
            .await
            .unwrap()
            .iter()
            .map(|p| p.msg_id)
            .collect::<Vec<_>>(),
        [20, 30]
    );
    assert_eq!(store.count().await.unwrap(), 3);
}
