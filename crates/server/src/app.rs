//! The composition root: the only place that knows which adapter each port uses.
//!
//! [`start`] wires the standalone mode (in-memory routes, presence, limits and moderation;
//! SQLite or in-memory store; the in-memory bus, or Kafka with `[bus] url`), starts the room
//! workers, the gateway's background duties and the
//! HTTP server, and returns a [`Running`] handle whose [`Running::shutdown`] stops everything in
//! order: stop accepting, stop taking messages and deliver what is in flight, close every
//! connection with "going away", flush the store and mark it clean.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use roomcast_backends::kafka::KafkaBus;
use roomcast_backends::mysql::{MysqlOptions, MysqlOutbox, MysqlStore};
use roomcast_backends::redis::{RedisAckStore, RedisConn, RedisModeration, RedisRateLimiter};
use roomcast_backends::sqlite::{SqliteOptions, SqliteStore};
use roomcast_backends::sqlite_acks::SqliteAckStore;
use roomcast_backends::sqlite_outbox::SqliteOutbox;
use roomcast_core::gateway::limits::Bucket;
use roomcast_core::gateway::{Gateway, GatewayDeps, HandlerTable, LocalControl, LocalDelivery};
use roomcast_core::history::History;
use roomcast_core::ids::NodeId;
use roomcast_core::ingest::IngestService;
use roomcast_core::ingest::filter::WordFilter;
use roomcast_core::memory::{
    MemoryAckStore, MemoryBus, MemoryModeration, MemoryPresence, MemoryRateLimiter, MemoryRoutes,
    MemoryStore,
};
use roomcast_core::metrics::Metrics;
use roomcast_core::outbox::{OutboxRelay, OutboxStore, RelayConfig};
use roomcast_core::ports::{AckStore, Bus, BusConsumer, MessageStore, Moderation, RateLimiter};
use roomcast_core::worker::RoomWorker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BusUrl, Config, StoreUrl};
use crate::http::{self, HttpState};
use crate::{keys, secret};

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    /// Pending critical messages (for tests and tooling).
    pub acks: Arc<dyn AckStore>,
    stop_http: watch::Sender<bool>,
    stop_background: watch::Sender<bool>,
    stop_relay: watch::Sender<bool>,
    relay_task: Option<JoinHandle<()>>,
    http_task: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    /// The in-memory bus, closed at shutdown (its workers drain it first).
    memory_bus: Option<Arc<MemoryBus>>,
    /// Stops workers whose bus never closes (Kafka).
    stop_workers: watch::Sender<bool>,
    store: Arc<dyn MessageStore>,
    grace: Duration,
    drain: Duration,
    shutting_down: Arc<AtomicBool>,
}

pub(crate) async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Starts the standalone server.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_handlers(config, HandlerTable::standard()).await
}

/// Starts the standalone server with a handler table of the caller's (tests add handlers).
pub async fn start_with_handlers(
    config: Config,
    handlers: HandlerTable,
) -> anyhow::Result<Running> {
    config.validate()?;
    let metrics = Arc::new(Metrics::default());
    let auth = Arc::new(keys::token_auth(&config.auth, &config.data_dir)?);
    tracing::info!(keys = %auth.describe(), "client tokens verified with");
    if config.dev.endpoints_on(config.listen) && !auth.can_sign() {
        tracing::warn!("the dev endpoints are on, but /dev/token cannot sign with public keys");
    }

    let store: Arc<dyn MessageStore> = match config.store_url()? {
        StoreUrl::Memory => Arc::new(MemoryStore::new(config.history.max_count)),
        StoreUrl::Sqlite(path) => {
            let retention = (config.store.retention_days > 0)
                .then(|| Duration::from_secs(config.store.retention_days as u64 * 86_400));
            let opts = SqliteOptions {
                retention,
                metrics: metrics.clone(),
                ..SqliteOptions::default()
            };
            Arc::new(
                SqliteStore::open(&path, opts)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        }
        StoreUrl::Mysql(url) => Arc::new(
            MysqlStore::open(
                &url,
                MysqlOptions {
                    node: config.node_id().to_owned(),
                    metrics: metrics.clone(),
                    ..MysqlOptions::default()
                },
            )
            .await
            .context("store.url")?,
        ),
    };
    if !store.previous_shutdown_clean() {
        tracing::warn!("the previous run did not shut down cleanly; rooms start new epochs");
    }
    // With `[redis] url`, limits, bans and pending acks live in Redis, shared by every node
    // that points there (and surviving restarts); otherwise in this process (acks in SQLite).
    let redis = match &config.redis.url {
        Some(url) => Some(
            RedisConn::connect(url, &config.redis.key_prefix)
                .await
                .context("redis.url")?,
        ),
        None => None,
    };
    let acks: Arc<dyn AckStore> = match (&redis, config.store_url()?) {
        (Some(r), _) => Arc::new(RedisAckStore::new(r.clone())),
        (None, StoreUrl::Memory) => Arc::new(MemoryAckStore::default()),
        (None, StoreUrl::Sqlite(path)) => Arc::new(
            SqliteAckStore::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        (None, StoreUrl::Mysql(_)) => unreachable!("store_url refuses mysql:// without redis.url"),
    };
    metrics
        .acks_pending
        .set(acks.count().await.unwrap_or_default() as i64);
    let history = Arc::new(History::new(config.history.clone(), store.clone()));

    let filter = match &config.ingest.words_file {
        Some(path) => WordFilter::from_file(path)?,
        None => WordFilter::empty(),
    };
    let (bus, consumers, memory_bus): (Arc<dyn Bus>, Vec<Box<dyn BusConsumer>>, _) =
        match config.bus_url()? {
            BusUrl::Memory => {
                let (bus, consumers) =
                    MemoryBus::new(config.worker.partitions, config.worker.partition_capacity);
                let bus = Arc::new(bus);
                let consumers = consumers
                    .into_iter()
                    .map(|c| Box::new(c) as Box<dyn BusConsumer>)
                    .collect();
                (bus.clone(), consumers, Some(bus))
            }
            BusUrl::Kafka(opts) => {
                let bus = KafkaBus::connect(opts, metrics.clone())
                    .await
                    .context("bus.url")?;
                // One group member per worker task; members beyond the partition count
                // would hold nothing.
                let tasks = config.worker.partitions.min(bus.partitions() as usize);
                let consumers = (0..tasks)
                    .map(|_| bus.consumer().map(|c| Box::new(c) as Box<dyn BusConsumer>))
                    .collect::<Result<Vec<_>, _>>()
                    .context("bus.url")?;
                (Arc::new(bus), consumers, None)
            }
        };
    let routes = Arc::new(MemoryRoutes::default());
    let presence = Arc::new(MemoryPresence::default());
    let memory_limiter = redis
        .is_none()
        .then(|| Arc::new(MemoryRateLimiter::default()));
    let limiter: Arc<dyn RateLimiter> = match (&redis, &memory_limiter) {
        (Some(r), _) => Arc::new(RedisRateLimiter::new(r.clone())),
        (None, Some(m)) => m.clone(),
        (None, None) => unreachable!("a memory limiter exists without redis"),
    };
    let moderation: Arc<dyn Moderation> = match &redis {
        Some(r) => Arc::new(RedisModeration::new(r.clone())),
        None => Arc::new(MemoryModeration::default()),
    };
    let ingest = Arc::new(IngestService::new(
        config.ingest.clone(),
        bus.clone(),
        limiter,
        moderation.clone(),
        filter,
        metrics.clone(),
    ));

    let api_ingest = ingest.clone();
    // The outbox lives beside the messages (SQLite, MySQL); with memory:// there is none.
    let outbox_store: Option<Arc<dyn OutboxStore>> = match config.store_url()? {
        StoreUrl::Memory => None,
        StoreUrl::Sqlite(path) => {
            Some(Arc::new(SqliteOutbox::open(&path).with_context(|| {
                format!("cannot open {}", path.display())
            })?))
        }
        StoreUrl::Mysql(url) => Some(Arc::new(
            MysqlOutbox::open(&url).await.context("store.url")?,
        )),
    };
    let outbox = outbox_store.map(|store| {
        let ids = ingest.clone();
        Arc::new(OutboxRelay::new(
            RelayConfig {
                holder: format!("{}-{}", config.node_id(), std::process::id()),
                ..RelayConfig::default()
            },
            store,
            ingest.clone(),
            move || ids.next_id(),
        ))
    });
    let node = NodeId::new(config.node_id());
    let gateway = Gateway::new(
        config.gateway.clone(),
        GatewayDeps {
            node,
            auth,
            ingest,
            history: history.clone(),
            routes: routes.clone(),
            presence: presence.clone(),
            moderation,
            acks: acks.clone(),
            counts: Arc::new(roomcast_core::memory::MemoryRoomCounts::default()),
            metrics: metrics.clone(),
        },
        handlers,
    );
    // The node's routes are visible only under its lease: take it before the first join.
    gateway.renew_routes().await;
    let delivery = Arc::new(LocalDelivery::new(gateway.clone()));
    let (stop_workers, stop_workers_rx) = watch::channel(false);
    let workers = consumers
        .into_iter()
        .enumerate()
        .map(|(i, consumer)| {
            let worker = RoomWorker::new(
                config.worker.clone(),
                history.clone(),
                routes.clone(),
                delivery.clone(),
                metrics.clone(),
            )
            // The gateway is in this process: the window follows its passes over big rooms.
            .with_local_fanout(metrics.clone())
            // Its owner name in the store's partition claims.
            .with_node(NodeId::new(&format!("{}-w{i}", config.node_id())));
            // The in-memory bus stops its workers by closing (they drain it first, so no
            // accepted message is lost); a Kafka consumer never closes and gets a stop signal
            // (what it did not take stays in the topic for the group's next run).
            let stop = stop_workers_rx.clone();
            let closes = memory_bus.is_some();
            tokio::spawn(async move {
                worker
                    .run(consumer, async move {
                        if closes {
                            std::future::pending::<()>().await
                        } else {
                            wait_true(stop).await
                        }
                    })
                    .await
            })
        })
        .collect();

    let (stop_background, stop_bg_rx) = watch::channel(false);
    let (stop_relay, stop_relay_rx) = watch::channel(false);
    let relay_task = outbox
        .clone()
        .map(|relay| tokio::spawn(async move { relay.run(wait_true(stop_relay_rx)).await }));
    tokio::spawn(
        gateway
            .clone()
            .run_background(wait_true(stop_bg_rx.clone())),
    );
    {
        // Housekeeping of the in-memory adapters.
        let (routes, presence, limiter, history, metrics) = (
            routes.clone(),
            presence.clone(),
            memory_limiter.clone(),
            history.clone(),
            metrics.clone(),
        );
        let max_idle = Duration::from_secs_f64(
            [config.ingest.user_limit, config.ingest.room_limit]
                .iter()
                .map(|l| {
                    if l.rate > 0.0 {
                        l.burst.max(1.0) / l.rate
                    } else {
                        0.0
                    }
                })
                .fold(1.0, f64::max),
        );
        let mut stop = stop_bg_rx;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = stop.wait_for(|v| *v) => return,
                    _ = tick.tick() => {
                        routes.sweep();
                        presence.sweep();
                        if let Some(limiter) = &limiter {
                            limiter.sweep(max_idle);
                        }
                        history.evict_idle();
                        metrics.history_rooms.set(history.rooms_in_memory() as i64);
                    }
                }
            }
        });
    }

    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    let ready = {
        let shutting_down = shutting_down.clone();
        let store = store.clone();
        Arc::new(move || {
            if shutting_down.load(Ordering::Relaxed) {
                Err("shutting down".to_owned())
            } else if let Some(why) = store.write_error() {
                // Messages still flow (and wait in the store's queue), but nothing new is
                // durable: the load balancer should send new clients elsewhere.
                Err(format!("message store cannot write: {why}"))
            } else {
                Ok(())
            }
        })
    };
    let app = gateway_router(
        &config,
        gateway.clone(),
        ready,
        crate::api::ApiState {
            gateway: gateway.clone(),
            control: Arc::new(LocalControl::new(gateway.clone())),
            max_text_chars: config.ingest.max_text_chars,
            ids: api_ingest.ids(),
            ingest: api_ingest,
            keys: api_keys(&config)?,
            outbox,
        },
    );
    let (stop_http, stop_http_rx) = watch::channel(false);
    let http_task = tokio::spawn(http::serve(
        listener,
        app,
        serve_limits(&config, &metrics),
        wait_true(stop_http_rx),
    ));

    Ok(Running {
        addr,
        gateway,
        metrics,
        acks,
        stop_http,
        stop_background,
        stop_relay,
        relay_task,
        http_task,
        workers,
        memory_bus,
        stop_workers,
        store,
        grace: Duration::from_millis(config.shutdown_grace_ms),
        drain: Duration::from_millis(config.shutdown_drain_ms),
        shutting_down,
    })
}

impl Running {
    /// Stops everything in order (see the module docs).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutting_down.store(true, Ordering::Relaxed);
        if !self.drain.is_zero() {
            // Not ready any more, still serving: the load balancer moves new clients elsewhere.
            tokio::time::sleep(self.drain).await;
        }
        let _ = self.stop_http.send(true);
        // The relay first (it publishes into the bus; unpublished rows wait for the next run).
        let _ = self.stop_relay.send(true);
        if let Some(t) = self.relay_task {
            let _ = t.await;
        }
        // No new messages; workers deliver what they hold, commit, then end.
        match &self.memory_bus {
            Some(bus) => bus.close(),
            None => {
                let _ = self.stop_workers.send(true);
            }
        }
        for w in self.workers {
            let _ = w.await;
        }
        self.gateway.shutdown(self.grace).await;
        // Nothing more is delivered here: the node leaves every room's route in one call.
        self.gateway.drop_routes().await;
        let _ = self.stop_background.send(true);
        let _ = self.http_task.await;
        self.store
            .close()
            .await
            .context("cannot flush the message store")?;
        Ok(())
    }
}

/// The server API's keys: the configured ones, else one generated once into the data directory.
pub(crate) fn api_keys(config: &Config) -> anyhow::Result<Vec<String>> {
    if config.api.keys.is_empty() {
        let key = secret::load_or_create_file(&config.data_dir, secret::API_KEY_FILE)?;
        Ok(vec![String::from_utf8_lossy(&key).into_owned()])
    } else {
        Ok(config.api.keys.clone())
    }
}

/// A gateway's HTTP routes (WebSocket, demo page, dev endpoints, health, metrics, the API).
pub(crate) fn gateway_router(
    config: &Config,
    gateway: Arc<Gateway>,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    api: crate::api::ApiState,
) -> axum::Router {
    http::router(
        Arc::new(HttpState {
            gateway,
            dev_token_ttl_s: config.dev.token_ttl_s,
            ready,
            dev_limit: config.dev.rate_limit,
            dev_bucket: parking_lot::Mutex::new(Bucket::new(&config.dev.rate_limit, 0)),
            started: std::time::Instant::now(),
            allowed_origins: config.http.allowed_origins.clone(),
        }),
        http::Routes {
            dev_endpoints: config.dev.endpoints_on(config.listen),
            echo: config.dev.echo,
        },
        Arc::new(api),
    )
}

/// The listener's limits (`[http]`).
pub(crate) fn serve_limits(config: &Config, metrics: &Arc<Metrics>) -> http::ServeLimits {
    http::ServeLimits {
        conns: Arc::new(http::ConnLimits::new(
            config.http.connection_cap(),
            config.http.max_connections_per_ip,
            metrics.clone(),
        )),
        header_timeout: Duration::from_millis(config.http.header_timeout_ms),
        request_timeout: Duration::from_millis(config.http.request_timeout_ms),
        metrics: metrics.clone(),
    }
}

/// Pending connections the kernel holds for `accept`: a mass reconnect after a restart brings
/// thousands at once (tokio's default backlog is 128).
const LISTEN_BACKLOG: i32 = 4096;

pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Runs until `stop` resolves, then shuts down.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
    announce: bool,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let store = config.store_url()?;
    let dev = config.dev.endpoints_on(config.listen);
    let bus = match config.bus_url()? {
        BusUrl::Memory => "in memory".to_owned(),
        BusUrl::Kafka(o) => format!("Kafka {}, topic {}", o.brokers, o.topic),
    };
    let running = start(config).await?;
    if announce {
        print_banner(running.addr, &data_dir, &store, &bus, dev);
    }
    tracing::info!(addr = %running.addr, "roomcast standalone started");
    stop.await;
    tracing::info!("shutting down");
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(addr: SocketAddr, data_dir: &Path, store: &StoreUrl, bus: &str, dev: bool) {
    let store = match store {
        StoreUrl::Memory => "in memory (memory://)".to_owned(),
        StoreUrl::Sqlite(p) => format!("SQLite {}", p.display()),
        // Never the password.
        StoreUrl::Mysql(url) => format!(
            "MySQL protocol, {}",
            url.rsplit_once('@').map_or("(url)", |(_, at)| at)
        ),
    };
    // Written in one go and errors ignored: a closed stdout (a supervisor that stopped
    // reading) must not take the server down.
    let text = format!(
        "roomcast {} (standalone)\n  listening on http://{addr}  (WebSocket: ws://{addr}/ws)\n  demo page: http://{addr}/  (dev endpoints {})\n  messages: {store}\n  bus: {bus}\n  get a token: roomcast token --user alice --data-dir {}\n    (from a checkout: cargo run --release -- token --user alice)\n  stop with Ctrl-C\n",
        env!("CARGO_PKG_VERSION"),
        if dev {
            "on; [dev] endpoints = false turns them off"
        } else {
            "off"
        },
        data_dir.display()
    );
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, text.as_bytes());
    let _ = std::io::Write::flush(&mut out);
}
