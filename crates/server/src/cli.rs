//! The command line: `roomcast [standalone]` runs the server, `roomcast token` prints a token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use roomcast_core::clock::now_s;
use roomcast_core::ids::UserId;

use crate::app;
use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "roomcast",
    version,
    about = "Chat for live-streaming rooms. With no command: the standalone server."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every role in one process, with no outside services (the default).
    Standalone(ServerArgs),
    /// Distributed mode: client connections and the server API (docs/operations.md).
    Gateway(ServerArgs),
    /// Distributed mode: the ingest pipeline into Kafka.
    Ingest(ServerArgs),
    /// Distributed mode: a room worker (one member of the Kafka consumer group).
    Worker(ServerArgs),
    /// Print a client token (JWT) signed with the server's secret.
    Token(TokenArgs),
}

#[derive(Args, Default)]
struct ServerArgs {
    /// HTTP and WebSocket address [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (SQLite database, generated secret) [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML config file (see docs/configuration.md)
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (the token's `sub`)
    #[arg(long)]
    user: String,
    /// Display name shown with the user's messages
    #[arg(long)]
    name: Option<String>,
    /// How long the token is valid, e.g. 30m, 1h, 7d
    #[arg(long, default_value = "24h")]
    ttl: humantime::Duration,
    /// Data directory holding the generated secret [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML config file (its `[auth] jwt_secret` wins over the data directory; with public keys
    /// in `[auth]` there is nothing to sign with)
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `roomcast` alone is `roomcast standalone` with defaults (clap fills in no env defaults
    // for a subcommand that was not given, so ROOMCAST_CONFIG is read here).
    let default_cmd = || {
        Cmd::Standalone(ServerArgs {
            config: std::env::var_os("ROOMCAST_CONFIG").map(PathBuf::from),
            ..ServerArgs::default()
        })
    };
    let result = match cli.cmd.unwrap_or_else(default_cmd) {
        Cmd::Standalone(args) => standalone(args),
        Cmd::Gateway(args) => role(crate::roles::Role::Gateway, args),
        Cmd::Ingest(args) => role(crate::roles::Role::Ingest, args),
        Cmd::Worker(args) => role(crate::roles::Role::Worker, args),
        Cmd::Token(args) => token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn server_config(args: ServerArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    init_logging(config.log_format);
    Ok(config)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("roomcast")
        .build()
        .context("cannot start the runtime")
}

fn standalone(args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(args)?;
    runtime()?.block_on(app::run(config, shutdown_signal(), true))
}

fn role(role: crate::roles::Role, args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(args)?;
    runtime()?.block_on(crate::roles::run(role, config, shutdown_signal()))
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let user = UserId::parse(&args.user).context("--user")?;
    let auth = crate::keys::token_auth(&config.auth, &config.data_dir)?;
    let ttl = std::time::Duration::from(args.ttl).as_secs();
    if ttl == 0 {
        anyhow::bail!("--ttl must be at least one second");
    }
    let name = match args.name.as_deref() {
        Some(n) => Some(crate::web::check_name(n).map_err(|m| anyhow::anyhow!("--{m}"))?),
        None => None,
    };
    let token = auth
        .issue(&user, name, now_s() + ttl)
        .context("roomcast token signs HS256 tokens only")?;
    println!("{token}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROOMCAST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
