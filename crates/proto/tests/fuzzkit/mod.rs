//! A small coverage-less mutation fuzzer for stable Rust, shared by the fuzz tests of
//! `roomcast-proto` (`tests/fuzz.rs`) and `roomcast-server` (`tests/fuzz_api.rs`, which includes
//! this file by path).
//!
//! Seeds are valid inputs built with the crates' own encoders; each round picks one, applies a
//! few mutations (bit flips, byte inserts and deletes, length-field edits, splices with another
//! seed, random bytes) and runs the target on the result under `catch_unwind`. A counting global
//! allocator (each test binary declares [`CountingAlloc`] its `#[global_allocator]`) measures the bytes the
//! target allocates for one input; they must stay within the target's [`Bound`]. A failure prints
//! the input as hex, the run's seed and the round, so it can be replayed.
//!
//! Environment: `ROOMCAST_FUZZ_MS` (time per target, default 2000), `ROOMCAST_FUZZ_SEED` (the
//! base seed; default: random, printed). It must not grow into a framework: no corpus on disk, no
//! coverage feedback.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

// ---- counting allocator ----------------------------------------------------------------------

thread_local! {
    /// Whether allocations on this thread are being counted (only while a target runs).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Bytes requested by `alloc`/`realloc` (the new size) since counting started.
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    /// Bytes live now, relative to the start (may go below zero: frees of older blocks).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Highest `LIVE` seen.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting per thread (tests run on several threads at once).
pub struct CountingAlloc;

fn note(add: usize, remove: usize) {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            TOTAL.with(|t| t.set(t.get().saturating_add(add)));
            LIVE.with(|l| {
                let v = l.get() + add as isize - remove as isize;
                l.set(v);
                PEAK.with(|p| p.set(p.get().max(v)));
            });
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only thread-locals
// with const initialisers (no allocation, no re-entry).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 0);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 0);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, layout.size());
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size, layout.size());
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What one input cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocated {
    /// Bytes requested in total (every `alloc`, and the new size of every `realloc`).
    pub total: usize,
    /// Most bytes live at once above the level at the start.
    pub peak: usize,
}

/// Runs `f` with this thread's allocations counted.
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, Allocated) {
    TOTAL.with(|t| t.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    let a = Allocated {
        total: TOTAL.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
    };
    (r, a)
}

/// Runs `f` with counting paused: the target's own bookkeeping (copies of the input, a
/// reference run) is not the decoder's cost.
pub fn uncounted<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(false));
    let r = f();
    COUNTING.with(|c| c.set(was));
    r
}

/// The allocation a target may make for one input of `len` bytes:
/// at most `base + per_byte × len` bytes in total, and never more than `cap` live at once.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub base: usize,
    pub per_byte: usize,
    pub cap: usize,
}

impl Bound {
    /// No allocation at all.
    pub const NONE: Bound = Bound {
        base: 0,
        per_byte: 0,
        cap: 0,
    };

    fn total_for(&self, len: usize) -> usize {
        self.base.saturating_add(self.per_byte.saturating_mul(len))
    }
}

// ---- the run ---------------------------------------------------------------------------------

/// How long each target runs: `ROOMCAST_FUZZ_MS`, default 2000 ms.
pub fn budget() -> Duration {
    let ms = std::env::var("ROOMCAST_FUZZ_MS")
        .ok()
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("ROOMCAST_FUZZ_MS={v:?}: expected milliseconds"))
        })
        .unwrap_or(2000);
    Duration::from_millis(ms)
}

/// The base seed: `ROOMCAST_FUZZ_SEED`, or a random one.
pub fn base_seed() -> u64 {
    match std::env::var("ROOMCAST_FUZZ_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ROOMCAST_FUZZ_SEED={v:?}: expected a u64")),
        Err(_) => fastrand::u64(..),
    }
}

/// Largest input a mutation may grow to.
pub const MAX_INPUT: usize = 1 << 16;

/// What a run did, for the test's report and its own assertions.
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: u64,
    pub max_total: usize,
    pub max_peak: usize,
    /// Highest `total / (len + 1)` seen.
    pub max_per_byte: f64,
}

/// Fuzzes `target` for the time budget. `target(input, rng)` must not panic; `rng` is seeded per
/// input (for split points and the like) so a round replays exactly. Panics with the failing
/// input on a panic or an allocation over `bound`.
pub fn run(
    name: &str,
    seeds: &[Vec<u8>],
    bound: Bound,
    target: impl Fn(&[u8], &mut fastrand::Rng),
) -> Report {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let seed = base_seed() ^ name_hash(name);
    let mut rng = fastrand::Rng::with_seed(seed);
    let deadline = Instant::now() + budget();
    let mut report = Report::default();
    let mut round: u64 = 0;
    // Seeds first, unchanged; then mutants until the time is up (at least one full pass).
    while round < seeds.len() as u64 || Instant::now() < deadline {
        let input = if round < seeds.len() as u64 {
            seeds[round as usize].clone()
        } else {
            mutate(&mut rng, seeds)
        };
        let input_seed = rng.u64(..);
        let mut input_rng = fastrand::Rng::with_seed(input_seed);
        let (outcome, alloc) =
            counted(|| catch_unwind(AssertUnwindSafe(|| target(&input, &mut input_rng))));
        let fail = |what: String| -> ! {
            panic!(
                "fuzz {name}: {what}\n  replay: ROOMCAST_FUZZ_SEED={} (round {round}, input rng {input_seed})\n  input ({} bytes): {}",
                seed ^ name_hash(name),
                input.len(),
                hex(&input)
            )
        };
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            fail(format!("panicked: {msg}"));
        }
        let allowed = bound.total_for(input.len());
        if alloc.total > allowed {
            fail(format!(
                "allocated {} bytes, bound {} + {} x {} = {allowed}",
                alloc.total,
                bound.base,
                bound.per_byte,
                input.len()
            ));
        }
        if alloc.peak > bound.cap {
            fail(format!(
                "{} bytes live at once, cap {}",
                alloc.peak, bound.cap
            ));
        }
        report.inputs += 1;
        report.max_total = report.max_total.max(alloc.total);
        report.max_peak = report.max_peak.max(alloc.peak);
        report.max_per_byte = report
            .max_per_byte
            .max(alloc.total as f64 / (input.len() + 1) as f64);
        round += 1;
    }
    println!(
        "fuzz {name}: {} inputs in {:?} (ROOMCAST_FUZZ_SEED={}); allocated per input: at most {} bytes in total, {} live, {:.1} per input byte",
        report.inputs,
        budget(),
        seed ^ name_hash(name),
        report.max_total,
        report.max_peak,
        report.max_per_byte
    );
    report
}

/// FNV-1a of a target's name, so that targets sharing a base seed explore differently.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The input as hex; a long one is cut after 1 KiB and written whole to a file.
pub fn hex(bytes: &[u8]) -> String {
    let text: String = bytes
        .iter()
        .take(1024)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() <= 1024 {
        return text;
    }
    let path = std::env::temp_dir().join(format!("roomcast-fuzz-{}.bin", fastrand::u64(..)));
    match std::fs::write(&path, bytes) {
        Ok(()) => format!("{text}... (whole input in {})", path.display()),
        Err(e) => format!("{text}... (not saved: {e})"),
    }
}

// ---- mutations -------------------------------------------------------------------------------

/// Values that tend to sit on boundaries of length fields.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    12,
    125,
    126,
    127,
    128,
    255,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// One mutant of a random seed: one to four stacked mutations.
pub fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        mutate_once(rng, seeds, &mut data);
    }
    data.truncate(MAX_INPUT);
    data
}

fn mutate_once(rng: &mut fastrand::Rng, seeds: &[Vec<u8>], data: &mut Vec<u8>) {
    let len = data.len();
    match rng.u8(..10) {
        // Flip one bit.
        0 | 1 if len > 0 => {
            let i = rng.usize(..len);
            data[i] ^= 1 << rng.u8(..8);
        }
        // Overwrite a byte.
        2 if len > 0 => {
            let i = rng.usize(..len);
            data[i] = rng.u8(..);
        }
        // Insert random bytes.
        3 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            data.splice(at..at, bytes);
        }
        // Delete a range.
        4 if len > 0 => {
            let at = rng.usize(..len);
            let n = rng.usize(1..=(len - at).min(32));
            data.drain(at..at + n);
        }
        // A length field: 1, 2, 4 or 8 big-endian bytes set to a boundary value (± 1).
        5 | 6 if len > 0 => {
            let width = [1usize, 2, 4, 8][rng.usize(..4)];
            let at = rng.usize(..len);
            let mut v = INTERESTING[rng.usize(..INTERESTING.len())];
            match rng.u8(..3) {
                0 => v = v.wrapping_add(1),
                1 => v = v.wrapping_sub(1),
                _ => {}
            }
            let bytes = v.to_be_bytes();
            for (k, b) in bytes[8 - width..].iter().enumerate() {
                if at + k < len {
                    data[at + k] = *b;
                }
            }
        }
        // Splice: this input's head with another seed's tail.
        7 => {
            let other = &seeds[rng.usize(..seeds.len())];
            let at = rng.usize(..=len);
            let from = rng.usize(..=other.len());
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        // Append a whole other seed (several messages back to back).
        8 => {
            let other = &seeds[rng.usize(..seeds.len())];
            data.extend_from_slice(other);
        }
        // Random bytes.
        _ => {
            let n = rng.usize(0..=64);
            *data = (0..n).map(|_| rng.u8(..)).collect();
        }
    }
}

/// Cuts `len` into one to eight chunks at random points (for streaming decoders).
pub fn split_points(rng: &mut fastrand::Rng, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.usize(0..8)).map(|_| rng.usize(..=len)).collect();
    cuts.push(len);
    cuts.sort_unstable();
    cuts
}
