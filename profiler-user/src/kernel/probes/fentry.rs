//! The fentry/fexit syscall probes (see profiler-ebpf's `poll_fentry`): one
//! program per handler, each loaded for its own kernel function.
use aya::{
    maps::{HashMap, MapError},
    programs::{FEntry, FExit},
    Btf, Ebpf,
};
use profiler_common::{LoopSlot, ThreadLoops, IN_POLL_BEFORE_ATTACH};

use crate::kernel::probes::{program, ProbeError};
use crate::kernel::startup::{Phase, Startup};

/// fentry programs and the kernel function each is loaded for.
const FENTRY: [(&str, &str); 5] = [
    ("fentry_epoll_wait", "__x64_sys_epoll_wait"),
    ("fentry_epoll_pwait", "__x64_sys_epoll_pwait"),
    ("fentry_epoll_pwait2", "__x64_sys_epoll_pwait2"),
    ("fentry_close", "__x64_sys_close"),
    ("fentry_exit_group", "__x64_sys_exit_group"),
];
/// fexit programs: only the polls' returns matter.
const FEXIT: [(&str, &str); 3] = [
    ("fexit_epoll_wait", "__x64_sys_epoll_wait"),
    ("fexit_epoll_pwait", "__x64_sys_epoll_pwait"),
    ("fexit_epoll_pwait2", "__x64_sys_epoll_pwait2"),
];

/// Loads and attaches every fentry/fexit program. The kernel refuses them
/// where ftrace function hooks are not allowed (EPERM from BPF_PROG_LOAD,
/// ENOTSUPP without a trampoline): the caller then unloads what did load and
/// falls back.
pub(crate) fn attach(ebpf: &mut Ebpf, btf: &Btf, startup: &mut Startup) -> Result<(), ProbeError> {
    for (name, function) in FENTRY {
        let prog: &mut FEntry = program(ebpf, name)?;
        startup
            .time(Phase::Load(name), || prog.load(function, btf))
            .and_then(|()| startup.time(Phase::Attach, || prog.attach().map(drop)))
            .map_err(|source| ProbeError::Program { name, source })?;
    }
    for (name, function) in FEXIT {
        let prog: &mut FExit = program(ebpf, name)?;
        startup
            .time(Phase::Load(name), || prog.load(function, btf))
            .and_then(|()| startup.time(Phase::Attach, || prog.attach().map(drop)))
            .map_err(|source| ProbeError::Program { name, source })?;
    }
    Ok(())
}

/// Undoes a partial `attach`: two sets of probes would see every poll twice.
pub(crate) fn unload(ebpf: &mut Ebpf) {
    for (name, _) in FENTRY {
        if let Ok(prog) = program::<FEntry>(ebpf, name) {
            // Not loaded (never got that far) is the only error, and fine.
            let _ = prog.unload();
        }
    }
    for (name, _) in FEXIT {
        if let Ok(prog) = program::<FExit>(ebpf, name) {
            let _ = prog.unload();
        }
    }
}

/// The kernel's BPF_NOEXIST map update flag (libc does not export it).
const BPF_NOEXIST: u64 = 1;

/// Threads of one process checked for a poll entered before attach; beyond
/// this (a pathological process) the rest are counted and warned about.
const MAX_THREADS_SEEDED: usize = 1024;

/// Marks the threads of `pid` asleep in an epoll wait (see
/// `IN_POLL_BEFORE_ATTACH`): without this, a loop asleep at attach would lose
/// its first iteration, and a loop that wakes up and never polls again
/// (wedged) would go unseen. Call it after `pid` is watched: a thread the
/// probes have already seen keeps its state.
pub(crate) fn seed_asleep_polls(ebpf: &mut Ebpf, pid: u32) -> u64 {
    let (asleep, skipped) = asleep_in_poll(pid, MAX_THREADS_SEEDED);
    if skipped > 0 {
        log::warn!(
            "pid {pid}: {skipped} threads beyond the first {MAX_THREADS_SEEDED} were not checked for a poll entered before attach: their first iteration is not measured"
        );
    }
    let Some(map) = ebpf.map_mut("THREADS") else {
        return 0;
    };
    let Ok(mut threads) = HashMap::<_, u32, ThreadLoops>::try_from(map) else {
        return 0;
    };
    let mut seeded = 0;
    let now = crate::clock::monotonic_ns();
    for (tid, epfd) in asleep {
        let mut t = ThreadLoops {
            pid,
            ..ThreadLoops::default()
        };
        t.slots[0] = LoopSlot {
            epfd,
            in_poll: IN_POLL_BEFORE_ATTACH,
            first_seen_ns: now,
            last_enter_ns: now,
            timeout_ms: -1,
            ..LoopSlot::default()
        };
        match threads.insert(tid, t, BPF_NOEXIST) {
            Ok(()) => seeded += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => log::debug!("pid {pid} tid {tid}: seeding its poll failed: {e}"),
        }
    }
    seeded
}

/// `/proc/PID/task/TID/syscall` is one line of a number and up to six hex
/// arguments, plus the stack and instruction pointers: well under this.
const SYSCALL_FILE_MAX: usize = 256;

/// x86-64 numbers of `epoll_wait`, `epoll_pwait`, `epoll_pwait2`.
const EPOLL_WAIT_NRS: [u64; 3] = [232, 281, 441];

/// The epoll fd a thread is asleep on, from its `/proc/PID/task/TID/syscall`
/// line ("281 0x12 0x… …"), or None if it is not in an epoll wait.
pub(crate) fn epoll_fd_of_syscall_line(line: &str) -> Option<i32> {
    let mut fields = line.split_ascii_whitespace();
    let nr: u64 = fields.next()?.parse().ok()?;
    if !EPOLL_WAIT_NRS.contains(&nr) {
        return None;
    }
    let epfd = fields.next()?.strip_prefix("0x")?;
    i32::try_from(u64::from_str_radix(epfd, 16).ok()?).ok()
}

/// Reads a thread's syscall line: the process is hostile (it may exit, its
/// tids may be reused), so no links are followed, nothing blocks and at most
/// `SYSCALL_FILE_MAX` bytes are read.
fn syscall_line(pid: u32, tid: u32) -> Option<String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/task/{tid}/syscall"))
        .ok()?;
    let mut buf = Vec::with_capacity(SYSCALL_FILE_MAX);
    file.take(SYSCALL_FILE_MAX as u64)
        .read_to_end(&mut buf)
        .ok()?;
    String::from_utf8(buf).ok()
}

/// Threads of `pid` asleep in an epoll wait, with the fd: `(tid, epfd)`.
/// At most `max` threads are looked at; returns how many were skipped.
pub(crate) fn asleep_in_poll(pid: u32, max: usize) -> (Vec<(u32, i32)>, usize) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (Vec::new(), 0);
    };
    let mut found = Vec::new();
    let mut skipped = 0;
    for (i, entry) in dir.filter_map(Result::ok).enumerate() {
        if i >= max {
            skipped += 1;
            continue;
        }
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(epfd) = syscall_line(pid, tid)
            .as_deref()
            .and_then(epoll_fd_of_syscall_line)
        {
            found.push((tid, epfd));
        }
    }
    (found, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_waits_are_found_in_syscall_lines() {
        let line = "281 0x11 0x7ffd2a3b0e70 0x400 0xffffffffffffffff 0x0 0x8 0x7ffd2a3b0e38 0x7f5c1d2e8d06\n";
        assert_eq!(epoll_fd_of_syscall_line(line), Some(17));
        assert_eq!(
            epoll_fd_of_syscall_line("232 0x3 0x0 0x1 0x0 0x0 0x0 0x0 0x0"),
            Some(3)
        );
        assert_eq!(epoll_fd_of_syscall_line("441 0x5 0 0 0 0 0 0 0"), Some(5));
        assert_eq!(epoll_fd_of_syscall_line("running"), None);
        assert_eq!(epoll_fd_of_syscall_line("202 0x7f 0x80 0x0"), None);
        assert_eq!(epoll_fd_of_syscall_line("281 0xffffffffffff 0x0"), None);
        assert_eq!(epoll_fd_of_syscall_line(""), None);
        assert_eq!(epoll_fd_of_syscall_line("-1 0x0"), None);
    }
}
