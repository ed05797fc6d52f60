//! The churn scenario: connections that arrive at a steady rate, log in, join a room, leave and
//! disconnect — the cost of viewers coming and going.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use roomcast_proto::{Op, Wire};

use crate::client::{Client, Event, WsUrl, request};
use crate::stats::{Percentiles, Report, ServerReport, sample_server};
use crate::tokens::Tokens;

pub struct ChurnArgs {
    pub urls: Vec<String>,
    pub rate: f64,
    pub rooms: usize,
    pub duration: Duration,
    pub secret: String,
    pub server_pid: Option<u32>,
    pub proto: bool,
}

async fn cycle(url: &WsUrl, token: &str, room: &str, wire: Wire) -> anyhow::Result<()> {
    let mut c = Client::connect(url, None, token, wire, false).await?;
    c.join(room, 1).await?;
    let (opcode, payload) = request(
        wire,
        Op::Leave,
        2,
        &format!("{{\"room_id\":\"{room}\"}}"),
        |b| {
            b.push(0x0a);
            b.push(room.len() as u8);
            b.extend_from_slice(room.as_bytes());
        },
    );
    c.send(opcode, &payload).await?;
    let mut left = false;
    while !left {
        c.read_some(|e| {
            if let Event::Other(Op::LeaveOk, 2, _) = e {
                left = true;
            }
        })
        .await?;
    }
    Ok(())
}

pub async fn run(a: ChurnArgs) -> anyhow::Result<Report> {
    let urls: Vec<WsUrl> = a
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<anyhow::Result<_>>()?;
    let wire = if a.proto {
        Wire::Proto
    } else {
        Wire::JsonBinary
    };
    let tokens = Arc::new(Tokens::new(&a.secret)?);
    let run = format!("{:08x}", fastrand::u32(..));
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu0 = a.server_pid.map(sample_server).transpose()?;
    let start = Instant::now();
    let mut started = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut tasks = tokio::task::JoinSet::new();
    let last_error = Arc::new(Mutex::new(None::<String>));
    while start.elapsed() < a.duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * a.rate) as u64;
        while started < due {
            let i = started;
            started += 1;
            let url = urls[i as usize % urls.len()].clone();
            let room = format!("churn{run}-{}", i as usize % a.rooms.max(1));
            let token = tokens.token(&format!("churn-{run}-{i}"));
            let (hist, ok, failed, last_error) =
                (hist.clone(), ok.clone(), failed.clone(), last_error.clone());
            tasks.spawn(async move {
                let t = Instant::now();
                match cycle(&url, &token, &room, wire).await {
                    Ok(()) => {
                        ok.fetch_add(1, Relaxed);
                        let _ = hist.lock().record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Relaxed);
                        *last_error.lock() = Some(format!("{e:#}"));
                    }
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = a.server_pid.map(sample_server).transpose()?;
    let server = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) => Some(ServerReport {
            cpu_s: c1.cpu_s - c0.cpu_s,
            rss_bytes: c1.rss_bytes,
            rss_per_conn_bytes: 0,
        }),
        _ => None,
    };
    let ok = ok.load(Relaxed);
    let failed = failed.load(Relaxed);
    let mut note = format!(
        "{ok} cycles (connect, login, join, leave, close) in {elapsed:.1} s = {:.0}/s; {failed} failed; latency is per cycle",
        ok as f64 / elapsed
    );
    if let Some(e) = last_error.lock().take() {
        note.push_str(&format!("; last error: {e}"));
    }
    Ok(Report {
        scenario: "churn".into(),
        connections: started as usize,
        rooms: a.rooms,
        rate_target: a.rate,
        duration_s: elapsed,
        sent: ok,
        rejected: failed,
        latency_ms: Percentiles::of(&hist.lock()),
        server,
        note: Some(note),
        ..Report::default()
    })
}
