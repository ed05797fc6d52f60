//! Control: commands from the server API to the gateway node(s) that hold a user, or to
//! every node — kicks, ban disconnects, critical messages, broadcasts.

use crate::BoxFut;
use crate::ids::{NodeId, RoomId, UserId};

use super::acks::PendingCritical;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error("control channel unavailable: {0}")]
    Unavailable(String),
    #[error("node {node} failed the command: {reason}")]
    Failed { node: NodeId, reason: String },
}

/// Which gateway nodes a [`Command`] goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlTarget {
    /// The nodes that hold the user's connections ([`Presence::nodes`]).
    User(UserId),
    /// Every gateway node.
    AllNodes,
}

/// A critical message before it is addressed to a user (see [`PendingCritical`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalMsg {
    pub msg_id: u64,
    pub kind: String,
    pub room: Option<RoomId>,
    pub text: Option<String>,
    /// JSON text.
    pub payload: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

impl CriticalMsg {
    /// The pending entry of this message for one user, not sent yet.
    pub fn for_user(&self, user: &UserId) -> PendingCritical {
        PendingCritical {
            user: user.clone(),
            msg_id: self.msg_id,
            kind: self.kind.clone(),
            room: self.room.clone(),
            text: self.text.clone(),
            payload: self.payload.clone(),
            ts: self.ts,
            attempts: 0,
            next_retry_ms: 0,
        }
    }
}

/// What a gateway node does on behalf of the server API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the user's connections with a `kicked` notice (`code`) and `close_code`: kicks and
    /// ban disconnects. Counts closed connections.
    Kick {
        user: UserId,
        close_code: u16,
        code: String,
        reason: String,
    },
    /// Record a critical message for the user and push it to the user's connections. Counts
    /// connections written to.
    Critical { user: UserId, msg: CriticalMsg },
    /// A critical message for every user connected to the node. Counts users.
    Broadcast { msg: CriticalMsg },
    /// A critical message for every user in the room on the node. Counts users.
    RoomCritical { room: RoomId, msg: CriticalMsg },
}

/// What a command did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlReport {
    /// Nodes that ran it.
    pub nodes: usize,
    /// The sum of what each node counted (see [`Command`]).
    pub count: usize,
}

/// API → gateway nodes: runs a command on the nodes of a target.
///
/// Contract: a [`Command::Critical`] is recorded for its user (the `AckStore`) even when no
/// node holds the user, so it waits for the next login; the other commands do nothing for a
/// user no node holds. A node that cannot be reached makes the call fail only when it is the
/// only node of the target; otherwise it is logged and left out of the report.
pub trait Control: Send + Sync {
    fn send(
        &self,
        target: ControlTarget,
        command: Command,
    ) -> BoxFut<'_, Result<ControlReport, ControlError>>;
}
