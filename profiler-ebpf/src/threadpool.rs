//! The libuv threadpool, through uprobes on libuv's own functions in the node
//! binary (attached per watched process, so other processes never trap):
//!
//! - `uv__work_submit(loop, w, kind, work, done)`, and `uv_queue_work` where
//!   it is inlined: an item enters the queue;
//! - the work functions libuv's `worker()` calls (`uv__fs_work`,
//!   `uv__queue_work`, …, each taking `w`): an item starts on a worker;
//! - `uv_cond_wait` on a known worker: it found the queue empty and sleeps.
//!
//! A synchronous fs call runs `uv__fs_work` on the loop thread itself: loop
//! threads are never counted as workers.
//!
//! Each worker's state is written only by its own thread, so no counter is
//! shared between CPUs; userspace sums workers and intersects their long busy
//! periods to find when the whole pool was busy.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use profiler_common::{
    histogram, PendingWork, PoolBusyEvent, PoolWorker, COUNTER_POOL_EVENTS_BUDGET,
    COUNTER_POOL_EVENTS_LOST, COUNTER_POOL_UNMATCHED, COUNTER_POOL_WORKERS_FULL, EVENT_POOL_BUSY,
};

use crate::{
    config, count, is_watched, within_budget, EVENTS, POOL_PENDING, POOL_WORKERS, THREADS,
};

static ZERO_WORKER: PoolWorker = PoolWorker::ZERO;

/// Offset of `work_req` (the `struct uv__work`) in `uv_work_t` on 64-bit
/// libuv 1.x: after the request fields (data, type, reserved[6]: 64 bytes),
/// loop, work_cb and after_work_cb. libuv 1.x keeps its ABI stable.
const UV_WORK_REQ_OFFSET: u64 = 88;

#[uprobe]
pub fn pool_submit(ctx: ProbeContext) -> u32 {
    if let Some(work) = ctx.arg::<u64>(1) {
        submitted(work);
    }
    0
}

/// `uv_queue_work(loop, req, work_cb, after_work_cb)`: libuv's compiler
/// inlines `uv__work_submit` here (same file), so the item is `&req->work_req`.
#[uprobe]
pub fn pool_queue_work(ctx: ProbeContext) -> u32 {
    if let Some(req) = ctx.arg::<u64>(1) {
        submitted(req + UV_WORK_REQ_OFFSET);
    }
    0
}

#[inline(always)]
fn submitted(work: u64) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(pid) {
        return;
    }
    let key = PendingWork { pid, _pad: 0, work };
    let now = unsafe { bpf_ktime_get_ns() };
    // LRU: an item whose start we never see (a work function not probed) is
    // evicted eventually; the item it pushes out is counted as unmatched.
    let _ = POOL_PENDING.insert(&key, &now, 0);
}

#[uprobe]
pub fn pool_work_start(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // Synchronous fs calls (`fs.readFileSync`) run uv__fs_work on the calling
    // thread, which is an event-loop thread, never a pool worker.
    if !is_watched(pid) || tid == pid || unsafe { THREADS.get(&tid) }.is_some() {
        return 0;
    }
    let Some(work) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let key = PendingWork { pid, _pad: 0, work };
    let submitted = unsafe { POOL_PENDING.get(&key) }.copied();
    if submitted.is_some() {
        let _ = POOL_PENDING.remove(&key);
    }
    let Some(w) = worker(tid, pid) else {
        return 0;
    };
    if w.busy == 0 {
        w.busy = 1;
        w.busy_since_ns = now;
        w.period_items = 0;
    }
    w.items += 1;
    w.period_items += 1;
    match submitted {
        Some(at) if at <= now => {
            let wait = now - at;
            w.waited_items += 1;
            w.queue_wait_ns += wait;
            if wait > w.max_queue_wait_ns {
                w.max_queue_wait_ns = wait;
            }
            if let Some(b) = w.buckets.get_mut(histogram::bucket(wait)) {
                *b += 1;
            }
        }
        _ => count(COUNTER_POOL_UNMATCHED),
    }
    0
}

/// Entry of `uv_cond_wait`: on a worker, it means the queue was empty.
#[uprobe]
pub fn pool_worker_idle(_ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(w) = POOL_WORKERS.get_ptr_mut(&tid) else {
        return 0;
    };
    let w = unsafe { &mut *w };
    if w.busy == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let start = w.busy_since_ns;
    let busy = now.saturating_sub(start);
    w.busy = 0;
    w.busy_ns += busy;
    w.last_idle_ns = now;
    let Some(c) = config() else {
        return 0;
    };
    if busy >= c.threshold_ns {
        if !within_budget(c, w.pid, size_of::<PoolBusyEvent>() as u64, true) {
            count(COUNTER_POOL_EVENTS_BUDGET);
            return 0;
        }
        let event = PoolBusyEvent {
            kind: EVENT_POOL_BUSY,
            pid: w.pid,
            tid,
            _pad: 0,
            start_ns: start,
            end_ns: now,
            items: w.period_items,
        };
        if EVENTS.output::<PoolBusyEvent>(&event, 0).is_err() {
            count(COUNTER_POOL_EVENTS_LOST);
        }
    }
    0
}

#[inline(always)]
fn worker(tid: u32, pid: u32) -> Option<&'static mut PoolWorker> {
    if let Some(w) = POOL_WORKERS.get_ptr_mut(&tid) {
        let w = unsafe { &mut *w };
        if w.pid == pid {
            return Some(w);
        }
        // A reused tid from a process that died without userspace noticing.
        *w = ZERO_WORKER;
        w.pid = pid;
        return Some(w);
    }
    if POOL_WORKERS
        .insert(&tid, &ZERO_WORKER, BPF_NOEXIST as u64)
        .is_err()
    {
        count(COUNTER_POOL_WORKERS_FULL);
        return None;
    }
    let w = unsafe { &mut *POOL_WORKERS.get_ptr_mut(&tid)? };
    w.pid = pid;
    Some(w)
}
