//! Which thread is which. Every thread of a watched process gets a role, from
//! the strongest evidence at hand:
//!
//! 1. its name: Node ≥ 22 names threads (`libuv-worker`, `V8Worker`,
//!    `DelayedTaskScheduler`, `WorkerThread`, `SignalInspector`);
//! 2. the kernel's own observations: it ran libuv threadpool work (uprobes);
//! 3. the bottom of its stack: Node 20 names every thread `node`, so a thread
//!    asleep in a syscall has its stack read (`/proc/PID/task/TID/syscall`
//!    gives its stack pointer) and scanned for return addresses into the
//!    executable; the root-most one that names a thread entry point (libuv's
//!    `worker`, Node's `PlatformWorkerThread`, …) decides;
//! 4. it polls an event loop: a `worker_threads` Worker. Not first: V8's
//!    delayed-task scheduler runs a libuv loop of its own.
use std::{collections::BTreeMap, fs};

use crate::{
    kernel::target::ThreadRole,
    symbolize::{Frame, StackRequest, Symbolizer},
};

/// Bytes of stack read above the stack pointer: an idle thread's frames, from
/// its wait back to its entry point, take a few KiB.
const STACK_READ_BYTES: usize = 256 * 1024;
/// Return-address candidates kept per thread, root-most: only the bottom of
/// the stack is needed.
const MAX_CANDIDATES: usize = 48;

/// How a thread's role was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    MainThread,
    EventLoop,
    RanPoolWork,
    Name,
    StackBottom,
    /// Nothing known: counted as `other`.
    None,
}

#[derive(Clone, Debug)]
pub struct ThreadInfo {
    pub tid: u32,
    pub name: String,
    pub role: ThreadRole,
    pub evidence: Evidence,
    /// Leaf first: words on its stack that point into executable code, for
    /// `classify_by_stack` (empty once classified or when unreadable).
    pub stack_words: Vec<u64>,
}

/// Every thread of `pid` now, classified from the kernel's observations and
/// names; those still unknown carry their stack words.
pub fn census(pid: u32, loop_tids: &[u32], pool_tids: &[u32]) -> Vec<ThreadInfo> {
    census_with(pid, loop_tids, pool_tids, true, &[])
}

/// [`census`] again, when loopbpf stops: threads `previous` already
/// classified by their stack keep that role and their stacks are not read
/// again, only those of threads started since (each stack read and named
/// costs ms: 100 watched Node 20 processes took over 20 s to stop).
pub fn census_again(
    pid: u32,
    previous: &[ThreadInfo],
    loop_tids: &[u32],
    pool_tids: &[u32],
) -> Vec<ThreadInfo> {
    census_with(pid, loop_tids, pool_tids, true, previous)
}

fn census_with(
    pid: u32,
    loop_tids: &[u32],
    pool_tids: &[u32],
    read_stacks: bool,
    previous: &[ThreadInfo],
) -> Vec<ThreadInfo> {
    let code = if read_stacks {
        executable_ranges(pid)
    } else {
        Vec::new()
    };
    let mut threads: Vec<ThreadInfo> = crate::kernel::target::thread_comms(pid)
        .into_iter()
        .map(|(tid, name)| {
            // A thread's own entry point beats its polling: V8's delayed-task
            // scheduler runs a libuv loop too, without being a Worker.
            let (role, evidence) = if tid == pid {
                (ThreadRole::Main, Evidence::MainThread)
            } else if let Some(role) = role_from_name(&name) {
                (role, Evidence::Name)
            } else if pool_tids.contains(&tid) {
                (ThreadRole::Threadpool, Evidence::RanPoolWork)
            } else if let Some(old) = previous
                .iter()
                .find(|o| o.tid == tid && o.evidence == Evidence::StackBottom)
            {
                (old.role, old.evidence)
            } else {
                (ThreadRole::Other, Evidence::None)
            };
            let stack_words = if read_stacks && evidence == Evidence::None {
                stack_words(pid, tid, &code)
            } else {
                Vec::new()
            };
            let mut t = ThreadInfo {
                tid,
                name,
                role,
                evidence,
                stack_words,
            };
            // Decided now; the stack, if readable, may still say otherwise.
            if t.evidence == Evidence::None && loop_tids.contains(&tid) {
                (t.role, t.evidence) = (ThreadRole::Worker, Evidence::EventLoop);
            }
            t
        })
        .collect();
    threads.sort_by_key(|t| t.tid);
    threads
}

/// Decides the threads still unknown from the entry point at the bottom of
/// their stack (one symbolizer request for all of them).
pub async fn classify_by_stack(pid: u32, threads: &mut [ThreadInfo], symbolizer: &Symbolizer) {
    let unknown: Vec<usize> = (0..threads.len())
        .filter(|&i| !threads[i].stack_words.is_empty())
        .collect();
    if unknown.is_empty() {
        return;
    }
    let requests = unknown
        .iter()
        .map(|&i| StackRequest {
            user: threads[i].stack_words.clone(),
            kernel: Vec::new(),
            v8: Vec::new(),
        })
        .collect();
    let Ok(named) = symbolizer.symbolize(pid, requests).await else {
        return;
    };
    for (&i, frames) in unknown.iter().zip(named.stacks.iter()) {
        if let Some(role) = role_from_stack(frames) {
            threads[i].role = role;
            threads[i].evidence = Evidence::StackBottom;
        }
    }
    for t in threads.iter_mut() {
        t.stack_words = Vec::new();
    }
}

/// A cheap re-take while watching (no stack reads): threads started since
/// (libuv starts its pool on first use) get in, roles found from stacks
/// earlier are kept. Once the process is gone, the last census stays.
pub fn refresh(
    pid: u32,
    previous: &[ThreadInfo],
    loop_tids: &[u32],
    pool_tids: &[u32],
) -> Vec<ThreadInfo> {
    let mut fresh = census_with(pid, loop_tids, pool_tids, false, &[]);
    if fresh.is_empty() {
        return previous.to_vec();
    }
    for t in fresh.iter_mut() {
        let undecided = matches!(t.evidence, Evidence::None | Evidence::EventLoop);
        if let Some(old) = previous.iter().find(|o| o.tid == t.tid) {
            if undecided && old.evidence == Evidence::StackBottom {
                (t.role, t.evidence) = (old.role, old.evidence);
            }
        }
    }
    fresh
}

/// Roles the kernel established since `threads` was taken (a process that
/// has exited can no longer be looked at).
pub fn update_from_kernel(
    pid: u32,
    threads: &mut [ThreadInfo],
    loop_tids: &[u32],
    pool_tids: &[u32],
) {
    let undecided = |t: &ThreadInfo| matches!(t.evidence, Evidence::None | Evidence::EventLoop);
    for t in threads.iter_mut().filter(|t| t.tid != pid && undecided(t)) {
        if loop_tids.contains(&t.tid) {
            (t.role, t.evidence) = (ThreadRole::Worker, Evidence::EventLoop);
        } else if pool_tids.contains(&t.tid) {
            (t.role, t.evidence) = (ThreadRole::Threadpool, Evidence::RanPoolWork);
        }
    }
}

/// Threads Node ≥ 22 names (comm is cut at 15 bytes).
pub fn role_from_name(comm: &str) -> Option<ThreadRole> {
    match comm {
        "libuv-worker" => Some(ThreadRole::Threadpool),
        "V8Worker" | crate::kernel::target::DELAYED_TASK_SCHEDULER => Some(ThreadRole::V8Platform),
        "WorkerThread" => Some(ThreadRole::Worker),
        "SignalInspector" => Some(ThreadRole::Other),
        _ => None,
    }
}

/// The role a thread's entry point gives it, from its frames (root first).
pub fn role_from_stack(frames: &[Frame]) -> Option<ThreadRole> {
    frames.iter().find_map(|f| {
        let n = f.name.as_str();
        if n == crate::assembly::threadpool::WORKER_LOOP {
            Some(ThreadRole::Threadpool)
        } else if n.contains("PlatformWorkerThread") || n.contains("DelayedTaskScheduler") {
            Some(ThreadRole::V8Platform)
        } else if n.contains("node::worker::Worker::StartThread") {
            Some(ThreadRole::Worker)
        } else if n.contains("node::inspector::") {
            Some(ThreadRole::Other)
        } else {
            None
        }
    })
}

/// Threads per role, in a stable order.
pub fn role_counts(threads: &[ThreadInfo]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for t in threads {
        *counts.entry(t.role.as_str()).or_default() += 1;
    }
    counts
}

/// `[start, end)` of the process's executable mappings.
fn executable_ranges(pid: u32) -> Vec<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            if !perms.contains('x') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Words on a sleeping thread's stack that point into code, leaf first,
/// root-most `MAX_CANDIDATES`. Empty when the thread is running or its memory
/// cannot be read.
fn stack_words(pid: u32, tid: u32, code: &[(u64, u64)]) -> Vec<u64> {
    let Some(sp) = stack_pointer(pid, tid) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; STACK_READ_BYTES];
    let n = read_memory(pid, sp, &mut buf);
    let words: Vec<u64> = buf[..n]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .filter(|w| code.iter().any(|&(a, b)| (a..b).contains(w)))
        .collect();
    let skip = words.len().saturating_sub(MAX_CANDIDATES);
    words[skip..].to_vec()
}

/// The user stack pointer of a thread blocked in a syscall: the second-last
/// field of `/proc/PID/task/TID/syscall` ("running" while on a CPU).
fn stack_pointer(pid: u32, tid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2].trim_start_matches("0x");
    u64::from_str_radix(sp, 16).ok().filter(|&sp| sp != 0)
}

/// Reads up to `buf.len()` bytes at `addr`, stopping at the end of the
/// mapping (the top of the stack); returns the bytes read.
fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> usize {
    let mut total = 0;
    // Page by page: a read across the end of the stack mapping fails whole.
    while total < buf.len() {
        let chunk = (buf.len() - total).min(4096 - ((addr as usize + total) % 4096));
        let local = libc::iovec {
            iov_base: buf[total..].as_mut_ptr().cast(),
            iov_len: chunk,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + total) as *mut libc::c_void,
            iov_len: chunk,
        };
        // SAFETY: `local` points into `buf` with `chunk` bytes left in it.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::FrameKind;

    fn frames(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|n| Frame::new(*n, FrameKind::Native))
            .collect()
    }

    #[test]
    fn names_of_node_22_threads() {
        assert_eq!(role_from_name("libuv-worker"), Some(ThreadRole::Threadpool));
        assert_eq!(
            role_from_name("DelayedTaskSche"),
            Some(ThreadRole::V8Platform)
        );
        assert_eq!(role_from_name("node"), None);
    }

    #[test]
    fn the_root_most_entry_point_decides() {
        let pool = frames(&[
            "start_thread",
            "worker",
            "uv_cond_wait",
            "node::inspector::Agent::Wait",
        ]);
        assert_eq!(role_from_stack(&pool), Some(ThreadRole::Threadpool));
        let platform = frames(&[
            "node::(anonymous namespace)::PlatformWorkerThread(void*)",
            "uv_cond_wait",
        ]);
        assert_eq!(role_from_stack(&platform), Some(ThreadRole::V8Platform));
        assert_eq!(
            role_from_stack(&frames(&["start_thread", "pthread_cond_wait"])),
            None
        );
    }

    #[test]
    fn own_threads_are_found_and_the_current_one_is_main() {
        let pid = std::process::id();
        let threads = census(pid, &[], &[]);
        assert!(threads
            .iter()
            .any(|t| t.tid == pid && t.role == ThreadRole::Main));
    }
}
