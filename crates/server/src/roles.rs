//! The distributed mode's roles, one process each: `roomcast gateway`, `roomcast ingest`,
//! `roomcast worker` — the same domain code as standalone, on the networked adapters:
//!
//! - **gateway**: client connections (WebSocket), the server API, joins' history from the
//!   recent list and the store ([`RemoteHistory`]), chat to ingest nodes over gRPC, routes and
//!   presence in Redis, control commands to the users' gateways ([`RoutedControl`]); serves
//!   `Push` and `Apply` (gRPC) for workers and other gateways.
//! - **ingest**: the ingest pipeline (limits and bans in Redis) into Kafka; serves `Submit`.
//! - **worker**: one member of the Kafka consumer group; batches rooms, stores them (MySQL
//!   protocol), lists them in Redis and pushes them to exactly the room's gateways.
//!
//! Every role registers in etcd under a lease it keeps alive (a node that dies is forgotten
//! within `cluster.lease_ttl_s`), serves `/healthz`, `/readyz` and `/metrics`, and on its stop
//! signal deregisters first, so no one calls it any more, then stops in the standalone order —
//! a gateway drains: its clients get a `kicked` notice `draining` with the other gateways'
//! URLs and close 1012, and reconnect there (recovering with `since`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;
use roomcast_backends::etcd::EtcdDiscovery;
use roomcast_backends::kafka::KafkaBus;
use roomcast_backends::mysql::{MysqlOptions, MysqlOutbox, MysqlStore};
use roomcast_backends::redis::{
    RedisAckStore, RedisConn, RedisModeration, RedisPresence, RedisRateLimiter, RedisRecent,
    RedisRoomCounts, RedisRouteTable,
};
use roomcast_core::gateway::{Gateway, GatewayDeps, HandlerTable, RoutedControl};
use roomcast_core::history::History;
use roomcast_core::ids::NodeId;
use roomcast_core::ingest::filter::WordFilter;
use roomcast_core::ingest::ids::IdGenerator;
use roomcast_core::ingest::{Ingest, IngestService};
use roomcast_core::metrics::Metrics;
use roomcast_core::outbox::{OutboxRelay, OutboxStore, RelayConfig};
use roomcast_core::ports::{Discovery, MessageStore, NodeInfo, NodeLease, NodeRole};
use roomcast_core::remote_history::RemoteHistory;
use roomcast_core::worker::RoomWorker;
use roomcast_rpc::{
    ChannelSettings, DeliverySettings, GatewayServer, GrpcDelivery, GrpcNodeCommands, IngestClient,
    IngestServer, NodeDirectory,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{api_keys, gateway_router, listen, serve_limits, wait_true};
use crate::config::{BusUrl, Config, StoreUrl};
use crate::http;
use crate::keys;

/// A distributed-mode process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Ingest,
    Worker,
}

impl Role {
    fn node_role(self) -> NodeRole {
        match self {
            Role::Gateway => NodeRole::Gateway,
            Role::Ingest => NodeRole::Ingest,
            Role::Worker => NodeRole::Worker,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Ingest => "ingest",
            Role::Worker => "worker",
        }
    }
}

/// What every role needs, checked before anything starts (naming the key at fault).
struct Needs {
    etcd_url: String,
    redis_url: String,
    mysql_url: Option<String>,
    kafka: Option<roomcast_backends::kafka::KafkaOptions>,
}

fn needs(role: Role, config: &Config) -> anyhow::Result<Needs> {
    config.validate()?;
    let what = role.name();
    let Some(etcd_url) = config.cluster.etcd_url.clone() else {
        bail!("roomcast {what} needs cluster.etcd_url (etcd://host:port)");
    };
    let Some(redis_url) = config.redis.url.clone() else {
        bail!("roomcast {what} needs redis.url");
    };
    let mysql_url = match (role, config.store_url()?) {
        (_, StoreUrl::Mysql(url)) => Some(url),
        // Ingest uses the database for the outbox only (none without it).
        (Role::Ingest, _) => None,
        _ => bail!("roomcast {what} needs store.url = mysql://… (the store every node shares)"),
    };
    let kafka = match (role, config.bus_url()?) {
        (Role::Gateway, _) => None,
        (_, BusUrl::Kafka(o)) => Some(o),
        _ => bail!("roomcast {what} needs bus.url = kafka://…"),
    };
    if config.node_id.is_none() {
        bail!("roomcast {what} needs node_id (unique in the cluster)");
    }
    Ok(Needs {
        etcd_url,
        redis_url,
        mysql_url,
        kafka,
    })
}

/// A started role.
pub struct RoleRunning {
    pub role: Role,
    /// HTTP: WebSocket and API on a gateway; health and metrics on every role.
    pub addr: SocketAddr,
    /// gRPC (gateway and ingest).
    pub grpc_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// The gateway (gateway role).
    pub gateway: Option<Arc<Gateway>>,
    lease: Arc<dyn NodeLease>,
    stop_lease: watch::Sender<bool>,
    /// The node number in message ids, claimed in etcd (gateway and ingest).
    number: Option<NumberClaim>,
    discovery: Arc<dyn Discovery>,
    stop_http: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    stop_grpc: watch::Sender<bool>,
    grpc_task: Option<JoinHandle<()>>,
    stop_worker: watch::Sender<bool>,
    worker_task: Option<JoinHandle<()>>,
    stop_relay: watch::Sender<bool>,
    relay_task: Option<JoinHandle<()>>,
    stop_background: watch::Sender<bool>,
    store: Option<Arc<dyn MessageStore>>,
    shutting_down: Arc<AtomicBool>,
    grace: Duration,
    drain: Duration,
}

/// Registers the node and keeps its lease alive until `stop`; registers again if the lease was
/// lost (etcd down longer than the TTL).
async fn register(
    discovery: Arc<dyn Discovery>,
    info: NodeInfo,
    ttl: Duration,
) -> anyhow::Result<(Arc<dyn NodeLease>, watch::Sender<bool>)> {
    // A node restarted right after a crash finds its previous registration still alive: it
    // waits for that lease to run out (within `ttl`). A second live process with the same
    // node id keeps its lease alive, so this one gives up after twice that.
    let give_up = tokio::time::Instant::now() + ttl * 2 + Duration::from_secs(1);
    let mut said = false;
    let lease: Arc<dyn NodeLease> = loop {
        match discovery.register(info.clone(), ttl).await {
            Ok(lease) => break Arc::from(lease),
            Err(roomcast_core::ports::DiscoveryError::Taken(_))
                if tokio::time::Instant::now() < give_up =>
            {
                if !said {
                    tracing::warn!(node = %info.id, ?ttl, "this node's previous registration is still alive (a crash?); waiting for its lease to expire");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot register {} in etcd (is another process running with this node_id?)",
                    info.id
                )));
            }
        }
    };
    let (stop, mut stop_rx) = watch::channel(false);
    let mut current = lease.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop_rx.wait_for(|v| *v) => return,
                _ = tokio::time::sleep(current.keep_alive_every()) => {}
            }
            match current.keep_alive().await {
                Ok(()) => {}
                Err(roomcast_core::ports::DiscoveryError::Expired(_)) => {
                    tracing::warn!(node = %info.id, "registration expired; registering again");
                    match discovery.register(info.clone(), ttl).await {
                        Ok(l) => current = Arc::from(l),
                        Err(e) => tracing::error!(error = %e, "cannot register again"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "keep-alive failed; retrying"),
            }
        }
    });
    Ok((lease, stop))
}

/// The scope of node numbers in etcd: ingest and gateway nodes issue ids of one space.
const ID_NUMBERS: &str = "ids";
/// Node numbers in message ids (10 bits).
const ID_NUMBER_COUNT: u16 = 1024;

/// A node number claimed in etcd and the task keeping its lease alive.
struct NumberClaim {
    number: u16,
    lease: Arc<Mutex<Arc<dyn NodeLease>>>,
    stop: watch::Sender<bool>,
}

/// Claims this node's number for message ids (`ingest.node_number`, or the lowest free one).
/// A set number held by another live node is an error: two nodes must never issue one id.
async fn claim_number(
    discovery: &Arc<dyn Discovery>,
    node: &NodeId,
    wanted: Option<u16>,
    ttl: Duration,
) -> anyhow::Result<(u16, Arc<dyn NodeLease>)> {
    match discovery
        .claim_number(ID_NUMBERS, node, wanted, ID_NUMBER_COUNT, ttl)
        .await
    {
        Ok((n, lease)) => Ok((n, Arc::from(lease))),
        Err(roomcast_core::ports::DiscoveryError::Taken(_)) => match wanted {
            Some(n) => bail!(
                "ingest.node_number = {n} is held by another live node: message ids would collide; give each node its own number or leave it unset"
            ),
            None => bail!("every node number (0-1023) is held by a live node"),
        },
        Err(e) => Err(anyhow::Error::new(e).context("cannot claim a node number in etcd")),
    }
}

/// Keeps the claim alive until `stop`. When it expired anyway (etcd was out of reach longer
/// than the lease) the node claims its number again, or, if another node took it meanwhile,
/// a new one, which `ids` uses from then on (logged: ids made while the claim was lost may
/// collide with the other node's).
fn keep_number(
    discovery: Arc<dyn Discovery>,
    node: NodeId,
    number: u16,
    first: Arc<dyn NodeLease>,
    ttl: Duration,
    ids: Vec<Arc<IdGenerator>>,
) -> NumberClaim {
    let (stop, mut stop_rx) = watch::channel(false);
    let lease = Arc::new(Mutex::new(first));
    let current = lease.clone();
    tokio::spawn(async move {
        let mut number = number;
        loop {
            let l = current.lock().clone();
            tokio::select! {
                _ = stop_rx.wait_for(|v| *v) => return,
                _ = tokio::time::sleep(l.keep_alive_every()) => {}
            }
            match l.keep_alive().await {
                Ok(()) => {}
                Err(roomcast_core::ports::DiscoveryError::Expired(_)) => {
                    let again = match claim_number(&discovery, &node, Some(number), ttl).await {
                        Ok(c) => Ok(c),
                        Err(_) => claim_number(&discovery, &node, None, ttl).await,
                    };
                    match again {
                        Ok((n, l)) => {
                            if n != number {
                                tracing::error!(node = %node, old = number, new = n, "the node number's claim expired and another node took it; issuing ids with a new number");
                                for g in &ids {
                                    g.set_node(n);
                                }
                                number = n;
                            } else {
                                tracing::warn!(node = %node, number, "the node number's claim had expired; claimed again");
                            }
                            *current.lock() = l;
                        }
                        Err(e) => {
                            tracing::error!(node = %node, error = %e, "cannot claim a node number again; retrying")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "node number keep-alive failed; retrying"),
            }
        }
    });
    NumberClaim {
        number,
        lease,
        stop,
    }
}

async fn grpc_listener(config: &Config) -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let l = tokio::net::TcpListener::bind(config.cluster.grpc_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on cluster.grpc_listen {}",
                config.cluster.grpc_listen
            )
        })?;
    let bound = l.local_addr()?;
    let advertise = config
        .cluster
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    Ok((l, advertise))
}

/// Serves gRPC on `listener` until `stop`.
fn serve_grpc(
    routes: tonic::service::Routes,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                wait_true(stop),
            )
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}

/// Starts a role; [`RoleRunning::shutdown`] stops it.
pub async fn start(role: Role, mut config: Config) -> anyhow::Result<RoleRunning> {
    let needs = needs(role, &config)?;
    let metrics = Arc::new(Metrics::default());
    let node = NodeId::new(config.node_id());
    let ttl = Duration::from_secs(config.cluster.lease_ttl_s.max(1));
    let rpc_timeout = Duration::from_millis(config.cluster.rpc_timeout_ms.max(1));
    let discovery: Arc<dyn Discovery> = Arc::new(
        EtcdDiscovery::connect(&needs.etcd_url, &config.cluster.etcd_prefix)
            .await
            .context("cluster.etcd_url")?,
    );
    // Nodes that issue message ids claim their number first (never two nodes on one).
    let claimed = match role {
        Role::Gateway | Role::Ingest => {
            let (n, lease) =
                claim_number(&discovery, &node, config.ingest.node_number, ttl).await?;
            tracing::info!(node = %node, number = n, "node number for message ids claimed");
            config.ingest.node_number = Some(n);
            Some((n, lease))
        }
        Role::Worker => None,
    };
    let mut id_generators: Vec<Arc<IdGenerator>> = Vec::new();
    let redis = RedisConn::connect(&needs.redis_url, &config.redis.key_prefix)
        .await
        .context("redis.url")?;
    let store: Option<Arc<dyn MessageStore>> = match &needs.mysql_url {
        Some(url) if role != Role::Ingest => Some(Arc::new(
            MysqlStore::open(
                url,
                MysqlOptions {
                    node: config.node_id().to_owned(),
                    metrics: metrics.clone(),
                    ..MysqlOptions::default()
                },
            )
            .await
            .context("store.url")?,
        )),
        _ => None,
    };
    // The transactional outbox beside the messages: gateways' APIs write rows, the relay on
    // the ingest nodes (one at a time, under the outbox lease) publishes them.
    let outbox_store: Option<Arc<dyn OutboxStore>> = match &needs.mysql_url {
        Some(url) if role != Role::Worker => {
            Some(Arc::new(MysqlOutbox::open(url).await.context("store.url")?))
        }
        _ => None,
    };
    let relay_config = RelayConfig {
        holder: format!("{}-{}", config.node_id(), std::process::id()),
        ..RelayConfig::default()
    };
    let (stop_relay, stop_relay_rx) = watch::channel(false);
    let mut relay_task = None;
    let shutting_down = Arc::new(AtomicBool::new(false));
    let ready = {
        let (shutting_down, store) = (shutting_down.clone(), store.clone());
        Arc::new(move || {
            if shutting_down.load(Ordering::Relaxed) {
                Err("shutting down".to_owned())
            } else if let Some(why) = store.as_ref().and_then(|s| s.write_error()) {
                Err(format!("message store cannot write: {why}"))
            } else {
                Ok(())
            }
        })
    };
    let (stop_background, stop_bg_rx) = watch::channel(false);
    let (stop_grpc, stop_grpc_rx) = watch::channel(false);
    let (stop_worker, stop_worker_rx) = watch::channel(false);
    let (stop_http, stop_http_rx) = watch::channel(false);
    let mut grpc_task = None;
    let mut grpc_addr = None;
    let mut worker_task = None;
    let mut gateway_out = None;
    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (app, advertise) = match role {
        Role::Gateway => {
            let auth = Arc::new(keys::token_auth(&config.auth, &config.data_dir)?);
            let store = store.clone().expect("a gateway has a store");
            let ingest_nodes = NodeDirectory::new(ChannelSettings::default());
            ingest_nodes
                .follow(discovery.clone(), NodeRole::Ingest)
                .await;
            let gateway_nodes = NodeDirectory::new(ChannelSettings::default());
            gateway_nodes
                .follow(discovery.clone(), NodeRole::Gateway)
                .await;
            let ingest: Arc<dyn Ingest> = Arc::new(IngestClient::new(ingest_nodes, rpc_timeout));
            let presence = Arc::new(RedisPresence::new(redis.clone()));
            let acks = Arc::new(RedisAckStore::new(redis.clone()));
            // Routes expire with the node: a gateway that died is out of every room's route
            // when etcd forgets it, so workers stop pushing to it then, not later.
            let mut gateway_config = config.gateway.clone();
            gateway_config.route_lease_s = gateway_config
                .route_lease_s
                .min(config.cluster.lease_ttl_s.clamp(1, u32::MAX as u64) as u32);
            let gateway = Gateway::new(
                gateway_config,
                GatewayDeps {
                    node: node.clone(),
                    auth,
                    ingest: ingest.clone(),
                    history: Arc::new(
                        RemoteHistory::new(
                            config.history.clone(),
                            Arc::new(RedisRecent::new(redis.clone())),
                            store,
                        )
                        .with_metrics(metrics.clone()),
                    ),
                    routes: Arc::new(RedisRouteTable::new(redis.clone())),
                    presence: presence.clone(),
                    moderation: Arc::new(RedisModeration::new(redis.clone())),
                    acks: acks.clone(),
                    counts: Arc::new(RedisRoomCounts::new(redis.clone())),
                    metrics: metrics.clone(),
                },
                HandlerTable::standard(),
            );
            gateway.renew_routes().await;
            tokio::spawn(
                gateway
                    .clone()
                    .run_background(wait_true(stop_bg_rx.clone())),
            );
            let control = Arc::new(RoutedControl::new(
                presence,
                discovery.clone(),
                acks,
                Arc::new(GrpcNodeCommands::new(gateway_nodes, rpc_timeout)),
            ));
            let (l, advertise) = grpc_listener(&config).await?;
            grpc_addr = Some(l.local_addr()?);
            let service = GatewayServer::service(gateway.clone());
            grpc_task = Some(serve_grpc(
                tonic::service::Routes::new(service),
                l,
                stop_grpc_rx,
            ));
            // Critical messages' ids: `ingest.node_number` must be unique per node.
            let ids = Arc::new(IdGenerator::new(config.ingest.node_number.unwrap_or(0)));
            id_generators.push(ids.clone());
            let app = gateway_router(
                &config,
                gateway.clone(),
                ready.clone(),
                crate::api::ApiState {
                    gateway: gateway.clone(),
                    control,
                    ingest: ingest.clone(),
                    max_text_chars: config.ingest.max_text_chars,
                    ids: ids.clone(),
                    keys: api_keys(&config)?,
                    // Rows are written here; the relay that publishes them runs on the ingest
                    // nodes (this one is never run: its `wake` reaches no one, and the ingest
                    // relay polls every `idle_poll`).
                    outbox: outbox_store.clone().map(|store| {
                        Arc::new(OutboxRelay::new(
                            relay_config.clone(),
                            store,
                            ingest.clone(),
                            move || ids.next(),
                        ))
                    }),
                },
            );
            gateway_out = Some(gateway);
            (app, advertise)
        }
        Role::Ingest => {
            let opts = needs.kafka.clone().expect("ingest has a bus");
            let bus = Arc::new(
                KafkaBus::connect(opts, metrics.clone())
                    .await
                    .context("bus.url")?,
            );
            let filter = match &config.ingest.words_file {
                Some(path) => WordFilter::from_file(path)?,
                None => WordFilter::empty(),
            };
            let ingest = Arc::new(IngestService::new(
                config.ingest.clone(),
                bus,
                Arc::new(RedisRateLimiter::new(redis.clone())),
                Arc::new(RedisModeration::new(redis.clone())),
                filter,
                metrics.clone(),
            ));
            id_generators.push(ingest.ids());
            if let Some(store) = outbox_store.clone() {
                let ids = ingest.ids();
                let relay =
                    OutboxRelay::new(relay_config.clone(), store, ingest.clone(), move || {
                        ids.next()
                    });
                relay_task = Some(tokio::spawn(async move {
                    relay.run(wait_true(stop_relay_rx)).await
                }));
            }
            let (l, advertise) = grpc_listener(&config).await?;
            grpc_addr = Some(l.local_addr()?);
            let service = IngestServer::service(ingest);
            grpc_task = Some(serve_grpc(
                tonic::service::Routes::new(service),
                l,
                stop_grpc_rx,
            ));
            (
                http::health_router(metrics.clone(), ready.clone()),
                advertise,
            )
        }
        Role::Worker => {
            let opts = needs.kafka.clone().expect("a worker has a bus");
            let store = store.clone().expect("a worker has a store");
            let bus = KafkaBus::connect(opts, metrics.clone())
                .await
                .context("bus.url")?;
            let consumer = bus.consumer().context("bus.url")?;
            let gateways = NodeDirectory::new(ChannelSettings::default());
            gateways.follow(discovery.clone(), NodeRole::Gateway).await;
            let delivery = Arc::new(
                GrpcDelivery::new(
                    gateways,
                    DeliverySettings {
                        queue: config.cluster.push_queue.max(1),
                        call_timeout: Duration::from_millis(config.cluster.push_timeout_ms.max(1)),
                        ..DeliverySettings::default()
                    },
                )
                .with_metrics(metrics.clone()),
            );
            let history =
                Arc::new(History::new(config.history.clone(), store).trusting_partition_claims());
            let worker = RoomWorker::new(
                config.worker.clone(),
                history,
                Arc::new(RedisRouteTable::new(redis.clone())),
                delivery,
                metrics.clone(),
            )
            .with_node(node.clone())
            .with_recent(
                Arc::new(RedisRecent::new(redis.clone())),
                config.history.max_count,
                Duration::from_secs(config.history.idle_evict_s.max(60)),
            );
            worker_task = Some(tokio::spawn(async move {
                worker
                    .run(Box::new(consumer), wait_true(stop_worker_rx))
                    .await
            }));
            (
                http::health_router(metrics.clone(), ready.clone()),
                addr.to_string(),
            )
        }
    };

    let public_url = (role == Role::Gateway).then(|| {
        config
            .cluster
            .public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{addr}/ws"))
    });
    let number = claimed.map(|(n, lease)| {
        keep_number(
            discovery.clone(),
            node.clone(),
            n,
            lease,
            ttl,
            id_generators,
        )
    });
    let (lease, stop_lease) = register(
        discovery.clone(),
        NodeInfo {
            id: node,
            role: role.node_role(),
            addr: advertise,
            public_url,
        },
        ttl,
    )
    .await?;
    let http_task = tokio::spawn(http::serve(
        listener,
        app,
        serve_limits(&config, &metrics),
        wait_true(stop_http_rx),
    ));
    tracing::info!(role = role.name(), %addr, grpc = ?grpc_addr, "roomcast {} started", role.name());
    Ok(RoleRunning {
        role,
        addr,
        grpc_addr,
        metrics,
        gateway: gateway_out,
        lease,
        stop_lease,
        number,
        discovery,
        stop_http,
        http_task,
        stop_grpc,
        grpc_task,
        stop_worker,
        worker_task,
        stop_relay,
        relay_task,
        stop_background,
        store,
        shutting_down,
        grace: Duration::from_millis(config.shutdown_grace_ms),
        drain: Duration::from_millis(config.shutdown_drain_ms),
    })
}

impl RoleRunning {
    /// The node number in this node's message ids (gateway and ingest), claimed in etcd.
    pub fn node_number(&self) -> Option<u16> {
        self.number.as_ref().map(|n| n.number)
    }

    /// Deregisters (no one calls this node any more), then stops in order: a gateway closes its
    /// clients with "going away" and drops its routes; a worker flushes, stores, commits and
    /// releases its partitions; the store is flushed last.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.stop_lease.send(true);
        if let Err(e) = self.lease.revoke().await {
            tracing::warn!(error = %e, "cannot deregister; the lease expires by itself");
        }
        if !self.drain.is_zero() {
            tokio::time::sleep(self.drain).await;
        }
        let _ = self.stop_http.send(true);
        // The relay before the bus goes (unpublished rows wait for the next relay).
        let _ = self.stop_relay.send(true);
        if let Some(t) = self.relay_task {
            let _ = t.await;
        }
        let _ = self.stop_worker.send(true);
        if let Some(t) = self.worker_task {
            let _ = t.await;
        }
        if let Some(g) = &self.gateway {
            // Clients go to the other gateways (this one is deregistered already).
            let others = match self.discovery.list(NodeRole::Gateway).await {
                Ok(nodes) => nodes
                    .into_iter()
                    .filter(|n| &n.id != g.node())
                    .filter_map(|n| n.public_url)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the other gateways; clients reconnect on their own");
                    Vec::new()
                }
            };
            g.drain(self.grace, others).await;
            g.drop_routes().await;
        }
        let _ = self.stop_grpc.send(true);
        if let Some(t) = self.grpc_task {
            let _ = t.await;
        }
        let _ = self.stop_background.send(true);
        let _ = self.http_task.await;
        if let Some(store) = &self.store {
            store
                .close()
                .await
                .context("cannot flush the message store")?;
        }
        if let Some(number) = &self.number {
            // Nothing issues ids any more: the number is free for the next node.
            let _ = number.stop.send(true);
            let lease = number.lease.lock().clone();
            if let Err(e) = lease.revoke().await {
                tracing::warn!(error = %e, number = number.number, "cannot release the node number; its claim expires by itself");
            }
        }
        tracing::info!(role = self.role.name(), "stopped");
        Ok(())
    }
}

impl RoleRunning {
    /// Stops the node the way a crash does, for failure tests: its keep-alives, route renewals
    /// and servers end at once; nothing is deregistered, flushed or dropped — other nodes learn
    /// of it only when its leases expire.
    pub async fn kill(self) {
        let _ = self.stop_lease.send(true);
        if let Some(number) = &self.number {
            let _ = number.stop.send(true);
        }
        let _ = self.stop_background.send(true);
        self.http_task.abort();
        if let Some(t) = &self.grpc_task {
            t.abort();
        }
        if let Some(t) = &self.worker_task {
            t.abort();
        }
        if let Some(t) = &self.relay_task {
            t.abort();
        }
        if let Some(g) = &self.gateway {
            // Its connections die with the process.
            g.shutdown(Duration::ZERO).await;
        }
    }
}

/// Runs a role until `stop` resolves, then shuts it down.
pub async fn run(
    role: Role,
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(role, config).await?;
    println!(
        "roomcast {} {}: http://{}{}",
        role.name(),
        env!("CARGO_PKG_VERSION"),
        running.addr,
        running
            .grpc_addr
            .map(|a| format!("  gRPC {a}"))
            .unwrap_or_default()
    );
    stop.await;
    running.shutdown().await
}
