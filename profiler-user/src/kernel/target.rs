//! What we can learn about a target process from /proc before and while
//! watching it: does it exist, is it Node, what are its threads.
use std::{fs, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("pid {pid} ({comm}) is not a Node.js process: no node binary, libnode or libuv in its memory map, so no event-loop polling to measure (use --force to watch it anyway)")]
    NotNode { pid: u32, comm: String },
    #[error("reading /proc/{pid}/{what} failed: {source}")]
    Proc {
        pid: u32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<PathBuf>,
}

/// Role of a thread in a Node process, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadRole {
    /// The process's main thread and its event loop.
    Main,
    /// A `worker_threads` Worker: another thread running its own event loop.
    Worker,
    /// A libuv threadpool worker (fs, crypto, zlib, dns work).
    Threadpool,
    /// One of V8's platform threads (background compilation and GC tasks).
    V8Platform,
    /// Anything else (the inspector's signal thread, an addon's threads).
    Other,
}

impl ThreadRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadRole::Main => "main",
            ThreadRole::Worker => "worker",
            ThreadRole::Threadpool => "threadpool",
            ThreadRole::V8Platform => "v8-platform",
            ThreadRole::Other => "other",
        }
    }

    /// Role of a thread that polls an event loop: the main one, a
    /// `worker_threads` Worker's, or, named so on Node ≥ 22, V8's delayed-task
    /// scheduler (which runs a libuv loop of its own for its timers).
    pub fn of_loop_thread(pid: u32, tid: u32) -> Self {
        if pid == tid {
            ThreadRole::Main
        } else if thread_name(pid, tid).as_deref() == Some(DELAYED_TASK_SCHEDULER) {
            ThreadRole::V8Platform
        } else {
            ThreadRole::Worker
        }
    }
}

/// `comm` of Node's DelayedTaskScheduler thread (cut at 15 bytes) on Node ≥ 22.
pub const DELAYED_TASK_SCHEDULER: &str = "DelayedTaskSche";

impl Target {
    /// Checks that `pid` exists and, unless `force`, that it runs Node (or
    /// another libuv program).
    pub fn inspect(pid: u32, force: bool) -> Result<Target, TargetError> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let comm = match fs::read_to_string(proc_dir.join("comm")) {
            Ok(c) => c.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TargetError::NoSuchProcess(pid))
            }
            Err(source) => {
                return Err(TargetError::Proc {
                    pid,
                    what: "comm",
                    source,
                })
            }
        };
        let exe = fs::read_link(proc_dir.join("exe")).ok();
        if !force {
            let maps =
                fs::read_to_string(proc_dir.join("maps")).map_err(|source| TargetError::Proc {
                    pid,
                    what: "maps",
                    source,
                })?;
            if !looks_like_node(exe.as_deref(), &maps) {
                return Err(TargetError::NotNode { pid, comm });
            }
        }
        Ok(Target { pid, comm, exe })
    }
}

/// Node's binary is usually `node` (or `nodejs`, `node20`…); embedders link
/// libnode; any libuv program polls the way loopbpf measures.
fn looks_like_node(exe: Option<&std::path::Path>, maps: &str) -> bool {
    let exe_is_node = exe
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("node"));
    exe_is_node
        || maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .any(|path| {
                let file = path.rsplit('/').next().unwrap_or(path);
                file.starts_with("libnode.so") || file.starts_with("libuv.so") || file == "node"
            })
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its stat state is 'Z' and it will never poll again.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// `(tid, comm)` of every thread of `pid` (empty when it is gone).
pub fn thread_comms(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| Some((tid, thread_name(pid, tid)?)))
        .collect()
}

pub fn thread_name(pid: u32, tid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn node_binary_or_libraries_count_as_node() {
        assert!(looks_like_node(Some(Path::new("/usr/bin/node")), ""));
        assert!(looks_like_node(
            Some(Path::new("/opt/node-v22/bin/node")),
            ""
        ));
        let maps = "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/libnode.so.115\n";
        assert!(looks_like_node(Some(Path::new("/usr/bin/electron")), maps));
    }

    #[test]
    fn other_programs_do_not() {
        let maps = "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n";
        assert!(!looks_like_node(Some(Path::new("/usr/bin/sleep")), maps));
        assert!(!looks_like_node(None, ""));
    }

    #[test]
    fn missing_pid_is_reported_as_such() {
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(matches!(
            Target::inspect(u32::MAX - 1, false),
            Err(TargetError::NoSuchProcess(_))
        ));
    }

    #[test]
    fn this_test_process_is_not_node() {
        let pid = std::process::id();
        assert!(matches!(
            Target::inspect(pid, false),
            Err(TargetError::NotNode { .. })
        ));
        assert!(Target::inspect(pid, true).is_ok());
        assert!(is_alive(pid));
    }
}
