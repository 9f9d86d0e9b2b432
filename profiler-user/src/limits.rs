//! The timing and the memory limits of a session (`loopbpf --pid`) and of the
//! daemon, in one place: both front ends run the same lifecycle on these.
//! Bounds on what a watched process controls (perf-map lines, V8 heap reads,
//! /proc walks) stay beside the parser they protect.
use std::time::Duration;

/// Distinct stacks kept per open iteration and per threadpool: bounds memory
/// when a loop spins for minutes through varied code.
pub const MAX_DISTINCT_STACKS: usize = 4096;

/// Samples are sent without waking us; drain at least this often so the ring
/// buffer never fills during a long block. Threadpool monitors tick as often.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often open iterations are looked at for stalls (and, in a session,
/// watched processes for being alive).
pub const STALL_CHECK_EVERY: Duration = Duration::from_millis(250);
/// A loop still blocked this long (and past the threshold) is announced before
/// its iteration ends: a wedged process may never end it.
pub const STALL_NOTICE_AFTER: Duration = Duration::from_secs(1);
/// Then again this often while it lasts (the daemon's log line).
pub const STALL_REPEAT_EVERY: Duration = Duration::from_secs(10);
/// Perf maps are re-read this often, so names survive the process.
pub const PERF_MAP_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// An idle Node process may sleep in one epoll call for as long as it likes,
/// but then its thread has a slot from the poll's return; a process with no
/// poll at all after this long is probably not running an event loop.
pub const NO_POLL_WARNING_AFTER: Duration = Duration::from_secs(5);

/// The daemon copies the kernel's loop statistics into its metrics this often.
pub const METRICS_EVERY: Duration = Duration::from_secs(1);
/// Exit events can be lost only when the ring buffer is full: a slow sweep suffices.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Age-based retention between writes (size is enforced on every write).
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// A process the daemon watches gets its threadpool uprobes once it has lived
/// this long.
pub const POOL_ATTACH_AFTER: Duration = Duration::from_secs(1);
/// Exec events waiting for a second look, at most: an exec storm must not grow memory.
pub const MAX_PENDING_EXECS: usize = 4096;

/// Above this many work items a second, the uprobes (a few microseconds per
/// item, see the README) would cost more than a profiler may: they are
/// detached and the figures so far kept.
pub const MAX_POOL_ITEMS_PER_S: f64 = 2_000.0;
/// Busy periods and samples are kept this long to assemble saturations.
pub const POOL_KEEP_NS: u64 = 120_000_000_000;
/// Bounds the samples held per process (a pool of 1024 busy workers at 999 Hz
/// fills this in about 0.1 s, four workers at 199 Hz in four minutes).
pub const MAX_POOL_SAMPLES: usize = 200_000;
