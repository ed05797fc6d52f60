//! The fan-out scenarios: R rooms × S subscribers, P publishers at M messages/s in total.
//!
//! Subscribers join before anything is published and remember the room's `last_seq`, so every
//! room message they should get is known: losses and duplicates are counted per subscriber
//! against the room's sequence, and `expected = Σ accepted(room) × subscribers(room)`.
//! Latency is the time from the publisher stamping the message (its first 16 characters) to the
//! subscriber reading it, on the same machine's clock.
//!
//! Subscribers run in this process, or — for more connections than one process may open — in
//! child processes (`roomcast-bench subscribers`, driven over stdin/stdout), each binding its
//! own source address 127.0.0.x.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use roomcast_proto::ws::Opcode;
use roomcast_proto::{Op, Wire};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use crate::client::{ChatText, Client, Event, WsUrl, chat_packet};
use crate::reader::{self, ReaderConfig, Sub, Track};
use crate::stats::{
    self, Percentiles, Recorder, Report, ServerReport, Window, now_us, sample_server,
};
use crate::tokens::Tokens;

/// Everything a subscriber process needs to know (sent to child processes as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubPlan {
    pub urls: Vec<String>,
    pub rooms: Vec<String>,
    pub first: usize,
    pub count: usize,
    pub proto: bool,
    pub secret: String,
    pub run: String,
    pub src_ips: Vec<IpAddr>,
    pub connect_concurrency: usize,
    /// Heartbeat period for each connection; never longer than half the period the server
    /// asks for in `login_ok` (0: just that).
    pub heartbeat_s: u64,
    /// Pause between the reader's rounds, µs (see `reader`).
    pub read_pace_us: u64,
    /// Offer permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
}

impl SubPlan {
    fn wire(&self) -> Wire {
        if self.proto {
            Wire::Proto
        } else {
            Wire::JsonBinary
        }
    }
}

/// A group of subscribers in this process.
pub struct Subscribers {
    pub recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// Connects and joins every subscriber of the plan, then hands them to one reader thread
/// (`reader::run`); returns once all are in their rooms.
pub async fn start_subscribers(
    plan: &SubPlan,
    progress: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<Subscribers> {
    let recorder = Recorder::new();
    let tokens = Arc::new(Tokens::new(&plan.secret)?);
    let urls: Vec<WsUrl> = plan
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<anyhow::Result<_>>()?;
    let gate = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let wire = plan.wire();
    let deflate = plan.deflate;
    let mut joining = tokio::task::JoinSet::new();
    for k in plan.first..plan.first + plan.count {
        let url = urls[k % urls.len()].clone();
        // No rooms: idle connections that only log in and keep alive.
        let room = (!plan.rooms.is_empty()).then(|| plan.rooms[k % plan.rooms.len()].clone());
        let src = (!plan.src_ips.is_empty()).then(|| plan.src_ips[k % plan.src_ips.len()]);
        let user = format!("sub-{}-{k}", plan.run);
        let (tokens, gate) = (tokens.clone(), gate.clone());
        joining.spawn(async move {
            let _permit = gate.acquire().await?;
            let mut c = Client::connect(&url, src, &tokens.token(&user), wire, deflate).await?;
            let baseline = match &room {
                Some(room) => c.join(room, 1).await?,
                None => 0,
            };
            let heartbeat_s = c.heartbeat_s;
            let (stream, frames) = c.into_std()?;
            anyhow::Ok((
                Sub {
                    stream,
                    frames,
                    track: Track::new(baseline),
                },
                heartbeat_s,
            ))
        });
    }
    let mut subs = Vec::with_capacity(plan.count);
    // The shortest heartbeat period any server asked for.
    let mut server_heartbeat_s = u64::MAX;
    while let Some(r) = joining.join_next().await {
        let (sub, heartbeat_s) = r
            .context("a subscriber task failed")?
            .context("a subscriber could not join")?;
        if heartbeat_s > 0 {
            server_heartbeat_s = server_heartbeat_s.min(heartbeat_s);
        }
        subs.push(sub);
        if let Some(p) = progress {
            p.inc(1);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = ReaderConfig {
        wire,
        pace: Duration::from_micros(plan.read_pace_us),
        // Twice per period the server asked for (it closes connections silent for two
        // periods), or as asked if that is more often.
        heartbeat: match (plan.heartbeat_s, server_heartbeat_s) {
            (0, u64::MAX) => None,
            (0, server) => Some(Duration::from_millis(server * 500)),
            (asked, u64::MAX) => Some(Duration::from_secs(asked)),
            (asked, server) => Some(Duration::from_millis((asked * 1000).min(server * 500))),
        },
    };
    let (rec, st) = (recorder.clone(), stop.clone());
    let reader = std::thread::Builder::new()
        .name("subscribers".into())
        .spawn(move || reader::run(subs, rec, st, cfg))?;
    Ok(Subscribers {
        recorder,
        stop,
        reader: Some(reader),
    })
}

impl Subscribers {
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.reader.take() {
            match tokio::task::spawn_blocking(move || h.join()).await? {
                Ok(Err(e)) => tracing_lite(&format!("the subscribers' reader ended with: {e:#}")),
                Err(_) => anyhow::bail!("the subscribers' reader panicked"),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }
}

fn tracing_lite(msg: &str) {
    eprintln!("{msg}");
}

/// Messages between the coordinator and a subscriber process, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ChildMsg {
    Ready,
    Progress {
        delivered: u64,
        duplicates: u64,
        frames: u64,
        #[serde(default)]
        closed: u64,
        #[serde(default)]
        bytes: u64,
    },
    StepDone {
        step: usize,
        hist: Vec<(u64, u64)>,
    },
    Finished {
        seconds: Vec<SecondRow>,
    },
    Failed {
        error: String,
    },
}

/// One second of a child's receive log: (second index, deliveries, latency histogram buckets).
type SecondRow = (usize, u64, Vec<(u64, u64)>);

/// `roomcast-bench subscribers`: runs a plan from stdin; commands on stdin: `step N`, `stop`.
pub async fn child_main() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let plan: SubPlan =
        serde_json::from_str(&lines.next_line().await?.context("no plan on stdin")?)?;
    let out = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    async fn say(out: &tokio::sync::Mutex<tokio::io::Stdout>, m: &ChildMsg) {
        let mut line = serde_json::to_string(m).unwrap_or_default();
        line.push('\n');
        let mut o = out.lock().await;
        let _ = o.write_all(line.as_bytes()).await;
        let _ = o.flush().await;
    }
    let subs = match start_subscribers(&plan, None).await {
        Ok(s) => s,
        Err(e) => {
            say(
                &out,
                &ChildMsg::Failed {
                    error: format!("{e:#}"),
                },
            )
            .await;
            return Err(e);
        }
    };
    say(&out, &ChildMsg::Ready).await;
    let rec = subs.recorder.clone();
    let ticker = {
        let (out, rec) = (out.clone(), rec.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let m = ChildMsg::Progress {
                    delivered: rec.delivered.load(Relaxed),
                    duplicates: rec.duplicates.load(Relaxed),
                    frames: rec.frames.load(Relaxed),
                    closed: rec.closed.load(Relaxed),
                    bytes: rec.bytes.load(Relaxed),
                };
                say(&out, &m).await;
            }
        })
    };
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("step ") {
            let next: usize = n.parse()?;
            let done = next.saturating_sub(1);
            rec.step.store(next, Relaxed);
            let hist = stats::export(&rec.step_histogram(done));
            say(&out, &ChildMsg::StepDone { step: done, hist }).await;
        } else if line == "stop" {
            break;
        }
    }
    ticker.abort();
    // Stop reading first, so the last counts are final.
    let subs_stopped = subs.stop().await;
    let final_progress = ChildMsg::Progress {
        delivered: rec.delivered.load(Relaxed),
        duplicates: rec.duplicates.load(Relaxed),
        frames: rec.frames.load(Relaxed),
        closed: rec.closed.load(Relaxed),
        bytes: rec.bytes.load(Relaxed),
    };
    say(&out, &final_progress).await;
    let seconds = rec
        .seconds()
        .into_iter()
        .map(|(s, n, h)| (s, n, stats::export(&h)))
        .collect();
    say(&out, &ChildMsg::Finished { seconds }).await;
    subs_stopped
}

/// A subscriber process and what it reported.
pub(crate) struct Child {
    proc: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    delivered: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    msgs: tokio::sync::mpsc::UnboundedReceiver<ChildMsg>,
}

async fn spawn_child(plan: &SubPlan) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut proc = tokio::process::Command::new(exe)
        .arg("subscribers")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a subscriber process")?;
    let mut stdin = proc.stdin.take().context("child stdin")?;
    let stdout = proc.stdout.take().context("child stdout")?;
    let mut plan_line = serde_json::to_string(plan)?;
    plan_line.push('\n');
    stdin.write_all(plan_line.as_bytes()).await?;
    let (tx, msgs) = tokio::sync::mpsc::unbounded_channel();
    let (delivered, duplicates, frames, closed, bytes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    {
        let (d, du, f, cl, by) = (
            delivered.clone(),
            duplicates.clone(),
            frames.clone(),
            closed.clone(),
            bytes.clone(),
        );
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<ChildMsg>(&line) {
                    Ok(ChildMsg::Progress {
                        delivered,
                        duplicates,
                        frames,
                        closed,
                        bytes,
                    }) => {
                        d.store(delivered, Relaxed);
                        du.store(duplicates, Relaxed);
                        f.store(frames, Relaxed);
                        cl.store(closed, Relaxed);
                        by.store(bytes, Relaxed);
                    }
                    Ok(m) => {
                        let _ = tx.send(m);
                    }
                    Err(e) => eprintln!("bad line from a subscriber process: {e}: {line}"),
                }
            }
        });
    }
    Ok(Child {
        proc,
        stdin,
        delivered,
        duplicates,
        frames,
        closed,
        bytes,
        msgs,
    })
}

impl Child {
    async fn expect(&mut self, what: &str) -> anyhow::Result<ChildMsg> {
        match self.msgs.recv().await {
            Some(ChildMsg::Failed { error }) => anyhow::bail!("subscriber process failed: {error}"),
            Some(m) => Ok(m),
            None => anyhow::bail!("subscriber process ended while waiting for {what}"),
        }
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// Starts a subscriber process and waits until all its connections are in.
pub(crate) async fn spawn_ready_child(plan: &SubPlan) -> anyhow::Result<Child> {
    let mut c = spawn_child(plan).await?;
    match c.expect("subscribers to join").await? {
        ChildMsg::Ready => Ok(c),
        other => anyhow::bail!("unexpected message from a subscriber process: {other:?}"),
    }
}

/// Stops a subscriber process; returns the frames its connections received and how many of
/// them the server closed.
pub(crate) async fn stop_child(mut c: Child) -> anyhow::Result<(u64, u64)> {
    c.command("stop").await?;
    while let Ok(m) = c.expect("final results").await {
        if let ChildMsg::Finished { .. } = m {
            break;
        }
    }
    let _ = c.proc.wait().await;
    // The last progress line comes before `finished`, from the same reader task.
    Ok((c.frames.load(Relaxed), c.closed.load(Relaxed)))
}

/// Where subscribers run.
enum Subs {
    Local(Subscribers),
    Children(Vec<Child>),
}

impl Subs {
    fn delivered(&self) -> u64 {
        match self {
            Subs::Local(s) => s.recorder.delivered.load(Relaxed),
            Subs::Children(c) => c.iter().map(|c| c.delivered.load(Relaxed)).sum(),
        }
    }

    fn duplicates(&self) -> u64 {
        match self {
            Subs::Local(s) => s.recorder.duplicates.load(Relaxed),
            Subs::Children(c) => c.iter().map(|c| c.duplicates.load(Relaxed)).sum(),
        }
    }

    fn frames(&self) -> u64 {
        match self {
            Subs::Local(s) => s.recorder.frames.load(Relaxed),
            Subs::Children(c) => c.iter().map(|c| c.frames.load(Relaxed)).sum(),
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Subs::Local(s) => s.recorder.bytes.load(Relaxed),
            Subs::Children(c) => c.iter().map(|c| c.bytes.load(Relaxed)).sum(),
        }
    }

    fn closed(&self) -> u64 {
        match self {
            Subs::Local(s) => s.recorder.closed.load(Relaxed),
            Subs::Children(c) => c.iter().map(|c| c.closed.load(Relaxed)).sum(),
        }
    }

    /// Ends step `step` and returns its latencies.
    async fn end_step(&mut self, step: usize) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        match self {
            Subs::Local(s) => {
                s.recorder.step.store(step + 1, Relaxed);
                Ok(s.recorder.step_histogram(step))
            }
            Subs::Children(children) => {
                let mut h = stats::import(&[]);
                for c in children.iter_mut() {
                    c.command(&format!("step {}", step + 1)).await?;
                }
                for c in children.iter_mut() {
                    match c.expect("a step's results").await? {
                        ChildMsg::StepDone { hist, .. } => {
                            let _ = h.add(stats::import(&hist));
                        }
                        other => {
                            anyhow::bail!("unexpected message from a subscriber process: {other:?}")
                        }
                    }
                }
                Ok(h)
            }
        }
    }

    /// Stops everything; returns per-second windows.
    async fn finish(self) -> anyhow::Result<Vec<Window>> {
        let mut windows: Vec<(u64, hdrhistogram::Histogram<u64>)> = Vec::new();
        let mut add = |i: usize, n: u64, h: hdrhistogram::Histogram<u64>| {
            while windows.len() <= i {
                windows.push((0, stats::import(&[])));
            }
            windows[i].0 += n;
            let _ = windows[i].1.add(h);
        };
        match self {
            Subs::Local(s) => {
                for (i, n, h) in s.recorder.seconds() {
                    add(i, n, h);
                }
                s.stop().await?;
            }
            Subs::Children(mut children) => {
                for c in children.iter_mut() {
                    c.command("stop").await?;
                }
                for c in children.iter_mut() {
                    if let ChildMsg::Finished { seconds } = c.expect("final results").await? {
                        for (i, n, h) in seconds {
                            add(i, n, stats::import(&h));
                        }
                    }
                    let _ = c.proc.wait().await;
                }
            }
        }
        Ok(windows
            .into_iter()
            .enumerate()
            .map(|(second, (deliveries, h))| Window {
                second,
                deliveries,
                latency_ms: Percentiles::of(&h),
            })
            .collect())
    }
}

/// The fan-out parameters.
#[derive(Debug, Clone)]
pub struct FanoutArgs {
    pub urls: Vec<String>,
    pub rooms: usize,
    pub subscribers: usize,
    pub publishers: usize,
    /// Messages per second in total, one entry per step.
    pub rates: Vec<f64>,
    pub duration: Duration,
    pub proto: bool,
    pub secret: String,
    pub server_pid: Option<u32>,
    pub procs: usize,
    pub src_ips: Vec<IpAddr>,
    /// Ramp: stop after the first step with p99 above this (ms) or loss above 1%.
    pub max_p99_ms: Option<f64>,
    pub quiet: bool,
    pub read_pace_us: u64,
    /// Subscribers and publishers offer permessage-deflate.
    pub deflate: bool,
    /// What the chat messages say.
    pub text: ChatText,
}

/// Pacing of one publisher: the rooms it writes to, round robin.
struct Publisher {
    rooms: Vec<usize>,
    writer: crate::client::Writer,
}

/// Accepted messages per room.
struct Accepted {
    per_room: Vec<AtomicU64>,
    rejected: AtomicU64,
}

const CHAT_SEQ_BASE: u32 = 1000;

pub async fn run(a: FanoutArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        a.rooms > 0 && a.publishers > 0,
        "need at least one room and one publisher"
    );
    anyhow::ensure!(
        a.subscribers >= a.rooms,
        "need at least one subscriber per room"
    );
    let run_id = format!("{:08x}", fastrand::u32(..));
    let rooms: Vec<String> = (0..a.rooms).map(|i| format!("b{run_id}-{i}")).collect();
    let wire = if a.proto {
        Wire::Proto
    } else {
        Wire::JsonBinary
    };
    let urls: Vec<WsUrl> = a
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<anyhow::Result<_>>()?;
    let server_before = a.server_pid.map(sample_server).transpose()?;

    // Subscribers.
    let bar = (!a.quiet).then(|| {
        let b = indicatif::ProgressBar::new(a.subscribers as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("connecting {bar:40} {pos}/{len} subscribers")
                .unwrap(),
        );
        b
    });
    let plan = |first: usize, count: usize, src_ips: Vec<IpAddr>| SubPlan {
        urls: a.urls.clone(),
        rooms: rooms.clone(),
        first,
        count,
        proto: a.proto,
        secret: a.secret.clone(),
        run: run_id.clone(),
        src_ips,
        connect_concurrency: 256,
        heartbeat_s: 0,
        read_pace_us: a.read_pace_us,
        deflate: a.deflate,
    };
    let mut subs = if a.procs <= 1 {
        Subs::Local(
            start_subscribers(&plan(0, a.subscribers, a.src_ips.clone()), bar.as_ref()).await?,
        )
    } else {
        let mut children = Vec::new();
        for k in 0..a.procs {
            let first = k * a.subscribers / a.procs;
            let count = (k + 1) * a.subscribers / a.procs - first;
            let ips = if a.src_ips.is_empty() {
                vec![crate::loopback_source(k)]
            } else {
                vec![a.src_ips[k % a.src_ips.len()]]
            };
            children.push(spawn_ready_child(&plan(first, count, ips)).await?);
            if let Some(b) = &bar {
                b.inc(count as u64);
            }
        }
        Subs::Children(children)
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let subs_per_room: Vec<u64> = (0..a.rooms)
        .map(|r| (0..a.subscribers).filter(|k| k % a.rooms == r).count() as u64)
        .collect();

    // Publishers: each joins the rooms it writes to.
    let tokens = Tokens::new(&a.secret)?;
    let accepted = Arc::new(Accepted {
        per_room: (0..a.rooms).map(|_| AtomicU64::new(0)).collect(),
        rejected: AtomicU64::new(0),
    });
    let mut publishers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..a.publishers {
        let my_rooms: Vec<usize> = (0..a.rooms).filter(|r| r % a.publishers == i).collect();
        let my_rooms = if my_rooms.is_empty() {
            vec![i % a.rooms]
        } else {
            my_rooms
        };
        let url = &urls[i % urls.len()];
        let mut c = Client::connect(
            url,
            None,
            &tokens.token(&format!("pub-{run_id}-{i}")),
            wire,
            a.deflate,
        )
        .await?;
        for (j, r) in my_rooms.iter().enumerate() {
            c.join(&rooms[*r], 1 + j as u32).await?;
        }
        let (mut reader, writer) = c.into_split();
        let (acc, mine) = (accepted.clone(), my_rooms.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let r = reader
                    .read_some(|e| match e {
                        Event::Other(Op::ChatOk, seq, _) if seq >= CHAT_SEQ_BASE => {
                            let room = mine[((seq - CHAT_SEQ_BASE) as usize) % mine.len()];
                            acc.per_room[room].fetch_add(1, Relaxed);
                        }
                        Event::Other(Op::Error, seq, _) if seq >= CHAT_SEQ_BASE => {
                            acc.rejected.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    })
                    .await;
                if r.is_err() {
                    return;
                }
            }
        }));
        publishers.push(Publisher {
            rooms: my_rooms,
            writer,
        });
    }

    let mut steps = Vec::new();
    let mut best = None;
    let total_conns = a.subscribers + a.publishers;
    for (step, &rate) in a.rates.iter().enumerate() {
        let delivered0 = subs.delivered();
        let dup0 = subs.duplicates();
        let frames0 = subs.frames();
        let bytes0 = subs.bytes();
        let closed0 = subs.closed();
        let acc0: Vec<u64> = accepted.per_room.iter().map(|c| c.load(Relaxed)).collect();
        let rej0 = accepted.rejected.load(Relaxed);
        let cpu0 = a.server_pid.map(sample_server).transpose()?;

        let started = Instant::now();
        let bar = (!a.quiet).then(|| {
            let b = indicatif::ProgressBar::new(a.duration.as_millis() as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:40} {elapsed}/{duration} {msg}",
                )
                .unwrap(),
            );
            b.set_prefix(format!("step {} at {rate} msg/s", step + 1));
            b
        });
        let sent_total = AtomicU64::new(0);
        publish(
            &mut publishers,
            &rooms,
            rate,
            a.text,
            a.duration,
            wire,
            &subs,
            bar.as_ref(),
            &sent_total,
        )
        .await?;
        let publish_time = started.elapsed();

        // Every chat sent gets chat_ok or an error; count them all before computing what the
        // subscribers should have received (replies may trail the deliveries).
        let answered = || -> u64 {
            let ok: u64 = accepted
                .per_room
                .iter()
                .zip(&acc0)
                .map(|(c, b)| c.load(Relaxed) - b)
                .sum();
            ok + accepted.rejected.load(Relaxed) - rej0
        };
        let mut last_answered = answered();
        let mut still_since = Instant::now();
        while last_answered < sent_total.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = answered();
            if now != last_answered {
                last_answered = now;
                still_since = Instant::now();
            } else if still_since.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "warning: {} chat messages were never answered",
                    sent_total.load(Relaxed) - now
                );
                break;
            }
        }

        // Deliveries owed for what was accepted so far in this step.
        let owed = || -> u64 {
            accepted
                .per_room
                .iter()
                .zip(&acc0)
                .zip(&subs_per_room)
                .map(|((c, before), subs)| (c.load(Relaxed) - before) * subs)
                .sum()
        };
        // Drain: until every expected delivery arrived, or nothing moved for two seconds.
        let expected = owed();
        let mut last = subs.delivered();
        let mut still_since = Instant::now();
        loop {
            let now = subs.delivered();
            let expected_now = owed();
            if now - delivered0 >= expected_now && expected_now >= expected {
                break;
            }
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let expected = owed();
        let delivered = subs.delivered() - delivered0;
        let hist = subs.end_step(step).await?;
        let cpu1 = a.server_pid.map(sample_server).transpose()?;
        let sent: u64 = accepted
            .per_room
            .iter()
            .zip(&acc0)
            .map(|(c, b)| c.load(Relaxed) - b)
            .sum();
        let server = match (cpu0, cpu1, server_before) {
            (Some(c0), Some(c1), Some(base)) => Some(ServerReport {
                cpu_s: c1.cpu_s - c0.cpu_s,
                rss_bytes: c1.rss_bytes,
                rss_per_conn_bytes: c1.rss_bytes.saturating_sub(base.rss_bytes)
                    / total_conns as u64,
            }),
            _ => None,
        };
        let report = Report {
            scenario: if a.rates.len() > 1 {
                format!("ramp step {}", step + 1)
            } else {
                "fanout".into()
            },
            connections: total_conns,
            rooms: a.rooms,
            publishers: a.publishers,
            rate_target: rate,
            duration_s: publish_time.as_secs_f64(),
            sent,
            rejected: accepted.rejected.load(Relaxed) - rej0,
            expected_deliveries: expected,
            delivered,
            lost: expected.saturating_sub(delivered),
            duplicates: subs.duplicates() - dup0,
            deliveries_per_sec: delivered as f64 / publish_time.as_secs_f64(),
            frames: subs.frames() - frames0,
            wire_bytes: subs.bytes() - bytes0,
            wire_bytes_per_delivery: (subs.bytes() - bytes0) as f64 / delivered.max(1) as f64,
            deflate: a.deflate,
            disconnected: subs.closed() - closed0,
            latency_ms: Percentiles::of(&hist),
            server,
            ..Report::default()
        };
        if !a.quiet && a.rates.len() > 1 {
            println!(
                "step {:>2}: target {:>9.0} msg/s  delivered {:>10.0}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  lost {}",
                step + 1,
                rate,
                report.deliveries_per_sec,
                report.latency_ms.p50,
                report.latency_ms.p99,
                report.lost
            );
        }
        let loss = if expected > 0 {
            report.lost as f64 / expected as f64
        } else {
            0.0
        };
        let pass = a.max_p99_ms.is_none_or(|m| report.latency_ms.p99 <= m)
            && loss <= 0.01
            && report.rejected == 0;
        steps.push(report);
        if a.rates.len() > 1 {
            if pass {
                best = Some(step);
            } else {
                break;
            }
        }
    }

    for r in readers {
        r.abort();
    }
    drop(publishers);
    let windows = subs.finish().await?;
    let mut report = if a.rates.len() == 1 {
        steps.pop().unwrap_or_default()
    } else {
        let mut r = best.map(|b| steps[b].clone()).unwrap_or_default();
        r.scenario = "ramp".into();
        r.note = Some(match best {
            Some(b) => format!("highest passing step: {} at {} msg/s", b + 1, a.rates[b]),
            None => "no step passed".into(),
        });
        r.steps = steps;
        r.best_step = best;
        r
    };
    report.per_second = windows;
    Ok(report)
}

/// Sends at `rate` messages/s in total for `duration`, each publisher paced on its own.
#[allow(clippy::too_many_arguments)]
async fn publish(
    publishers: &mut [Publisher],
    rooms: &[String],
    rate: f64,
    text: ChatText,
    duration: Duration,
    wire: Wire,
    subs: &Subs,
    bar: Option<&indicatif::ProgressBar>,
    sent_total: &AtomicU64,
) -> anyhow::Result<()> {
    let per_pub = rate / publishers.len() as f64;
    let start = Instant::now();
    let delivered0 = subs.delivered();
    let mut tasks = Vec::new();
    for p in publishers.iter_mut() {
        tasks.push(async move {
            let mut sent: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut frame = Vec::with_capacity(64 * 1024);
            let mut seq = CHAT_SEQ_BASE;
            loop {
                tick.tick().await;
                let elapsed = start.elapsed();
                if elapsed >= duration {
                    return anyhow::Ok(());
                }
                let due = (elapsed.as_secs_f64() * per_pub) as u64;
                if due <= sent {
                    continue;
                }
                let n = (due - sent).min(512);
                frame.clear();
                if wire == Wire::JsonText {
                    frame.push(b'[');
                }
                let stamp = now_us();
                for _ in 0..n {
                    let room = &rooms[p.rooms[((seq - CHAT_SEQ_BASE) as usize) % p.rooms.len()]];
                    chat_packet(wire, &mut frame, seq, room, stamp, text);
                    seq = seq.wrapping_add(1).max(CHAT_SEQ_BASE);
                }
                let opcode = if wire == Wire::JsonText {
                    frame.push(b']');
                    Opcode::Text
                } else {
                    Opcode::Binary
                };
                p.writer.send(opcode, &frame).await?;
                sent += n;
                sent_total.fetch_add(n, Relaxed);
            }
        });
    }
    let progress = async {
        if let Some(b) = bar {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let e = start.elapsed();
                b.set_position(e.as_millis() as u64);
                let rate = (subs.delivered() - delivered0) as f64 / e.as_secs_f64().max(0.001);
                b.set_message(format!("{rate:.0} deliveries/s"));
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = futures_join_all(tasks) => r,
        _ = progress => Ok(()),
    }
}

/// Runs futures concurrently on this task; the first error wins.
async fn futures_join_all<F: std::future::Future<Output = anyhow::Result<()>>>(
    futs: Vec<F>,
) -> anyhow::Result<()> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < set.len() {
            match set[i].as_mut().poll(cx) {
                std::task::Poll::Ready(Ok(())) => {
                    drop(set.swap_remove(i));
                }
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => i += 1,
            }
        }
        if set.is_empty() {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
