//! Room worker → gateway and server API → gateway over gRPC.
//!
//! [`GatewayServer`] runs on every gateway: `Push` hands each batch to the local fan-out, `Apply`
//! runs a control command. [`GrpcDelivery`] is a worker's `Delivery`: each batch is encoded once
//! for every gateway it goes to, and each gateway has its own bounded queue drained by its own
//! task, one call in flight, everything that queued meanwhile in the next call — so a slow or
//! dead gateway never stalls the worker or the other gateways, and the calls grow with the load
//! instead of their number. A gateway answers a `Push` once it has handed the batches to its
//! rooms' fan-out queues, where whatever arrives while a room's pass is being written is merged
//! into that room's next pass: over gRPC the pacing by the sockets happens on the gateway, and
//! the worker's next batch for a room waits only for the call that carries the previous one
//! (answering after the pass instead would hold every other room's batches to that gateway
//! behind a big room's pass, one call being in flight per gateway). A batch that finds its
//! gateway's queue full, or whose call failed, is dropped for that gateway (its clients see the
//! gap in `seq` and recover with `since`).
//! [`GrpcNodeCommands`] carries control commands for `RoutedControl`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::gateway::{Gateway, NodeCommands};
use roomcast_core::ids::NodeId;
use roomcast_core::metrics::Metrics;
use roomcast_core::model::RoomBatch;
use roomcast_core::ports::{Command, ControlError, Delivery, DeliveryError, StoreError, Written};
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::directory::NodeDirectory;
use crate::pb;

/// What a gateway node does with what arrives over gRPC (the core `Gateway`; a recorder in
/// transport tests).
pub trait GatewayNode: Send + Sync + 'static {
    fn deliver(&self, batch: Arc<RoomBatch>);
    fn apply(&self, command: Command) -> BoxFut<'_, Result<usize, StoreError>>;
}

impl GatewayNode for Arc<Gateway> {
    fn deliver(&self, batch: Arc<RoomBatch>) {
        Gateway::deliver(self, batch);
    }
    fn apply(&self, command: Command) -> BoxFut<'_, Result<usize, StoreError>> {
        Box::pin(self.apply_command(command))
    }
}

/// The largest request a gateway accepts (a sender stops adding batches well before).
pub const MAX_PUSH_BYTES: usize = 64 << 20;

/// A gateway node's service.
pub struct GatewayServer<G> {
    node: G,
}

impl<G: GatewayNode> GatewayServer<G> {
    pub fn service(node: G) -> pb::gateway_server::GatewayServer<GatewayServer<G>> {
        pb::gateway_server::GatewayServer::new(GatewayServer { node })
            .max_decoding_message_size(MAX_PUSH_BYTES)
    }
}

#[tonic::async_trait]
impl<G: GatewayNode> pb::gateway_server::Gateway for GatewayServer<G> {
    async fn push(&self, req: Request<pb::PushRequest>) -> Result<Response<pb::PushReply>, Status> {
        let mut bad = None;
        for raw in req.into_inner().batches {
            match convert::decode_batch(&raw) {
                Ok(b) => self.node.deliver(Arc::new(b)),
                // The others still go out; the sender hears of it.
                Err(e) => bad = Some(e),
            }
        }
        match bad {
            Some(e) => Err(Status::invalid_argument(e.to_string())),
            None => Ok(Response::new(pb::PushReply {})),
        }
    }

    async fn apply(&self, req: Request<pb::Command>) -> Result<Response<pb::ApplyReply>, Status> {
        let command = convert::from_command(req.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let count = self
            .node
            .apply(command)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ApplyReply {
            count: count as u64,
        }))
    }
}

/// How a worker pushes to gateways.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    /// Batches waiting per gateway; one more is dropped for that gateway.
    pub queue: usize,
    /// Bytes of batches per call at most.
    pub max_call_bytes: usize,
    /// A call that takes longer fails (its batches are dropped for that gateway).
    pub call_timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            queue: 8192,
            max_call_bytes: 4 << 20,
            call_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Encoded batches, each with whom to tell when its call is done.
    batches: VecDeque<(Bytes, Option<oneshot::Sender<()>>)>,
    /// The sender task is gone (its node left discovery); the next batch starts a new one.
    closed: bool,
}

struct NodeSender {
    queue: Mutex<Queue>,
    wake: Notify,
}

/// A worker's `Delivery` over gRPC.
pub struct GrpcDelivery {
    nodes: Arc<NodeDirectory>,
    settings: DeliverySettings,
    senders: Mutex<HashMap<NodeId, Arc<NodeSender>>>,
    /// The last batch encoded (a worker delivers one batch to each of its nodes in a row).
    last: Mutex<Option<(Arc<RoomBatch>, Bytes)>>,
    metrics: Arc<Metrics>,
}

impl GrpcDelivery {
    pub fn new(nodes: Arc<NodeDirectory>, settings: DeliverySettings) -> Self {
        GrpcDelivery {
            nodes,
            settings,
            senders: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts pushes and drops in `metrics` (`pushed_batches`, `push_dropped`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Batches dropped for some gateway so far (queue full, call failed, gateway gone).
    pub fn dropped(&self) -> u64 {
        self.metrics.push_dropped.get()
    }

    fn encoded(&self, batch: &Arc<RoomBatch>) -> Bytes {
        let mut last = self.last.lock();
        if let Some((b, bytes)) = last.as_ref()
            && Arc::ptr_eq(b, batch)
        {
            return bytes.clone();
        }
        let bytes = convert::encode_batch(batch);
        *last = Some((batch.clone(), bytes.clone()));
        bytes
    }

    fn sender(&self, node: &NodeId) -> Arc<NodeSender> {
        let mut senders = self.senders.lock();
        if let Some(s) = senders.get(node)
            && !s.queue.lock().closed
        {
            return s.clone();
        }
        let s = Arc::new(NodeSender {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        senders.insert(node.clone(), s.clone());
        tokio::spawn(send_loop(
            node.clone(),
            s.clone(),
            self.nodes.clone(),
            self.settings,
            self.metrics.clone(),
        ));
        s
    }
}

impl Delivery for GrpcDelivery {
    fn deliver(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<(), DeliveryError>> {
        Box::pin(std::future::ready(self.enqueue(node, batch, None)))
    }

    /// "Written" once the call that carries it is answered (the gateway has it in the room's
    /// fan-out queue), failed, or dropped with its gateway.
    fn deliver_tracked(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
    ) -> BoxFut<'_, Result<Written, DeliveryError>> {
        let (tx, rx) = oneshot::channel();
        let r = self
            .enqueue(node, batch, Some(tx))
            .map(|()| Written::when(rx));
        Box::pin(std::future::ready(r))
    }
}

impl GrpcDelivery {
    fn enqueue(
        &self,
        node: &NodeId,
        batch: Arc<RoomBatch>,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), DeliveryError> {
        if !self.nodes.contains(node) {
            // Not registered (any more): no push is attempted.
            Err(DeliveryError::UnknownNode(node.clone()))
        } else {
            let bytes = self.encoded(&batch);
            let s = self.sender(node);
            let mut q = s.queue.lock();
            if q.batches.len() >= self.settings.queue {
                drop(q);
                self.metrics.push_dropped.inc();
                Err(DeliveryError::Failed {
                    node: node.clone(),
                    reason: "its queue is full (the gateway is too slow or unreachable)".into(),
                })
            } else {
                q.batches.push_back((bytes, written));
                drop(q);
                s.wake.notify_one();
                Ok(())
            }
        }
    }
}

/// One gateway's sender: one call in flight, everything queued meanwhile in the next.
async fn send_loop(
    node: NodeId,
    s: Arc<NodeSender>,
    nodes: Arc<NodeDirectory>,
    settings: DeliverySettings,
    metrics: Arc<Metrics>,
) {
    let mut batches = Vec::new();
    let mut written = Vec::new();
    loop {
        s.wake.notified().await;
        loop {
            let Some(channel) = nodes.channel(&node) else {
                // The gateway left: what waits for it is dropped, and so is this task.
                let mut q = s.queue.lock();
                q.closed = true;
                metrics.push_dropped.add(q.batches.len() as u64);
                q.batches.clear();
                tracing::info!(%node, "gateway left; stopped pushing to it");
                return;
            };
            {
                let mut q = s.queue.lock();
                let mut size = 0;
                while let Some((b, _)) = q.batches.front() {
                    if !batches.is_empty() && size + b.len() > settings.max_call_bytes {
                        break;
                    }
                    size += b.len();
                    if let Some((b, w)) = q.batches.pop_front() {
                        batches.push(b);
                        written.extend(w);
                    }
                }
            }
            if batches.is_empty() {
                break;
            }
            let n = batches.len() as u64;
            let mut req = Request::new(pb::PushRequest {
                batches: std::mem::take(&mut batches),
            });
            req.set_timeout(settings.call_timeout);
            let mut client = pb::gateway_client::GatewayClient::new(channel)
                .max_encoding_message_size(MAX_PUSH_BYTES);
            match client.push(req).await {
                Ok(_) => metrics.pushed_batches.add(n),
                Err(e) => {
                    metrics.push_dropped.add(n);
                    tracing::warn!(%node, code = ?e.code(), error = e.message(), batches = n, "push to gateway failed; its clients recover the gap");
                }
            }
            for w in written.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// Control commands to gateway nodes over gRPC.
pub struct GrpcNodeCommands {
    nodes: Arc<NodeDirectory>,
    timeout: Duration,
}

impl GrpcNodeCommands {
    pub fn new(nodes: Arc<NodeDirectory>, timeout: Duration) -> Self {
        GrpcNodeCommands { nodes, timeout }
    }
}

impl NodeCommands for GrpcNodeCommands {
    fn apply<'a>(
        &'a self,
        node: &'a NodeId,
        command: Command,
    ) -> BoxFut<'a, Result<usize, ControlError>> {
        Box::pin(async move {
            let channel = self
                .nodes
                .channel(node)
                .ok_or_else(|| ControlError::Unavailable(format!("gateway {node} is not up")))?;
            let mut req = Request::new(convert::command(&command));
            req.set_timeout(self.timeout);
            pb::gateway_client::GatewayClient::new(channel)
                .apply(req)
                .await
                .map(|r| r.into_inner().count as usize)
                .map_err(|e| ControlError::Failed {
                    node: node.clone(),
                    reason: e.message().to_owned(),
                })
        })
    }
}
