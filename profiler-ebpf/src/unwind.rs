//! Frame-pointer unwinding past a libc syscall wrapper.
//!
//! The kernel walks user stacks by frame pointer. glibc is built without them
//! and some wrappers reuse %rbp (the multi-threaded path of `epoll_pwait`
//! keeps the cancellation state there), so a thread asleep in such a syscall
//! yields a one-frame stack: `execSync`'s 300 ms would have no JavaScript in
//! it. Such a wrapper still pushes the caller's %rbp right below its return
//! address: find that pair in the first words above %rsp and walk on from it.
use aya_ebpf::{
    bindings::pt_regs,
    cty::c_void,
    helpers::{
        bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
        generated,
    },
};
use profiler_common::{UserRegs, MAX_USER_FRAMES, STACK_COPY_BYTES, STACK_RED_ZONE, V8_FRAMES};

/// Words above %rsp searched for the saved (%rbp, return address) pair, in
/// chunks that fit the BPF stack. Deep enough for glibc's
/// pthread_cond_timedwait → futex chain under `Atomics.wait`.
const CHUNK: usize = 8;
const CHUNKS: usize = 4;
/// A saved %rbp points into the stack, not far above %rsp.
const STACK_SPAN: u64 = 1 << 20;
/// End of x86_64 user space (47-bit addresses).
const USER_TOP: u64 = 1 << 47;

#[inline(always)]
fn in_stack(addr: u64, sp: u64) -> bool {
    addr > sp && addr - sp < STACK_SPAN
}

/// A canonical user address, away from the stack: possibly code.
#[inline(always)]
fn maybe_code(addr: u64, sp: u64) -> bool {
    addr > 0x10000 && addr < USER_TOP && !in_stack(addr, sp - STACK_SPAN)
}

/// Does a frame-pointer chain start at `fp`? Its saved %rbp must point
/// further up the stack and its return address look like code; locals that
/// merely look like a (pointer, address) pair rarely pass that.
#[inline(always)]
fn chain_starts_at(fp: u64, sp: u64) -> bool {
    if !fp.is_multiple_of(8) || !in_stack(fp, sp) {
        return false;
    }
    match unsafe { read_user::<[u64; 2]>(fp) } {
        Some([next, ret]) => next > fp && in_stack(next, sp) && maybe_code(ret, sp),
        None => false,
    }
}

/// Recovers `stack` (leaf first) when the kernel's walk stopped after at most
/// two frames; returns the new number of frames (`frames` unchanged when
/// nothing was recovered) and, when it recovered, the frame pointer of
/// `stack[1]`'s frame (the saved %rbp of the pair), where the chain resumes.
#[inline(always)]
pub fn recover_user_stack(stack: &mut [u64; MAX_USER_FRAMES], frames: usize) -> (usize, u64) {
    if frames == 0 || frames > 2 {
        return (frames, 0);
    }
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return (frames, 0);
    }
    let sp = unsafe { (*regs).rsp };
    let mut fp = 0;
    let mut ret = 0;
    for c in 0..CHUNKS {
        if fp != 0 {
            break;
        }
        // One word of overlap so a pair across two chunks is seen.
        let base = sp + (c * (CHUNK - 1) * 8) as u64;
        let Some(words) = (unsafe { read_user::<[u64; CHUNK]>(base) }) else {
            break;
        };
        for i in 0..CHUNK - 1 {
            if fp == 0 && maybe_code(words[i + 1], sp) && chain_starts_at(words[i], sp) {
                fp = words[i];
                ret = words[i + 1];
            }
        }
    }
    if fp == 0 {
        return (frames, 0);
    }
    let resume = fp;
    // Keep the leaf (the wrapper), then the caller the pair names, then walk on.
    stack[1] = ret;
    let mut n = 2;
    for _ in 0..MAX_USER_FRAMES - 2 {
        let frame: [u64; 2] = match unsafe { read_user(fp) } {
            Some(f) => f,
            None => break,
        };
        // Frames grow towards higher addresses; anything else ends the chain.
        if frame[0] <= fp || frame[1] == 0 || frame[1] >= USER_TOP || n >= MAX_USER_FRAMES {
            break;
        }
        stack[n] = frame[1];
        n += 1;
        fp = frame[0];
    }
    (n, resume)
}

/// Copies, for the first `V8_FRAMES` frames of the frame-pointer chain
/// starting at the thread's %rbp, the words at fp-16 and fp-8: in a V8 frame
/// its function object and its context (or a frame-type marker). They must
/// be read now: by the time userspace names the frame the stack has moved
/// on. Returns the number of frames copied; the chain is followed as the
/// kernel's own walk does (upward only), so entry i belongs to user frame i.
#[inline(always)]
pub fn copy_v8_slots(slots: &mut [[u64; 2]; V8_FRAMES]) -> usize {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if regs.is_null() {
        return 0;
    }
    copy_v8_slots_from(slots, unsafe { (*regs).rbp }, 0)
}

/// [`copy_v8_slots`] for a stack [`recover_user_stack`] rebuilt: frame 0 (the
/// libc wrapper) keeps no frame pointer and gets empty slots, frame 1 on
/// follow the chain from `fp`, the frame pointer the recovery resumed at, as
/// the recovered walk does.
#[inline(always)]
pub fn copy_v8_slots_recovered(slots: &mut [[u64; 2]; V8_FRAMES], fp: u64) -> usize {
    slots[0] = [0, 0];
    copy_v8_slots_from(slots, fp, 1)
}

/// Slots from entry `first` on, along the chain from `fp`.
#[inline(always)]
fn copy_v8_slots_from(slots: &mut [[u64; 2]; V8_FRAMES], mut fp: u64, first: usize) -> usize {
    let mut n = first;
    // A constant bound is what the verifier checks best; `get_mut` keeps the
    // index provably in range.
    for i in first..V8_FRAMES {
        if !(16..USER_TOP).contains(&fp) || !fp.is_multiple_of(8) {
            break;
        }
        // fp-16, fp-8, then the saved caller fp at fp.
        let Some(words) = (unsafe { read_user::<[u64; 3]>(fp - 16) }) else {
            break;
        };
        let Some(slot) = slots.get_mut(i) else {
            break;
        };
        *slot = [words[0], words[1]];
        n = i + 1;
        if words[2] <= fp {
            break;
        }
        fp = words[2];
    }
    n
}

#[inline(always)]
unsafe fn read_user<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Fills `regs` with the thread's user registers and copies the top of its
/// user stack into `stack` (`STACK_COPY_BYTES` long) for userspace to unwind
/// with unwind tables: the red zone below %rsp first (`STACK_RED_ZONE`
/// bytes, where realigning assembly keeps the %rsp its unwind rule reads),
/// then from %rsp up. A thread near the top of its stack has fewer bytes
/// mapped above %rsp than the copy holds, and one fault fails the whole
/// read: then retry with sizes ending at the page boundaries below, so the
/// copy always ends at the last readable page. Returns false (and leaves
/// `stack_bytes` 0) when nothing could be copied.
#[inline(always)]
pub fn copy_user_stack(regs: &mut UserRegs, stack: *mut u8) -> bool {
    regs.stack_bytes = 0;
    regs.below_sp = 0;
    let task_regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    if task_regs.is_null() {
        return false;
    }
    let Ok(r) = (unsafe { bpf_probe_read_kernel(task_regs) }) else {
        return false;
    };
    regs.ip = r.rip;
    regs.sp = r.rsp;
    regs.bp = r.rbp;
    let sp = r.rsp;
    if !(PAGE..USER_TOP).contains(&sp) {
        return false;
    }
    // Its own read: the page below %rsp may not be mapped, and that must not
    // cost the copy above it.
    let red = STACK_RED_ZONE as u64;
    let err = unsafe {
        generated::bpf_probe_read_user(stack.cast(), red as u32, (sp - red) as *const c_void)
    };
    if err == 0 {
        regs.below_sp = red as u32;
    }
    // SAFETY: `stack` is STACK_COPY_BYTES long; the reads below stay within
    // STACK_COPY_BYTES - STACK_RED_ZONE bytes from here.
    let above = unsafe { stack.add(STACK_RED_ZONE) };
    // Bytes from %rsp to the end of its page, then whole pages: every size
    // but the first full one ends at a page boundary.
    let to_page_end = PAGE - (sp & (PAGE - 1));
    for k in 0..=PAGES {
        let want = if k == 0 {
            ABOVE
        } else {
            to_page_end + (PAGES - k) * PAGE
        };
        // The mask and the bound let the verifier see 0 < size <= the copy.
        let size = want & (2 * STACK_COPY_BYTES as u64 - 1);
        if size == 0 || size > ABOVE {
            continue;
        }
        let err = unsafe {
            generated::bpf_probe_read_user(above.cast(), size as u32, sp as *const c_void)
        };
        if err == 0 {
            regs.stack_bytes = size as u32;
            return true;
        }
    }
    false
}

const PAGE: u64 = 4096;
/// Whole pages below the full copy tried after it fails.
const PAGES: u64 = STACK_COPY_BYTES as u64 / PAGE - 1;
/// Room in the copy above %rsp, after the red zone.
const ABOVE: u64 = (STACK_COPY_BYTES - STACK_RED_ZONE) as u64;
