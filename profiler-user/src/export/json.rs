//! The JSON contract: every JSON line loopbpf writes (stdout in `--json`
//! mode, `index.jsonl`, the daemon's `ID.json` records) is one of the typed
//! lines below, described by `docs/schema/loopbpf.schema.json`.
//!
//! Every line starts with `type`, `schema_version` and `time`; the other keys
//! follow in the order of the struct's fields (serde keeps it), which is the
//! documented order. Times are CLOCK_MONOTONIC nanoseconds (`*_ns`, the clock
//! of `process.hrtime.bigint()`, so they line up with the app's own) with
//! their wall-clock twin (`*_time`, RFC 3339 UTC, microseconds). Durations
//! are milliseconds rounded to 0.001 (1 µs, the text's precision); shares
//! are fractions of 1 rounded to 0.001, utilizations to 0.0001.
//!
//! Versioning: adding a key or a line type keeps `SCHEMA_VERSION`; renaming
//! or removing a key, changing its type, unit or meaning bumps it.
use std::{borrow::Cow, collections::BTreeMap, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::WallClock;
pub use crate::kernel::startup::StartupMs;
use crate::{
    assembly::{
        loop_stats::LoopFigures,
        threadpool::{PoolSummary, UtilizationPoint},
        threads::Evidence,
    },
    export::{
        breakdown::Verdict,
        pool_report::PoolReport,
        report::{EpisodeReport, ProcessSummary},
    },
    kernel::{probes::SyscallProbes, target::ThreadRole},
    symbolize::FrameKind,
};

/// The version of the keys, types and units below (see the module's doc).
pub const SCHEMA_VERSION: u32 = 1;

/// Milliseconds of `ns`, rounded to the microsecond.
fn ms(ns: u64) -> f64 {
    round(ns as f64 / 1e6, 1e3)
}

/// `x` rounded to `1/scale`; NaN and infinities (a share of nothing) are 0,
/// since JSON has no number for them.
fn round(x: f64, scale: f64) -> f64 {
    if x.is_finite() {
        (x * scale).round() / scale
    } else {
        0.0
    }
}

fn share(x: f64) -> f64 {
    round(x, 1e3)
}

fn utilization(x: f64) -> f64 {
    round(x, 1e4)
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-29T17:06:21.123456Z`.
pub fn rfc3339(unix_ns: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000000Z".into())
}

/// Nanoseconds since the epoch of `t` (0 before it).
fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// One JSON line: the fields every line has, then the line's own.
#[derive(Debug, Serialize, Deserialize)]
pub struct Line<T> {
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub schema_version: u32,
    /// When the line was written (RFC 3339 UTC), unless the type says
    /// otherwise.
    pub time: String,
    #[serde(flatten)]
    pub body: T,
}

impl<T: Serialize> Line<T> {
    fn new(kind: &'static str, time: String, body: T) -> Self {
        Line {
            kind: Cow::Borrowed(kind),
            schema_version: SCHEMA_VERSION,
            time,
            body,
        }
    }

    fn now(kind: &'static str, body: T) -> Self {
        Line::new(kind, rfc3339(unix_ns(SystemTime::now())), body)
    }

    /// The line, without its newline.
    pub fn to_json(&self) -> String {
        // Serializing these structs cannot fail (string keys, finite
        // numbers); should it ever, the reader still gets a typed line.
        serde_json::to_string(self).unwrap_or_else(|e| {
            error(&format!("serializing a {} line failed: {e}", self.kind), 1).to_json()
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Ready {
    pub loopbpf_version: &'static str,
    pub pids: Vec<u32>,
    pub threshold_ms: f64,
    pub frequency_hz: u64,
    pub syscall_probes: &'static str,
    /// Start-up time per phase (`btf`, `maps`, `load:<program>`, `attach`,
    /// …), in the order the phases ran.
    pub startup_ms: StartupMs,
}

pub fn ready(
    pids: &[u32],
    threshold_ns: u64,
    frequency_hz: u64,
    syscall_probes: SyscallProbes,
    startup_ms: StartupMs,
) -> Line<Ready> {
    Line::now(
        "ready",
        Ready {
            loopbpf_version: env!("CARGO_PKG_VERSION"),
            pids: pids.to_vec(),
            threshold_ms: ms(threshold_ns),
            frequency_hz,
            syscall_probes: syscall_probes.as_str(),
            startup_ms,
        },
    )
}

#[derive(Debug, Serialize)]
pub struct Warning {
    pub pid: Option<u32>,
    pub message: String,
}

pub fn warning(pid: Option<u32>, message: &str) -> Line<Warning> {
    Line::now(
        "warning",
        Warning {
            pid,
            message: message.to_owned(),
        },
    )
}

/// The last line of a run that failed: what failed and the exit status.
#[derive(Debug, Serialize)]
pub struct Error {
    pub message: String,
    pub exit_code: u8,
}

pub fn error(message: &str, exit_code: u8) -> Line<Error> {
    Line::now(
        "error",
        Error {
            message: message.to_owned(),
            exit_code,
        },
    )
}

#[derive(Debug, Serialize)]
pub struct Stall {
    pub pid: u32,
    pub tid: u32,
    pub thread: &'static str,
    pub start_ns: u64,
    pub start_time: String,
    pub busy_so_far_ms: f64,
}

pub fn stall(
    pid: u32,
    tid: u32,
    role: ThreadRole,
    start_ns: u64,
    now_ns: u64,
    clock: &WallClock,
) -> Line<Stall> {
    Line::now(
        "stall",
        Stall {
            pid,
            tid,
            thread: role.as_str(),
            start_ns,
            start_time: rfc3339(clock.unix_ns(start_ns)),
            busy_so_far_ms: ms(now_ns.saturating_sub(start_ns)),
        },
    )
}

/// Who the process was, in the daemon's stored records (absent from
/// `--pid` lines, whose operator named the process).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessLabels {
    pub comm: String,
    pub exe: String,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub cgroup: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Episode {
    /// `PID-TID-STARTNS`: the name of its files.
    pub id: String,
    pub pid: u32,
    pub tid: u32,
    pub thread: Cow<'static, str>,
    pub thread_name: Option<String>,
    pub start_ns: u64,
    pub start_time: String,
    pub end_ns: u64,
    pub end_time: String,
    pub duration_ms: f64,
    pub samples: u64,
    pub top_frame: Option<String>,
    pub top_frame_kind: Option<FrameKind>,
    pub top_frame_share: Option<f64>,
    pub verdict: Verdict,
    pub on_cpu_ms: f64,
    pub off_cpu_ms: f64,
    pub runqueue_ms: f64,
    pub gc_share: f64,
    pub syscall: Option<String>,
    pub folded: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    pub folded_error: Option<String>,
    pub ongoing: bool,
    /// A daemon record of an iteration still blocked: its stacks so far,
    /// replaced by the final episode (left so if loopbpf died first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
    #[serde(flatten)]
    pub process: Option<ProcessLabels>,
}

pub fn episode(r: &EpisodeReport, clock: &WallClock) -> Line<Episode> {
    let e = &r.episode;
    let b = &r.breakdown;
    Line::now(
        "episode",
        Episode {
            id: super::common::episode_id(e.pid, e.tid, e.start_ns),
            pid: e.pid,
            tid: e.tid,
            thread: Cow::Borrowed(r.role.as_str()),
            thread_name: r.thread_name.clone(),
            start_ns: e.start_ns,
            start_time: rfc3339(clock.unix_ns(e.start_ns)),
            end_ns: e.end_ns,
            end_time: rfc3339(clock.unix_ns(e.end_ns)),
            duration_ms: ms(e.busy_ns),
            samples: e.samples,
            top_frame: r.top_frame.as_ref().map(|h| h.name.clone()),
            top_frame_kind: r.top_frame.as_ref().map(|h| h.kind),
            top_frame_share: r.top_frame.as_ref().map(|h| share(h.share)),
            verdict: b.verdict,
            on_cpu_ms: ms(b.on_cpu_ns),
            off_cpu_ms: ms(b.blocked_ns),
            runqueue_ms: ms(b.runq_ns),
            gc_share: share(b.gc_share),
            syscall: b.syscall.clone(),
            folded: r.folded_path.clone(),
            files: r.files.clone(),
            folded_error: r.folded_error.clone(),
            ongoing: e.ongoing,
            provisional: false,
            process: None,
        },
    )
}

/// One loop thread's figures over the whole run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Figures {
    pub iterations: u64,
    pub utilization: f64,
    pub busy_p50_ms: f64,
    pub busy_p90_ms: f64,
    pub busy_p99_ms: f64,
    pub busy_max_ms: f64,
    pub episodes: u64,
    pub busy_ms: f64,
    pub busy_off_cpu_ms: f64,
    pub busy_runqueue_ms: f64,
}

impl Figures {
    fn of(f: &LoopFigures) -> Self {
        Figures {
            iterations: f.iterations,
            utilization: utilization(f.utilization),
            busy_p50_ms: ms(f.p50_ns),
            busy_p90_ms: ms(f.p90_ns),
            busy_p99_ms: ms(f.p99_ns),
            busy_max_ms: ms(f.max_ns),
            episodes: f.episodes,
            busy_ms: ms(f.busy_ns),
            busy_off_cpu_ms: ms(f.blocked_ns),
            busy_runqueue_ms: ms(f.runq_ns),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Loop {
    pub tid: u32,
    pub thread: &'static str,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Serialize)]
pub struct Thread {
    pub tid: u32,
    pub name: String,
    pub role: &'static str,
    pub evidence: Evidence,
}

#[derive(Debug, Serialize)]
pub struct Pool {
    pub pool_size: usize,
    pub pool_size_source: &'static str,
    pub workers_seen: usize,
    pub items: u64,
    pub busy_ms: f64,
    pub utilization: f64,
    pub peak_utilization: f64,
    pub saturations: u64,
    pub saturated_ms: f64,
    pub queue_wait_tracked: bool,
    pub queue_wait_items: u64,
    pub queue_wait_mean_ms: f64,
    pub queue_wait_p50_ms: f64,
    pub queue_wait_p99_ms: f64,
    pub queue_wait_max_ms: f64,
    pub stopped_early: bool,
}

impl Pool {
    fn of(p: &PoolSummary) -> Self {
        Pool {
            pool_size: p.size,
            pool_size_source: p.size_source,
            workers_seen: p.workers_seen,
            items: p.items,
            busy_ms: ms(p.busy_ns),
            utilization: utilization(p.utilization),
            peak_utilization: utilization(p.peak_utilization),
            saturations: p.saturations,
            saturated_ms: ms(p.saturated_ns),
            queue_wait_tracked: p.queue_wait_tracked,
            queue_wait_items: p.waited_items,
            queue_wait_mean_ms: ms(p.queue_wait_mean_ns),
            queue_wait_p50_ms: ms(p.queue_wait_p50_ns),
            queue_wait_p99_ms: ms(p.queue_wait_p99_ns),
            queue_wait_max_ms: ms(p.queue_wait_max_ns),
            stopped_early: p.stopped_early,
        }
    }
}

/// The main loop's figures at the top level (what most readers want), every
/// loop thread under `loops`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub pid: u32,
    pub comm: String,
    pub exited: bool,
    #[serde(flatten)]
    pub main: Figures,
    pub episodes_reported: u64,
    pub samples: u64,
    pub samples_lost: u64,
    pub episodes_lost: u64,
    pub off_cpu_lost: u64,
    /// Loop-thread states the kernel's THREADS LRU evicted, all targets.
    pub threads_evicted: u64,
    /// What went wrong in the symbolizer, all targets together.
    pub symbolizer: crate::symbolize::SymbolizerHealth,
    pub loops: Vec<Loop>,
    pub thread_roles: BTreeMap<&'static str, usize>,
    pub threads: Vec<Thread>,
    pub threadpool: Option<Pool>,
    /// JavaScript frames named from V8's memory; None when not read.
    pub v8_frames: Option<crate::symbolize::V8Frames>,
}

pub fn summary(s: &ProcessSummary) -> Line<Summary> {
    let main = s.loops.first().map(|l| l.figures).unwrap_or_default();
    Line::now(
        "summary",
        Summary {
            pid: s.pid,
            comm: s.comm.clone(),
            exited: s.exited,
            main: Figures::of(&main),
            episodes_reported: s.episodes_reported,
            samples: s.samples,
            samples_lost: s.kernel.samples_lost,
            episodes_lost: s.kernel.episodes_lost,
            off_cpu_lost: s.kernel.off_cpu_lost,
            threads_evicted: s.kernel.threads_evicted,
            symbolizer: s.symbolizer,
            loops: s
                .loops
                .iter()
                .map(|l| Loop {
                    tid: l.tid,
                    thread: l.role.as_str(),
                    figures: Figures::of(&l.figures),
                })
                .collect(),
            thread_roles: crate::assembly::threads::role_counts(&s.threads),
            threads: s
                .threads
                .iter()
                .map(|t| Thread {
                    tid: t.tid,
                    name: t.name.clone(),
                    role: t.role.as_str(),
                    evidence: t.evidence,
                })
                .collect(),
            threadpool: s.threadpool.as_ref().map(Pool::of),
            v8_frames: s.v8_names.as_ref().map(crate::symbolize::V8Frames::of),
        },
    )
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PoolSaturation {
    /// `PID-threadpool-STARTNS`: the name of its files.
    pub id: String,
    pub pid: u32,
    pub start_ns: u64,
    pub start_time: String,
    pub end_ns: u64,
    pub end_time: String,
    pub duration_ms: f64,
    pub pool_size: usize,
    pub workers: Vec<u32>,
    pub items: u64,
    pub samples: u64,
    pub top_work: Option<String>,
    pub top_work_share: Option<f64>,
    pub top_frame: Option<String>,
    pub top_frame_share: Option<f64>,
    pub folded: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    pub folded_error: Option<String>,
    pub ongoing: bool,
    #[serde(flatten)]
    pub process: Option<ProcessLabels>,
}

pub fn pool_saturation(r: &PoolReport, clock: &WallClock) -> Line<PoolSaturation> {
    let e = &r.episode;
    Line::now(
        "threadpool_saturation",
        PoolSaturation {
            id: super::common::pool_id(e.pid, e.start_ns),
            pid: e.pid,
            start_ns: e.start_ns,
            start_time: rfc3339(clock.unix_ns(e.start_ns)),
            end_ns: e.end_ns,
            end_time: rfc3339(clock.unix_ns(e.end_ns)),
            duration_ms: ms(e.end_ns.saturating_sub(e.start_ns)),
            pool_size: e.pool_size,
            workers: e.workers.clone(),
            items: e.items,
            samples: e.samples,
            top_work: r.top_work.as_ref().map(|h| h.name.clone()),
            top_work_share: r.top_work.as_ref().map(|h| share(h.share)),
            top_frame: r.top_frame.as_ref().map(|h| h.name.clone()),
            top_frame_share: r.top_frame.as_ref().map(|h| share(h.share)),
            folded: r.folded_path.clone(),
            files: r.files.clone(),
            folded_error: r.folded_error.clone(),
            ongoing: e.ongoing,
            process: None,
        },
    )
}

#[derive(Debug, Serialize)]
pub struct PoolSaturated {
    pub pid: u32,
    pub pool_size: usize,
    pub start_ns: u64,
    pub start_time: String,
    pub saturated_so_far_ms: f64,
}

pub fn pool_saturated(
    pid: u32,
    pool_size: usize,
    since_ns: u64,
    now_ns: u64,
    clock: &WallClock,
) -> Line<PoolSaturated> {
    Line::now(
        "threadpool_saturated",
        PoolSaturated {
            pid,
            pool_size,
            start_ns: since_ns,
            start_time: rfc3339(clock.unix_ns(since_ns)),
            saturated_so_far_ms: ms(now_ns.saturating_sub(since_ns)),
        },
    )
}

/// `time` is the end of the window, `time_ns` the same instant on
/// CLOCK_MONOTONIC.
#[derive(Debug, Serialize)]
pub struct PoolUtilization {
    pub pid: u32,
    pub time_ns: u64,
    pub window_ms: f64,
    pub utilization: f64,
    pub busy_workers: usize,
    pub pool_size: usize,
    pub items_per_s: f64,
}

pub fn pool_utilization(p: &UtilizationPoint, clock: &WallClock) -> Line<PoolUtilization> {
    Line::new(
        "threadpool_utilization",
        rfc3339(clock.unix_ns(p.time_ns)),
        PoolUtilization {
            pid: p.pid,
            time_ns: p.time_ns,
            window_ms: ms(p.window_ns),
            utilization: utilization(p.utilization),
            busy_workers: p.busy_workers,
            pool_size: p.pool_size,
            items_per_s: round(p.items_per_s, 10.0),
        },
    )
}

/// A stored record (a line of `index.jsonl`) read back and written again
/// as a line of this schema version: `loopbpf episodes --json`. `None` for
/// anything else: a record of another version or type, or damage.
pub fn stored_record(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
        schema_version: Option<u32>,
    }
    let head: Head = serde_json::from_slice(line).ok()?;
    if head.schema_version != Some(SCHEMA_VERSION) {
        return None;
    }
    match head.kind.as_str() {
        "episode" => serde_json::from_slice::<Line<Episode>>(line)
            .ok()
            .map(|l| l.to_json()),
        "threadpool_saturation" => serde_json::from_slice::<Line<PoolSaturation>>(line)
            .ok()
            .map(|l| l.to_json()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
