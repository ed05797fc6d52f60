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

/// Room worker → gateway node: one call per node per batch (`PushRoomMessage`).
pub trait Delivery: Send + Sync {
    fn deliver(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<(), DeliveryError>>;
}
