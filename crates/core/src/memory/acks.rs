//! Pending critical messages in memory: tests, and standalone with a `memory://` store (the
//! default SQLite store keeps them in `ack_pending`).

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::BoxFut;
use crate::ids::UserId;
use crate::ports::{AckStore, PendingCritical, StoreError};

#[derive(Default)]
pub struct MemoryAckStore {
    users: Mutex<HashMap<UserId, BTreeMap<u64, PendingCritical>>>,
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(v)))
}

impl AckStore for MemoryAckStore {
    fn put(&self, p: PendingCritical) -> BoxFut<'_, Result<(), StoreError>> {
        self.users
            .lock()
            .entry(p.user.clone())
            .or_default()
            .insert(p.msg_id, p);
        ready(())
    }

    fn remove<'a>(&'a self, user: &'a UserId, msg_id: u64) -> BoxFut<'a, Result<bool, StoreError>> {
        let mut users = self.users.lock();
        let found = match users.get_mut(user) {
            Some(m) => {
                let found = m.remove(&msg_id).is_some();
                if m.is_empty() {
                    users.remove(user);
                }
                found
            }
            None => false,
        };
        ready(found)
    }

    fn pending<'a>(
        &'a self,
        user: &'a UserId,
    ) -> BoxFut<'a, Result<Vec<PendingCritical>, StoreError>> {
        let v = self
            .users
            .lock()
            .get(user)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        ready(v)
    }

    fn update(&self, p: &PendingCritical) -> BoxFut<'_, Result<bool, StoreError>> {
        let found = match self
            .users
            .lock()
            .get_mut(&p.user)
            .and_then(|m| m.get_mut(&p.msg_id))
        {
            Some(e) => {
                e.attempts = p.attempts;
                e.next_retry_ms = p.next_retry_ms;
                true
            }
            None => false,
        };
        ready(found)
    }

    fn count(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        let n = self.users.lock().values().map(|m| m.len() as u64).sum();
        ready(n)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_ack_store_suite() {
        crate::testkit::ack_store_suite(&super::MemoryAckStore::default()).await;
    }
}
