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
mod v8_frames;
mod worker;

use std::path::PathBuf;
use std::sync::mpsc;

pub use perf_map::{normalize_v8_name, perf_map_path, PerfMap, PerfMapError};

/// One captured stack; addresses leaf-first, as the kernel captured them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackRequest {
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// Per user frame, leaf first (may be shorter than `user`): the words at
    /// fp-16 and fp-8 taken with the sample, from which V8 frames are named.
    pub v8: Vec<[u64; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
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
}

/// Lets the same worker answer both async and blocking callers.
type Reply = Box<dyn FnOnce(Symbolized) + Send>;

/// Where a pid's perf map is; injectable so tests can use a temp file.
type LocatePerfMap = Box<dyn Fn(u32) -> PathBuf + Send>;

enum Command {
    Symbolize {
        pid: u32,
        stacks: Vec<StackRequest>,
        reply: Reply,
    },
    Forget {
        pid: u32,
    },
}

/// Handle to the symbolizer thread. The thread exits once every clone is dropped.
#[derive(Clone)]
pub struct Symbolizer {
    commands: mpsc::Sender<Command>,
}

impl Symbolizer {
    /// Spawns the symbolizer thread.
    pub fn start() -> Result<Self, SymbolizeError> {
        Self::start_with(Box::new(perf_map_path))
    }

    fn start_with(locate_perf_map: LocatePerfMap) -> Result<Self, SymbolizeError> {
        let (commands, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("loopbpf-symbolize".to_owned())
            .spawn(move || worker::Worker::new(locate_perf_map).run(receiver))
            .map_err(SymbolizeError::Spawn)?;
        Ok(Self { commands })
    }

    /// Names every frame of `stacks`, captured in process `pid`. Frames that
    /// cannot be named come back as [`FrameKind::Unknown`]; the only error is
    /// the symbolizer thread being gone.
    pub async fn symbolize(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
    ) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.request(pid, stacks, move |symbolized| {
            let _ = sender.send(symbolized);
        })?;
        receiver.await.map_err(|_| SymbolizeError::ThreadGone)
    }

    /// [`Self::symbolize`] for callers outside an async runtime.
    pub fn symbolize_blocking(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
    ) -> Result<Symbolized, SymbolizeError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.request(pid, stacks, move |symbolized| {
            let _ = sender.send(symbolized);
        })?;
        receiver.recv().map_err(|_| SymbolizeError::ThreadGone)
    }

    /// Drops what is cached for `pid`; call once the process has exited so a
    /// reused pid starts clean.
    pub fn forget(&self, pid: u32) {
        // A dead thread holds no caches, so there is nothing to report.
        let _ = self.commands.send(Command::Forget { pid });
    }

    fn request(
        &self,
        pid: u32,
        stacks: Vec<StackRequest>,
        reply: impl FnOnce(Symbolized) + Send + 'static,
    ) -> Result<(), SymbolizeError> {
        let command = Command::Symbolize {
            pid,
            stacks,
            reply: Box::new(reply),
        };
        self.commands
            .send(command)
            .map_err(|_| SymbolizeError::ThreadGone)
    }
}

#[cfg(test)]
mod tests;
