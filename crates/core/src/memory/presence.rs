//! In-memory presence (`presence:{userId}`): for each user, the gateway nodes holding the user's
//! connections, each with its own expiry. Time is tokio's clock, so tests can pause it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxFut;
use crate::ids::{NodeId, UserId};
use crate::ports::{Presence, RouteError};
use crate::shard::Sharded;

pub struct MemoryPresence {
    users: Sharded<HashMap<UserId, Vec<(NodeId, Instant)>>>,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        MemoryPresence {
            users: Sharded::new(64),
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, T> {
    Box::pin(std::future::ready(v))
}

impl MemoryPresence {
    /// Drops expired entries; call periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.users.iter() {
            shard.lock().retain(|_, nodes| {
                nodes.retain(|(_, until)| *until > now);
                !nodes.is_empty()
            });
        }
    }

    fn live_nodes(&self, user: &UserId) -> Vec<NodeId> {
        let now = Instant::now();
        let mut nodes: Vec<NodeId> = self
            .users
            .for_key(user)
            .lock()
            .get(user)
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        nodes
    }
}

impl Presence for MemoryPresence {
    fn touch(
        &self,
        user: &UserId,
        node: &NodeId,
        ttl: Duration,
    ) -> BoxFut<'_, Result<(), RouteError>> {
        let until = Instant::now() + ttl;
        let mut shard = self.users.for_key(user).lock();
        let nodes = shard.entry(user.clone()).or_default();
        match nodes.iter_mut().find(|(n, _)| n == node) {
            Some(entry) => entry.1 = until,
            None => nodes.push((node.clone(), until)),
        }
        ready(Ok(()))
    }

    fn remove(&self, user: &UserId, node: &NodeId) -> BoxFut<'_, Result<(), RouteError>> {
        let mut shard = self.users.for_key(user).lock();
        if let Some(nodes) = shard.get_mut(user) {
            nodes.retain(|(n, _)| n != node);
            if nodes.is_empty() {
                shard.remove(user);
            }
        }
        ready(Ok(()))
    }

    fn nodes(&self, user: &UserId) -> BoxFut<'_, Result<Vec<NodeId>, RouteError>> {
        ready(Ok(self.live_nodes(user)))
    }

    fn is_online(&self, user: &UserId) -> BoxFut<'_, Result<bool, RouteError>> {
        ready(Ok(!self.live_nodes(user).is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_the_presence_suite() {
        crate::testkit::presence_suite(&MemoryPresence::default(), Duration::from_secs(60)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_forgets_expired_entries_only() {
        let p = MemoryPresence::default();
        let u = UserId::parse("u").unwrap();
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        p.touch(&u, &a, Duration::from_secs(5)).await.unwrap();
        p.touch(&u, &b, Duration::from_secs(50)).await.unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        p.sweep();
        let held: Vec<NodeId> = p.users.for_key(&u).lock()[&u]
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(held, vec![b]);
        tokio::time::advance(Duration::from_secs(50)).await;
        p.sweep();
        assert!(p.users.for_key(&u).lock().is_empty(), "the user is gone");
    }
}
