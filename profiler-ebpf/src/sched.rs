//! Where a busy iteration's time went when the loop thread was not running:
//! asleep (blocked in a syscall, a lock, a page fault) or runnable but waiting
//! for a CPU (contention, cgroup CPU throttling).
//!
//! A loop thread blocking inside a busy iteration has its stacks taken (it is
//! the current task then; a preempted one has none: it waits only for a
//! CPU); when it gets a CPU again the interval is
//! split at its wakeup and, if long enough, sent with those stacks. Sleeping
//! in its own loop's poll is idle and not tracked. Other tasks' pid/tgid are
//! read at offsets userspace found in the kernel's BTF.
use aya_ebpf::{
    bindings::{
        BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{bpf_get_current_pid_tgid, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
    EbpfContext,
};
use profiler_common::{
    Config, OffCpuEvent, ThreadLoops, COUNTER_OFF_CPU_BUDGET, COUNTER_OFF_CPU_LOST,
    COUNTER_STACK_COPY_ERRORS, EVENT_OFF_CPU, IN_POLL_BEFORE_ATTACH, MAX_KERNEL_FRAMES,
    MAX_LOOP_SLOTS, MAX_USER_FRAMES,
};

use crate::{
    config, count, is_watched,
    unwind::{copy_user_stack, copy_v8_slots, copy_v8_slots_recovered, recover_user_stack},
    within_budget, EVENTS, OFF_CPU, THREADS,
};

// Too big for the BPF stack: inserted by reference from read-only data.
static ZERO_OFF_CPU: OffCpuEvent = unsafe { core::mem::zeroed() };

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(c) = config() else {
        return 0;
    };
    // The clock is read only for watched threads: this runs on every
    // context switch of the host, and a clock read is not free in a VM.
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    switched_out(&ctx, preempt != 0 || prev_state as u32 == 0, c);
    let next: u64 = ctx.arg(2);
    switched_in(next, c);
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let Some(c) = config() else {
        return 0;
    };
    let task: u64 = ctx.arg(0);
    let Some((_, t)) = watched_task(task, c) else {
        return 0;
    };
    if t.off_cpu_since_ns != 0 && t.runnable_since_ns == 0 {
        t.runnable_since_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}

/// The current task (`prev`) leaves the CPU.
#[inline(always)]
fn switched_out(ctx: &BtfTracePointContext, runnable: bool, c: &Config) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if !is_watched(pid) {
        return;
    }
    let Some(p) = THREADS.get_ptr_mut(tid) else {
        return;
    };
    let t = unsafe { &mut *p };
    let Some(s) = t.slots.get(t.primary as usize & (MAX_LOOP_SLOTS - 1)) else {
        return;
    };
    if s.in_poll != 0 || s.last_exit_ns == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let seq = s.iterations;
    t.off_cpu_since_ns = now;
    t.runnable_since_ns = if runnable { now } else { 0 };

    let e = match OFF_CPU.get_ptr_mut(tid) {
        Some(e) => e,
        None => {
            let _ = OFF_CPU.insert(tid, &ZERO_OFF_CPU, BPF_NOEXIST as u64);
            match OFF_CPU.get_ptr_mut(tid) {
                Some(e) => e,
                None => return,
            }
        }
    };
    unsafe {
        (*e).header.time_ns = now;
        (*e).header.seq = seq;
        (*e).header.pid = pid;
        (*e).header.tid = tid;
        // Preempted, the thread waits only for a CPU: where its code was says
        // nothing about why, and walking two stacks on every preemption of a
        // busy loop thread was most of this program's cost under load.
        // A process over its ring-buffer budget would have its record
        // dropped: flooding costs it no stack walks either.
        if runnable || !within_budget(c, pid, size_of::<OffCpuEvent>() as u64, false) {
            (*e).header.user_bytes = 0;
            (*e).header.kernel_bytes = 0;
            (*e).header.regs.stack_bytes = 0;
            (*e).header.v8_frames = 0;
            return;
        }
        let user = bpf_get_stack(
            ctx.as_ptr(),
            (*e).user_stack.as_mut_ptr().cast(),
            (MAX_USER_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        );
        let kernel = bpf_get_stack(
            ctx.as_ptr(),
            (*e).kernel_stack.as_mut_ptr().cast(),
            (MAX_KERNEL_FRAMES * 8) as u32,
            0,
        );
        let frames = if user > 0 { user as usize / 8 } else { 0 };
        let (recovered, resume_fp) = recover_user_stack(&mut (*e).user_stack, frames);
        (*e).header.user_bytes = if recovered > frames {
            (recovered * 8) as i32
        } else {
            user as i32
        };
        (*e).header.kernel_bytes = kernel as i32;
        // A waiting caller's JavaScript frames can lie past the stack copy
        // (execSync's are 17-18 KiB above the wait's %rsp, beyond libuv's
        // on-stack epoll event array): their V8 slots are read here, along
        // the same chain as the user stack, so slot i belongs to frame i.
        let v8_frames = if recovered > frames {
            copy_v8_slots_recovered(&mut (*e).v8_slots, resume_fp)
        } else {
            copy_v8_slots(&mut (*e).v8_slots)
        };
        (*e).header.v8_frames = v8_frames as u32;
        (*e).header.regs.stack_bytes = 0;
        if c.copy_stack != 0 && !copy_user_stack(&mut (*e).header.regs, (*e).stack.as_mut_ptr()) {
            count(COUNTER_STACK_COPY_ERRORS);
        }
    }
}

/// `next` gets the CPU: close its off-CPU interval.
#[inline(always)]
fn switched_in(next: u64, c: &Config) {
    let Some((tid, t)) = watched_task(next, c) else {
        return;
    };
    let s = &mut t.slots[t.primary as usize & (MAX_LOOP_SLOTS - 1)];
    if s.in_poll == IN_POLL_BEFORE_ATTACH {
        // Woken from the poll it slept in at attach: it returns now (see
        // IN_POLL_BEFORE_ATTACH), with events as far as we know.
        let now = unsafe { bpf_ktime_get_ns() };
        s.in_poll = 0;
        s.idle_pending_ns += now.saturating_sub(s.last_enter_ns);
        s.last_exit_ns = now;
        s.last_ret = 1;
        return;
    }
    if t.off_cpu_since_ns == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let runnable = if t.runnable_since_ns != 0 {
        t.runnable_since_ns
    } else {
        now
    };
    let blocked = runnable.saturating_sub(t.off_cpu_since_ns);
    let runq = now.saturating_sub(runnable);
    t.iter_blocked_ns += blocked;
    t.iter_runq_ns += runq;
    t.off_cpu_since_ns = 0;
    t.runnable_since_ns = 0;
    if blocked + runq < c.off_cpu_min_ns {
        return;
    }
    let Some(e) = OFF_CPU.get_ptr_mut(tid) else {
        return;
    };
    let e = unsafe { &mut *e };
    // Off-CPU stacks may fill only the ring's first half: the rest stays for
    // samples and episodes, however many processes send them and however
    // late userspace drains.
    let bytes = size_of::<OffCpuEvent>() as u64;
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) + bytes > EVENTS.query(BPF_RB_RING_SIZE as u64) / 2 {
        count(COUNTER_OFF_CPU_LOST);
        return;
    }
    if !within_budget(c, e.header.pid, size_of::<OffCpuEvent>() as u64, true) {
        count(COUNTER_OFF_CPU_BUDGET);
        return;
    }
    e.header.kind = EVENT_OFF_CPU;
    e.header.blocked_ns = blocked;
    e.header.runq_ns = runq;
    if EVENTS
        .output::<OffCpuEvent>(e, BPF_RB_NO_WAKEUP as u64)
        .is_err()
    {
        count(COUNTER_OFF_CPU_LOST);
    }
}

/// `(tid, loop state)` of `task` if it is a polling thread of a watched process.
#[inline(always)]
fn watched_task(task: u64, c: &Config) -> Option<(u32, &'static mut ThreadLoops)> {
    if c.task_pid_offset == 0 || task == 0 {
        return None;
    }
    let tgid =
        unsafe { bpf_probe_read_kernel((task + c.task_tgid_offset as u64) as *const u32) }.ok()?;
    if !is_watched(tgid) {
        return None;
    }
    let tid =
        unsafe { bpf_probe_read_kernel((task + c.task_pid_offset as u64) as *const u32) }.ok()?;
    let t = THREADS.get_ptr_mut(tid)?;
    Some((tid, unsafe { &mut *t }))
}
