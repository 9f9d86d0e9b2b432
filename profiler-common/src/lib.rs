//! One definition of every record that crosses the kernel/user boundary.
//!
//! Every type is `#[repr(C)]`, laid out without implicit padding (checked by the
//! `const` assertions at the bottom), so the bytes the eBPF side writes are the
//! bytes userspace reads.
#![no_std]

pub mod histogram;

/// How many distinct epoll loops one thread may poll before the oldest slot is
/// recycled. A Node thread has one loop, plus one short-lived nested loop per
/// `execSync`/`spawnSync` in flight; four leaves room for nesting inside nesting.
pub const MAX_LOOP_SLOTS: usize = 4;
/// `LoopSlot::in_poll` of a thread found asleep in a poll at attach (userspace
/// seeds it from `/proc/PID/task/TID/syscall`). fexit never runs for a call
/// entered before it was attached, so that poll's return is taken at the
/// thread's next switch-in (the wakeup that ends the poll).
pub const IN_POLL_BEFORE_ATTACH: u32 = 2;

/// Frames kept per user stack: the kernel's default `perf_event_max_stack`.
pub const MAX_USER_FRAMES: usize = 127;
/// Frames kept per kernel stack; deeper kernel stacks are truncated at the leaf side.
pub const MAX_KERNEL_FRAMES: usize = 64;
/// Frames (leaf first, along the frame-pointer chain) whose V8 slots a sample
/// keeps: the function object at fp-16 and the context or frame-type marker
/// at fp-8, as they were when the sample was taken.
pub const V8_FRAMES: usize = 32;

/// Bytes of user stack copied above %rsp with each sample and off-CPU stack,
/// for userspace to unwind code without frame pointers (glibc, OpenSSL, zlib,
/// addons) with its unwind tables. It only has to reach the first frame that
/// keeps a frame pointer above the native code (V8's, node's); the kernel's
/// frame-pointer walk, taken too, supplies the rest. A power of two: the
/// kernel side masks read sizes with `STACK_COPY_BYTES * 2 - 1`.
pub const STACK_COPY_BYTES: usize = 16384;

/// The copy's first bytes hold the 128-byte red zone below %rsp, the rest
/// the stack from %rsp up. Leaf functions keep data there, and OpenSSL's
/// realigning AVX2 assembly the caller's %rsp its unwind rule reads
/// (`*(rsp - 8) + 8`).
pub const STACK_RED_ZONE: usize = 128;

/// The user registers an unwinder starts from, and how much stack was copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of the copy filled from `sp` up, after the red zone (0:
    /// registers or stack unreadable).
    pub stack_bytes: u32,
    /// Bytes below `sp` copied, ending at `STACK_RED_ZONE` in the copy:
    /// `STACK_RED_ZONE`, or 0 when that page could not be read.
    pub below_sp: u32,
}

/// Size of the `WATCHED_BITMAP`, one bit per tgid: 2^22 is the kernel's
/// `PID_MAX_LIMIT` on 64-bit, so every tgid has a bit of its own.
pub const WATCHED_BITS: u32 = 1 << 22;
pub const WATCHED_BITMAP_WORDS: u32 = WATCHED_BITS / 64;

/// `kind` of a ring-buffer record.
pub const EVENT_EPISODE: u32 = 1;
pub const EVENT_SAMPLE: u32 = 2;
pub const EVENT_EXEC: u32 = 3;
pub const EVENT_EXIT: u32 = 4;
pub const EVENT_OFF_CPU: u32 = 5;
/// A libuv threadpool worker's busy period that lasted at least the threshold.
pub const EVENT_POOL_BUSY: u32 = 6;
/// A `cpu-clock` sample of a busy threadpool worker (layout of `SampleEvent`).
pub const EVENT_POOL_SAMPLE: u32 = 7;

/// Indexes of the per-CPU `COUNTERS` array: things the kernel side had to drop
/// or could not do, reported to the user at exit.
pub const COUNTER_SAMPLES_SENT: u32 = 0;
pub const COUNTER_SAMPLES_LOST: u32 = 1;
pub const COUNTER_EPISODES_LOST: u32 = 2;
pub const COUNTER_THREADS_FULL: u32 = 3;
pub const COUNTER_STATS_FULL: u32 = 4;
pub const COUNTER_SLOTS_RECYCLED: u32 = 5;
pub const COUNTER_USER_STACK_ERRORS: u32 = 6;
pub const COUNTER_OFF_CPU_LOST: u32 = 7;
/// A threadpool worker could not get a `POOL_WORKERS` entry.
pub const COUNTER_POOL_WORKERS_FULL: u32 = 8;
/// A work item started with no submit time known (submitted before attach,
/// or its `POOL_PENDING` entry was evicted): its queue wait is not counted.
pub const COUNTER_POOL_UNMATCHED: u32 = 9;
pub const COUNTER_POOL_EVENTS_LOST: u32 = 10;
/// A sample or off-CPU stack went out without a copy of the user stack (its
/// registers or every page above %rsp unreadable): frame pointers only.
pub const COUNTER_STACK_COPY_ERRORS: u32 = 11;
/// Records dropped because their process had used its ring-buffer budget for
/// the window (`Config::ring_budget_bytes`): off-CPU stacks, episodes,
/// threadpool busy periods.
pub const COUNTER_OFF_CPU_BUDGET: u32 = 12;
pub const COUNTER_EPISODES_BUDGET: u32 = 13;
pub const COUNTER_POOL_EVENTS_BUDGET: u32 = 14;
/// `THREADS` entries the kernel side created. Userspace subtracts the ones it
/// deleted and the ones present: the rest the LRU evicted.
pub const COUNTER_THREADS_INSERTED: u32 = 15;
pub const NUM_COUNTERS: u32 = 16;

/// Runtime settings userspace writes into the one-element `CONFIG` array.
/// A map rather than load-time globals so a running daemon can change them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Busy time at or above which an iteration is sent to userspace as an episode.
    pub threshold_ns: u64,
    /// Non-zero: take stacks in `cpu-clock` samples of watched loop threads.
    pub sample_stacks: u32,
    /// Non-zero: report every exec on the host (EVENT_EXEC), for discovery.
    pub discover: u32,
    /// Byte offsets of `pid` and `tgid` in this kernel's `task_struct` (from
    /// its BTF): the scheduler hands us other tasks than the current one.
    pub task_pid_offset: u32,
    pub task_tgid_offset: u32,
    /// Off-CPU intervals at least this long inside a busy iteration are sent
    /// with their stacks; shorter ones only count in the totals.
    pub off_cpu_min_ns: u64,
    /// Stacks are sampled only once the iteration (or the worker's busy
    /// period) has been busy this long: samples of anything shorter could
    /// never be part of an episode, and under load nearly every iteration is.
    pub sample_after_ns: u64,
    /// Non-zero: copy the top of the user stack with each sample and off-CPU
    /// stack (see `STACK_COPY_BYTES`); zero leaves frame pointers only.
    pub copy_stack: u32,
    pub _pad: u32,
    /// Bytes of ring-buffer records one process may send per
    /// `ring_window_ns` (0: no limit), so one process cannot fill the ring
    /// buffer all watched processes share. Samples are not charged: there is
    /// one per CPU per tick for the whole host, which the ring is sized for.
    pub ring_budget_bytes: u64,
    pub ring_window_ns: u64,
}

/// Value of the `WATCHED` map, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchedProcess {
    pub flags: u32,
    pub _pad: u32,
    /// The process's ring-buffer budget: the open window's start, and the
    /// bytes it sent in it (see `Config::ring_budget_bytes`).
    pub window_start_ns: u64,
    pub window_bytes: u64,
}

/// One epoll loop seen on a thread, identified by its epoll fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopSlot {
    pub epfd: i32,
    /// 1 while the thread is inside `epoll_*wait` on this loop;
    /// `IN_POLL_BEFORE_ATTACH` for a poll entered before the probes existed.
    pub in_poll: u32,
    /// When this incarnation of the fd was first polled: lets a later poll on
    /// the same fd number tell a finished nested loop from a live one.
    pub first_seen_ns: u64,
    pub last_enter_ns: u64,
    /// End of the last poll; 0 until one poll returned since the slot was (re)set.
    pub last_exit_ns: u64,
    /// Busy time of the open iteration before `last_exit_ns` (libuv re-polls
    /// within one iteration: the idle-time probe with timeout 0, EINTR, a full
    /// event array).
    pub accum_busy_ns: u64,
    /// Idle (in-poll) time not yet added to the loop's statistics.
    pub idle_pending_ns: u64,
    /// Closed iterations of this incarnation; also the sequence number of the
    /// open one, which samples carry so userspace can match them to an episode.
    pub iterations: u64,
    pub timeout_ms: i32,
    pub maxevents: i32,
    pub last_ret: i64,
}

/// Value of the `THREADS` map, keyed by tid: the loops one thread polls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadLoops {
    pub pid: u32,
    /// Index of the thread's outermost loop (not nested in another's callback),
    /// whose iteration numbers samples carry.
    pub primary: u32,
    /// CLOCK_MONOTONIC time the thread called `exit_group`, or 0. An iteration
    /// still open then ended because the program finished (teardown after the
    /// last callback, `process.exit()`), unlike one cut by SIGKILL or a crash.
    pub exit_called_ns: u64,
    /// When the thread left the CPU inside a busy iteration (0: running, or
    /// asleep in its own loop's poll, which is idle).
    pub off_cpu_since_ns: u64,
    /// When it became runnable again: its wakeup, or its preemption.
    pub runnable_since_ns: u64,
    /// Of the open iteration of the outermost loop: time asleep (blocked) and
    /// time runnable but not running (waiting for a CPU).
    pub iter_blocked_ns: u64,
    pub iter_runq_ns: u64,
    pub slots: [LoopSlot; MAX_LOOP_SLOTS],
}

/// Key of the `LOOP_STATS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoopKey {
    pub pid: u32,
    pub tid: u32,
}

/// Per-loop aggregate kept in the kernel: every iteration lands here, only the
/// slow ones go to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LoopStats {
    pub iterations: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub max_busy_ns: u64,
    pub episodes: u64,
    /// Of `busy_ns`: asleep, and waiting for a CPU.
    pub blocked_ns: u64,
    pub runq_ns: u64,
    pub buckets: [u64; histogram::BUCKETS],
}

impl LoopStats {
    pub const ZERO: LoopStats = LoopStats {
        iterations: 0,
        busy_ns: 0,
        idle_ns: 0,
        max_busy_ns: 0,
        episodes: 0,
        blocked_ns: 0,
        runq_ns: 0,
        buckets: [0; histogram::BUCKETS],
    };
}

/// An iteration whose busy time reached the threshold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpisodeEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub epfd: i32,
    /// The iteration's sequence number (see `LoopSlot::iterations`).
    pub seq: u64,
    /// CLOCK_MONOTONIC time the next poll was entered.
    pub end_ns: u64,
    /// Busy time of the iteration; its busy window is `[end_ns - busy_ns, end_ns]`.
    pub busy_ns: u64,
    /// Of `busy_ns`: asleep (blocked), and runnable but not running.
    pub blocked_ns: u64,
    pub runq_ns: u64,
}

/// Fixed part of an off-CPU interval of a busy loop thread: where it went to
/// sleep (stacks taken as it left the CPU) and for how long.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffCpuHeader {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// Entries of `OffCpuEvent::v8_slots` filled (here rather than beside
    /// them, as in samples, so the record is no bigger than a sample).
    pub v8_frames: u32,
    pub user_bytes: i32,
    pub kernel_bytes: i32,
    /// Iteration of the thread's outermost loop (as in samples).
    pub seq: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// When it left the CPU.
    pub time_ns: u64,
    pub regs: UserRegs,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuEvent {
    pub header: OffCpuHeader,
    pub user_stack: [u64; MAX_USER_FRAMES],
    pub kernel_stack: [u64; MAX_KERNEL_FRAMES],
    /// As in [`SampleEvent`]: a waiting caller's V8 frames can lie past the
    /// stack copy.
    pub v8_slots: [[u64; 2]; V8_FRAMES],
    pub stack: [u8; STACK_COPY_BYTES],
}

/// A process started a new program (every process, when discovering) or a
/// watched process's main thread exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessEvent {
    pub kind: u32,
    pub pid: u32,
    pub time_ns: u64,
}

/// Value of the `POOL_WORKERS` map, keyed by tid: one libuv threadpool worker,
/// written only by that worker's own thread (so no update races between CPUs).
///
/// A worker is busy from the start of a work item until it waits for more work
/// (`uv_cond_wait` in libuv's `worker()`), so back-to-back items are one period.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PoolWorker {
    pub pid: u32,
    /// 1 while busy.
    pub busy: u32,
    pub busy_since_ns: u64,
    /// End of the last busy period (0: none ended yet).
    pub last_idle_ns: u64,
    /// Busy time of closed periods.
    pub busy_ns: u64,
    /// Work items started, and of those the ones in the open busy period.
    pub items: u64,
    pub period_items: u64,
    /// Items whose queue wait (submit → start) was measured, its sum and max.
    pub waited_items: u64,
    pub queue_wait_ns: u64,
    pub max_queue_wait_ns: u64,
    /// Queue-wait histogram (`histogram::bucket`).
    pub buckets: [u64; histogram::BUCKETS],
}

impl PoolWorker {
    pub const ZERO: PoolWorker = PoolWorker {
        pid: 0,
        busy: 0,
        busy_since_ns: 0,
        last_idle_ns: 0,
        busy_ns: 0,
        items: 0,
        period_items: 0,
        waited_items: 0,
        queue_wait_ns: 0,
        max_queue_wait_ns: 0,
        buckets: [0; histogram::BUCKETS],
    };
}

/// Key of `POOL_PENDING`: a submitted `struct uv__work` not yet started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PendingWork {
    pub pid: u32,
    pub _pad: u32,
    /// Address of the `struct uv__work` in the process.
    pub work: u64,
}

/// A threadpool worker's busy period of at least the threshold, sent when it
/// ends. Userspace intersects these to find when the whole pool was busy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolBusyEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Work items run in the period.
    pub items: u64,
}

/// Fixed part of a `cpu-clock` sample of a loop thread that was busy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleHeader {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// Bytes of `user_stack` / `kernel_stack` filled (a negative errno on failure).
    pub user_bytes: i32,
    pub kernel_bytes: i32,
    /// Sequence number of the open iteration of the thread's loop.
    pub seq: u64,
    /// Start of the open busy window, as `now - busy so far`.
    pub busy_start_ns: u64,
    pub time_ns: u64,
    pub regs: UserRegs,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleEvent {
    pub header: SampleHeader,
    pub user_stack: [u64; MAX_USER_FRAMES],
    pub kernel_stack: [u64; MAX_KERNEL_FRAMES],
    /// Entries of `v8_slots` filled.
    pub v8_frames: u64,
    /// Per frame of the frame-pointer chain: the words at fp-16 and fp-8.
    pub v8_slots: [[u64; 2]; V8_FRAMES],
    pub stack: [u8; STACK_COPY_BYTES],
}

// No implicit padding anywhere: a hole would be uninitialised bytes on one side.
const _: () = assert!(core::mem::size_of::<Config>() == 64);
const _: () = assert!(core::mem::size_of::<WatchedProcess>() == 24);
const _: () = assert!(core::mem::size_of::<LoopSlot>() == 4 + 4 + 6 * 8 + 4 + 4 + 8);
const _: () = assert!(
    core::mem::size_of::<ThreadLoops>() == 48 + MAX_LOOP_SLOTS * core::mem::size_of::<LoopSlot>()
);
const _: () = assert!(core::mem::size_of::<LoopKey>() == 8);
const _: () = assert!(core::mem::size_of::<LoopStats>() == 7 * 8 + histogram::BUCKETS * 8);
const _: () = assert!(core::mem::size_of::<EpisodeEvent>() == 16 + 5 * 8);
const _: () = assert!(core::mem::size_of::<UserRegs>() == 32);
const _: () = assert!(core::mem::size_of::<OffCpuHeader>() == 24 + 4 * 8 + 32);
const _: () = assert!(
    core::mem::size_of::<OffCpuEvent>()
        == core::mem::size_of::<OffCpuHeader>()
            + (MAX_USER_FRAMES + MAX_KERNEL_FRAMES) * 8
            + V8_FRAMES * 16
            + STACK_COPY_BYTES
);
// The ring buffer is sized from the largest record (kernel::ring_size).
const _: () = assert!(core::mem::size_of::<OffCpuEvent>() <= core::mem::size_of::<SampleEvent>());
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 16);
const _: () = assert!(core::mem::size_of::<PoolWorker>() == 8 + 8 * 8 + histogram::BUCKETS * 8);
const _: () = assert!(core::mem::size_of::<PendingWork>() == 16);
const _: () = assert!(core::mem::size_of::<PoolBusyEvent>() == 16 + 3 * 8);
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 24 + 3 * 8 + 32);
const _: () = assert!(
    core::mem::size_of::<SampleEvent>()
        == core::mem::size_of::<SampleHeader>()
            + (MAX_USER_FRAMES + MAX_KERNEL_FRAMES) * 8
            + 8
            + V8_FRAMES * 16
            + STACK_COPY_BYTES
);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain integers, no padding (asserted above).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for WatchedProcess {}
    unsafe impl aya::Pod for LoopSlot {}
    unsafe impl aya::Pod for ThreadLoops {}
    unsafe impl aya::Pod for LoopKey {}
    unsafe impl aya::Pod for LoopStats {}
    unsafe impl aya::Pod for OffCpuEvent {}
    unsafe impl aya::Pod for PoolWorker {}
    unsafe impl aya::Pod for PendingWork {}
    // The ring-buffer records' fixed parts, read as defined here.
    unsafe impl aya::Pod for UserRegs {}
    unsafe impl aya::Pod for EpisodeEvent {}
    unsafe impl aya::Pod for SampleHeader {}
    unsafe impl aya::Pod for OffCpuHeader {}
    unsafe impl aya::Pod for PoolBusyEvent {}
    unsafe impl aya::Pod for ProcessEvent {}
}
