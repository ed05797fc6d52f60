//! The configuration: one TOML file (optional) → [`Config`], then environment overrides, then
//! command-line flags. Every field has a default, so the standalone server needs no file.
//!
//! Environment overrides: `ROOMCAST_<SECTION>__<KEY>=value` sets `[section] key` (values are
//! parsed as TOML, falling back to a string), `ROOMCAST_<KEY>` a top-level key; for example
//! `ROOMCAST_GATEWAY__HEARTBEAT_S=10` or `ROOMCAST_LISTEN=0.0.0.0:8080`. `ROOMCAST_JWT_SECRET`
//! sets `[auth] jwt_secret`, and `ROOMCAST_LOG` is the log filter (not a config key).
//! Unknown keys are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use roomcast_core::auth::{HS256_MIN_SECRET_BYTES, TokenAlg};
use roomcast_core::config::{
    GatewayConfig, HistoryConfig, IngestConfig, LimitConfig, WorkerConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket address.
    pub listen: SocketAddr,
    /// Where standalone keeps its SQLite database and generated secret.
    pub data_dir: PathBuf,
    /// This node's id in the route table (default: `standalone`).
    pub node_id: Option<String>,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Time given to clients to close, and to the store to flush, at shutdown.
    pub shutdown_grace_ms: u64,
    /// At shutdown, `/readyz` answers 503 for this long before the listener closes, so a load
    /// balancer stops sending new clients first (0: close at once).
    pub shutdown_drain_ms: u64,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub http: HttpConfig,
    pub redis: RedisConfig,
    pub bus: BusConfig,
    pub cluster: ClusterConfig,
    pub dev: DevConfig,
    pub store: StoreConfig,
    pub gateway: GatewayConfig,
    pub ingest: IngestConfig,
    pub worker: WorkerConfig,
    pub history: HistoryConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How client tokens are verified: exactly one key source — an HS256 secret (the default), one
/// RS256/ES256 public key file, or a JWKS file — and optional `aud`/`iss` checks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens, at least 32 bytes. Unset: standalone generates one in
    /// `data_dir/jwt_secret`.
    pub jwt_secret: Option<String>,
    /// `HS256` (default), `RS256` or `ES256`: the algorithm tokens must be signed with;
    /// RS256 and ES256 need `public_key_file`.
    pub algorithm: Option<TokenAlg>,
    /// PEM public key (`BEGIN PUBLIC KEY`) that verifies RS256 or ES256 tokens.
    pub public_key_file: Option<PathBuf>,
    /// JSON Web Key Set; tokens choose the key by `kid`, each key verifies only its own algorithm.
    pub jwks_file: Option<PathBuf>,
    /// When set, a token's `aud` must be (or contain) this value.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal this value.
    pub issuer: Option<String>,
}

impl AuthConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let secret = self.jwt_secret.as_deref().filter(|s| !s.is_empty());
        if self.jwks_file.is_some() {
            if self.algorithm.is_some() || self.public_key_file.is_some() || secret.is_some() {
                bail!(
                    "auth.jwks_file is set: leave auth.algorithm, auth.public_key_file and auth.jwt_secret unset (each key in the set has its own algorithm)"
                );
            }
        } else {
            match (
                self.algorithm.unwrap_or(TokenAlg::HS256),
                &self.public_key_file,
            ) {
                (TokenAlg::HS256, Some(_)) => bail!(
                    "auth.public_key_file needs auth.algorithm = \"RS256\" or \"ES256\" (the key's algorithm)"
                ),
                (alg @ (TokenAlg::RS256 | TokenAlg::ES256), None) => {
                    bail!(
                        "auth.algorithm = \"{alg}\" needs auth.public_key_file (a PEM public key)"
                    )
                }
                (alg @ (TokenAlg::RS256 | TokenAlg::ES256), Some(_)) if secret.is_some() => bail!(
                    "auth.jwt_secret is set but auth.algorithm is \"{alg}\": the secret is only for HS256 (unset ROOMCAST_JWT_SECRET too)"
                ),
                _ => {}
            }
        }
        if let Some(s) = secret
            && s.len() < HS256_MIN_SECRET_BYTES
        {
            bail!(
                "auth.jwt_secret must be at least {HS256_MIN_SECRET_BYTES} bytes (it is {}); generate one with: openssl rand -hex 32",
                s.len()
            );
        }
        for (key, v) in [
            ("auth.audience", &self.audience),
            ("auth.issuer", &self.issuer),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                bail!("{key} must not be empty (leave it unset to skip the check)");
            }
        }
        Ok(())
    }
}

/// The server API (`/api/v1`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer keys accepted by `/api/v1` (several, so a key can be rotated). Empty: standalone
    /// generates one into `<data_dir>/api_key`.
    pub keys: Vec<String>,
}

/// The HTTP listener's own limits (every TCP connection on the port, WebSocket ones included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP connections held at once, HTTP and WebSocket (more are answered 503 and closed at
    /// once). 0: the process's open-file limit less 512 (for the store, logs and accepts).
    pub max_connections: usize,
    /// TCP connections held at once from one IP address (0: no cap). Behind a proxy or load
    /// balancer that does not keep client addresses, every client shares its address: raise
    /// this or set 0 there.
    pub max_connections_per_ip: usize,
    /// A whole HTTP request — headers, body and handler — must be done within this (408).
    pub request_timeout_ms: u64,
    /// The request headers, the WebSocket upgrade's included, must arrive within this, or the
    /// connection is closed (slow handshakes).
    pub header_timeout_ms: u64,
    /// Origins allowed to open WebSocket connections from a browser (`https://example.com`,
    /// compared exactly, ASCII case-insensitively). Empty: any. Requests without an `Origin`
    /// header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 0,
            max_connections_per_ip: 1000,
            request_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            allowed_origins: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// `max_connections`, with 0 resolved from the open-file limit.
    pub fn connection_cap(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let nofile = rlimit_nofile().unwrap_or(1024);
        nofile.saturating_sub(512).max(64)
    }
}

/// The soft limit on open files of this process.
fn rlimit_nofile() -> Option<usize> {
    // /proc is enough on Linux and needs no libc binding.
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Redis for the state nodes share: rate limits, bans and mutes, pending acks of critical
/// messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`. Unset: this process keeps that state itself
    /// (limits, bans and mutes in memory; acks in the SQLite store).
    pub url: Option<String>,
    /// Put in front of every key, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            key_prefix: "roomcast:".into(),
        }
    }
}

/// The distributed mode: how the roles (`roomcast gateway|ingest|worker`) find and call each
/// other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `etcd://host:port`: where nodes register and find each other. Required by every role.
    pub etcd_url: Option<String>,
    /// Every etcd key starts with this.
    pub etcd_prefix: String,
    /// Where a gateway or ingest node serves gRPC for the other roles (port 0: any free port).
    pub grpc_listen: SocketAddr,
    /// The `host:port` other nodes call this node's gRPC at (default: the bound `grpc_listen`).
    pub advertise: Option<String>,
    /// A gateway's WebSocket URL as clients reach it (default `ws://<bound listen>/ws`): handed
    /// to the clients of a draining gateway so they reconnect to another one.
    pub public_url: Option<String>,
    /// A node's registration lives this long without a keep-alive (a dead node is forgotten
    /// within it: no more pushes, its routes invisible).
    pub lease_ttl_s: u64,
    /// Gateway → ingest and API → gateway calls fail after this.
    pub rpc_timeout_ms: u64,
    /// Worker → gateway pushes: a call fails after this (its batches are dropped for that
    /// gateway; clients recover the gap).
    pub push_timeout_ms: u64,
    /// Worker → gateway: batches waiting per gateway before more are dropped for it.
    pub push_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd_url: None,
            etcd_prefix: "/roomcast/".into(),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            public_url: None,
            lease_ttl_s: 10,
            rpc_timeout_ms: 2000,
            push_timeout_ms: 2000,
            push_queue: 8192,
        }
    }
}

/// The bus between ingest and the room workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `memory` (in this process, `worker.partitions` partitions) or
    /// `kafka://host:port[,host:port…]`.
    pub url: String,
    /// Kafka: the topic, created when missing.
    pub topic: String,
    /// Kafka: the room workers' consumer group.
    pub group: String,
    /// Kafka: partitions of the topic when the server creates it (an existing topic keeps its
    /// own count).
    pub partitions: u32,
    /// Kafka: replication factor of the topic when the server creates it.
    pub replication: u16,
    /// Kafka: how long the producer waits to send messages that arrive together in one request.
    pub linger_ms: u64,
    /// Kafka: how long a message may take to be acknowledged by the brokers before its `chat`
    /// fails with `unavailable`; also the bound of an offset commit.
    pub delivery_timeout_ms: u64,
    /// Kafka: the longest a worker's fetch waits at the broker when there is nothing to read
    /// (Kafka answers at once when records arrive; a broker that does not adds up to this to
    /// every message's latency).
    pub fetch_wait_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: "memory".into(),
            topic: "room_chat".into(),
            group: "roomcast-workers".into(),
            partitions: 8,
            replication: 1,
            linger_ms: 5,
            delivery_timeout_ms: 5000,
            fetch_wait_ms: 20,
        }
    }
}

/// Which bus the config selects.
#[derive(Debug, Clone, PartialEq)]
pub enum BusUrl {
    Memory,
    Kafka(roomcast_backends::kafka::KafkaOptions),
}

/// Development conveniences for the demo page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// `POST /dev/token` (a token for any nickname) and `POST /dev/gift`. Anyone who can reach
    /// the server can get a token this way, so keep it off wherever the platform issues tokens.
    /// Unset: on when the server listens on a loopback address only, off otherwise.
    pub endpoints: Option<bool>,
    /// Lifetime of the tokens `/dev/token` hands out.
    pub token_ttl_s: u64,
    /// Requests per second to the dev endpoints, all clients together (429 over it).
    pub rate_limit: LimitConfig,
    /// `GET /dev/echo`: a WebSocket endpoint that runs the gateway's own connection code and
    /// echoes data messages, for conformance suites (Autobahn). Off by default.
    pub echo: bool,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            endpoints: None,
            token_ttl_s: 24 * 3600,
            rate_limit: LimitConfig {
                rate: 10.0,
                burst: 50.0,
            },
            echo: false,
        }
    }
}

impl DevConfig {
    /// Whether the dev endpoints are served: as configured, else only on a loopback listener.
    pub fn endpoints_on(&self, listen: SocketAddr) -> bool {
        self.endpoints.unwrap_or(listen.ip().is_loopback())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `memory://`. Unset: `sqlite://<data_dir>/roomcast.db`.
    pub url: Option<String>,
    /// Stored messages are deleted after this many days (0: kept forever).
    pub retention_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            retention_days: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            node_id: None,
            log_format: LogFormat::Text,
            shutdown_grace_ms: 5000,
            shutdown_drain_ms: 0,
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            http: HttpConfig::default(),
            redis: RedisConfig::default(),
            bus: BusConfig::default(),
            cluster: ClusterConfig::default(),
            dev: DevConfig::default(),
            store: StoreConfig::default(),
            gateway: GatewayConfig::default(),
            ingest: IngestConfig::default(),
            worker: WorkerConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

/// Which message store the config selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    Sqlite(PathBuf),
    /// `mysql://user:password@host:port/db`: TiDB, MySQL or MariaDB (the whole URL, for sqlx).
    Mysql(String),
}

impl Config {
    /// Reads the file (if any) and applies the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut root = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config file {} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("ROOMCAST_") else {
                continue;
            };
            let path: Vec<String> = match rest {
                "LOG" | "CONFIG" => continue,
                "JWT_SECRET" => vec!["auth".into(), "jwt_secret".into()],
                _ => rest.split("__").map(|p| p.to_ascii_lowercase()).collect(),
            };
            // Settings that are always text are taken verbatim (a secret of digits stays text).
            let value = if STRING_KEYS.contains(&path.join(".").as_str()) {
                toml::Value::String(value)
            } else {
                parse_env_value(&value)
            };
            set_path(&mut root, &path, value)
                .with_context(|| format!("environment variable {key}"))?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let path = e.path().to_string();
                anyhow::anyhow!(
                    "invalid configuration at {path}: {}",
                    e.into_inner().message().trim()
                )
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses values the server cannot run with, naming the key (also called by `app::start`).
    pub fn validate(&self) -> anyhow::Result<()> {
        self.auth.validate()?;
        let g = &self.gateway;
        if g.max_body_bytes == 0 || g.max_frame_bytes < g.max_body_bytes {
            bail!(
                "gateway.max_frame_bytes must be at least gateway.max_body_bytes, which must be positive"
            );
        }
        if g.heartbeat_s == 0 {
            bail!("gateway.heartbeat_s must be positive");
        }
        if !(1.0..=100.0).contains(&g.fanout_spacing) {
            bail!("gateway.fanout_spacing must be between 1.0 and 100.0");
        }
        if !(1..=9).contains(&g.deflate_level) {
            bail!("gateway.deflate_level must be between 1 and 9");
        }
        if !(0.0..=100.0).contains(&self.worker.pass_window_factor) {
            bail!("worker.pass_window_factor must be between 0 and 100");
        }
        if !(1..=60_000).contains(&self.worker.commit_interval_ms) {
            bail!("worker.commit_interval_ms must be between 1 and 60000");
        }
        if self.worker.partitions == 0 || self.worker.partitions > 4096 {
            bail!("worker.partitions must be between 1 and 4096");
        }
        if self.history.max_count == 0 || self.history.default_count > self.history.max_count {
            bail!(
                "history.default_count must not exceed history.max_count, which must be positive"
            );
        }
        if self
            .api
            .keys
            .iter()
            .any(|k| k.trim().len() < 16 || k.trim() != k)
        {
            bail!("api.keys: each key must be at least 16 characters, without surrounding spaces");
        }
        if self.http.request_timeout_ms == 0 || self.http.header_timeout_ms == 0 {
            bail!("http.request_timeout_ms and http.header_timeout_ms must be positive");
        }
        if let Some(o) =
            self.http.allowed_origins.iter().find(|o| {
                !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/')
            })
        {
            bail!("http.allowed_origins: {o:?} is not an origin (scheme://host[:port], no path)");
        }
        if let Some(u) = &self.redis.url
            && !u.starts_with("redis://")
        {
            bail!("redis.url {u:?}: expected redis://host:port/db");
        }
        if self.dev.token_ttl_s == 0 {
            bail!("dev.token_ttl_s must be positive");
        }
        if self.ingest.node_number.is_some_and(|n| n > 1023) {
            bail!("ingest.node_number must be at most 1023");
        }
        for (name, l) in [
            ("ingest.user_limit", self.ingest.user_limit),
            ("ingest.room_limit", self.ingest.room_limit),
            ("gateway.join_limit", g.join_limit),
            ("gateway.new_room_limit", g.new_room_limit),
            ("gateway.request_limit", g.request_limit),
            ("dev.rate_limit", self.dev.rate_limit),
        ] {
            l.check(name).map_err(anyhow::Error::msg)?;
        }
        self.store_url()?;
        self.bus_url()?;
        Ok(())
    }

    /// The bus `[bus]` selects, its options checked (naming the key at fault).
    pub fn bus_url(&self) -> anyhow::Result<BusUrl> {
        let b = &self.bus;
        if b.url == "memory" {
            return Ok(BusUrl::Memory);
        }
        if !b.url.starts_with("kafka://") {
            bail!(
                "bus.url {:?}: expected memory or kafka://host:port[,host:port…]",
                b.url
            );
        }
        let mut o = roomcast_backends::kafka::KafkaOptions::from_url(&b.url)
            .map_err(|e| anyhow::anyhow!("bus.url: {e}"))?;
        o.topic = b.topic.clone();
        o.group = b.group.clone();
        o.partitions = b.partitions;
        o.replication = b.replication;
        o.linger_ms = b.linger_ms;
        o.delivery_timeout_ms = b.delivery_timeout_ms;
        o.fetch_wait_ms = b.fetch_wait_ms;
        o.validate().map_err(|e| anyhow::anyhow!("bus: {e}"))?;
        Ok(BusUrl::Kafka(o))
    }

    pub fn store_url(&self) -> anyhow::Result<StoreUrl> {
        match &self.store.url {
            None => Ok(StoreUrl::Sqlite(self.data_dir.join("roomcast.db"))),
            Some(u) if u == "memory://" => Ok(StoreUrl::Memory),
            Some(u) if u.starts_with("mysql://") => {
                if self.redis.url.is_none() {
                    // Pending critical messages must outlive the process; with a shared
                    // database they belong in shared Redis, not in one node's file.
                    bail!(
                        "store.url = mysql://… needs redis.url too (pending acks of critical messages live in Redis)"
                    );
                }
                Ok(StoreUrl::Mysql(u.clone()))
            }
            Some(u) => match u.strip_prefix("sqlite://") {
                Some(path) if !path.is_empty() => Ok(StoreUrl::Sqlite(PathBuf::from(path))),
                _ => bail!(
                    "store.url {u:?}: expected sqlite://PATH, mysql://USER:PASSWORD@HOST:PORT/DB or memory://"
                ),
            },
        }
    }

    pub fn node_id(&self) -> &str {
        self.node_id.as_deref().unwrap_or("standalone")
    }
}

/// Keys whose environment values are never parsed as TOML.
const STRING_KEYS: &[&str] = &[
    "cluster.etcd_url",
    "cluster.etcd_prefix",
    "cluster.advertise",
    "cluster.public_url",
    "cluster.grpc_listen",
    "auth.jwt_secret",
    "auth.algorithm",
    "auth.public_key_file",
    "auth.jwks_file",
    "auth.audience",
    "auth.issuer",
    "node_id",
    "data_dir",
    "listen",
    "store.url",
    "redis.url",
    "redis.key_prefix",
    "bus.url",
    "bus.topic",
    "bus.group",
    "ingest.words_file",
];

fn parse_env_value(raw: &str) -> toml::Value {
    // `key = <raw>` parses numbers, booleans, arrays and inline tables; anything else is a string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        bail!("empty key");
    };
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("{p} is not a section"),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mysql_store_needs_redis_for_acks() {
        let url = "mysql://u:p@127.0.0.1:3306/roomcast";
        let e = Config::load_with_env(None, env(&[("ROOMCAST_STORE__URL", url)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.url"), "refused at load: {e}");
        let c = Config::load_with_env(
            None,
            env(&[
                ("ROOMCAST_STORE__URL", url),
                ("ROOMCAST_REDIS__URL", "redis://127.0.0.1:6379/"),
            ]),
        )
        .unwrap();
        assert_eq!(c.store_url().unwrap(), StoreUrl::Mysql(url.into()));
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(
            c.store_url().unwrap(),
            StoreUrl::Sqlite(PathBuf::from("./data/roomcast.db"))
        );
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\n[gateway]\nheartbeat_s = 5\n[ingest.user_limit]\nrate = 1.5\nburst = 3\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&file),
            env(&[
                ("ROOMCAST_GATEWAY__HEARTBEAT_S", "7"),
                ("ROOMCAST_JWT_SECRET", "s3cret-s3cret-s3cret-s3cret-s3cret"),
                ("ROOMCAST_STORE__URL", "memory://"),
                ("ROOMCAST_LOG", "debug"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.gateway.heartbeat_s, 7);
        assert_eq!(c.ingest.user_limit.rate, 1.5);
        assert_eq!(
            c.auth.jwt_secret.as_deref(),
            Some("s3cret-s3cret-s3cret-s3cret-s3cret")
        );
        assert_eq!(c.store_url().unwrap(), StoreUrl::Memory);
    }

    #[test]
    fn the_bus_is_memory_or_kafka_with_its_options_checked() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.bus_url().unwrap(), BusUrl::Memory);
        let c = Config::load_with_env(
            None,
            env(&[
                ("ROOMCAST_BUS__URL", "kafka://k1:9092,k2:9092"),
                ("ROOMCAST_BUS__TOPIC", "chat"),
                ("ROOMCAST_BUS__PARTITIONS", "32"),
                ("ROOMCAST_BUS__REPLICATION", "3"),
            ]),
        )
        .unwrap();
        let BusUrl::Kafka(o) = c.bus_url().unwrap() else {
            panic!("kafka");
        };
        assert_eq!(
            (o.brokers.as_str(), o.topic.as_str(), o.group.as_str()),
            ("k1:9092,k2:9092", "chat", "roomcast-workers")
        );
        assert_eq!((o.partitions, o.replication, o.linger_ms), (32, 3, 5));
        for (key, value, named) in [
            ("ROOMCAST_BUS__URL", "redis://x:1", "bus.url"),
            ("ROOMCAST_BUS__URL", "kafka://nohost", "bus.url"),
            ("ROOMCAST_BUS__URL", "kafka://h:1,", "bus.url"),
        ] {
            let e = Config::load_with_env(None, env(&[(key, value)])).unwrap_err();
            assert!(e.to_string().contains(named), "{value}: {e}");
        }
        for (key, value, named) in [
            ("ROOMCAST_BUS__TOPIC", "a b", "topic"),
            ("ROOMCAST_BUS__PARTITIONS", "0", "partitions"),
            ("ROOMCAST_BUS__REPLICATION", "0", "replication"),
            (
                "ROOMCAST_BUS__DELIVERY_TIMEOUT_MS",
                "1",
                "delivery_timeout_ms",
            ),
        ] {
            let e = Config::load_with_env(
                None,
                env(&[("ROOMCAST_BUS__URL", "kafka://h:1"), (key, value)]),
            )
            .unwrap_err();
            assert!(e.to_string().contains(named), "{value}: {e}");
        }
        // Kafka's options are checked only when Kafka is in use.
        assert!(Config::load_with_env(None, env(&[("ROOMCAST_BUS__PARTITIONS", "0")])).is_ok());
    }

    #[test]
    fn api_keys_must_be_usable() {
        for keys in [r#"[""]"#, r#"["short"]"#, r#"[" padded-key-0123456789 "]"#] {
            let e = Config::load_with_env(None, env(&[("ROOMCAST_API__KEYS", keys)])).unwrap_err();
            assert!(e.to_string().contains("api.keys"), "{keys}: {e}");
        }
        let c = Config::load_with_env(
            None,
            env(&[("ROOMCAST_API__KEYS", r#"["0123456789abcdef"]"#)]),
        )
        .unwrap();
        assert_eq!(c.api.keys, ["0123456789abcdef"]);
    }

    #[test]
    fn text_settings_are_taken_verbatim() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("ROOMCAST_JWT_SECRET", "12345678901234567890123456789012"),
                ("ROOMCAST_NODE_ID", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.auth.jwt_secret.as_deref(),
            Some("12345678901234567890123456789012")
        );
        assert_eq!(c.node_id(), "7");
    }

    #[test]
    fn auth_settings_from_the_environment() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("ROOMCAST_AUTH__ALGORITHM", "ES256"),
                ("ROOMCAST_AUTH__PUBLIC_KEY_FILE", "/etc/roomcast/es256.pem"),
                ("ROOMCAST_AUTH__AUDIENCE", "12345"),
                ("ROOMCAST_AUTH__ISSUER", "https://auth.example"),
            ]),
        )
        .unwrap();
        assert_eq!(c.auth.algorithm, Some(TokenAlg::ES256));
        assert_eq!(
            c.auth.public_key_file.as_deref(),
            Some(Path::new("/etc/roomcast/es256.pem"))
        );
        assert_eq!(
            c.auth.audience.as_deref(),
            Some("12345"),
            "digits stay text"
        );
        assert_eq!(c.auth.issuer.as_deref(), Some("https://auth.example"));
        let c =
            Config::load_with_env(None, env(&[("ROOMCAST_AUTH__JWKS_FILE", "keys.json")])).unwrap();
        assert_eq!(c.auth.jwks_file.as_deref(), Some(Path::new("keys.json")));
    }

    #[test]
    fn auth_settings_are_checked_with_the_key_named() {
        let err = |pairs: &[(&str, &str)]| {
            format!("{:#}", Config::load_with_env(None, env(pairs)).unwrap_err())
        };
        let e = err(&[("ROOMCAST_JWT_SECRET", "0123456789abcdef0123456789abcde")]);
        assert!(
            e.contains("auth.jwt_secret must be at least 32 bytes (it is 31)"),
            "{e}"
        );
        let e = err(&[("ROOMCAST_AUTH__JWT_SECRET", "short")]);
        assert!(
            e.contains("auth.jwt_secret must be at least 32 bytes"),
            "{e}"
        );
        let e = err(&[("ROOMCAST_AUTH__ALGORITHM", "RS512")]);
        assert!(e.contains("auth.algorithm") && e.contains("RS512"), "{e}");
        let e = err(&[("ROOMCAST_AUTH__ALGORITHM", "none")]);
        assert!(e.contains("auth.algorithm"), "{e}");
        let e = err(&[("ROOMCAST_AUTH__ALGORITHM", "RS256")]);
        assert!(e.contains("needs auth.public_key_file"), "{e}");
        let e = err(&[("ROOMCAST_AUTH__PUBLIC_KEY_FILE", "k.pem")]);
        assert!(
            e.contains("auth.public_key_file needs auth.algorithm"),
            "{e}"
        );
        let e = err(&[
            ("ROOMCAST_AUTH__ALGORITHM", "ES256"),
            ("ROOMCAST_AUTH__PUBLIC_KEY_FILE", "k.pem"),
            ("ROOMCAST_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ]);
        assert!(e.contains("auth.jwt_secret is set"), "{e}");
        let e = err(&[
            ("ROOMCAST_AUTH__JWKS_FILE", "keys.json"),
            ("ROOMCAST_AUTH__ALGORITHM", "ES256"),
        ]);
        assert!(e.contains("auth.jwks_file is set"), "{e}");
        let e = err(&[("ROOMCAST_AUTH__AUDIENCE", " ")]);
        assert!(e.contains("auth.audience must not be empty"), "{e}");
        // Exactly 32 bytes is enough; an empty secret means "use the data directory's".
        for ok in ["0123456789abcdef0123456789abcdef", ""] {
            assert!(Config::load_with_env(None, env(&[("ROOMCAST_JWT_SECRET", ok)])).is_ok());
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e =
            Config::load_with_env(None, env(&[("ROOMCAST_GATEWAY__HEARTBEATS", "1")])).unwrap_err();
        assert!(format!("{e:#}").contains("heartbeats"), "{e:#}");
        let e = Config::load_with_env(None, env(&[("ROOMCAST_GATEWAY__HEARTBEAT_S", "soon")]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("heartbeat_s"), "{e:#}");
        let e = Config::load_with_env(None, env(&[("ROOMCAST_STORE__URL", "postgres://x")]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("store.url"), "{e:#}");
        let e = Config::load_with_env(None, env(&[("ROOMCAST_GATEWAY__MAX_FRAME_BYTES", "10")]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("max_frame_bytes"), "{e:#}");
        let e = Config::load_with_env(None, env(&[("ROOMCAST_WORKER__PASS_WINDOW_FACTOR", "-1")]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("pass_window_factor"), "{e:#}");
        for bad in ["0.5", "101", "nan"] {
            let e = Config::load_with_env(None, env(&[("ROOMCAST_GATEWAY__FANOUT_SPACING", bad)]))
                .unwrap_err();
            assert!(format!("{e:#}").contains("fanout_spacing"), "{bad}: {e:#}");
        }
        let c =
            Config::load_with_env(None, env(&[("ROOMCAST_GATEWAY__FANOUT_SPACING", "2")])).unwrap();
        assert_eq!(c.gateway.fanout_spacing, 2.0, "an integer is accepted");
        for bad in ["0", "10"] {
            let e = Config::load_with_env(None, env(&[("ROOMCAST_GATEWAY__DEFLATE_LEVEL", bad)]))
                .unwrap_err();
            assert!(format!("{e:#}").contains("deflate_level"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn dev_endpoints_default_to_loopback_listeners_only() {
        let dev = DevConfig::default();
        assert!(dev.endpoints_on("127.0.0.1:8080".parse().unwrap()));
        assert!(dev.endpoints_on("[::1]:8080".parse().unwrap()));
        assert!(!dev.endpoints_on("0.0.0.0:8080".parse().unwrap()));
        assert!(!dev.endpoints_on("192.0.2.7:8080".parse().unwrap()));
        let on = DevConfig {
            endpoints: Some(true),
            ..DevConfig::default()
        };
        assert!(on.endpoints_on("0.0.0.0:8080".parse().unwrap()));
    }

    #[test]
    fn limits_and_http_settings_are_checked() {
        let bad = |k: &str, v: &str| {
            Config::load_with_env(None, env(&[(k, v)]))
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad("ROOMCAST_GATEWAY__JOIN_LIMIT", "{ rate = 1e-9, burst = 1 }")
                .contains("gateway.join_limit")
        );
        assert!(
            bad("ROOMCAST_DEV__RATE_LIMIT", "{ rate = -1, burst = 1 }").contains("dev.rate_limit")
        );
        assert!(bad("ROOMCAST_HTTP__REQUEST_TIMEOUT_MS", "0").contains("http.request_timeout_ms"));
        assert!(
            bad("ROOMCAST_HTTP__ALLOWED_ORIGINS", "[\"example.com\"]")
                .contains("http.allowed_origins")
        );
        let ok = Config::load_with_env(
            None,
            env(&[("ROOMCAST_HTTP__ALLOWED_ORIGINS", "[\"https://a.example\"]")]),
        )
        .unwrap();
        assert_eq!(
            ok.http.allowed_origins,
            vec!["https://a.example".to_owned()]
        );
        assert!(HttpConfig::default().connection_cap() >= 64);
    }
}
