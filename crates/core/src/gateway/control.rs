//! Commands from the server API to gateway nodes: what one node does with a [`Command`]
//! ([`Gateway::apply_command`]), the standalone [`Control`] adapter that hands every command
//! to the gateway in this process, and [`RoutedControl`], which looks up the target's nodes —
//! [`Presence::nodes`] for a user, discovery for all gateways — and hands the command to each
//! through a [`NodeCommands`] (gRPC in the distributed mode). This module must not know how
//! commands travel.
//!
//! [`Presence::nodes`]: crate::ports::Presence::nodes

use std::sync::Arc;

use super::Gateway;
use crate::BoxFut;
use crate::ids::{NodeId, UserId};
use crate::ports::{
    AckStore, Command, Control, ControlError, ControlReport, ControlTarget, CriticalMsg, Discovery,
    NodeRole, Presence, StoreError,
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

/// Carries a command to one gateway node and returns what the node counted (gRPC between
/// processes in the distributed mode; a direct call in tests).
pub trait NodeCommands: Send + Sync {
    fn apply<'a>(
        &'a self,
        node: &'a NodeId,
        command: Command,
    ) -> BoxFut<'a, Result<usize, ControlError>>;
}

/// Control across nodes: a user's commands go to the nodes that hold the user's connections
/// ([`Presence::nodes`]), broadcasts to every registered gateway ([`Discovery::list`]); each
/// node runs [`Gateway::apply_command`] behind a [`NodeCommands`].
///
/// A critical message for a user no node holds is recorded here, so it waits for the user's
/// next login on any node; one whose every node failed is recorded too before the error is
/// returned (never lost). A failed node among several is logged and left out of the report.
///
/// [`Presence::nodes`]: crate::ports::Presence::nodes
/// [`Discovery::list`]: crate::ports::Discovery::list
pub struct RoutedControl {
    presence: Arc<dyn Presence>,
    discovery: Arc<dyn Discovery>,
    acks: Arc<dyn AckStore>,
    nodes: Arc<dyn NodeCommands>,
}

impl RoutedControl {
    pub fn new(
        presence: Arc<dyn Presence>,
        discovery: Arc<dyn Discovery>,
        acks: Arc<dyn AckStore>,
        nodes: Arc<dyn NodeCommands>,
    ) -> Self {
        RoutedControl {
            presence,
            discovery,
            acks,
            nodes,
        }
    }

    async fn targets(&self, target: &ControlTarget) -> Result<Vec<NodeId>, ControlError> {
        let unavailable = |e: &dyn std::fmt::Display| ControlError::Unavailable(e.to_string());
        match target {
            ControlTarget::User(user) => {
                self.presence.nodes(user).await.map_err(|e| unavailable(&e))
            }
            ControlTarget::AllNodes => Ok(self
                .discovery
                .list(NodeRole::Gateway)
                .await
                .map_err(|e| unavailable(&e))?
                .into_iter()
                .map(|n| n.id)
                .collect()),
        }
    }

    /// Records a user's critical message where any node finds it at the user's next login.
    async fn record(&self, command: &Command) -> Result<(), ControlError> {
        if let Command::Critical { user, msg } = command {
            self.acks
                .put(msg.for_user(user))
                .await
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

impl Control for RoutedControl {
    fn send(
        &self,
        target: ControlTarget,
        command: Command,
    ) -> BoxFut<'_, Result<ControlReport, ControlError>> {
        Box::pin(async move {
            let nodes = self.targets(&target).await?;
            if nodes.is_empty() {
                tracing::info!(
                    ?target,
                    "no gateway holds the target; critical messages recorded for the next login"
                );
                self.record(&command).await?;
                return Ok(ControlReport::default());
            }
            let calls = nodes
                .iter()
                .map(|node| self.nodes.apply(node, command.clone()));
            let results = futures_util::future::join_all(calls).await;
            let mut report = ControlReport::default();
            let mut last_err = None;
            for (node, r) in nodes.iter().zip(results) {
                match r {
                    Ok(n) => {
                        report.nodes += 1;
                        report.count += n;
                    }
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "a node failed a control command");
                        last_err = Some(e);
                    }
                }
            }
            match last_err {
                Some(e) if report.nodes == 0 => {
                    self.record(&command).await?;
                    Err(e)
                }
                _ => Ok(report),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use parking_lot::Mutex;

    use super::*;
    use crate::memory::{MemoryAckStore, MemoryDiscovery, MemoryPresence};
    use crate::ports::NodeInfo;

    /// Gateway nodes that record what they were asked to do; some can be made unreachable.
    #[derive(Default)]
    struct Nodes {
        applied: Mutex<Vec<(NodeId, Command)>>,
        down: Mutex<BTreeSet<NodeId>>,
    }

    impl NodeCommands for Nodes {
        fn apply<'a>(
            &'a self,
            node: &'a NodeId,
            command: Command,
        ) -> BoxFut<'a, Result<usize, ControlError>> {
            let r = if self.down.lock().contains(node) {
                Err(ControlError::Unavailable(format!("{node} is down")))
            } else {
                self.applied.lock().push((node.clone(), command));
                Ok(1)
            };
            Box::pin(std::future::ready(r))
        }
    }

    struct Setup {
        control: RoutedControl,
        nodes: Arc<Nodes>,
        presence: Arc<MemoryPresence>,
        acks: Arc<MemoryAckStore>,
        _leases: Vec<Box<dyn crate::ports::NodeLease>>,
    }

    async fn setup() -> Setup {
        let presence = Arc::new(MemoryPresence::default());
        let discovery = Arc::new(MemoryDiscovery::default());
        let acks = Arc::new(MemoryAckStore::default());
        let nodes = Arc::new(Nodes::default());
        let mut leases = Vec::new();
        for (id, role) in [
            ("g1", NodeRole::Gateway),
            ("g2", NodeRole::Gateway),
            ("g3", NodeRole::Gateway),
            ("i1", NodeRole::Ingest),
        ] {
            let info = NodeInfo {
                id: NodeId::new(id),
                role,
                addr: format!("{id}:1"),
                public_url: None,
            };
            leases.push(
                discovery
                    .register(info, Duration::from_secs(60))
                    .await
                    .unwrap(),
            );
        }
        Setup {
            control: RoutedControl::new(presence.clone(), discovery, acks.clone(), nodes.clone()),
            nodes,
            presence,
            acks,
            _leases: leases,
        }
    }

    fn user(u: &str) -> UserId {
        UserId::parse(u).unwrap()
    }

    fn kick(u: &str) -> Command {
        Command::Kick {
            user: user(u),
            close_code: 4003,
            code: "banned".into(),
            reason: "test".into(),
        }
    }

    fn critical(u: &str, msg_id: u64) -> Command {
        Command::Critical {
            user: user(u),
            msg: CriticalMsg {
                msg_id,
                kind: "system".into(),
                room: None,
                text: Some("hello".into()),
                payload: None,
                ts: 1,
            },
        }
    }

    fn applied_to(s: &Setup) -> Vec<String> {
        let mut v: Vec<String> = s
            .nodes
            .applied
            .lock()
            .iter()
            .map(|(n, _)| n.as_str().to_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_users_command_reaches_exactly_the_nodes_holding_the_user() {
        let s = setup().await;
        let ttl = Duration::from_secs(60);
        s.presence
            .touch(&user("alice"), &NodeId::new("g1"), ttl)
            .await
            .unwrap();
        s.presence
            .touch(&user("alice"), &NodeId::new("g3"), ttl)
            .await
            .unwrap();
        let r = s
            .control
            .send(ControlTarget::User(user("alice")), kick("alice"))
            .await
            .unwrap();
        assert_eq!(r, ControlReport { nodes: 2, count: 2 });
        assert_eq!(
            applied_to(&s),
            ["g1", "g3"],
            "not g2, and never the ingest node"
        );
    }

    #[tokio::test]
    async fn a_user_no_node_holds_gets_critical_messages_recorded_and_nothing_else() {
        let s = setup().await;
        let r = s
            .control
            .send(ControlTarget::User(user("bob")), kick("bob"))
            .await
            .unwrap();
        assert_eq!(r, ControlReport::default());
        let r = s
            .control
            .send(ControlTarget::User(user("bob")), critical("bob", 7))
            .await
            .unwrap();
        assert_eq!(r, ControlReport::default());
        assert!(applied_to(&s).is_empty());
        let pending = s.acks.pending(&user("bob")).await.unwrap();
        assert_eq!(
            pending.iter().map(|p| p.msg_id).collect::<Vec<_>>(),
            [7],
            "waits for the next login"
        );
    }

    #[tokio::test]
    async fn a_broadcast_reaches_every_gateway() {
        let s = setup().await;
        let msg = CriticalMsg {
            msg_id: 9,
            kind: "system".into(),
            room: None,
            text: Some("maintenance".into()),
            payload: None,
            ts: 1,
        };
        let r = s
            .control
            .send(ControlTarget::AllNodes, Command::Broadcast { msg })
            .await
            .unwrap();
        assert_eq!(r.nodes, 3);
        assert_eq!(applied_to(&s), ["g1", "g2", "g3"]);
    }

    #[tokio::test]
    async fn a_failed_node_is_left_out_unless_it_was_the_only_one() {
        let s = setup().await;
        let ttl = Duration::from_secs(60);
        s.presence
            .touch(&user("carol"), &NodeId::new("g1"), ttl)
            .await
            .unwrap();
        s.presence
            .touch(&user("carol"), &NodeId::new("g2"), ttl)
            .await
            .unwrap();
        s.nodes.down.lock().insert(NodeId::new("g2"));
        let r = s
            .control
            .send(ControlTarget::User(user("carol")), kick("carol"))
            .await
            .unwrap();
        assert_eq!(
            r,
            ControlReport { nodes: 1, count: 1 },
            "g2 left out of the report"
        );

        s.nodes.down.lock().insert(NodeId::new("g1"));
        let e = s
            .control
            .send(ControlTarget::User(user("carol")), critical("carol", 11))
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Unavailable(_)), "{e}");
        let pending = s.acks.pending(&user("carol")).await.unwrap();
        assert_eq!(
            pending.iter().map(|p| p.msg_id).collect::<Vec<_>>(),
            [11],
            "a critical message whose every node failed is still recorded"
        );
    }
}
