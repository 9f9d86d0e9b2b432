//! Event-loop iterations from `epoll_wait`/`epoll_pwait`/`epoll_pwait2`.
//!
//! An iteration's busy time runs from a poll's return to the next poll's entry
//! on the same loop (epoll fd) of the same thread. libuv details handled here:
//! - With `UV_METRICS_IDLE_TIME` (Node enables it) `uv__io_poll` first polls with
//!   timeout 0 and, finding nothing, polls again with the real timeout; EINTR and
//!   a full event array also re-poll. Such re-polls continue the same iteration.
//! - `execSync`/`spawnSync` run a nested loop with its own epoll fd on the same
//!   thread: its polls are busy time of the outer loop, so loops are keyed by fd.
//! - A nested loop's fd number is reused by the next one: a slot whose window
//!   saw polls of a loop older than the window is a new incarnation, not a
//!   long iteration.
use aya_ebpf::{
    bindings::{pt_regs, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use profiler_common::{
    histogram, EpisodeEvent, LoopKey, LoopSlot, LoopStats, ThreadLoops, COUNTER_EPISODES_BUDGET,
    COUNTER_EPISODES_LOST, COUNTER_SLOTS_RECYCLED, COUNTER_STATS_FULL, COUNTER_THREADS_FULL,
    COUNTER_THREADS_INSERTED, EVENT_EPISODE, MAX_LOOP_SLOTS,
};

use crate::{config, count, is_watched, within_budget, EVENTS, LOOP_STATS, THREADS};

#[cfg(bpf_target_arch = "x86_64")]
pub(crate) mod nr {
    pub const EPOLL_WAIT: i64 = 232;
    pub const EPOLL_PWAIT: i64 = 281;
    pub const EPOLL_PWAIT2: i64 = 441;
    pub const EXIT_GROUP: i64 = 231;
    pub const CLOSE: i64 = 3;
}
#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!("loopbpf's syscall table covers x86_64 only");

const EINTR: i64 = 4;
const SLOT_MASK: usize = MAX_LOOP_SLOTS - 1;
const _: () = assert!(MAX_LOOP_SLOTS.is_power_of_two());

// Map values too big for the 512-byte BPF stack are inserted from these
// (read-only data); they must be passed by reference, never copied.
static ZERO_LOOPS: ThreadLoops = unsafe { core::mem::zeroed() };
static ZERO_STATS: LoopStats = LoopStats::ZERO;

// Two ways in, one logic. The classic per-syscall tracepoints
// (`syscalls:sys_enter_epoll_pwait`, …) run only for the syscalls we watch;
// the BTF tracepoints `sys_enter`/`sys_exit` run for every syscall on the host
// and are the fallback when tracefs (where the classic ones are found) cannot
// be used. Userspace loads one set, never both.

/// A classic `syscalls:sys_enter_*` record (see the event's `format` file):
/// 8 bytes of common fields, `int __syscall_nr` at 8, then every argument as
/// an 8-byte word from 16. `sys_exit_*` has `long ret` at 16.
const TP_SYSCALL_NR: usize = 8;
const TP_ARGS: usize = 16;
const TP_RET: usize = 16;

#[inline(always)]
fn tp_arg(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: a direct, constant-offset load inside the record, which the
    // verifier checks (no helper call needed).
    unsafe { *(ctx.as_ptr().add(offset) as *const u64) }
}

/// `syscalls:sys_enter_epoll_wait`, `sys_enter_epoll_pwait` and
/// `sys_enter_epoll_pwait2`: this one program is attached to all three.
#[tracepoint]
pub fn poll_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: as in `tp_arg`.
    let id = unsafe { *(ctx.as_ptr().add(TP_SYSCALL_NR) as *const i32) } as i64;
    poll_entered(&ctx, id, || {
        (
            tp_arg(&ctx, TP_ARGS),
            tp_arg(&ctx, TP_ARGS + 2 * 8),
            tp_arg(&ctx, TP_ARGS + 3 * 8),
        )
    });
    0
}

/// `syscalls:sys_exit_epoll_wait`, `sys_exit_epoll_pwait`, `sys_exit_epoll_pwait2`.
#[tracepoint]
pub fn poll_exit(ctx: TracePointContext) -> u32 {
    let ret = tp_arg(&ctx, TP_RET) as i64;
    poll_returned(ret, || {
        // The exit record holds only the result; the argument registers
        // saved at entry are in the task's pt_regs.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
        // SAFETY: BTF-typed pointer; the verifier turns the load into a checked read.
        unsafe { (*regs).rdi as i32 }
    });
    0
}

/// `syscalls:sys_enter_close`.
#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    closed(tp_arg(&ctx, TP_ARGS) as i32);
    0
}

/// `syscalls:sys_enter_exit_group`.
#[tracepoint]
pub fn exit_group_enter(_ctx: TracePointContext) -> u32 {
    exit_group();
    0
}

#[inline(always)]
fn is_epoll_wait(id: i64) -> bool {
    id == nr::EPOLL_PWAIT || id == nr::EPOLL_WAIT || id == nr::EPOLL_PWAIT2
}

/// Fallback: BTF tracepoint `sys_enter`, on every syscall of the host.
#[btf_tracepoint(function = "sys_enter")]
pub fn btf_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    let regs: *const pt_regs = ctx.arg(0);
    if !is_epoll_wait(id) {
        if id == nr::CLOSE {
            closed(unsafe { (*regs).rdi } as i32);
        } else if id == nr::EXIT_GROUP {
            exit_group();
        }
        return 0;
    }
    // SAFETY: BTF-typed pointer; the verifier turns these loads into checked reads.
    poll_entered(&ctx, id, || unsafe {
        ((*regs).rdi, (*regs).rdx, (*regs).r10)
    });
    0
}

/// Fallback: BTF tracepoint `sys_exit`, on every syscall of the host.
#[btf_tracepoint(function = "sys_exit")]
pub fn btf_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    let id = unsafe { (*regs).orig_rax } as i64;
    if !is_epoll_wait(id) {
        return 0;
    }
    let ret: i64 = ctx.arg(1);
    // Syscall entry saved the argument registers; only rax carries the result.
    poll_returned(ret, || unsafe { (*regs).rdi } as i32);
    0
}

/// A thread enters epoll wait syscall `id`; `args` reads its (epfd,
/// maxevents, timeout argument), only for a watched process.
#[inline(always)]
pub(crate) fn poll_entered<C: EbpfContext>(
    ctx: &C,
    id: i64,
    args: impl FnOnce() -> (u64, u64, u64),
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !is_watched(pid) {
        return;
    }
    let (epfd, maxevents, arg4) = args();
    let timeout_ms = if id == nr::EPOLL_PWAIT2 {
        pwait2_timeout(arg4)
    } else {
        arg4 as i32
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let tid = pid_tgid as u32;
    if enter(pid, tid, epfd as i32, maxevents as i32, timeout_ms, now) {
        warn!(
            ctx,
            "tid {} polls more than {} epoll loops: recycled the oldest", tid, MAX_LOOP_SLOTS
        );
    }
}

/// An epoll wait syscall returns `ret`; `epfd` reads its fd, needed only
/// for a poll that was entered before we attached.
#[inline(always)]
pub(crate) fn poll_returned(ret: i64, epfd: impl FnOnce() -> i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !is_watched(pid) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    exit(pid, pid_tgid as u32, ret, now, epfd);
}

/// `uv_loop_close` closes a finished nested loop's epoll fd: forget that loop,
/// so it is never mistaken for the outer loop of what runs next.
#[inline(always)]
pub(crate) fn closed(fd: i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_watched((pid_tgid >> 32) as u32) {
        return;
    }
    let Some(p) = THREADS.get_ptr_mut(pid_tgid as u32) else {
        return;
    };
    let t = unsafe { &mut *p };
    let mut freed = false;
    for j in 0..MAX_LOOP_SLOTS {
        if t.slots[j].first_seen_ns != 0 && t.slots[j].epfd == fd {
            t.slots[j] = LoopSlot::default();
            freed = true;
        }
    }
    if freed {
        update_primary(t, 0);
    }
}

#[inline(always)]
pub(crate) fn exit_group() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if !is_watched(pid) {
        return;
    }
    if let Some(t) = thread_loops(pid, pid_tgid as u32) {
        t.exit_called_ns = unsafe { bpf_ktime_get_ns() };
    }
}

/// epoll_pwait2 takes a `struct timespec *`; only "zero", "infinite" and
/// "positive" matter here.
#[inline(always)]
fn pwait2_timeout(ptr: u64) -> i32 {
    if ptr == 0 {
        return -1;
    }
    match unsafe { bpf_probe_read_user(ptr as *const [i64; 2]) } {
        Ok([0, 0]) => 0,
        _ => 1,
    }
}

#[inline(always)]
fn thread_loops(pid: u32, tid: u32) -> Option<&'static mut ThreadLoops> {
    if let Some(p) = THREADS.get_ptr_mut(tid) {
        let t = unsafe { &mut *p };
        if t.pid == pid {
            return Some(t);
        }
        // A recycled tid from another process: start over.
        *t = ThreadLoops::default();
        t.pid = pid;
        return Some(t);
    }
    // An LRU insert evicts silently when the map is full: userspace finds
    // evictions from this count (see COUNTER_THREADS_INSERTED).
    if THREADS
        .insert(tid, &ZERO_LOOPS, BPF_NOEXIST as u64)
        .is_err()
    {
        count(COUNTER_THREADS_FULL);
    } else {
        count(COUNTER_THREADS_INSERTED);
    }
    let t = unsafe { &mut *THREADS.get_ptr_mut(tid)? };
    t.pid = pid;
    Some(t)
}

#[inline(always)]
/// Returns true when a live slot had to be recycled.
fn enter(pid: u32, tid: u32, epfd: i32, maxevents: i32, timeout_ms: i32, now: u64) -> bool {
    let Some(t) = thread_loops(pid, tid) else {
        return false;
    };
    let mut recycled = false;
    let mut found = MAX_LOOP_SLOTS;
    let mut oldest = 0;
    let mut oldest_seen = u64::MAX;
    for j in 0..MAX_LOOP_SLOTS {
        let s = &t.slots[j];
        if s.first_seen_ns != 0 && s.epfd == epfd {
            found = j;
        }
        let seen = if s.first_seen_ns == 0 {
            0
        } else {
            s.last_enter_ns.max(s.last_exit_ns)
        };
        if seen < oldest_seen {
            oldest_seen = seen;
            oldest = j;
        }
    }
    // Which loop is outermost changes only when a loop appears or goes.
    let mut slots_changed = found == MAX_LOOP_SLOTS;
    let i = if found < MAX_LOOP_SLOTS {
        slots_changed = close_window(t, found & SLOT_MASK, pid, tid, timeout_ms, now);
        found & SLOT_MASK
    } else {
        let i = oldest & SLOT_MASK;
        if t.slots[i].first_seen_ns != 0 {
            count(COUNTER_SLOTS_RECYCLED);
            recycled = true;
        }
        t.slots[i] = LoopSlot {
            epfd,
            first_seen_ns: now,
            ..LoopSlot::default()
        };
        i
    };
    let s = &mut t.slots[i];
    s.in_poll = 1;
    s.last_enter_ns = now;
    s.timeout_ms = timeout_ms;
    s.maxevents = maxevents;

    if slots_changed {
        update_primary(t, i);
    }
    recycled
}

/// Samples are tagged with the iterations of the thread's outermost loop;
/// `fallback` if every loop is nested (it cannot be, but the verifier needs
/// an answer).
#[inline(always)]
fn update_primary(t: &mut ThreadLoops, fallback: usize) {
    let mut primary = fallback;
    for j in 0..MAX_LOOP_SLOTS {
        if t.slots[j].first_seen_ns != 0 && !nested(t, j) {
            primary = j;
        }
    }
    t.primary = primary as u32;
}

/// Is loop `x` running inside a callback of another loop of the thread? That
/// loop left its poll before `x` existed and has not polled since: `x` is a
/// `spawnSync` loop and its iterations are part of the outer one's busy time.
/// (A finished nested loop cannot pose as an outer one: closing its epoll fd
/// frees its slot.)
#[inline(always)]
fn nested(t: &ThreadLoops, x: usize) -> bool {
    let xs = &t.slots[x & SLOT_MASK];
    let mut inside = false;
    for j in 0..MAX_LOOP_SLOTS {
        let z = &t.slots[j];
        if j != x
            && z.first_seen_ns != 0
            && z.in_poll == 0
            && z.last_exit_ns != 0
            && xs.first_seen_ns > z.last_exit_ns
        {
            inside = true;
        }
    }
    inside
}

/// The thread is about to poll loop `i` again: the window since its last return
/// ends here. True if a slot was reset or freed.
#[inline(always)]
fn close_window(
    t: &mut ThreadLoops,
    i: usize,
    pid: u32,
    tid: u32,
    timeout_ms: i32,
    now: u64,
) -> bool {
    let window_start = t.slots[i].last_exit_ns;
    if window_start == 0 || t.slots[i].in_poll != 0 {
        // No return seen since the slot was (re)set (attached mid-poll, or a
        // lost exit): there is no window to measure.
        return false;
    }
    // A loop older than this window polled inside it: this fd is a new loop
    // (a finished nested loop's number reused), not a long iteration.
    let mut stale = false;
    for j in 0..MAX_LOOP_SLOTS {
        let y = &t.slots[j];
        if j != i
            && y.first_seen_ns != 0
            && y.last_enter_ns > window_start
            && y.first_seen_ns < window_start
        {
            stale = true;
        }
    }
    if stale {
        let epfd = t.slots[i].epfd;
        t.slots[i] = LoopSlot {
            epfd,
            first_seen_ns: now,
            ..LoopSlot::default()
        };
        return true;
    }
    let gap = now.saturating_sub(window_start);
    let s = t.slots[i];
    let continues = (s.last_ret == 0 && s.timeout_ms == 0 && timeout_ms != 0)
        || s.last_ret == -EINTR
        || (s.last_ret > 0 && s.last_ret == s.maxevents as i64);
    if continues {
        t.slots[i].accum_busy_ns = s.accum_busy_ns + gap;
    } else {
        let busy = s.accum_busy_ns + gap;
        if !nested(t, i) {
            let off_cpu = (t.iter_blocked_ns, t.iter_runq_ns);
            record_iteration(pid, tid, &s, busy, off_cpu, now);
            t.slots[i].idle_pending_ns = 0;
            t.iter_blocked_ns = 0;
            t.iter_runq_ns = 0;
        }
        t.slots[i].accum_busy_ns = 0;
        t.slots[i].iterations = s.iterations + 1;
    }
    // Loops created inside this window were nested in it and have finished.
    let mut freed = false;
    for j in 0..MAX_LOOP_SLOTS {
        if j != i && t.slots[j].first_seen_ns > window_start {
            t.slots[j] = LoopSlot::default();
            freed = true;
        }
    }
    freed
}

#[inline(always)]
fn record_iteration(pid: u32, tid: u32, s: &LoopSlot, busy: u64, off_cpu: (u64, u64), now: u64) {
    // Both are parts of the busy window; clamp against clock skew between CPUs.
    let blocked = off_cpu.0.min(busy);
    let runq = off_cpu.1.min(busy - blocked);
    let key = LoopKey { pid, tid };
    let stats = match LOOP_STATS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            if LOOP_STATS
                .insert(key, &ZERO_STATS, BPF_NOEXIST as u64)
                .is_err()
            {
                count(COUNTER_STATS_FULL);
            }
            match LOOP_STATS.get_ptr_mut(key) {
                Some(p) => p,
                None => return,
            }
        }
    };
    let stats = unsafe { &mut *stats };
    stats.iterations += 1;
    stats.busy_ns += busy;
    stats.idle_ns += s.idle_pending_ns;
    stats.blocked_ns += blocked;
    stats.runq_ns += runq;
    if busy > stats.max_busy_ns {
        stats.max_busy_ns = busy;
    }
    let b = histogram::bucket(busy);
    if let Some(c) = stats.buckets.get_mut(b) {
        *c += 1;
    }
    let Some(c) = config() else {
        return;
    };
    if c.threshold_ns == 0 || busy < c.threshold_ns {
        return;
    }
    stats.episodes += 1;
    if !within_budget(c, pid, size_of::<EpisodeEvent>() as u64, true) {
        count(COUNTER_EPISODES_BUDGET);
        return;
    }
    let event = EpisodeEvent {
        kind: EVENT_EPISODE,
        pid,
        tid,
        epfd: s.epfd,
        seq: s.iterations,
        end_ns: now,
        busy_ns: busy,
        blocked_ns: blocked,
        runq_ns: runq,
    };
    if EVENTS
        .output::<EpisodeEvent>(&event, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count(COUNTER_EPISODES_LOST);
    }
}

#[inline(always)]
fn exit(pid: u32, tid: u32, ret: i64, now: u64, epfd: impl FnOnce() -> i32) {
    let Some(t) = thread_loops(pid, tid) else {
        return;
    };
    let mut seen = false;
    for j in 0..MAX_LOOP_SLOTS {
        let s = &mut t.slots[j];
        if s.in_poll != 0 {
            s.in_poll = 0;
            s.idle_pending_ns += now.saturating_sub(s.last_enter_ns);
            s.last_exit_ns = now;
            s.last_ret = ret;
            seen = true;
        }
    }
    if seen {
        return;
    }
    // A poll entered before we attached (a loop asleep when loopbpf started):
    // its return opens the first window we can measure.
    let epfd = epfd();
    let mut free = MAX_LOOP_SLOTS;
    for j in 0..MAX_LOOP_SLOTS {
        let s = &t.slots[j];
        if s.first_seen_ns != 0 && s.epfd == epfd {
            return;
        }
        if s.first_seen_ns == 0 && free == MAX_LOOP_SLOTS {
            free = j;
        }
    }
    if free < MAX_LOOP_SLOTS {
        t.slots[free & SLOT_MASK] = LoopSlot {
            epfd,
            first_seen_ns: now,
            last_exit_ns: now,
            last_ret: ret,
            timeout_ms: -1,
            ..LoopSlot::default()
        };
        update_primary(t, free & SLOT_MASK);
    }
}
