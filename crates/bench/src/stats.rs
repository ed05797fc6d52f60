//! Measurement: latency histograms recorded per thread (no shared cache line on the hot path),
//! per-second windows for plots, counters, the server's CPU and memory from /proc, and the
//! report written as text and JSON.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One thread's recordings.
struct Local {
    /// Latency per ramp step.
    steps: Vec<Histogram<u64>>,
    /// Latency and delivery count per second since the start.
    seconds: Vec<(Histogram<u64>, u64)>,
}

/// Latency recording shared by every thread of this process.
pub struct Recorder {
    id: usize,
    locals: Mutex<Vec<Arc<Mutex<Local>>>>,
    pub step: AtomicUsize,
    started: Instant,
    /// Unique room messages received by subscribers.
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    /// Frames received by subscribers.
    pub frames: AtomicU64,
    /// Bytes subscribers read from their sockets (WebSocket framing included).
    pub bytes: AtomicU64,
    /// Subscriber connections closed by the server (or failed) before the end.
    pub closed: AtomicU64,
}

thread_local! {
    static LOCAL: RefCell<Option<(usize, Arc<Mutex<Local>>)>> = const { RefCell::new(None) };
}

static RECORDER_IDS: AtomicUsize = AtomicUsize::new(1);

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            id: RECORDER_IDS.fetch_add(1, Relaxed),
            locals: Mutex::new(Vec::new()),
            step: AtomicUsize::new(0),
            started: Instant::now(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        })
    }

    /// Records the latencies of several deliveries (one lock and one clock read for all).
    pub fn record_all(self: &Arc<Self>, latencies_us: &[u64]) {
        if latencies_us.is_empty() {
            return;
        }
        let id = self.id;
        LOCAL.with(|cell| {
            let mut cell = cell.borrow_mut();
            let local = match &*cell {
                Some((i, l)) if *i == id => l.clone(),
                _ => {
                    let l = Arc::new(Mutex::new(Local {
                        steps: Vec::new(),
                        seconds: Vec::new(),
                    }));
                    self.locals.lock().push(l.clone());
                    *cell = Some((id, l.clone()));
                    l
                }
            };
            let mut l = local.lock();
            let step = self.step.load(Relaxed);
            while l.steps.len() <= step {
                l.steps.push(histogram());
            }
            let sec = self.started.elapsed().as_secs() as usize;
            while l.seconds.len() <= sec {
                l.seconds.push((histogram(), 0));
            }
            for &v in latencies_us {
                let v = v.clamp(1, 600_000_000);
                let _ = l.steps[step].record(v);
                let _ = l.seconds[sec].0.record(v);
            }
            l.seconds[sec].1 += latencies_us.len() as u64;
        });
    }

    /// All threads' latencies of one step, merged.
    pub fn step_histogram(&self, step: usize) -> Histogram<u64> {
        let mut h = histogram();
        for l in self.locals.lock().iter() {
            if let Some(s) = l.lock().steps.get(step) {
                let _ = h.add(s);
            }
        }
        h
    }

    /// Per-second windows: (second, deliveries, latency histogram).
    pub fn seconds(&self) -> Vec<(usize, u64, Histogram<u64>)> {
        let mut out: Vec<(usize, u64, Histogram<u64>)> = Vec::new();
        for l in self.locals.lock().iter() {
            for (i, (h, n)) in l.lock().seconds.iter().enumerate() {
                while out.len() <= i {
                    out.push((out.len(), 0, histogram()));
                }
                out[i].1 += n;
                let _ = out[i].2.add(h);
            }
        }
        out
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Histogram contents as (value, count) pairs, to cross process boundaries.
pub fn export(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn import(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = histogram();
    for (v, n) in pairs {
        let _ = h.record_n((*v).clamp(1, 600_000_000), *n);
    }
    h
}

/// The server process, read from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerSample {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

pub fn sample_server(pid: u32) -> anyhow::Result<ServerSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ).
    Ok(ServerSample {
        cpu_s: ticks as f64 / 100.0,
        rss_bytes: rss_kb * 1024,
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerReport {
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub rss_per_conn_bytes: u64,
}

/// One measured run (or ramp step).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub connections: usize,
    pub rooms: usize,
    pub publishers: usize,
    pub rate_target: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub rejected: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub deliveries_per_sec: f64,
    pub frames: u64,
    /// Bytes subscribers read from their sockets in the step (frames and headers), and per
    /// delivery: the egress a viewer costs.
    #[serde(default)]
    pub wire_bytes: u64,
    #[serde(default)]
    pub wire_bytes_per_delivery: f64,
    /// Whether subscribers negotiated permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
    /// Subscriber connections the server closed (or that failed) during the run.
    #[serde(default)]
    pub disconnected: u64,
    pub latency_ms: Percentiles,
    pub server: Option<ServerReport>,
    /// Ramp: the steps, and the highest passing one.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub steps: Vec<Report>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub best_step: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub per_second: Vec<Window>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
}

/// One second of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Window {
    pub second: usize,
    pub deliveries: u64,
    pub latency_ms: Percentiles,
}

impl Report {
    pub fn print(&self) {
        println!("scenario            {}", self.scenario);
        println!("connections         {}", self.connections);
        if self.rooms > 0 {
            println!("rooms               {}", self.rooms);
            println!("publishers          {}", self.publishers);
            println!("target rate         {} msg/s", self.rate_target);
            println!(
                "sent (accepted)     {} (+{} rejected)",
                self.sent, self.rejected
            );
            println!("expected deliveries {}", self.expected_deliveries);
            println!("delivered           {}", self.delivered);
            println!("lost                {}", self.lost);
            println!("duplicates          {}", self.duplicates);
            println!("frames received     {}", self.frames);
            println!(
                "bytes on the wire   {} ({:.1} per delivery{})",
                self.wire_bytes,
                self.wire_bytes_per_delivery,
                if self.deflate {
                    ", permessage-deflate"
                } else {
                    ""
                }
            );
            if self.disconnected > 0 {
                println!(
                    "disconnected        {} (closed by the server)",
                    self.disconnected
                );
            }
            println!("deliveries/s        {:.0}", self.deliveries_per_sec);
            let l = &self.latency_ms;
            println!(
                "latency ms          p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        if let Some(s) = &self.server {
            println!(
                "server              cpu {:.2} s, rss {:.1} MiB, {} B per connection",
                s.cpu_s,
                s.rss_bytes as f64 / 1048576.0,
                s.rss_per_conn_bytes
            );
        }
        if let Some(n) = &self.note {
            println!("note                {n}");
        }
    }
}
