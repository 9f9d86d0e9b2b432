//! Turns captured stacks into named frames: JavaScript from V8's perf map,
//! native code and the kernel from blazesym, and anything else as `[unknown]`
//! with the mapping it lives in.
//!
//! blazesym's symbolizer is not `Send`, so one instance lives on a dedicated
//! thread and [`Symbolizer`] is a cheap, cloneable handle to it.

mod maps;
mod name_table;
mod native;
mod perf_map;
mod untrusted;
mod v8_frames;
mod v8_names;
mod worker;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub use perf_map::{normalize_v8_name, perf_map_path, Limits, PerfMap, PerfMapError};
pub use untrusted::{start_ticks, UntrustedFileError};
pub use v8_names::{V8Frames, V8Names};

use v8_names::V8NameBook;

/// One captured stack; addresses leaf-first, as the kernel captured them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackRequest {
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// Per user frame, leaf first (may be shorter than `user`): the words at
    /// fp-16 and fp-8 taken with the sample, from which V8 frames are named.
    pub v8: Vec<[u64; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Js,
    Native,
    Kernel,
    Unknown,
}

/// A named frame. `name` never contains `;` or a newline, so it can go
/// straight into a folded-stack line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub name: String,
    pub kind: FrameKind,
}

impl Frame {
    pub fn new(name: impl Into<String>, kind: FrameKind) -> Self {
        Frame {
            name: name.into(),
            kind,
        }
    }
}

/// What we knew about the process's perf map, so that missing JS names can be
/// explained (node run without `--perf-basic-prof-only-functions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PerfMapStatus {
    Loaded {
        path: PathBuf,
        entries: usize,
        bad_lines: usize,
        /// Lines dropped over a limit (line length, entries, name bytes, or
        /// the total read), so some JS frames may be left unnamed.
        dropped_lines: usize,
    },
    Missing {
        path: PathBuf,
    },
    Unreadable {
        path: PathBuf,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbolized {
    /// One per requested stack, in request order; frames root first.
    pub stacks: Vec<Vec<Frame>>,
    pub perf_map: PerfMapStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("failed to spawn the symbolizer thread: {0}")]
    Spawn(std::io::Error),
    #[error("symbolizer thread has exited")]
    ThreadGone,
    #[error("symbolizing pid {pid} took over {after:?} (symbolizer restarted)")]
    TimedOut { pid: u32, after: Duration },
    #[error("pid {pid} stalled the symbolizer before and is no longer symbolized")]
    Skipped { pid: u32 },
}

/// Lets the same worker answer both async and blocking callers.
type Reply = Box<dyn FnOnce(Symbolized) + Send>;

/// The perf map of a pid; injectable so tests can use a temp file.
type LocatePerfMap = Arc<dyn Fn(u32) -> PerfMap + Send + Sync>;

enum Command {
    Symbolize {
        pid: u32,
        stacks: Vec<StackRequest>,
        reply: Reply,
    },
    /// Reads what naming `pid`'s stacks needs (kernel symbols, its binaries'
    /// symbol tables, perf map, V8 layout) before the first stack asks.
    Prepare {
        pid: u32,
        reply: Reply,
    },
    Forget {
        pid: u32,
    },
}

/// How long one request may take before the worker is taken to be stuck (a
/// read from a hung FUSE or NFS file, say) and replaced by a fresh one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of what went wrong inside the symbolizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SymbolizerHealth {
    /// Workers replaced after a request outran [`REQUEST_TIMEOUT`].
    pub restarts: u64,
    /// Requests that outran [`REQUEST_TIMEOUT`] (their frames kept as
    /// addresses); one stuck worker may time out several.
    pub timeouts: u64,
    /// Requests whose symbolization panicked (answered with addresses).
    pub panics: u64,
    /// Processes whose perf map was refused (a symlink, FIFO, directory,
    /// another user's or a stale file), once each.
    pub perf_maps_refused: u64,
}

impl SymbolizerHealth {
    /// (label, count, what it means), for metrics and the CLI summary.
    pub fn events(&self) -> [(&'static str, u64, &'static str); 4] {
        [
            (
                "restarts",
                self.restarts,
                "symbolizer restarts (a request stuck)",
            ),
            ("timeouts", self.timeouts, "symbolize requests timed out"),
            ("panics", self.panics, "symbolize requests that panicked"),
            (
                "perf_maps_refused",
                self.perf_maps_refused,
                "perf maps refused",
            ),
        ]
    }
}

/// What the worker thread counts, shared with the handle (and kept across
/// worker replacements).
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    pub panics: AtomicU64,
    pub perf_maps_refused: AtomicU64,
}

/// Handle to the symbolizer thread. The thread exits once every clone is
/// dropped; a stuck one is abandoned and replaced.
#[derive(Clone)]
pub struct Symbolizer {
    shared: Arc<Shared>,
}

struct Shared {
    locate_perf_map: LocatePerfMap,
    current: Mutex<Current>,
    restarts: AtomicU64,
    timeouts: AtomicU64,
    counters: Arc<WorkerCounters>,
    v8_names: V8NameBook,
    timeout: Duration,
}

struct Current {
    commands: mpsc::Sender<Command>,
    generation: u64,
    /// Processes a worker got stuck on: not asked again, so one hostile
    /// process cannot stall every later request by REQUEST_TIMEOUT.
    stuck: HashSet<u32>,
}

impl Symbolizer {
    /// Spawns the symbolizer thread.
    pub fn start() -> Result<Self, SymbolizeError> {
        Self::start_with(Arc::new(PerfMap::for_pid), REQUEST_TIMEOUT)
    }

    fn start_with(
        locate_perf_map: LocatePerfMap,
        timeout: Duration,
    ) -> Result<Self, SymbolizeError> {
        let counters = Arc::new(WorkerCounters::default());
        let v8_names = V8NameBook::default();
        let commands = spawn_worker(locate_perf_map.clone(), counters.clone(), v8_names.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                locate_perf_map,
                current: Mutex::new(Current {
                    commands,
                    generation: 0,
                    stuck: HashSet::new(),
                }),
                restarts: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                counters,
                v8_names,
                timeout,
            }),
        })
    }

    pub fn health(&self) -> SymbolizerHealth {
        SymbolizerHealth {
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            timeouts: self.shared.timeouts.load(Ordering::Relaxed),
            panics: self.shared.counters.panics.load(Ordering::Relaxed),
            perf_maps_refused: self
                .shared
                .counters
                .perf_maps_refused
                .load(Ordering::Relaxed),
        }
    }

    /// JavaScript frames named from V8's memory: of `pid` (`None` until one
    /// of its stacks carried V8 slots), or of all processes for `None`.
    pub fn v8_names(&self, pid: Option<u32>) -> Option<V8Names> {
        self.shared.v8_names.get(pid)
    }

    /// Names every frame of `stacks`, captured in process `pid`. Frames that
    /// cannot be named come back as [`FrameKind::Unknown`]; errors (the
    /// worker stuck or gone) leave the caller to keep the addresses.
    pub async fn symbolize(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
    ) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let generation = self.request(pid, stacks, move |symbolized| {
            let _ = sender.send(symbolized);
        })?;
        match tokio::time::timeout(self.shared.timeout, receiver).await {
            Ok(reply) => reply.map_err(|_| SymbolizeError::ThreadGone),
            Err(_) => Err(self.stuck(pid, generation)),
        }
    }

    /// Prepares everything naming `pid`'s stacks needs, so that its first
    /// episode is named as fast as later ones: kernel symbols (once), the
    /// symbol tables of its executable files, its perf map and mappings, and
    /// its V8 layout. Answers like a refresh (a request with no stacks).
    pub async fn prepare(&self, pid: u32) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let generation = self.send(
            pid,
            |reply| Command::Prepare { pid, reply },
            move |s| {
                let _ = sender.send(s);
            },
        )?;
        match tokio::time::timeout(self.shared.timeout, receiver).await {
            Ok(reply) => reply.map_err(|_| SymbolizeError::ThreadGone),
            Err(_) => Err(self.stuck(pid, generation)),
        }
    }

    /// [`Self::symbolize`] for callers outside an async runtime.
    pub fn symbolize_blocking(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
    ) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        let generation = self.request(pid, stacks, move |symbolized| {
            let _ = sender.send(symbolized);
        })?;
        match receiver.recv_timeout(self.shared.timeout) {
            Ok(symbolized) => Ok(symbolized),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.stuck(pid, generation)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(SymbolizeError::ThreadGone),
        }
    }

    /// Drops what is cached for `pid`; call once the process has exited so a
    /// reused pid starts clean.
    pub fn forget(&self, pid: u32) {
        let mut current = self.lock();
        current.stuck.remove(&pid);
        // A dead thread holds no caches, so there is nothing to report.
        let _ = current.commands.send(Command::Forget { pid });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // The lock guards a few plain fields, left consistent at every step.
        self.shared
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn request(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
        reply: impl FnOnce(Symbolized) + Send + 'static,
    ) -> Result<u64, SymbolizeError> {
        self.send(
            pid,
            |reply| Command::Symbolize { pid, stacks, reply },
            reply,
        )
    }

    fn send(
        &self,
        pid: u32,
        command: impl FnOnce(Reply) -> Command,
        reply: impl FnOnce(Symbolized) + Send + 'static,
    ) -> Result<u64, SymbolizeError> {
        let current = self.lock();
        if current.stuck.contains(&pid) {
            return Err(SymbolizeError::Skipped { pid });
        }
        let command = command(Box::new(reply));
        current
            .commands
            .send(command)
            .map_err(|_| SymbolizeError::ThreadGone)?;
        Ok(current.generation)
    }

    /// A request to worker `generation` timed out: replace that worker (once,
    /// however many of its requests time out) and stop asking about `pid`.
    fn stuck(&self, pid: u32, generation: u64) -> SymbolizeError {
        self.shared.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut current = self.lock();
        current.stuck.insert(pid);
        if current.generation == generation {
            match spawn_worker(
                self.shared.locate_perf_map.clone(),
                self.shared.counters.clone(),
                self.shared.v8_names.clone(),
            ) {
                Ok(commands) => {
                    // The old worker keeps its thread until its read returns,
                    // then finds its channel closed and exits.
                    current.commands = commands;
                    current.generation += 1;
                    self.shared.restarts.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "symbolizing pid {pid} took over {:?}: symbolizer restarted; its frames are left as addresses",
                        self.shared.timeout
                    );
                }
                Err(error) => log::warn!("restarting the stuck symbolizer failed: {error}"),
            }
        }
        SymbolizeError::TimedOut {
            pid,
            after: self.shared.timeout,
        }
    }
}

fn spawn_worker(
    locate_perf_map: LocatePerfMap,
    counters: Arc<WorkerCounters>,
    v8_names: V8NameBook,
) -> Result<mpsc::Sender<Command>, SymbolizeError> {
    let (commands, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("loopbpf-symbolize".to_owned())
        .spawn(move || worker::run(locate_perf_map, counters, v8_names, receiver))
        .map_err(SymbolizeError::Spawn)?;
    Ok(commands)
}

#[cfg(test)]
mod tests;
