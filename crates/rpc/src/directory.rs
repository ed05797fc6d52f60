//! Where the nodes of one role are: a gRPC channel per node, kept up to date from discovery.
//!
//! Channels connect lazily and reconnect by themselves (tonic); a node that leaves discovery
//! (drained, or its lease expired) is dropped at once, so nothing more is sent to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use roomcast_core::ids::NodeId;
use roomcast_core::ports::{Discovery, NodeEvent, NodeInfo, NodeRole};
use tonic::transport::{Channel, Endpoint};

/// How channels to other nodes behave.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSettings {
    pub connect_timeout: Duration,
    /// HTTP/2 pings on idle connections, so a dead peer is noticed without traffic.
    pub keep_alive: Duration,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(10),
        }
    }
}

struct Peer {
    addr: String,
    channel: Channel,
}

pub struct NodeDirectory {
    settings: ChannelSettings,
    nodes: RwLock<BTreeMap<NodeId, Peer>>,
}

impl NodeDirectory {
    pub fn new(settings: ChannelSettings) -> Arc<Self> {
        Arc::new(NodeDirectory {
            settings,
            nodes: RwLock::new(BTreeMap::new()),
        })
    }

    fn channel_to(&self, addr: &str) -> Option<Channel> {
        match Endpoint::from_shared(format!("http://{addr}")) {
            Ok(e) => Some(
                e.connect_timeout(self.settings.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(self.settings.keep_alive)
                    .keep_alive_while_idle(true)
                    .connect_lazy(),
            ),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "a node registered an address that is not one; ignored");
                None
            }
        }
    }

    /// A node came (or moved to another address).
    pub fn up(&self, node: &NodeInfo) {
        if self
            .nodes
            .read()
            .get(&node.id)
            .is_some_and(|p| p.addr == node.addr)
        {
            return;
        }
        if let Some(channel) = self.channel_to(&node.addr) {
            self.nodes.write().insert(
                node.id.clone(),
                Peer {
                    addr: node.addr.clone(),
                    channel,
                },
            );
        }
    }

    pub fn down(&self, node: &NodeId) {
        self.nodes.write().remove(node);
    }

    /// Replaces the whole set (a fresh listing); unchanged nodes keep their channels.
    pub fn set(&self, nodes: &[NodeInfo]) {
        let keep: std::collections::BTreeSet<&NodeId> = nodes.iter().map(|n| &n.id).collect();
        self.nodes.write().retain(|id, _| keep.contains(id));
        for n in nodes {
            self.up(n);
        }
    }

    pub fn channel(&self, node: &NodeId) -> Option<Channel> {
        self.nodes.read().get(node).map(|p| p.channel.clone())
    }

    /// Whether the node is known (cheaper than [`NodeDirectory::channel`]).
    pub fn contains(&self, node: &NodeId) -> bool {
        self.nodes.read().contains_key(node)
    }

    /// The `k`-th node (modulo how many there are), for spreading calls; `None` when empty.
    pub fn pick(&self, k: usize) -> Option<(NodeId, Channel)> {
        let nodes = self.nodes.read();
        let n = nodes.len();
        (n > 0)
            .then(|| nodes.iter().nth(k % n))
            .flatten()
            .map(|(id, p)| (id.clone(), p.channel.clone()))
    }

    pub fn len(&self) -> usize {
        self.nodes.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows discovery for `role` until the directory is dropped: lists, then applies the
    /// watch's events; lists again when events were missed or the watch failed (after a pause,
    /// so an etcd outage costs one attempt per second, not a busy loop). Returns once the first
    /// listing is applied (or failed), so a caller starts with the nodes that exist.
    pub async fn follow(
        self: &Arc<Self>,
        discovery: Arc<dyn Discovery>,
        role: NodeRole,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let first = self.relist(&*discovery, role).await;
        tokio::spawn(async move {
            let mut listed = first;
            loop {
                if !listed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let Some(dir) = weak.upgrade() else { return };
                if !listed {
                    listed = dir.relist(&*discovery, role).await;
                    if !listed {
                        continue;
                    }
                }
                let mut watch = match discovery.watch(role).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(?role, error = %e, "cannot watch nodes; retrying");
                        listed = false;
                        continue;
                    }
                };
                // The listing may have missed changes made before the watch started.
                if !dir.relist(&*discovery, role).await {
                    listed = false;
                    continue;
                }
                drop(dir);
                loop {
                    let event = watch.next().await;
                    let Some(dir) = weak.upgrade() else { return };
                    match event {
                        Some(NodeEvent::Up(n)) => dir.up(&n),
                        Some(NodeEvent::Down(id)) => dir.down(&id),
                        Some(NodeEvent::Lagged) | None => {
                            listed = dir.relist(&*discovery, role).await;
                            break;
                        }
                    }
                }
            }
        })
    }

    async fn relist(&self, discovery: &dyn Discovery, role: NodeRole) -> bool {
        match discovery.list(role).await {
            Ok(nodes) => {
                self.set(&nodes);
                true
            }
            Err(e) => {
                tracing::warn!(?role, error = %e, "cannot list nodes");
                false
            }
        }
    }
}
