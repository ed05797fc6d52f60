//! Commands from the server API to gateway nodes: what one node does with a [`Command`]
//! ([`Gateway::apply_command`]), and the standalone [`Control`] adapter that hands every command
//! to the gateway in this process.
//!
//! A networked adapter (gRPC between nodes) looks up the target's nodes — [`Presence::nodes`]
//! for a user, discovery for all gateways — and calls `apply_command` on each; this module must
//! not know how commands travel.
//!
//! [`Presence::nodes`]: crate::ports::Presence::nodes

use std::sync::Arc;

use super::Gateway;
use crate::BoxFut;
use crate::ids::UserId;
use crate::ports::{
    Command, Control, ControlError, ControlReport, ControlTarget, CriticalMsg, StoreError,
};

impl Gateway {
    /// Runs a command on this node; returns what it counts (see [`Command`]).
    pub async fn apply_command(&self, command: Command) -> Result<usize, StoreError> {
        match command {
            Command::Kick {
                user,
                close_code,
                code,
                reason,
            } => Ok(self.kick_user(&user, close_code, &code, &reason)),
            Command::Critical { user, msg } => self.send_critical(msg.for_user(&user)).await,
            Command::Broadcast { msg } => self.critical_to(self.online_users(), &msg).await,
            Command::RoomCritical { room, msg } => {
                self.critical_to(self.room_users(&room), &msg).await
            }
        }
    }

    /// Sends a critical message to each of `users`; returns how many.
    async fn critical_to(
        &self,
        users: Vec<UserId>,
        msg: &CriticalMsg,
    ) -> Result<usize, StoreError> {
        let n = users.len();
        for user in users {
            self.send_critical(msg.for_user(&user)).await?;
        }
        Ok(n)
    }
}

/// Control in one process: every target resolves to the local gateway (which holds every
/// connection there is, and records critical messages for users it does not hold).
pub struct LocalControl {
    gateway: Arc<Gateway>,
}

impl LocalControl {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        LocalControl { gateway }
    }
}

impl Control for LocalControl {
    fn send(
        &self,
        _target: ControlTarget,
        command: Command,
    ) -> BoxFut<'_, Result<ControlReport, ControlError>> {
        Box::pin(async move {
            let count =
                self.gateway
                    .apply_command(command)
                    .await
                    .map_err(|e| ControlError::Failed {
                        node: self.gateway.node().clone(),
                        reason: e.to_string(),
                    })?;
            Ok(ControlReport { nodes: 1, count })
        })
    }
}
