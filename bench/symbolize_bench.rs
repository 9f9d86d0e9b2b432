//! Symbolization benchmark, run by `cargo xtask bench`:
//! `symbolize_bench ENTRIES` writes a synthetic V8 perf map of ENTRIES lines
//! for a sleeping child it spawns, then measures
//! - the first load of the map (`PerfMap::refresh` from scratch) and its RSS,
//! - an incremental update (10% more lines appended, then `refresh`),
//! - frames symbolized per second through `Symbolizer` (JIT addresses only).
//!
//! It prints one machine-readable line, `bench-symbolize key=value ...`, that
//! xtask parses. The perf map and the child are removed even on failure.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use profiler_user::symbolize::{FrameKind, PerfMap, StackRequest, Symbolizer};

const BASE: u64 = 0x7f3a_1c00_0000;
const FRAMES_PER_STACK: usize = 24;
const STACKS_PER_REQUEST: usize = 200;
const SYMBOLIZE_FOR: Duration = Duration::from_secs(2);

/// Kills the child and removes its perf map when dropped.
struct Target {
    child: Child,
    map: PathBuf,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.map);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start and size of entry `i`: sizes vary between 0x40 and 0x43f bytes.
fn entry(i: usize) -> (u64, u64) {
    let size = 0x40 + (i as u64 * 2654435761) % 0x400;
    // Entries are laid out with a fixed stride so start can be computed.
    (BASE + i as u64 * 0x800, size)
}

fn append_entries(path: &PathBuf, from: usize, to: usize) -> std::io::Result<()> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for i in from..to {
        let (start, size) = entry(i);
        // Mix of optimized (*) and interpreted (~) functions, as V8 writes them.
        let tier = if i % 3 == 0 { '~' } else { '*' };
        writeln!(
            out,
            "{start:x} {size:x} JS:{tier}fn{i} /app/src/file{}.js:{}:{}",
            i % 997,
            i % 4000 + 1,
            i % 80 + 1
        )?;
    }
    out.flush()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let entries: usize = std::env::args()
        .nth(1)
        .ok_or("usage: symbolize_bench ENTRIES")?
        .parse()
        .map_err(|e| format!("ENTRIES must be a number: {e}"))?;
    let child = Command::new("sleep").arg("600").spawn()?;
    let pid = child.id();
    let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    let target = Target { child, map };
    File::create(&target.map)?;

    let t = Instant::now();
    append_entries(&target.map, 0, entries)?;
    let write_ms = ms(t.elapsed());

    // First load and memory of a PerfMap on its own.
    let rss_before = rss_kib();
    let mut perf_map = PerfMap::new(&target.map);
    let t = Instant::now();
    perf_map.refresh()?;
    let load_ms = ms(t.elapsed());
    let rss_delta_kib = rss_kib().saturating_sub(rss_before);
    if perf_map.len() != entries || perf_map.bad_lines() != 0 {
        return Err(format!(
            "loaded {} entries ({} bad lines), expected {entries}",
            perf_map.len(),
            perf_map.bad_lines()
        )
        .into());
    }

    // Incremental update: 10% more appended, then refreshed.
    let added = (entries / 10).max(1);
    append_entries(&target.map, entries, entries + added)?;
    let t = Instant::now();
    perf_map.refresh()?;
    let update_ms = ms(t.elapsed());
    if perf_map.len() != entries + added {
        return Err(format!("after update {} entries", perf_map.len()).into());
    }
    drop(perf_map);

    // Frames per second through the Symbolizer thread, JIT addresses only.
    let total = entries + added;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut request = || -> Vec<StackRequest> {
        (0..STACKS_PER_REQUEST)
            .map(|_| StackRequest {
                user: (0..FRAMES_PER_STACK)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let (start, size) = entry(seed as usize % total);
                        start + size / 2
                    })
                    .collect(),
                kernel: Vec::new(),
                v8: Vec::new(),
            })
            .collect()
    };
    let symbolizer = Symbolizer::start()?;
    let t = Instant::now();
    let first = symbolizer.symbolize_blocking(pid, request())?;
    let first_symbolize_ms = ms(t.elapsed());
    let js = first
        .stacks
        .iter()
        .flatten()
        .filter(|f| f.kind == FrameKind::Js)
        .count();
    if js != STACKS_PER_REQUEST * FRAMES_PER_STACK {
        return Err(format!(
            "only {js} of {} frames were named from the perf map ({:?})",
            STACKS_PER_REQUEST * FRAMES_PER_STACK,
            first.perf_map
        )
        .into());
    }
    let mut frames = 0usize;
    let t = Instant::now();
    while t.elapsed() < SYMBOLIZE_FOR {
        let stacks = request();
        let out = symbolizer.symbolize_blocking(pid, stacks)?;
        frames += out.stacks.iter().map(Vec::len).sum::<usize>();
    }
    let frames_per_s = frames as f64 / t.elapsed().as_secs_f64();
    symbolizer.forget(pid);
    drop(target);

    println!(
        "bench-symbolize entries={entries} write_ms={write_ms:.1} load_ms={load_ms:.1} \
         rss_delta_kib={rss_delta_kib} update_entries={added} update_ms={update_ms:.1} \
         first_symbolize_ms={first_symbolize_ms:.1} frames_per_s={frames_per_s:.0}"
    );
    Ok(())
}
