//! Gateway → ingest over gRPC: [`IngestServer`] puts an ingest node's `Ingest` on the network;
//! [`IngestClient`] is the gateway's `Ingest`, spreading calls over the ingest nodes it knows.
//!
//! A call that cannot reach an ingest node is tried once more on another one (a node that just
//! died, or is draining), then answered `Unavailable` — which the gateway turns into an
//! `unavailable` error with `retry_after_ms`, never silence. Only a node that could not be
//! reached moves the call on; a timeout does not (the message may be on the bus already), and a
//! refusal (rate limit, ban, …) is the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use roomcast_core::BoxFut;
use roomcast_core::ingest::{Accepted, ChatRequest, Ingest, IngestError};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::directory::NodeDirectory;
use crate::pb;

/// An ingest node's service.
pub struct IngestServer {
    ingest: Arc<dyn Ingest>,
}

impl IngestServer {
    pub fn service(ingest: Arc<dyn Ingest>) -> pb::ingest_server::IngestServer<IngestServer> {
        pb::ingest_server::IngestServer::new(IngestServer { ingest })
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestServer {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let req = convert::chat_request(req.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(convert::submit_reply(
            self.ingest.submit(req).await,
        )))
    }
}

/// The gateway's way to ingest in the distributed mode.
pub struct IngestClient {
    nodes: Arc<NodeDirectory>,
    timeout: Duration,
    next: AtomicUsize,
}

impl IngestClient {
    /// Calls go to the nodes of `nodes` (kept by [`NodeDirectory::follow`] for the ingest role),
    /// each bounded by `timeout`.
    pub fn new(nodes: Arc<NodeDirectory>, timeout: Duration) -> Self {
        IngestClient {
            nodes,
            timeout,
            next: AtomicUsize::new(0),
        }
    }

    async fn call(
        &self,
        channel: tonic::transport::Channel,
        req: pb::SubmitRequest,
    ) -> Result<pb::SubmitReply, Status> {
        let mut client = pb::ingest_client::IngestClient::new(channel);
        let mut req = Request::new(req);
        req.set_timeout(self.timeout);
        client.submit(req).await.map(Response::into_inner)
    }
}

impl Ingest for IngestClient {
    fn submit(&self, req: ChatRequest) -> BoxFut<'_, Result<Accepted, IngestError>> {
        Box::pin(async move {
            let req = convert::submit_request(&req);
            // Round robin; a second try goes to the next node.
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let tries = self.nodes.len().min(2);
            if tries == 0 {
                return Err(IngestError::Unavailable("no ingest node is up".into()));
            }
            let mut last = None;
            for i in 0..tries {
                let Some((node, channel)) = self.nodes.pick(start + i) else {
                    break;
                };
                match self.call(channel, req.clone()).await {
                    Ok(reply) => return convert::ingest_result(reply),
                    // The request itself is wrong: another node would say the same.
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        return Err(IngestError::BadRequest(s.message().to_owned()));
                    }
                    Err(s) => {
                        tracing::warn!(%node, code = ?s.code(), error = s.message(), "ingest call failed");
                        last = Some(format!("ingest node {node}: {}", s.message()));
                        // Only a node that could not be reached surely did not publish; after a
                        // timeout the message may be on the bus, and a retry would send it twice.
                        if s.code() != tonic::Code::Unavailable {
                            break;
                        }
                    }
                }
            }
            Err(IngestError::Unavailable(last.unwrap_or_default()))
        })
    }
}
