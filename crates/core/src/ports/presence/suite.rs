//! Presence's suite: what every [`Presence`](crate::ports::Presence) adapter must do (per-node
//! entries, each with its own TTL).

use crate::ports::suite_ids::{node_id, unique};

/// What every [`Presence`](crate::ports::Presence) must do; `ttl` is the entries' TTL.
pub async fn presence_suite(presence: &dyn crate::ports::Presence, ttl: std::time::Duration) {
    use crate::ids::UserId;
    let p = unique("presence");
    let alice = UserId::parse(&format!("{p}-alice")).expect("valid");
    let bob = UserId::parse(&format!("{p}-bob")).expect("valid");
    let (a, b) = (node_id(&p, "a"), node_id(&p, "b"));
    assert!(!presence.is_online(&alice).await.expect("online"));
    assert!(presence.nodes(&alice).await.expect("nodes").is_empty());

    presence.touch(&alice, &b, ttl).await.expect("touch");
    presence.touch(&alice, &a, ttl).await.expect("touch");
    presence.touch(&alice, &a, ttl).await.expect("touch again");
    presence.touch(&bob, &b, ttl).await.expect("touch");
    assert!(presence.is_online(&alice).await.expect("online"));
    assert_eq!(
        presence.nodes(&alice).await.expect("nodes"),
        vec![a.clone(), b.clone()],
        "each node once, sorted"
    );

    // Leaving one node keeps the others, and other users.
    presence.remove(&alice, &b).await.expect("remove");
    assert_eq!(
        presence.nodes(&alice).await.expect("nodes"),
        vec![a.clone()]
    );
    assert_eq!(presence.nodes(&bob).await.expect("nodes"), vec![b.clone()]);
    presence
        .remove(&alice, &b)
        .await
        .expect("a second remove is harmless");

    // Each node's entry expires on its own; touching renews it.
    tokio::time::sleep(ttl * 2 / 3).await;
    presence.touch(&alice, &a, ttl).await.expect("touch");
    tokio::time::sleep(ttl * 2 / 3).await;
    assert_eq!(
        presence.nodes(&alice).await.expect("nodes"),
        vec![a.clone()],
        "renewed"
    );
    assert!(
        !presence.is_online(&bob).await.expect("online"),
        "bob's entry expired"
    );
    assert!(presence.nodes(&bob).await.expect("nodes").is_empty());
    presence.remove(&alice, &a).await.expect("remove");
    assert!(!presence.is_online(&alice).await.expect("online"));
}
