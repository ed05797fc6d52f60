//! Delivery: a room worker hands one batch to one gateway node.

use std::sync::Arc;

use crate::BoxFut;
use crate::ids::NodeId;
use crate::model::RoomBatch;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    #[error("gateway node {0} is unknown")]
    UnknownNode(NodeId),
    #[error("delivery to {node} failed: {reason}")]
    Failed { node: NodeId, reason: String },
}

/// Resolves once a node has written a batch to its members' sockets (or gave up on it): what a
/// room worker waits for before it sends the room's next batch, so that batches follow what
/// the sockets can take rather than a clock.
pub struct Written(Option<tokio::sync::oneshot::Receiver<()>>);

impl Written {
    /// Written already (or nothing to wait for).
    pub fn done() -> Self {
        Written(None)
    }

    /// Written when `rx` fires (or its sender is dropped).
    pub fn when(rx: tokio::sync::oneshot::Receiver<()>) -> Self {
        Written(Some(rx))
    }

    pub async fn wait(self) {
        if let Some(rx) = self.0 {
            let _ = rx.await;
        }
    }
}

/// Room worker → gateway node: one call per node per batch (`PushRoomMessage`).
pub trait Delivery: Send + Sync {
    /// Hands the batch over; returns once the node (or the queue to it) has taken it.
    fn deliver(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<(), DeliveryError>>;

    /// [`Delivery::deliver`], and when the node will have written the batch to its members.
    /// The default cannot tell and says "written" at once.
    fn deliver_tracked(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<Written, DeliveryError>> {
        let node = node.clone();
        Box::pin(async move { self.deliver(&node, batch).await.map(|()| Written::done()) })
    }
}
