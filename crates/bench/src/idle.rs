//! The idle scenario: N connections that log in and send heartbeats, nothing else; reports the
//! server's resident memory per connection (RSS after minus RSS before, over N).

use std::net::IpAddr;
use std::time::Duration;

use crate::fanout::{SubPlan, start_subscribers};
use crate::stats::{Report, ServerReport, sample_server};

pub struct IdleArgs {
    pub urls: Vec<String>,
    pub connections: usize,
    pub heartbeat_s: u64,
    pub hold: Duration,
    pub secret: String,
    pub server_pid: Option<u32>,
    pub procs: usize,
    pub src_ips: Vec<IpAddr>,
    pub proto: bool,
    pub quiet: bool,
    pub read_pace_us: u64,
}

pub async fn run(a: IdleArgs) -> anyhow::Result<Report> {
    let before = a.server_pid.map(sample_server).transpose()?;
    let run = format!("{:08x}", fastrand::u32(..));
    let mut groups = Vec::new();
    let mut children = Vec::new();
    let procs = a.procs.max(1);
    let bar = (!a.quiet).then(|| {
        let b = indicatif::ProgressBar::new(a.connections as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("connecting {bar:40} {pos}/{len}").unwrap(),
        );
        b
    });
    for k in 0..procs {
        let first = k * a.connections / procs;
        let count = (k + 1) * a.connections / procs - first;
        let ips = if !a.src_ips.is_empty() {
            vec![a.src_ips[k % a.src_ips.len()]]
        } else if procs > 1 {
            vec![crate::loopback_source(k)]
        } else {
            Vec::new()
        };
        let plan = SubPlan {
            urls: a.urls.clone(),
            rooms: Vec::new(),
            first,
            count,
            proto: a.proto,
            secret: a.secret.clone(),
            run: run.clone(),
            src_ips: ips,
            connect_concurrency: 256,
            heartbeat_s: a.heartbeat_s,
            read_pace_us: a.read_pace_us,
            deflate: false,
        };
        if procs == 1 {
            groups.push(start_subscribers(&plan, bar.as_ref()).await?);
        } else {
            children.push(crate::fanout::spawn_ready_child(&plan).await?);
            if let Some(b) = &bar {
                b.inc(count as u64);
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    // Let allocations from the connection burst settle, then measure.
    tokio::time::sleep(a.hold).await;
    let after = a.server_pid.map(sample_server).transpose()?;
    let server = match (before, after) {
        (Some(b), Some(x)) => Some(ServerReport {
            cpu_s: x.cpu_s - b.cpu_s,
            rss_bytes: x.rss_bytes,
            rss_per_conn_bytes: x.rss_bytes.saturating_sub(b.rss_bytes)
                / a.connections.max(1) as u64,
        }),
        _ => None,
    };
    // Frames received: heartbeat replies (and online counts), proof that the connections
    // were kept alive.
    let (mut frames, mut disconnected) = (0, 0);
    for g in groups {
        let rec = g.recorder.clone();
        g.stop().await?;
        frames += rec.frames.load(std::sync::atomic::Ordering::Relaxed);
        disconnected += rec.closed.load(std::sync::atomic::Ordering::Relaxed);
    }
    for c in children {
        let (f, d) = crate::fanout::stop_child(c).await?;
        frames += f;
        disconnected += d;
    }
    Ok(Report {
        scenario: "idle".into(),
        connections: a.connections,
        duration_s: a.hold.as_secs_f64(),
        frames,
        disconnected,
        server,
        note: Some(format!(
            "heartbeat every {} s; memory measured after holding {:?}",
            a.heartbeat_s, a.hold
        )),
        ..Report::default()
    })
}
