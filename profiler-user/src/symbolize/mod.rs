//! Turns captured stacks into named frames: JavaScript from V8's perf map,
//! native code and the kernel from blazesym, and anything else as `[unknown]`
//! with the mapping it lives in.
//!
//! blazesym's symbolizer is not `Send`, so one instance lives on a dedicated
//! thread and [`Symbolizer`] is a cheap, cloneable handle to it.

mod kallsyms;
mod maps;
mod name_table;
mod native;
mod perf_map;
mod untrusted;
mod v8_frames;
mod v8_names;
mod watchdog;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

pub use perf_map::{normalize_v8_name, perf_map_path, Limits, PerfMap, PerfMapError};
pub use untrusted::{start_ticks, UntrustedFileError};
pub use v8_names::{V8Frames, V8Names};
pub use watchdog::{Policy, Stuck};

use v8_names::V8NameBook;
use watchdog::{Abandoned, Admit, Strikes, Struck, Watch};

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
    #[error("symbolizing pid {pid} {stuck} (symbolizer restarted)")]
    TimedOut { pid: u32, stuck: Stuck },
    #[error("pid {pid} stalled the symbolizer and is left unnamed until its backoff ends")]
    Skipped { pid: u32 },
    #[error("pid {pid} stalled the symbolizer too often and is no longer symbolized")]
    GaveUp { pid: u32 },
}

/// Lets the same worker answer both async and blocking callers.
type Reply = Box<dyn FnOnce(Result<Symbolized, SymbolizeError>) + Send>;

/// The perf map of a pid; injectable so tests can use a temp file.
type LocatePerfMap = Arc<dyn Fn(u32) -> PerfMap + Send + Sync>;

enum Command {
    Symbolize {
        pid: u32,
        stacks: Vec<StackRequest>,
        reply: Reply,
        abandoned: Abandoned,
    },
    /// Reads what naming `pid`'s stacks needs (kernel symbols, its binaries'
    /// symbol tables, perf map, V8 layout) before the first stack asks.
    Prepare {
        pid: u32,
        reply: Reply,
        abandoned: Abandoned,
    },
    Forget {
        pid: u32,
    },
}

/// Counters of what went wrong inside the symbolizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SymbolizerHealth {
    /// Workers replaced after a request was found stuck.
    pub restarts: u64,
    /// Requests abandoned as stuck (no progress, or over their budget);
    /// their frames kept as addresses.
    pub timeouts: u64,
    /// Processes retried after the backoff that followed a stuck request.
    pub retries: u64,
    /// Processes given up on after [`Policy::max_strikes`] stuck requests.
    pub gave_up: u64,
    /// Requests not sent to the worker while their process was benched or
    /// given up on (frames kept as addresses).
    pub skipped: u64,
    /// Requests whose symbolization panicked (answered with addresses).
    pub panics: u64,
    /// Processes whose perf map was refused (a symlink, FIFO, directory,
    /// another user's or a stale file), once each.
    pub perf_maps_refused: u64,
}

impl SymbolizerHealth {
    /// (label, count, what it means), for metrics and the CLI summary.
    pub fn events(&self) -> [(&'static str, u64, &'static str); 7] {
        [
            (
                "restarts",
                self.restarts,
                "symbolizer restarts (a request stuck)",
            ),
            ("timeouts", self.timeouts, "symbolize requests timed out"),
            ("retries", self.retries, "processes retried after a backoff"),
            (
                "gave_up",
                self.gave_up,
                "processes given up on (stuck too often)",
            ),
            (
                "skipped",
                self.skipped,
                "requests skipped (process backing off or given up on)",
            ),
            ("panics", self.panics, "symbolize requests that panicked"),
            (
                "perf_maps_refused",
                self.perf_maps_refused,
                "perf maps refused",
            ),
        ]
    }
}

/// What the handle and the workers count, kept across worker replacements.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    pub restarts: AtomicU64,
    pub timeouts: AtomicU64,
    pub retries: AtomicU64,
    pub gave_up: AtomicU64,
    pub skipped: AtomicU64,
    pub panics: AtomicU64,
    pub perf_maps_refused: AtomicU64,
}

/// What every worker shares: a replacement takes over the queue (so requests
/// queued behind a stuck one are still served) and the strikes.
#[derive(Clone)]
pub(crate) struct WorkerShared {
    locate_perf_map: LocatePerfMap,
    counters: Arc<WorkerCounters>,
    v8_names: V8NameBook,
    queue: Arc<Mutex<mpsc::Receiver<Command>>>,
    strikes: Arc<Mutex<Strikes>>,
    policy: Policy,
}

/// Handle to the symbolizer thread. The thread exits once every clone is
/// dropped; a stuck one is abandoned and replaced.
#[derive(Clone)]
pub struct Symbolizer {
    shared: Arc<Shared>,
}

struct Shared {
    workers: WorkerShared,
    commands: mpsc::Sender<Command>,
    /// The watch of the worker serving the queue now.
    current: Mutex<Arc<Watch>>,
}

impl Symbolizer {
    /// Spawns the symbolizer thread.
    pub fn start() -> Result<Self, SymbolizeError> {
        Self::start_with(Arc::new(PerfMap::for_pid), Policy::DEFAULT)
    }

    fn start_with(locate_perf_map: LocatePerfMap, policy: Policy) -> Result<Self, SymbolizeError> {
        let (commands, queue) = mpsc::channel();
        let workers = WorkerShared {
            locate_perf_map,
            counters: Arc::default(),
            v8_names: V8NameBook::default(),
            queue: Arc::new(Mutex::new(queue)),
            strikes: Arc::default(),
            policy,
        };
        let watch = spawn_worker(&workers)?;
        Ok(Self {
            shared: Arc::new(Shared {
                workers,
                commands,
                current: Mutex::new(watch),
            }),
        })
    }

    pub fn health(&self) -> SymbolizerHealth {
        let c = &self.shared.workers.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        SymbolizerHealth {
            restarts: get(&c.restarts),
            timeouts: get(&c.timeouts),
            retries: get(&c.retries),
            gave_up: get(&c.gave_up),
            skipped: get(&c.skipped),
            panics: get(&c.panics),
            perf_maps_refused: get(&c.perf_maps_refused),
        }
    }

    /// JavaScript frames named from V8's memory: of `pid` (`None` until one
    /// of its stacks carried V8 slots), or of all processes for `None`.
    pub fn v8_names(&self, pid: Option<u32>) -> Option<V8Names> {
        self.shared.workers.v8_names.get(pid)
    }

    /// Names every frame of `stacks`, captured in process `pid`. Frames that
    /// cannot be named come back as [`FrameKind::Unknown`]; errors (the
    /// worker stuck or gone, the process backing off) leave the caller to
    /// keep the addresses.
    pub async fn symbolize(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
    ) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let abandoned = self.send(pid, sender_reply(sender), |reply, abandoned| {
            Command::Symbolize {
                pid,
                stacks,
                reply,
                abandoned,
            }
        })?;
        self.wait(pid, &abandoned, receiver).await
    }

    /// Prepares everything naming `pid`'s stacks needs, so that its first
    /// episode is named as fast as later ones: kernel symbols (once), the
    /// symbol tables of its executable files, its perf map and mappings, and
    /// its V8 layout. Answers like a refresh (a request with no stacks).
    pub async fn prepare(&self, pid: u32) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let abandoned = self.send(pid, sender_reply(sender), |reply, abandoned| {
            Command::Prepare {
                pid,
                reply,
                abandoned,
            }
        })?;
        self.wait(pid, &abandoned, receiver).await
    }

    /// [`Self::symbolize`] for callers outside an async runtime.
    pub fn symbolize_blocking(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
    ) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        let reply = Box::new(move |result| {
            let _ = sender.send(result);
        });
        let abandoned = self.send(pid, reply, |reply, abandoned| Command::Symbolize {
            pid,
            stacks,
            reply,
            abandoned,
        })?;
        let tick = self.shared.workers.policy.tick();
        loop {
            match receiver.recv_timeout(tick) {
                Ok(result) => return result,
                Err(mpsc::RecvTimeoutError::Timeout) => self.watch(pid, &abandoned)?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SymbolizeError::ThreadGone)
                }
            }
        }
    }

    /// Drops what is cached for `pid`, and its strikes; call once the
    /// process has exited so a reused pid starts clean.
    pub fn forget(&self, pid: u32) {
        lock(&self.shared.workers.strikes).forget(pid);
        // A dead thread holds no caches, so there is nothing to report.
        let _ = self.shared.commands.send(Command::Forget { pid });
    }

    /// Queues a request for `pid` unless it is benched or given up on.
    fn send(
        &self,
        pid: u32,
        reply: Reply,
        command: impl FnOnce(Reply, Abandoned) -> Command,
    ) -> Result<Abandoned, SymbolizeError> {
        let counters = &self.shared.workers.counters;
        match lock(&self.shared.workers.strikes).admit(pid, Instant::now()) {
            Admit::Go { retry, .. } => {
                if retry {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    log::info!("pid {pid}: symbolizing again after its backoff");
                }
            }
            Admit::Benched => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                return Err(SymbolizeError::Skipped { pid });
            }
            Admit::GaveUp => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                return Err(SymbolizeError::GaveUp { pid });
            }
        }
        let abandoned = Abandoned::default();
        self.shared
            .commands
            .send(command(reply, abandoned.clone()))
            .map_err(|_| SymbolizeError::ThreadGone)?;
        Ok(abandoned)
    }

    /// Called by a waiter every tick: if the worker is stuck, abandon its
    /// request, strike its process and replace the worker (whoever waits
    /// notices first; the replacement serves the requests queued behind).
    /// Errs if the waiter's own request was the one abandoned.
    /// The worker's reply, watching it every tick meanwhile (a stuck worker
    /// is replaced and its process struck, see [`Self::watch`]).
    async fn wait(
        &self,
        pid: u32,
        abandoned: &Abandoned,
        mut receiver: tokio::sync::oneshot::Receiver<Result<Symbolized, SymbolizeError>>,
    ) -> Result<Symbolized, SymbolizeError> {
        let tick = self.shared.workers.policy.tick();
        loop {
            match tokio::time::timeout(tick, &mut receiver).await {
                Ok(reply) => return reply.map_err(|_| SymbolizeError::ThreadGone)?,
                Err(_) => self.watch(pid, abandoned)?,
            }
        }
    }

    fn watch(&self, pid: u32, abandoned: &Abandoned) -> Result<(), SymbolizeError> {
        let mut current = lock(&self.shared.current);
        if let Some(verdict) = current.check(Instant::now()) {
            let workers = &self.shared.workers;
            let counters = &workers.counters;
            let _ = verdict.abandoned.set(verdict.stuck);
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            let struck =
                lock(&workers.strikes).strike(verdict.pid, Instant::now(), &workers.policy);
            let then = match struck {
                Struck::Benched { strikes, backoff } => format!(
                    "strike {strikes} of {}, retried in {:.1} s",
                    workers.policy.max_strikes,
                    backoff.as_secs_f64()
                ),
                Struck::GaveUp => {
                    counters.gave_up.fetch_add(1, Ordering::Relaxed);
                    "given up on until it exits".to_owned()
                }
            };
            log::warn!(
                "symbolizing pid {} {}: symbolizer restarted, its frames left as addresses, {then}",
                verdict.pid,
                verdict.stuck
            );
            current.retire();
            match spawn_worker(workers) {
                Ok(watch) => {
                    *current = watch;
                    counters.restarts.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => log::warn!("restarting the stuck symbolizer failed: {error}"),
            }
        }
        match abandoned.get() {
            Some(&stuck) => Err(SymbolizeError::TimedOut { pid, stuck }),
            None => Ok(()),
        }
    }
}

fn sender_reply(sender: tokio::sync::oneshot::Sender<Result<Symbolized, SymbolizeError>>) -> Reply {
    Box::new(move |result| {
        let _ = sender.send(result);
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain fields, consistent at every step: a panic elsewhere leaves them usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts a worker on the shared queue; returns its watch.
fn spawn_worker(workers: &WorkerShared) -> Result<Arc<Watch>, SymbolizeError> {
    let watch = Arc::new(Watch::default());
    let (shared, mine) = (workers.clone(), watch.clone());
    std::thread::Builder::new()
        .name("loopbpf-symbolize".to_owned())
        .spawn(move || worker::run(shared, mine))
        .map_err(SymbolizeError::Spawn)?;
    Ok(watch)
}

#[cfg(test)]
mod stuck_tests;
#[cfg(test)]
mod tests;
