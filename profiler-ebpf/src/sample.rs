//! `cpu-clock` samples of busy loop threads, with user and kernel stacks and
//! a copy of the top of the user stack with its registers (unwound in
//! userspace through code without frame pointers, see `unwind`).
//!
//! Only event-loop threads while their loop is busy, and libuv threadpool
//! workers while they run work items, and only once that has lasted
//! `sample_after_ns` (a quarter of the threshold): a thread asleep in epoll is
//! never on a CPU to be sampled, the short iterations of a busy server cost
//! no stack walk, and other threads of a watched process cost two lookups. Samples go out without waking userspace;
//! an episode wakes it, and it drains on a timer too.
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
    },
    macros::perf_event,
    programs::PerfEventContext,
    EbpfContext,
};
use profiler_common::{
    SampleEvent, SampleHeader, UserRegs, COUNTER_SAMPLES_LOST, COUNTER_SAMPLES_SENT,
    COUNTER_STACK_COPY_ERRORS, COUNTER_USER_STACK_ERRORS, EVENT_POOL_SAMPLE, EVENT_SAMPLE,
    MAX_KERNEL_FRAMES, MAX_LOOP_SLOTS, MAX_USER_FRAMES,
};

use crate::{config, count, is_watched, unwind::copy_user_stack, EVENTS, POOL_WORKERS, THREADS};

#[perf_event]
pub fn sample_stack(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if pid == 0 || !is_watched(pid) {
        return 0;
    }
    let (sample_after_ns, copy_stack) = match config() {
        Some(c) if c.sample_stacks != 0 => (c.sample_after_ns, c.copy_stack != 0),
        _ => return 0,
    };
    let Some((kind, seq, busy_start_ns)) = busy_window(tid) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(busy_start_ns) < sample_after_ns {
        return 0;
    }
    let header = SampleHeader {
        kind,
        pid,
        tid,
        cpu: unsafe { bpf_get_smp_processor_id() },
        user_bytes: 0,
        kernel_bytes: 0,
        seq,
        busy_start_ns,
        time_ns: now,
        regs: UserRegs::default(),
    };
    let Some(mut entry) = EVENTS.reserve::<SampleEvent>(0) else {
        count(COUNTER_SAMPLES_LOST);
        return 0;
    };
    let e = entry.as_mut_ptr();
    unsafe {
        (*e).header = header;
        let user = bpf_get_stack(
            ctx.as_ptr(),
            (*e).user_stack.as_mut_ptr().cast(),
            (MAX_USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        );
        if user < 0 {
            count(COUNTER_USER_STACK_ERRORS);
        }
        let kernel = bpf_get_stack(
            ctx.as_ptr(),
            (*e).kernel_stack.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        );
        (*e).header.user_bytes = user as i32;
        (*e).header.kernel_bytes = kernel as i32;
        (*e).v8_frames = crate::unwind::copy_v8_slots(&mut (*e).v8_slots) as u64;
        if copy_stack && !copy_user_stack(&mut (*e).header.regs, (*e).stack.as_mut_ptr()) {
            count(COUNTER_STACK_COPY_ERRORS);
        }
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    count(COUNTER_SAMPLES_SENT);
    0
}

/// What the thread is busy with, if anything worth a sample: the open
/// iteration of its event loop, or a threadpool worker's busy period.
#[inline(always)]
fn busy_window(tid: u32) -> Option<(u32, u64, u64)> {
    if let Some(t) = unsafe { THREADS.get(tid) } {
        let s = t.slots.get(t.primary as usize & (MAX_LOOP_SLOTS - 1))?;
        if s.last_exit_ns == 0 || s.in_poll != 0 {
            return None;
        }
        return Some((
            EVENT_SAMPLE,
            s.iterations,
            s.last_exit_ns.saturating_sub(s.accum_busy_ns),
        ));
    }
    let w = unsafe { POOL_WORKERS.get(&tid) }?;
    (w.busy != 0).then_some((EVENT_POOL_SAMPLE, w.items, w.busy_since_ns))
}
