//! In-memory discovery: nodes registered under leases, listed and watched by role.
//!
//! The reference for the etcd adapter (a key per node under a lease with keep-alive). A lease
//! that is not kept alive stops being listed at its deadline; [`MemoryDiscovery::sweep`] then
//! deletes it and sends its `Down` event (etcd sends the delete when the lease expires).
//! Time is tokio's clock, so tests can pause it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::BoxFut;
use crate::ids::NodeId;
use crate::ports::{
    Discovery, DiscoveryError, NodeEvent, NodeInfo, NodeLease, NodeRole, NodeWatch, NumberClaim,
};

const WATCH_CAPACITY: usize = 1024;

struct Entry {
    info: NodeInfo,
    until: Instant,
    /// Which registration holds the entry (a re-registration after expiry gets a new one).
    lease: u64,
}

struct Claim {
    holder: NodeId,
    until: Instant,
    lease: u64,
}

struct Inner {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    /// `claim_number`: (scope, number) → its claim.
    claims: Mutex<HashMap<(String, u16), Claim>>,
    events: broadcast::Sender<(NodeRole, NodeEvent)>,
    next_lease: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn notify(&self, role: NodeRole, ev: NodeEvent) {
        let _ = self.events.send((role, ev));
    }
}

#[derive(Clone)]
pub struct MemoryDiscovery {
    inner: Arc<Inner>,
}

impl Default for MemoryDiscovery {
    fn default() -> Self {
        MemoryDiscovery {
            inner: Arc::new(Inner {
                nodes: Mutex::new(HashMap::new()),
                claims: Mutex::new(HashMap::new()),
                events: broadcast::channel(WATCH_CAPACITY).0,
                next_lease: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, T> {
    Box::pin(std::future::ready(v))
}

impl MemoryDiscovery {
    /// Deletes expired registrations and sends their `Down` events; call periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let dead: Vec<NodeInfo> = {
            let mut nodes = self.inner.nodes.lock();
            let dead: Vec<NodeId> = nodes
                .iter()
                .filter(|(_, e)| e.until <= now)
                .map(|(id, _)| id.clone())
                .collect();
            dead.iter()
                .filter_map(|id| nodes.remove(id))
                .map(|e| e.info)
                .collect()
        };
        for info in dead {
            self.inner.notify(info.role, NodeEvent::Down(info.id));
        }
    }

    fn live(&self, role: NodeRole) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut v: Vec<NodeInfo> = self
            .inner
            .nodes
            .lock()
            .values()
            .filter(|e| e.info.role == role && e.until > now)
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

struct MemoryLease {
    inner: Arc<Inner>,
    id: NodeId,
    role: NodeRole,
    lease: u64,
    ttl: Duration,
}

impl NodeLease for MemoryLease {
    fn keep_alive(&self) -> BoxFut<'_, Result<(), DiscoveryError>> {
        let now = Instant::now();
        let mut nodes = self.inner.nodes.lock();
        let r = match nodes.get_mut(&self.id) {
            Some(e) if e.lease == self.lease && e.until > now => {
                e.until = now + self.ttl;
                Ok(())
            }
            _ => Err(DiscoveryError::Expired(self.id.clone())),
        };
        ready(r)
    }

    fn revoke(&self) -> BoxFut<'_, Result<(), DiscoveryError>> {
        let removed = {
            let mut nodes = self.inner.nodes.lock();
            match nodes.get(&self.id) {
                Some(e) if e.lease == self.lease => nodes.remove(&self.id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.inner
                .notify(self.role, NodeEvent::Down(self.id.clone()));
        }
        ready(Ok(()))
    }

    fn keep_alive_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// A number claimed with [`Discovery::claim_number`].
struct MemoryClaimLease {
    inner: Arc<Inner>,
    key: (String, u16),
    holder: NodeId,
    lease: u64,
    ttl: Duration,
}

impl NodeLease for MemoryClaimLease {
    fn keep_alive(&self) -> BoxFut<'_, Result<(), DiscoveryError>> {
        let now = Instant::now();
        let mut claims = self.inner.claims.lock();
        let r = match claims.get_mut(&self.key) {
            Some(c) if c.lease == self.lease && c.until > now => {
                c.until = now + self.ttl;
                Ok(())
            }
            _ => Err(DiscoveryError::Expired(self.holder.clone())),
        };
        ready(r)
    }

    fn revoke(&self) -> BoxFut<'_, Result<(), DiscoveryError>> {
        let mut claims = self.inner.claims.lock();
        if claims.get(&self.key).is_some_and(|c| c.lease == self.lease) {
            claims.remove(&self.key);
        }
        ready(Ok(()))
    }

    fn keep_alive_every(&self) -> Duration {
        self.ttl / 3
    }
}

impl Discovery for MemoryDiscovery {
    fn claim_number<'a>(
        &'a self,
        scope: &'a str,
        holder: &'a NodeId,
        wanted: Option<u16>,
        count: u16,
        ttl: Duration,
    ) -> BoxFut<'a, Result<NumberClaim, DiscoveryError>> {
        let now = Instant::now();
        let lease = self
            .inner
            .next_lease
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut claims = self.inner.claims.lock();
        let free = |n: u16| {
            claims
                .get(&(scope.to_owned(), n))
                .is_none_or(|c| c.until <= now || c.holder == *holder)
        };
        let number = match wanted {
            Some(n) if n < count && free(n) => n,
            Some(_) => return ready(Err(DiscoveryError::Taken(holder.clone()))),
            None => match (0..count).find(|&n| free(n)) {
                Some(n) => n,
                None => return ready(Err(DiscoveryError::Taken(holder.clone()))),
            },
        };
        let key = (scope.to_owned(), number);
        claims.insert(
            key.clone(),
            Claim {
                holder: holder.clone(),
                until: now + ttl,
                lease,
            },
        );
        let lease: Box<dyn NodeLease> = Box::new(MemoryClaimLease {
            inner: self.inner.clone(),
            key,
            holder: holder.clone(),
            lease,
            ttl,
        });
        ready(Ok((number, lease)))
    }

    fn register(
        &self,
        node: NodeInfo,
        ttl: Duration,
    ) -> BoxFut<'_, Result<Box<dyn NodeLease>, DiscoveryError>> {
        let now = Instant::now();
        let lease = self
            .inner
            .next_lease
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replaced = {
            let mut nodes = self.inner.nodes.lock();
            match nodes.get(&node.id) {
                Some(e) if e.until > now => {
                    return ready(Err(DiscoveryError::Taken(node.id)));
                }
                old => {
                    let replaced = old.map(|e| e.info.role);
                    nodes.insert(
                        node.id.clone(),
                        Entry {
                            info: node.clone(),
                            until: now + ttl,
                            lease,
                        },
                    );
                    replaced
                }
            }
        };
        if let Some(role) = replaced {
            // An expired entry the sweep had not removed yet.
            self.inner.notify(role, NodeEvent::Down(node.id.clone()));
        }
        self.inner.notify(node.role, NodeEvent::Up(node.clone()));
        let lease: Box<dyn NodeLease> = Box::new(MemoryLease {
            inner: self.inner.clone(),
            id: node.id,
            role: node.role,
            lease,
            ttl,
        });
        ready(Ok(lease))
    }

    fn list(&self, role: NodeRole) -> BoxFut<'_, Result<Vec<NodeInfo>, DiscoveryError>> {
        ready(Ok(self.live(role)))
    }

    fn watch(&self, role: NodeRole) -> BoxFut<'_, Result<NodeWatch, DiscoveryError>> {
        // Subscribed before the snapshot: a change in between shows up twice at worst, never
        // not at all.
        let rx = self.inner.events.subscribe();
        let initial = self.live(role);
        ready(Ok(NodeWatch::new(role, initial, rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn passes_the_discovery_suite() {
        crate::testkit::discovery_suite(&MemoryDiscovery::default(), Duration::from_secs(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_announced_down_by_the_sweep() {
        let d = MemoryDiscovery::default();
        let info = NodeInfo {
            id: NodeId::new("gw-1"),
            role: NodeRole::Gateway,
            addr: "10.0.0.1:9000".into(),
            public_url: None,
        };
        let _lease = d
            .register(info.clone(), Duration::from_secs(3))
            .await
            .unwrap();
        let mut watch = d.watch(NodeRole::Gateway).await.unwrap();
        assert_eq!(watch.next().await, Some(NodeEvent::Up(info.clone())));
        tokio::time::advance(Duration::from_secs(4)).await;
        d.sweep();
        assert_eq!(watch.next().await, Some(NodeEvent::Down(info.id)));
    }
}
