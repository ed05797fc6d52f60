//! The subscribers' receive loop: one thread reads every subscriber connection of its process
//! through one level-triggered epoll set — one `read` per ready connection per round — and
//! pauses `pace` between rounds, so that each round finds many connections ready.
//!
//! Why paced: on loopback the server's `send()` also runs the receiver's TCP path, including
//! the wake-up of a reader blocked in `epoll_wait`, on the server's CPU. Viewers on other
//! machines cost the server no such wake-up. A reader that sleeps between rounds is not
//! waiting in epoll when data arrives, so no wake-up is made; and it makes one epoll call per
//! round rather than one (plus a task wake-up and an extra `read` that finds nothing) per frame.
//! The pause is part of every latency the tool reports: at most `pace` is added, never hidden.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use roomcast_proto::{Op, Wire};

use crate::client::{Event, FrameBuf};
use crate::stats::{Recorder, now_us};

/// One subscriber's view of its room's stream.
pub struct Track {
    baseline: u64,
    seen: Vec<u64>,
}

impl Track {
    pub fn new(baseline: u64) -> Track {
        Track {
            baseline,
            seen: Vec::new(),
        }
    }

    /// Whether `seq` is new (and records it).
    fn first_time(&mut self, seq: u64) -> bool {
        if seq <= self.baseline {
            return false;
        }
        let i = (seq - self.baseline - 1) as usize;
        let (w, b) = (i / 64, i % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        let new = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        new
    }
}

/// A joined subscriber handed to the reader.
pub struct Sub {
    pub stream: TcpStream,
    pub frames: FrameBuf,
    pub track: Track,
}

pub struct ReaderConfig {
    pub wire: Wire,
    /// Pause between rounds (zero: wait in epoll like an ordinary event loop).
    pub pace: Duration,
    /// Send a heartbeat on every connection this often (spread over the period).
    pub heartbeat: Option<Duration>,
}

/// An epoll instance, closed on drop.
struct Epoll(i32);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn ctl(&self, op: i32, fd: i32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0, op, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ready tokens, waiting at most `timeout_ms`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> std::io::Result<usize> {
        // SAFETY: `events` is valid for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, timeout_ms)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// What one round read, added to the recorder's totals at its end (latencies first, so that a
/// step never ends with deliveries counted whose latencies are not recorded yet).
#[derive(Default)]
struct Round {
    delivered: u64,
    duplicates: u64,
    frames: u64,
    bytes: u64,
    latencies: Vec<u64>,
}

impl Round {
    fn publish(&mut self, recorder: &Arc<Recorder>) {
        recorder.record_all(&self.latencies);
        self.latencies.clear();
        for (total, n) in [
            (&recorder.frames, &mut self.frames),
            (&recorder.delivered, &mut self.delivered),
            (&recorder.duplicates, &mut self.duplicates),
            (&recorder.bytes, &mut self.bytes),
        ] {
            if *n > 0 {
                total.fetch_add(*n, Relaxed);
                *n = 0;
            }
        }
    }
}

/// Reads every subscriber until `stop`. A connection the server closes (or that fails) is
/// counted in `recorder.closed` and dropped; the others go on, and what it missed shows up as
/// lost deliveries.
pub fn run(
    mut subs: Vec<Sub>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    cfg: ReaderConfig,
) -> anyhow::Result<()> {
    let ep = Epoll::new()?;
    for (i, s) in subs.iter().enumerate() {
        ep.ctl(libc::EPOLL_CTL_ADD, s.stream.as_raw_fd(), i as u64)?;
    }
    let mut alive = vec![true; subs.len()];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut round = Round {
        latencies: Vec::with_capacity(64 * 1024),
        ..Round::default()
    };
    let drop_sub = |i: usize, s: &Sub, e: anyhow::Error, alive: &mut Vec<bool>| {
        if recorder.closed.fetch_add(1, Relaxed) == 0 {
            eprintln!("subscriber {i} stopped: {e:#} (later ones are only counted)");
        }
        let _ = ep.ctl(libc::EPOLL_CTL_DEL, s.stream.as_raw_fd(), 0);
        alive[i] = false;
    };
    // Bytes read with the join reply but not parsed yet (normally none: nothing is published
    // before every subscriber has joined).
    for (i, s) in subs.iter_mut().enumerate() {
        if let Err(e) = take_frames(s, cfg.wire, &mut round) {
            drop_sub(i, s, e, &mut alive);
        }
    }
    // Heartbeats: one on every connection now (the joins may have taken a while), then spread
    // evenly over the period, connection i at i/n of it.
    let beat_start = Instant::now();
    let mut beats_sent = 0u64;
    while !stop.load(Relaxed) {
        let n = ep.wait(&mut events, 100)?;
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            if !alive[i] {
                continue;
            }
            let s = &mut subs[i];
            let got = s.frames.fill_now(&mut s.stream).and_then(|n| {
                round.bytes += n as u64;
                take_frames(s, cfg.wire, &mut round)
            });
            if let Err(e) = got {
                drop_sub(i, s, e, &mut alive);
            }
        }
        round.publish(&recorder);
        if let Some(every) = cfg.heartbeat
            && !subs.is_empty()
        {
            let count = subs.len() as u64;
            let due = count
                + (beat_start.elapsed().as_secs_f64() / every.as_secs_f64() * count as f64) as u64;
            while beats_sent < due {
                let i = (beats_sent % count) as usize;
                beats_sent += 1;
                if !alive[i] {
                    continue;
                }
                let (opcode, payload) = crate::client::request(
                    cfg.wire,
                    Op::Heartbeat,
                    beats_sent as u32,
                    "{}",
                    |_| {},
                );
                let frame = roomcast_proto::ws::client_frame(opcode, &payload, [7, 1, 3, 5]);
                // A few bytes into an almost empty send buffer: anything short of the whole
                // frame would corrupt the stream, so the connection counts as failed.
                match subs[i].stream.write(&frame) {
                    Ok(n) if n == frame.len() => {}
                    Ok(_) => drop_sub(
                        i,
                        &subs[i],
                        anyhow::anyhow!("heartbeat only partly written"),
                        &mut alive,
                    ),
                    // The send buffer is full: the server has not read for a long time; skip
                    // this beat (its silence check will tell).
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => drop_sub(i, &subs[i], e.into(), &mut alive),
                }
            }
        }
        if n < events.len() && !cfg.pace.is_zero() {
            std::thread::sleep(cfg.pace);
        }
    }
    let closed = recorder.closed.load(Relaxed);
    if closed > 0 {
        eprintln!(
            "{closed} of {} subscribers of this process were closed by the server or failed",
            subs.len()
        );
    }
    Ok(())
}

/// Parses the frames one subscriber holds; counts its room messages and frames into `round`
/// (also those before a frame that fails, such as the server's close frame).
fn take_frames(s: &mut Sub, wire: Wire, round: &mut Round) -> anyhow::Result<()> {
    let now = now_us();
    let track = &mut s.track;
    let (delivered, dups, latencies) = (
        &mut round.delivered,
        &mut round.duplicates,
        &mut round.latencies,
    );
    let frames = s.frames.parse(wire, &mut |e| {
        if let Event::RoomMsg(m) = e {
            if track.first_time(m.seq) {
                *delivered += 1;
                if m.sent_us > 0 {
                    latencies.push(now.saturating_sub(m.sent_us));
                }
            } else if m.seq > track.baseline {
                *dups += 1;
            }
        }
    })?;
    round.frames += frames as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_new_and_repeated_sequence_numbers() {
        let mut t = Track::new(10);
        assert!(!t.first_time(10), "at or before the baseline is not new");
        assert!(t.first_time(11));
        assert!(!t.first_time(11));
        assert!(t.first_time(200));
        assert!(t.first_time(12));
        assert!(!t.first_time(200));
    }
}
