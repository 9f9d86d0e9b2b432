//! Process lifecycle: new programs (for discovery) and exits of watched
//! processes, so userspace attaches and cleans up without polling /proc.
use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use profiler_common::{ProcessEvent, EVENT_EXEC, EVENT_EXIT};

use crate::{config, is_watched, EVENTS};

/// Runs in the context of the process that just exec'd.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> i32 {
    match config() {
        Some(c) if c.discover != 0 => {}
        _ => return 0,
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    send(EVENT_EXEC, pid);
    0
}

/// Fires for every exiting thread; only a watched process's main thread counts.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if pid != pid_tgid as u32 || !is_watched(pid) {
        return 0;
    }
    send(EVENT_EXIT, pid);
    0
}

#[inline(always)]
fn send(kind: u32, pid: u32) {
    let event = ProcessEvent {
        kind,
        pid,
        time_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Lost only when the ring buffer is full; userspace also checks liveness.
    let _ = EVENTS.output::<ProcessEvent>(&event, BPF_RB_FORCE_WAKEUP as u64);
}
