//! Discovery in etcd (feature `etcd`, R23): each node is a key `{prefix}nodes/{role}/{id}`
//! (value: `{"addr": …}`) attached to a lease the node keeps alive; a node that stops renewing
//! disappears when its lease runs out, and watchers of its role see it go.
//!
//! It speaks etcd's v3 JSON API (the gRPC gateway every etcd 3.4+ serves on its client port:
//! `/v3/lease/grant`, `/v3/kv/txn`, `/v3/watch`, …) over hyper, rather than through a gRPC
//! client crate: `etcd-client` generates its code with `protoc` at build time, which the
//! project's "no services, no tools" standalone build must not need. Registration is one
//! transaction (create the key only if absent), so two live nodes can never hold one id.
//!
//! Numbers (`claim_number`, the node number in message ids) are keys
//! `{prefix}numbers/{scope}/{n}` (value: the holder's id) under a lease of their own, created
//! in a transaction only if absent (or already the holder's).
//!
//! Every call opens its own connection, so a restarted etcd is simply reached again. A watch
//! survives it too: its stream is reopened from the revision after the last event it passed on
//! (etcd keeps registrations, leases and history on disk), so a watcher misses nothing.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use roomcast_core::BoxFut;
use roomcast_core::ids::NodeId;
use roomcast_core::ports::{
    Discovery, DiscoveryError, NodeEvent, NodeInfo, NodeLease, NodeRole, NodeWatch, NumberClaim,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// Talks to one etcd endpoint (`host:port`).
#[derive(Clone)]
pub struct EtcdDiscovery {
    endpoint: String,
    prefix: String,
}

fn unavailable(e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Unavailable(e.to_string())
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Gateway => "gateway",
        NodeRole::Ingest => "ingest",
        NodeRole::Worker => "worker",
    }
}

/// The key just after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdDiscovery {
    /// `url`: `etcd://host:port` (or `http://host:port`); checks that etcd answers.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, DiscoveryError> {
        let endpoint = url
            .strip_prefix("etcd://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| {
                unavailable(format!(
                    "invalid etcd url {url:?}: expected etcd://host:port"
                ))
            })?
            .trim_end_matches('/')
            .to_owned();
        let d = EtcdDiscovery {
            endpoint,
            prefix: prefix.to_owned(),
        };
        d.post("/v3/maintenance/status", json!({}))
            .await
            .map_err(|e| unavailable(format!("cannot reach etcd at {url}: {e}")))?;
        Ok(d)
    }

    fn role_prefix(&self, role: NodeRole) -> String {
        format!("{}nodes/{}/", self.prefix, role_name(role))
    }

    async fn send(
        &self,
        path: &str,
        body: Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, DiscoveryError> {
        let tcp = TcpStream::connect(&self.endpoint)
            .await
            .map_err(unavailable)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(unavailable)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(path)
            .header("host", &self.endpoint)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(unavailable)?;
        let resp = sender.send_request(req).await.map_err(unavailable)?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.into_body().collect().await.map(|b| b.to_bytes());
            let text = text.map(|b| String::from_utf8_lossy(&b).into_owned());
            return Err(unavailable(format!(
                "etcd {path}: {status} {}",
                text.unwrap_or_default()
            )));
        }
        Ok(resp)
    }

    /// One request, the whole JSON answer.
    async fn post(&self, path: &str, body: Value) -> Result<Value, DiscoveryError> {
        let resp = tokio::time::timeout(Duration::from_secs(5), async {
            let resp = self.send(path, body).await?;
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(unavailable)?
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).map_err(unavailable)
        })
        .await
        .map_err(|_| unavailable(format!("etcd {path}: no answer within 5 s")))??;
        Ok(resp)
    }

    fn parse_kv(&self, role: NodeRole, kv: &Value) -> Option<NodeInfo> {
        let key = B64.decode(kv["key"].as_str()?).ok()?;
        let key = String::from_utf8(key).ok()?;
        let id = key.strip_prefix(&self.role_prefix(role))?;
        let value = B64.decode(kv["value"].as_str().unwrap_or("")).ok()?;
        let v: Value = serde_json::from_slice(&value).ok()?;
        Some(NodeInfo {
            id: NodeId::new(id),
            role,
            addr: v["addr"].as_str()?.to_owned(),
            public_url: v["public_url"].as_str().map(str::to_owned),
        })
    }

    fn key_id(&self, role: NodeRole, kv: &Value) -> Option<NodeId> {
        let key = B64.decode(kv["key"].as_str()?).ok()?;
        let key = String::from_utf8(key).ok()?;
        key.strip_prefix(&self.role_prefix(role)).map(NodeId::new)
    }

    /// The role's nodes and the store revision they were read at.
    async fn range(&self, role: NodeRole) -> Result<(Vec<NodeInfo>, i64), DiscoveryError> {
        let prefix = self.role_prefix(role);
        let r = self
            .post(
                "/v3/kv/range",
                json!({ "key": B64.encode(&prefix), "range_end": B64.encode(prefix_end(&prefix)) }),
            )
            .await?;
        let rev = r["header"]["revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut nodes: Vec<NodeInfo> = r["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .filter_map(|kv| self.parse_kv(role, kv))
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok((nodes, rev))
    }
}

struct EtcdLease {
    etcd: EtcdDiscovery,
    id: NodeId,
    lease: String,
    ttl: Duration,
}

impl NodeLease for EtcdLease {
    fn keep_alive(&self) -> BoxFut<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            let r = self
                .etcd
                .post("/v3/lease/keepalive", json!({ "ID": self.lease }))
                .await?;
            // An expired lease answers with no TTL (or 0).
            let ttl = r["result"]["TTL"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            if ttl > 0 {
                Ok(())
            } else {
                Err(DiscoveryError::Expired(self.id.clone()))
            }
        })
    }

    fn revoke(&self) -> BoxFut<'_, Result<(), DiscoveryError>> {
        Box::pin(async move {
            match self
                .etcd
                .post("/v3/lease/revoke", json!({ "ID": self.lease }))
                .await
            {
                Ok(_) => Ok(()),
                // Already gone: revoked or expired.
                Err(DiscoveryError::Unavailable(m)) if m.contains("lease not found") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn keep_alive_every(&self) -> Duration {
        self.ttl / 3
    }
}

impl Discovery for EtcdDiscovery {
    fn register(
        &self,
        node: NodeInfo,
        ttl: Duration,
    ) -> BoxFut<'_, Result<Box<dyn NodeLease>, DiscoveryError>> {
        Box::pin(async move {
            // etcd leases count whole seconds.
            let secs = ttl.as_secs_f64().ceil().max(1.0) as u64;
            let grant = self.post("/v3/lease/grant", json!({ "TTL": secs })).await?;
            let lease = grant["ID"]
                .as_str()
                .ok_or_else(|| unavailable(format!("lease grant answered {grant}")))?
                .to_owned();
            let key = B64.encode(format!(
                "{}{}",
                self.role_prefix(node.role),
                node.id.as_str()
            ));
            let value =
                B64.encode(json!({ "addr": node.addr, "public_url": node.public_url }).to_string());
            let txn = self
                .post(
                    "/v3/kv/txn",
                    json!({
                        "compare": [{ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                        "success": [{ "request_put": { "key": key, "value": value, "lease": lease } }],
                    }),
                )
                .await?;
            if txn["succeeded"].as_bool() != Some(true) {
                let _ = self.post("/v3/lease/revoke", json!({ "ID": lease })).await;
                return Err(DiscoveryError::Taken(node.id));
            }
            Ok(Box::new(EtcdLease {
                etcd: self.clone(),
                id: node.id,
                lease,
                ttl: Duration::from_secs(secs),
            }) as Box<dyn NodeLease>)
        })
    }

    fn list(&self, role: NodeRole) -> BoxFut<'_, Result<Vec<NodeInfo>, DiscoveryError>> {
        Box::pin(async move { Ok(self.range(role).await?.0) })
    }

    fn claim_number<'a>(
        &'a self,
        scope: &'a str,
        holder: &'a NodeId,
        wanted: Option<u16>,
        count: u16,
        ttl: Duration,
    ) -> BoxFut<'a, Result<NumberClaim, DiscoveryError>> {
        Box::pin(async move {
            let prefix = format!("{}numbers/{scope}/", self.prefix);
            // Who holds what now (keys `{prefix}{n}`, value the holder's id).
            let r = self
                .post(
                    "/v3/kv/range",
                    json!({ "key": B64.encode(&prefix), "range_end": B64.encode(prefix_end(&prefix)) }),
                )
                .await?;
            let mut held: std::collections::HashMap<u16, String> = Default::default();
            for kv in r["kvs"].as_array().into_iter().flatten() {
                let key = kv["key"]
                    .as_str()
                    .and_then(|k| B64.decode(k).ok())
                    .and_then(|k| String::from_utf8(k).ok());
                let n = key
                    .as_deref()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|n| n.parse::<u16>().ok());
                let v = kv["value"]
                    .as_str()
                    .and_then(|v| B64.decode(v).ok())
                    .map(|v| String::from_utf8_lossy(&v).into_owned());
                if let (Some(n), Some(v)) = (n, v) {
                    held.insert(n, v);
                }
            }
            let candidates: Vec<u16> = match wanted {
                Some(n) if n < count => vec![n],
                Some(_) => Vec::new(),
                None => {
                    // Our own claim first (a restart right after a crash), then free numbers.
                    let mut c: Vec<u16> = held
                        .iter()
                        .filter(|(_, h)| h.as_str() == holder.as_str())
                        .map(|(n, _)| *n)
                        .collect();
                    c.extend((0..count).filter(|n| !held.contains_key(n)));
                    c
                }
            };
            let secs = ttl.as_secs_f64().ceil().max(1.0) as u64;
            let grant = self.post("/v3/lease/grant", json!({ "TTL": secs })).await?;
            let lease = grant["ID"]
                .as_str()
                .ok_or_else(|| unavailable(format!("lease grant answered {grant}")))?
                .to_owned();
            let value = B64.encode(holder.as_str());
            // A handful of tries: another node may take a free number between the read and
            // the transaction.
            for n in candidates.into_iter().take(16) {
                let key = B64.encode(format!("{prefix}{n}"));
                // Free, or held by this holder: put under the new lease.
                let txn = self
                    .post(
                        "/v3/kv/txn",
                        json!({
                            "compare": [{ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                            "success": [{ "request_put": { "key": key, "value": value, "lease": lease } }],
                        }),
                    )
                    .await?;
                let mut ok = txn["succeeded"].as_bool() == Some(true);
                if !ok {
                    let txn = self
                        .post(
                            "/v3/kv/txn",
                            json!({
                                "compare": [{ "key": key, "target": "VALUE", "result": "EQUAL", "value": value }],
                                "success": [{ "request_put": { "key": key, "value": value, "lease": lease } }],
                            }),
                        )
                        .await?;
                    ok = txn["succeeded"].as_bool() == Some(true);
                }
                if ok {
                    return Ok((
                        n,
                        Box::new(EtcdLease {
                            etcd: self.clone(),
                            id: holder.clone(),
                            lease,
                            ttl: Duration::from_secs(secs),
                        }) as Box<dyn NodeLease>,
                    ));
                }
            }
            let _ = self.post("/v3/lease/revoke", json!({ "ID": lease })).await;
            Err(DiscoveryError::Taken(holder.clone()))
        })
    }

    fn watch(&self, role: NodeRole) -> BoxFut<'_, Result<NodeWatch, DiscoveryError>> {
        Box::pin(async move {
            let (initial, rev) = self.range(role).await?;
            let (tx, rx) = broadcast::channel(256);
            let body = self.open_watch(role, rev + 1).await?;
            tokio::spawn(follow(self.clone(), role, body, rev + 1, tx));
            Ok(NodeWatch::new(role, initial, rx))
        })
    }
}

impl EtcdDiscovery {
    /// The stream of changes of a role's keys from revision `from` on.
    async fn open_watch(
        &self,
        role: NodeRole,
        from: i64,
    ) -> Result<hyper::body::Incoming, DiscoveryError> {
        let prefix = self.role_prefix(role);
        let resp = self
            .send(
                "/v3/watch",
                json!({ "create_request": {
                    "key": B64.encode(&prefix),
                    "range_end": B64.encode(prefix_end(&prefix)),
                    "start_revision": from.to_string(),
                }}),
            )
            .await?;
        Ok(resp.into_body())
    }
}

/// How a watch stream ended.
enum StreamEnd {
    /// Every watcher is gone.
    Unwatched,
    /// The connection broke or etcd cancelled the watch (a restart, a network failure).
    Broken,
    /// The revision to resume from was compacted away; the oldest one etcd still has.
    Compacted(i64),
}

/// Turns the watch stream's JSON messages into node events until every watcher is gone. When the
/// stream breaks (etcd restarted, the connection dropped) it opens the watch again, with backoff,
/// from the revision after the last event it passed on: etcd keeps its history across a restart,
/// so nothing is missed or repeated. Only when that revision was compacted away does it send
/// `Lagged` (the watcher lists again) and carry on from the oldest revision etcd still has.
async fn follow(
    etcd: EtcdDiscovery,
    role: NodeRole,
    mut body: hyper::body::Incoming,
    mut from: i64,
    tx: broadcast::Sender<(NodeRole, NodeEvent)>,
) {
    loop {
        match read_watch(&etcd, role, body, &mut from, &tx).await {
            StreamEnd::Unwatched => return,
            StreamEnd::Broken => {
                tracing::warn!(role = role_name(role), "etcd watch broke; resuming");
            }
            StreamEnd::Compacted(oldest) => {
                tracing::warn!(
                    role = role_name(role),
                    from,
                    oldest,
                    "etcd compacted the watch's history; watchers list again"
                );
                if tx.send((role, NodeEvent::Lagged)).is_err() {
                    return;
                }
                from = oldest;
            }
        }
        // A pause before every attempt, also the first: a watch that etcd cancels at once must
        // not turn into a busy loop.
        let mut pause = Duration::from_millis(100);
        body = loop {
            tokio::time::sleep(pause).await;
            if tx.receiver_count() == 0 {
                return;
            }
            match etcd.open_watch(role, from).await {
                Ok(b) => break b,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch: cannot resume yet");
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        };
    }
}

/// Passes one stream's events on; `from` follows the revision after the last event seen.
async fn read_watch(
    etcd: &EtcdDiscovery,
    role: NodeRole,
    mut body: hyper::body::Incoming,
    from: &mut i64,
    tx: &broadcast::Sender<(NodeRole, NodeEvent)>,
) -> StreamEnd {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = match body.frame().await {
            Some(Ok(f)) => f,
            _ => return StreamEnd::Broken,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
        let mut used = 0;
        while let Some(Ok(msg)) = stream.next() {
            used = stream.byte_offset();
            let result = &msg["result"];
            if msg.get("error").is_some() {
                return StreamEnd::Broken;
            }
            if result["canceled"].as_bool() == Some(true) {
                let compacted = revision(&result["compact_revision"]);
                return match compacted {
                    Some(oldest) if oldest > 0 => StreamEnd::Compacted(oldest),
                    _ => StreamEnd::Broken,
                };
            }
            for ev in result["events"].as_array().into_iter().flatten() {
                let kv = &ev["kv"];
                if let Some(rev) = revision(&kv["mod_revision"]) {
                    *from = (*from).max(rev + 1);
                }
                let event = if ev["type"].as_str() == Some("DELETE") {
                    etcd.key_id(role, kv).map(NodeEvent::Down)
                } else {
                    etcd.parse_kv(role, kv).map(NodeEvent::Up)
                };
                if let Some(event) = event
                    && tx.send((role, event)).is_err()
                {
                    return StreamEnd::Unwatched;
                }
            }
        }
        buf.drain(..used);
    }
}

/// An int64 of etcd's JSON API (written as a string).
fn revision(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}
