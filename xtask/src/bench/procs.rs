//! Child processes the benchmarks start: printed when started, their stdout
//! read line by line with the CLOCK_MONOTONIC time each line arrived, and
//! killed (with their perf map and temp dirs removed) when dropped, so a
//! failing benchmark leaves nothing behind.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A stdout line and when (CLOCK_MONOTONIC ns) the harness read it.
pub struct Line {
    pub at_ns: u64,
    pub text: String,
}

pub struct Proc {
    name: String,
    pid: u32,
    child: Child,
    lines: Receiver<Line>,
}

/// The first command of each kind, for BENCHMARKS.md.
static COMMANDS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Prints `cmd`, and remembers it as the example of `kind` for the report.
pub fn log_command(kind: &str, cmd: &Command) {
    let shown = crate::cmd::show(cmd);
    eprintln!("$ {shown}");
    let mut commands = COMMANDS.lock().unwrap_or_else(|e| e.into_inner());
    commands.entry(kind.to_owned()).or_insert(shown);
}

pub fn commands() -> BTreeMap<String, String> {
    COMMANDS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Proc {
    /// Starts `cmd` with stdout piped (stderr inherited, so errors show).
    pub fn spawn(kind: &str, cmd: &mut Command) -> Result<Proc> {
        log_command(kind, cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {kind}: {}", crate::cmd::show(cmd)))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { break };
                if sender
                    .send(Line {
                        at_ns: monotonic_ns(),
                        text,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Proc {
            name: kind.to_owned(),
            pid: child.id(),
            child,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next stdout line, or an error naming the process after `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Result<Line> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => bail!(
                "{} (pid {}) printed nothing for {timeout:?}",
                self.name,
                self.pid
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                bail!("{} (pid {}) closed stdout ({status})", self.name, self.pid)
            }
        }
    }

    /// Reads lines until one starts with `prefix` (or contains it, for JSON).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .next_line(left)
                .with_context(|| format!("waiting for {needle:?}"))?;
            if line.text.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Lines already read, without waiting.
    pub fn drain(&mut self) -> Vec<Line> {
        self.lines.try_iter().collect()
    }

    /// Writes a line to its stdin.
    pub fn send(&mut self, text: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{text}").with_context(|| format!("writing to {}", self.name))
    }

    /// Sends `signal`, waits up to `timeout`, then SIGKILLs.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        send_signal(self.pid, signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        eprintln!(
            "{} (pid {}) ignored signal {signal}; killed",
            self.name, self.pid
        );
        Ok(status)
    }

    /// Waits for a process expected to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.name,
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // V8's perf map of a node child: the bench made it, the bench removes it.
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.pid));
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        let nanos = monotonic_ns();
        let dir = std::env::temp_dir().join(format!("loopbpf-bench-{label}-{nanos}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn kill(pid: i32, signal: i32) -> i32;
}

/// CLOCK_MONOTONIC in ns: the clock of loopbpf's start_ns/end_ns and of
/// node's process.hrtime.bigint().
pub fn monotonic_ns() -> u64 {
    const CLOCK_MONOTONIC: i32 = 1;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec (64-bit Linux layout).
    let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn send_signal(pid: u32, signal: i32) {
    // SAFETY: plain syscall wrapper; pid is our own child, not yet reaped.
    unsafe { kill(pid as i32, signal) };
}

/// utime+stime of `pid` in clock ticks, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .context("short stat")?
            .parse()
            .context("stat field")
    };
    Ok(field(14)? + field(15)?)
}

/// On-CPU time of all threads of `pid` in ns (/proc/PID/task/*/schedstat).
pub fn task_cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between readdir and read; it no longer counts.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed {}", path.display()))?;
        total += ns;
    }
    Ok(total)
}

/// A `Vm*:` value of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// The value of `"key":` in a flat JSON line (numbers and plain strings).
pub fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[start..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|end| &s[..end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// The value of `key=` in a `key=value key=value` line.
pub fn kv_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Over the episodes in `lines` (the agent's JSON output; folded paths
/// relative to `out`): the folded sample counts whose stack `hit` accepts,
/// and all counts, bare `[runqueue]` lines (no stack by design) left out.
/// An episode whose folded file cannot be read counts for neither.
pub fn folded_share(lines: &[Line], out: &Path, hit: impl Fn(&str) -> bool) -> (u64, u64) {
    let (mut hits, mut total) = (0u64, 0u64);
    for l in lines
        .iter()
        .filter(|l| json_field(&l.text, "type") == Some("episode"))
    {
        let Some(path) = json_field(&l.text, "folded") else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(out.join(path)) else {
            continue;
        };
        for line in text.lines() {
            let Some((stack, n)) = line.rsplit_once(' ') else {
                continue;
            };
            if stack == "[runqueue]" {
                continue;
            }
            let n: u64 = n.parse().unwrap_or(0);
            total += n;
            if hit(stack) {
                hits += n;
            }
        }
    }
    (hits, total)
}
