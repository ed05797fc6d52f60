//! In-memory presence (`presence:{userId}` with a TTL).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxFut;
use crate::ids::UserId;
use crate::ports::{Presence, RouteError};
use crate::shard::Sharded;

pub struct MemoryPresence {
    users: Sharded<HashMap<UserId, Instant>>,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        MemoryPresence {
            users: Sharded::new(64),
        }
    }
}

impl MemoryPresence {
    /// Drops expired entries; call periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.users.iter() {
            shard.lock().retain(|_, until| *until > now);
        }
    }
}

impl Presence for MemoryPresence {
    fn touch(&self, user: &UserId, ttl: Duration) -> BoxFut<'_, Result<(), RouteError>> {
        self.users
            .for_key(user)
            .lock()
            .insert(user.clone(), Instant::now() + ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove(&self, user: &UserId) -> BoxFut<'_, Result<(), RouteError>> {
        self.users.for_key(user).lock().remove(user);
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_online(&self, user: &UserId) -> BoxFut<'_, Result<bool, RouteError>> {
        let online = self
            .users
            .for_key(user)
            .lock()
            .get(user)
            .is_some_and(|until| *until > Instant::now());
        Box::pin(std::future::ready(Ok(online)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_after_ttl() {
        let p = MemoryPresence::default();
        let u = UserId::parse("u").unwrap();
        p.touch(&u, Duration::from_secs(10)).await.unwrap();
        assert!(p.is_online(&u).await.unwrap());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!p.is_online(&u).await.unwrap());
        p.sweep();
        p.touch(&u, Duration::from_secs(10)).await.unwrap();
        p.remove(&u).await.unwrap();
        assert!(!p.is_online(&u).await.unwrap());
    }
}
