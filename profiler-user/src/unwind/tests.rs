//! Unwinds this test process's own stack, copied the way the kernel does.
use super::*;
use std::arch::asm;

/// Registers and up to `STACK_COPY_BYTES` of the stack above %rsp, read with
/// process_vm_readv so a copy that runs past the top of the stack comes back
/// short instead of faulting (as the kernel side retries smaller sizes).
#[inline(never)]
fn capture() -> (UserRegs, Vec<u8>) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: only reads registers and a label address; no memory touched.
    unsafe {
        asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
             ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp);
    }
    let mut stack = vec![0u8; profiler_common::STACK_COPY_BYTES];
    let mut n = 0;
    // Page by page: the first page that fails ends the copy.
    while n < stack.len() {
        let len = 4096 - ((sp as usize + n) % 4096);
        let len = len.min(stack.len() - n);
        let local = libc::iovec {
            iov_base: stack[n..].as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: (sp as usize + n) as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: both iovecs are valid for `len` bytes; the remote one is
        // only read, by the kernel, which reports a fault as an error.
        let r = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    stack.truncate(n);
    let regs = UserRegs {
        ip,
        sp,
        bp,
        stack_bytes: n as u32,
        below_sp: 0,
    };
    (regs, stack)
}

#[inline(never)]
fn outer() -> UnwoundStack {
    let (regs, stack) = capture();
    let stack = Unwinder::new().unwind(std::process::id(), &regs, stack, &[]);
    std::hint::black_box(stack)
}

#[test]
fn unwinds_own_stack_through_tables() {
    let stack = outer();
    assert!(stack.frames.len() >= 3, "{stack:?}");
    let outer_start = outer as *const () as u64;
    // The return address into outer() is found, by tables (release builds
    // omit frame pointers) or frame pointers.
    assert!(
        stack
            .frames
            .iter()
            .any(|f| f.pc > outer_start && f.pc < outer_start + 4096),
        "{stack:?}"
    );
    // Every frame is code of this process.
    let maps = parse_exec_mappings(&std::fs::read_to_string("/proc/self/maps").unwrap());
    for f in &stack.frames {
        assert!(find(&maps, f.pc).is_some(), "{:#x} is not code", f.pc);
    }
    assert!(stack.snapshot.read_u64(stack.snapshot.sp).is_some());
}

#[test]
fn garbage_registers_end_in_truncated() {
    let regs = UserRegs {
        ip: 0x10,
        sp: 0x1000,
        bp: 0x1000,
        stack_bytes: 64,
        below_sp: 0,
    };
    let stack = Unwinder::new().unwind(std::process::id(), &regs, vec![0xab; 64], &[]);
    assert!(stack.truncated && stack.frames.is_empty());
    assert_eq!(addresses(&stack), vec![TRUNCATED]);
}

#[test]
fn without_a_copy_the_frame_pointer_walk_stands() {
    let stack = Unwinder::new().unwind(1, &UserRegs::default(), Vec::new(), &[5, 6]);
    assert_eq!(addresses(&stack), vec![5, 6]);
}

#[test]
fn splices_the_kernel_walk_where_the_copy_ends() {
    // The leaf in anonymous executable memory, like V8's JIT code: no
    // tables, unwound by frame pointer, whose frame is all the copy holds.
    // SAFETY: a fresh anonymous mapping, never executed, unmapped below.
    let jit = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(jit, libc::MAP_FAILED);
    let here = jit as u64 + 16;
    let ret = outer as *const () as u64 + 1;
    let mut bytes = Vec::new();
    // frame pointer chain: [bp] = next bp (outside the copy), [bp+8] = ret
    bytes.extend_from_slice(&0x9000u64.to_le_bytes());
    bytes.extend_from_slice(&ret.to_le_bytes());
    let regs = UserRegs {
        ip: here,
        sp: 0x8000,
        bp: 0x8000,
        stack_bytes: 16,
        below_sp: 0,
    };
    let fp_walk = [here, ret, outer_start_plus(2), outer_start_plus(3)];
    let stack = Unwinder::new().unwind(std::process::id(), &regs, bytes, &fp_walk);
    let pcs: Vec<u64> = stack.frames.iter().map(|f| f.pc).collect();
    assert!(!stack.truncated, "{stack:?}");
    assert_eq!(
        pcs,
        vec![here, ret, outer_start_plus(2), outer_start_plus(3)]
    );
    assert_eq!(stack.frames[1].fp, Some(0x9000));
    // SAFETY: mapped above, nothing points into it any more.
    unsafe { libc::munmap(jit, 4096) };
}

fn outer_start_plus(n: u64) -> u64 {
    outer as *const () as u64 + n
}

#[test]
fn v8_slots_follow_the_unwound_frames() {
    // Frame A's slots are in the copy (sp 0x1000: words 0x11, 0x22 at
    // fp-16 and fp-8 for fp 0x1010); B was found only by the unwinder; C is
    // the kernel walk's second frame, whose slots the kernel took.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x11u64.to_le_bytes());
    bytes.extend_from_slice(&0x22u64.to_le_bytes());
    let unwound = UnwoundStack {
        frames: vec![
            UnwoundFrame {
                pc: 0xa,
                fp: Some(0x1010),
            },
            UnwoundFrame { pc: 0xb, fp: None },
            UnwoundFrame {
                pc: 0xc,
                fp: Some(0x9000),
            },
        ],
        truncated: false,
        snapshot: StackSnapshot::new(0x1000, bytes),
    };
    let slots = v8_slots_of(&unwound, &[0xa, 0xc], &[[1, 2], [3, 4]]);
    assert_eq!(slots, vec![[0x11, 0x22], [0, 0], [3, 4]]);
}
