//! The cheapest syscall probes: fentry/fexit on the x86-64 syscall handlers
//! (`__x64_sys_epoll_wait`, …). A BPF trampoline patched into each handler
//! runs only when that syscall runs; no other syscall of the host pays
//! anything, unlike the tracepoints (which put every syscall on the kernel's
//! syscall-tracing slow path). They need ftrace function hooks, which some
//! kernels refuse (lockdown, sandboxes): userspace tries them first and falls
//! back to the tracepoints.
//!
//! An fentry/fexit program is loaded for one kernel function, so each handler
//! has its own thin program around the shared logic in `poll`.
//!
//! fexit does not run for a call that was already inside the handler when the
//! trampoline was attached (its return address is the old one): a loop asleep
//! in a poll at attach is picked up at its next poll's entry, one iteration
//! later than with the tracepoints.
use aya_ebpf::{
    bindings::pt_regs,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::poll::{closed, exit_group, nr, poll_entered, poll_returned};

/// The handlers take the syscall's saved registers: `(const struct pt_regs *)`.
#[inline(always)]
fn regs_of(ctx: &FEntryContext) -> *const pt_regs {
    ctx.arg(0)
}

#[inline(always)]
fn entered(ctx: &FEntryContext, id: i64) {
    let regs = regs_of(ctx);
    // SAFETY: BTF-typed pointer argument; the verifier turns these loads into
    // checked reads.
    poll_entered(ctx, id, || unsafe {
        ((*regs).rdi, (*regs).rdx, (*regs).r10)
    });
}

#[inline(always)]
fn returned(ctx: &FExitContext) {
    let regs: *const pt_regs = ctx.arg(0);
    // fexit sees the handler's arguments, then its return value.
    let ret: i64 = ctx.arg(1);
    // SAFETY: as in `entered`.
    poll_returned(ret, || unsafe { (*regs).rdi } as i32);
}

#[fentry(function = "__x64_sys_epoll_wait")]
pub fn fentry_epoll_wait(ctx: FEntryContext) -> i32 {
    entered(&ctx, nr::EPOLL_WAIT);
    0
}

#[fentry(function = "__x64_sys_epoll_pwait")]
pub fn fentry_epoll_pwait(ctx: FEntryContext) -> i32 {
    entered(&ctx, nr::EPOLL_PWAIT);
    0
}

#[fentry(function = "__x64_sys_epoll_pwait2")]
pub fn fentry_epoll_pwait2(ctx: FEntryContext) -> i32 {
    entered(&ctx, nr::EPOLL_PWAIT2);
    0
}

#[fexit(function = "__x64_sys_epoll_wait")]
pub fn fexit_epoll_wait(ctx: FExitContext) -> i32 {
    returned(&ctx);
    0
}

#[fexit(function = "__x64_sys_epoll_pwait")]
pub fn fexit_epoll_pwait(ctx: FExitContext) -> i32 {
    returned(&ctx);
    0
}

#[fexit(function = "__x64_sys_epoll_pwait2")]
pub fn fexit_epoll_pwait2(ctx: FExitContext) -> i32 {
    returned(&ctx);
    0
}

#[fentry(function = "__x64_sys_close")]
pub fn fentry_close(ctx: FEntryContext) -> i32 {
    let regs = regs_of(&ctx);
    // SAFETY: as in `entered`.
    closed(unsafe { (*regs).rdi } as i32);
    0
}

#[fentry(function = "__x64_sys_exit_group")]
pub fn fentry_exit_group(_ctx: FEntryContext) -> i32 {
    exit_group();
    0
}
