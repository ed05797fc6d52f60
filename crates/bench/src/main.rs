//! `roomcast-bench`: the load generator. See `roomcast-bench --help` and docs/benchmarks.md.

mod churn;
mod client;
mod fanout;
mod idle;
mod plot;
mod reader;
mod stats;
mod tokens;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    version,
    about = "Load generator for roomcast"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Gateway WebSocket URL, e.g. ws://127.0.0.1:8080/ws (repeat for several gateways)
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The server's token secret (ROOMCAST_JWT_SECRET), to make tokens for the bench users
    #[arg(long, env = "ROOMCAST_JWT_SECRET")]
    secret: String,
    /// Server process id, to report its CPU time and memory from /proc
    #[arg(long)]
    server_pid: Option<u32>,
    /// Body encoding the clients ask for: `proto` (subprotocol roomcast.v1.proto) or `json`
    #[arg(long, default_value = "proto", value_parser = ["proto", "json"])]
    wire: String,
    /// Client processes for subscribers/idle connections [default: one per 15,000 connections,
    /// and at least one per core from 2,000 connections on]
    #[arg(long)]
    procs: Option<usize>,
    /// Source addresses to bind client sockets to (repeat); default: 127.0.0.2, .3, … per process
    #[arg(long = "src-ip")]
    src_ips: Vec<IpAddr>,
    /// Write the results as JSON to this file
    #[arg(long = "json", alias = "json-out")]
    json_out: Option<PathBuf>,
    /// Draw latency percentiles against delivered rate into this PNG
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bars
    #[arg(long)]
    quiet: bool,
    /// Subscriber readers pause this many µs between rounds so that each round finds many
    /// connections ready (0: wait in epoll like an ordinary event loop); the pause is part of
    /// the latency reported. See docs/benchmarks.md.
    #[arg(long, default_value_t = 2000)]
    read_pace_us: u64,
}

#[derive(Args, Clone)]
struct FanoutOpts {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Subscribers in total, spread evenly over the rooms
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Payload (chat text) size in bytes (filler text; see --chat-text)
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Realistic chat lines (mixed Chinese, emoji and Latin, repeated phrases like "666")
    /// instead of --payload bytes of filler
    #[arg(long)]
    chat_text: bool,
    /// Subscribers and publishers offer permessage-deflate (as browsers do); the report gives
    /// the bytes read on the wire per delivery either way
    #[arg(long)]
    deflate: bool,
    /// Seconds of publishing (per step for ramp)
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// R rooms x S subscribers, P publishers at M messages/s in total
    Fanout {
        #[command(flatten)]
        opts: FanoutOpts,
        /// Messages per second, in total
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// Fan-out at increasing rates until p99 or loss fails; reports the highest passing step
    Ramp {
        #[command(flatten)]
        opts: FanoutOpts,
        /// First step, messages per second
        #[arg(long, default_value_t = 100.0)]
        start: f64,
        /// Each step multiplies the rate by this
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        #[arg(long, default_value_t = 12)]
        max_steps: usize,
        /// A step passes with p99 at most this many ms and at most 1% loss
        #[arg(long, default_value_t = 100.0)]
        max_p99_ms: f64,
    },
    /// N idle connections with heartbeats; reports server memory per connection
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// Heartbeat period in seconds; never longer than half the period the server announces
        /// in login_ok (0: just that)
        #[arg(long, default_value_t = 20)]
        heartbeat_s: u64,
        /// Seconds to hold the connections before measuring
        #[arg(long, default_value_t = 10)]
        hold: u64,
    },
    /// Connect, log in, join, leave, disconnect at a given rate
    Churn {
        #[command(flatten)]
        common: Common,
        /// Cycles per second
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// (internal) a subscriber process driven by the coordinator over stdin/stdout
    #[command(hide = true)]
    Subscribers,
}

/// Subscriber processes: as asked, else one per 15,000 connections (the open-file limit) and,
/// from 2,000 connections on, at least one per core (up to 8) — a reader per core keeps up with
/// the server's parallel passes and keeps each epoll set's lock on one CPU.
fn procs_for(common: &Common, connections: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    common
        .procs
        .unwrap_or_else(|| {
            let by_files = connections.div_ceil(15_000);
            if connections >= 2_000 {
                by_files.max(cores.min(8))
            } else {
                by_files
            }
        })
        .max(1)
}

fn fanout_args(o: &FanoutOpts, rates: Vec<f64>, max_p99_ms: Option<f64>) -> fanout::FanoutArgs {
    fanout::FanoutArgs {
        urls: o.common.urls.clone(),
        rooms: o.rooms,
        subscribers: o.subscribers,
        publishers: o.publishers,
        rates,
        duration: Duration::from_secs(o.duration),
        proto: o.common.wire == "proto",
        secret: o.common.secret.clone(),
        server_pid: o.common.server_pid,
        procs: procs_for(&o.common, o.subscribers + o.publishers),
        src_ips: o.common.src_ips.clone(),
        max_p99_ms,
        quiet: o.common.quiet,
        read_pace_us: o.common.read_pace_us,
        deflate: o.deflate,
        text: if o.chat_text {
            client::ChatText::Chat
        } else {
            client::ChatText::Filler(o.payload)
        },
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let (report, common) = match cmd {
        Cmd::Subscribers => return fanout::child_main().await,
        Cmd::Fanout { opts, rate } => (
            fanout::run(fanout_args(&opts, vec![rate], None)).await?,
            opts.common,
        ),
        Cmd::Ramp {
            opts,
            start,
            factor,
            max_steps,
            max_p99_ms,
        } => {
            let rates = (0..max_steps)
                .map(|i| (start * factor.powi(i as i32)).round())
                .collect();
            (
                fanout::run(fanout_args(&opts, rates, Some(max_p99_ms))).await?,
                opts.common,
            )
        }
        Cmd::Idle {
            common,
            connections,
            heartbeat_s,
            hold,
        } => {
            let args = idle::IdleArgs {
                urls: common.urls.clone(),
                connections,
                heartbeat_s,
                hold: Duration::from_secs(hold),
                secret: common.secret.clone(),
                server_pid: common.server_pid,
                procs: procs_for(&common, connections),
                src_ips: common.src_ips.clone(),
                proto: common.wire == "proto",
                quiet: common.quiet,
                read_pace_us: common.read_pace_us,
            };
            (idle::run(args).await?, common)
        }
        Cmd::Churn {
            common,
            rate,
            rooms,
            duration,
        } => {
            let args = churn::ChurnArgs {
                urls: common.urls.clone(),
                rate,
                rooms,
                duration: Duration::from_secs(duration),
                secret: common.secret.clone(),
                server_pid: common.server_pid,
                proto: common.wire == "proto",
            };
            (churn::run(args).await?, common)
        }
    };
    report.print();
    if let Some(path) = &common.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &common.plot {
        plot::draw(&report, path).with_context(|| format!("cannot draw {}", path.display()))?;
    }
    Ok(())
}

/// The default source address of subscriber process `k`: 127.0.0.2, .3, … then 127.0.1.0, …
pub(crate) fn loopback_source(k: usize) -> IpAddr {
    let n = 2 + k as u32;
    IpAddr::from([127, (n >> 16) as u8, (n >> 8) as u8, n as u8])
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = std::env::var("RCBENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
