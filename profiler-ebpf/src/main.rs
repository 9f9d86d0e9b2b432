//! loopbpf's kernel side.
//!
//! | program            | attach point                          | needs            |
//! |--------------------|---------------------------------------|------------------|
//! | `poll_enter`       | tracepoints `syscalls:sys_enter_epoll_wait`, `_epoll_pwait`, `_epoll_pwait2` | tracefs, `CONFIG_FTRACE_SYSCALLS`; `sys_enter_epoll_pwait2` 5.11+ |
//! | `poll_exit`        | tracepoints `syscalls:sys_exit_epoll_wait`, `_epoll_pwait`, `_epoll_pwait2` | same; `bpf_task_pt_regs` (5.15+) |
//! | `close_enter`      | tracepoint `syscalls:sys_enter_close` | same             |
//! | `exit_group_enter` | tracepoint `syscalls:sys_enter_exit_group` | same        |
//! | `fentry_epoll_*`, `fexit_epoll_*` | fentry/fexit `__x64_sys_epoll_wait`, `_pwait`, `_pwait2` | BTF, ftrace function hooks allowed (5.5+; `epoll_pwait2` 5.11+) |
//! | `fentry_close`, `fentry_exit_group` | fentry `__x64_sys_close`, `__x64_sys_exit_group` | same |
//! | `btf_sys_enter`    | tp_btf `sys_enter` (fallback)         | BTF (5.5+)       |
//! | `btf_sys_exit`     | tp_btf `sys_exit` (fallback)          | BTF (5.5+)       |
//! | `sample_stack`     | perf_event `cpu-clock`                | 4.9+, ringbuf 5.8+ |
//! | `process_exec`     | tp_btf `sched_process_exec`           | BTF (5.5+)       |
//! | `process_exit`     | tp_btf `sched_process_exit`           | BTF (5.5+)       |
//! | `sched_switch`     | tp_btf `sched_switch`                 | BTF, prev_state arg (5.18+) |
//! | `sched_wakeup`     | tp_btf `sched_wakeup`                 | BTF (5.5+)       |
//! | `pool_submit`      | uprobe `uv__work_submit`              | uprobes (3.5+), libuv symbols in node |
//! | `pool_queue_work`  | uprobe `uv_queue_work`                | same             |
//! | `pool_work_start`  | uprobe `uv__*_work`                   | same             |
//! | `pool_worker_idle` | uprobe `uv_cond_wait`                 | same             |
//!
//! The syscall probes come in three sets, of which userspace loads one.
//! fentry/fexit on the syscall handlers cost other syscalls nothing; where the
//! kernel refuses ftrace hooks, the classic per-syscall tracepoints run only on the syscalls they are attached
//! to; other syscalls pay the kernel's syscall-tracing slow path (~50-90 ns on
//! the test VM). They are found through tracefs, which userspace mounts if
//! needed. Without tracefs, `btf_sys_enter`/`btf_sys_exit` attach by name but
//! run on every syscall of the host (~100-160 ns each) and filter on the
//! syscall number.
#![no_std]
#![no_main]
// Borrowing the zero-value statics is what keeps them off the BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod poll;
mod poll_fentry;
mod process;
mod sample;
mod sched;
mod threadpool;
mod unwind;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use profiler_common::{
    Config, LoopKey, LoopStats, OffCpuEvent, PendingWork, PoolWorker, ThreadLoops, WatchedProcess,
    NUM_COUNTERS, WATCHED_BITMAP_WORDS,
};

/// Settings from userspace (threshold, sampling switch); one element.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Processes to watch, keyed by tgid. Sized for every Node process on a big host.
#[map]
static WATCHED: HashMap<u32, WatchedProcess> = HashMap::with_max_entries(4096, 0);

/// One bit per tgid (up to the kernel's PID_MAX_LIMIT), set while watched:
/// the syscall and scheduler probes run for every process on the host, and
/// an array lookup the verifier inlines answers for all of them, watched or
/// not, with no hash lookup. 4 Mi bits in 512 KiB. WATCHED holds the same set
/// for userspace.
#[map]
static WATCHED_BITMAP: Array<u64> = Array::with_max_entries(WATCHED_BITMAP_WORDS, 0);

/// Loop state per polling thread. LRU: a thread that exits without userspace
/// noticing is evicted instead of filling the map; a live thread evicted loses
/// one iteration (counted as THREADS_FULL only when an insert fails).
#[map]
static THREADS: LruHashMap<u32, ThreadLoops> = LruHashMap::with_max_entries(16384, 0);

/// Busy-time histogram and totals per loop thread. Not preallocated: entries
/// are ~4.5 KiB and only loop threads of watched processes get one.
#[map]
static LOOP_STATS: HashMap<LoopKey, LoopStats> = HashMap::with_max_entries(8192, BPF_F_NO_PREALLOC);

/// Stacks of each loop thread as it last left the CPU in a busy iteration,
/// sent when it runs again. LRU: one entry per thread that ever blocked.
/// Entries are ~18 KiB with the stack copy, preallocated (LRU maps are): 1024
/// loop threads blocking at once is plenty, and costs 18 MiB.
#[map]
static OFF_CPU: LruHashMap<u32, OffCpuEvent> = LruHashMap::with_max_entries(1024, 0);

/// libuv threadpool workers of watched processes (4 per process by default,
/// up to 1024). Not preallocated: entries are ~4.5 KiB (queue-wait histogram).
#[map]
static POOL_WORKERS: HashMap<u32, PoolWorker> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Submit time of each queued threadpool item, until a worker starts it. Sized
/// for a deep backlog across all watched processes (24 B each).
#[map]
static POOL_PENDING: LruHashMap<PendingWork, u64> = LruHashMap::with_max_entries(65536, 0);

/// Episodes and stack samples to userspace. Userspace sets its size at load
/// from the CPUs and the sampling frequency (profiler-user's `ring_size`):
/// 2 MiB at 199 Hz and 8 MiB at 999 Hz on 2 CPUs. This is only the default.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// What the kernel side dropped or could not do, per CPU (see COUNTER_*).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Charges a record of `bytes` to process `tgid`'s ring-buffer budget: false
/// when the process has used it up for the open window, and the record is to
/// be dropped (and counted) so that one process's flood leaves room for the
/// others'. `charge` false only asks. Two CPUs charging at once may each see
/// the old total: the budget overshoots by at most one record per CPU, which
/// costs no atomics.
#[inline(always)]
fn within_budget(c: &Config, tgid: u32, bytes: u64, charge: bool) -> bool {
    if c.ring_budget_bytes == 0 {
        return true;
    }
    let Some(w) = WATCHED.get_ptr_mut(&tgid) else {
        // Being unwatched: nothing of it is sent for long.
        return true;
    };
    // SAFETY: a map value pointer, valid for this program's run.
    let w = unsafe { &mut *w };
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let expired = now.saturating_sub(w.window_start_ns) >= c.ring_window_ns;
    let used = if expired { 0 } else { w.window_bytes };
    if used + bytes > c.ring_budget_bytes {
        return false;
    }
    if charge {
        if expired {
            w.window_start_ns = now;
        }
        w.window_bytes = used + bytes;
    }
    true
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
fn is_watched(tgid: u32) -> bool {
    // Out of range only if the kernel's limit ever grows: not watched.
    match WATCHED_BITMAP.get(tgid / 64) {
        Some(word) => word & (1 << (tgid % 64)) != 0,
        None => false,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves every path terminates; no panic path survives optimisation.
    unsafe { core::hint::unreachable_unchecked() }
}
