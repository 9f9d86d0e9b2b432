//! The last stage: takes what the collector produced, in order, symbolizes
//! episodes and hands them to the exporters. It runs as its own task so a slow
//! symbolization never holds up draining the kernel's ring buffer.
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::PathBuf,
};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    assembly::{
        episode::Episode,
        threadpool::{PoolEpisode, PoolOutput},
    },
    export::{
        common::Profile,
        json,
        pool_report::PoolReport,
        report::{EpisodeReport, ProcessSummary},
        text, write_all, FileFormat, Written,
    },
    kernel::{probes::SyscallProbes, startup::Startup, target::ThreadRole},
    symbolize::{PerfMapStatus, Symbolizer},
};

pub enum Output {
    Ready {
        pids: Vec<u32>,
        /// Which syscall probes are attached.
        syscall_probes: SyscallProbes,
        /// Where start-up time went.
        startup: Startup,
    },
    Warning {
        pid: Option<u32>,
        message: String,
    },
    Episode(Episode),
    /// A loop has been busy past the threshold and is still busy.
    Stall {
        pid: u32,
        tid: u32,
        start_ns: u64,
        now_ns: u64,
    },
    Summary(Box<ProcessSummary>),
    /// Threadpool saturation, its notice, or a utilization point.
    Pool(PoolOutput),
    /// The process is gone and its last report is out: drop its caches.
    Forget(u32),
}

pub struct Reporter {
    pub json: bool,
    pub output_dir: PathBuf,
    pub symbolizer: Symbolizer,
    pub threshold_ns: u64,
    pub frequency_hz: u64,
    /// The files written per episode.
    pub formats: Vec<FileFormat>,
    pub clock: crate::clock::WallClock,
    perf_map_warned: HashSet<u32>,
    episodes: HashMap<u32, u64>,
    write_error_warned: bool,
}

impl Reporter {
    pub fn new(
        json: bool,
        output_dir: PathBuf,
        symbolizer: Symbolizer,
        threshold_ns: u64,
        frequency_hz: u64,
        formats: Vec<FileFormat>,
    ) -> Self {
        Reporter {
            formats,
            json,
            output_dir,
            symbolizer,
            threshold_ns,
            frequency_hz,
            clock: crate::clock::WallClock::now(),
            perf_map_warned: HashSet::new(),
            episodes: HashMap::new(),
            write_error_warned: false,
        }
    }

    pub async fn run(mut self, mut rx: UnboundedReceiver<Output>) {
        while let Some(output) = rx.recv().await {
            self.handle(output).await;
        }
    }

    async fn handle(&mut self, output: Output) {
        match output {
            Output::Ready {
                pids,
                syscall_probes,
                startup,
            } => {
                if self.json {
                    let ready = json::ready(
                        &pids,
                        self.threshold_ns,
                        self.frequency_hz,
                        syscall_probes,
                        json::StartupMs::of(&startup),
                    );
                    stdout_line(&ready.to_json());
                } else {
                    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                    eprintln!(
                        "loopbpf: watching pid {} for event-loop iterations busy over {} ms ({} Hz stacks, {} syscall probes); Ctrl-C to stop",
                        pids.join(", "),
                        self.threshold_ns as f64 / 1e6,
                        self.frequency_hz,
                        syscall_probes.as_str()
                    );
                }
            }
            Output::Warning { pid, message } => self.warn(pid, &message),
            Output::Episode(e) => self.episode(e).await,
            Output::Stall {
                pid,
                tid,
                start_ns,
                now_ns,
            } => {
                // Read the JIT code the stalled function compiled to while the
                // process is surely alive: it may be killed before its episode.
                let _ = self.symbolizer.symbolize(pid, Vec::new()).await;
                let role = ThreadRole::of_loop_thread(pid, tid);
                if self.json {
                    let line = json::stall(pid, tid, role, start_ns, now_ns, &self.clock);
                    stdout_line(&line.to_json());
                } else {
                    stdout_line(&text::stall(pid, tid, role, start_ns, now_ns, &self.clock));
                }
            }
            Output::Summary(mut s) => {
                s.episodes_reported = self.episodes.get(&s.pid).copied().unwrap_or(0);
                s.v8_names = self.symbolizer.v8_names(Some(s.pid));
                s.symbolizer = self.symbolizer.health();
                if self.json {
                    stdout_line(&json::summary(&s).to_json());
                } else {
                    stdout_line(&text::summary(&s));
                }
            }
            Output::Forget(pid) => self.symbolizer.forget(pid),
            Output::Pool(PoolOutput::Saturation(e)) => self.pool_saturation(e).await,
            Output::Pool(PoolOutput::Saturated {
                pid,
                since_ns,
                now_ns,
                pool_size,
            }) => {
                if self.json {
                    let line = json::pool_saturated(pid, pool_size, since_ns, now_ns, &self.clock);
                    stdout_line(&line.to_json());
                } else {
                    stdout_line(&text::pool_saturated(
                        pid,
                        pool_size,
                        since_ns,
                        now_ns,
                        &self.clock,
                    ));
                }
            }
            // A line a second per process: for machines, not for a terminal.
            Output::Pool(PoolOutput::Utilization(p)) => {
                if self.json {
                    stdout_line(&json::pool_utilization(&p, &self.clock).to_json());
                }
            }
            // The session turns this into a warning as it detaches the uprobes.
            Output::Pool(PoolOutput::TooBusy { .. }) => {}
        }
    }

    /// Paths of the files written, the folded one, and why one was not
    /// (said once: a full disk must not drown the episodes, which are still
    /// printed).
    fn files_outcome(
        &mut self,
        written: &mut Written,
    ) -> (Vec<PathBuf>, Option<PathBuf>, Option<String>) {
        let folded = written.folded();
        let error = written.error.take().map(|err| {
            if !self.write_error_warned {
                self.write_error_warned = true;
                self.warn(None, &format!("{err}; episodes are still reported here"));
            }
            err.to_string()
        });
        (std::mem::take(&mut written.paths), folded, error)
    }

    async fn pool_saturation(&mut self, e: PoolEpisode) {
        let pid = e.pid;
        let (mut report, err) = PoolReport::symbolize(e, &self.symbolizer).await;
        if let Some(err) = err {
            let message =
                format!("pid {pid}: symbolization failed ({err}); frames left as addresses");
            self.warn(Some(pid), &message);
        }
        let mut written = Written::default();
        if !report.stacks.is_empty() {
            let profile = Profile::of_pool(&report, self.frequency_hz);
            written = write_all(&self.output_dir, &profile, &self.formats);
            (report.files, report.folded_path, report.folded_error) =
                self.files_outcome(&mut written);
        }
        let record = json::pool_saturation(&report, &self.clock).to_json();
        self.index(&record);
        if self.json {
            stdout_line(&record);
        } else {
            stdout_line(&text::pool_saturation(&report, &self.clock));
        }
        // Said first, synced after on a blocking thread: neither the line
        // nor the ring buffer's drain (same thread) waits for the disk.
        tokio::task::spawn_blocking(move || written.sync());
    }

    /// Appends the episode's line to `index.jsonl` in the output directory,
    /// the same lines as the daemon's state directory, so `loopbpf report
    /// DIR` reads either.
    fn index(&mut self, record: &str) {
        if let Err(err) = append_line(&self.output_dir.join("index.jsonl"), record) {
            if !self.write_error_warned {
                self.write_error_warned = true;
                self.warn(None, &format!("{err}; episodes are still reported here"));
            }
        }
    }

    fn warn(&self, pid: Option<u32>, message: &str) {
        if self.json {
            stdout_line(&json::warning(pid, message).to_json());
        } else {
            eprintln!("loopbpf: warning: {}", crate::printable::Printable(message));
        }
    }

    /// Says once per process what it means that its perf map can't be read.
    pub fn perf_map_status(&mut self, pid: u32, status: &PerfMapStatus) {
        let message = match status {
            PerfMapStatus::Loaded {
                path,
                dropped_lines,
                ..
            } if *dropped_lines > 0 => format!(
                "pid {pid}: perf map {}: {dropped_lines} lines dropped over loopbpf's limits (line length, entries or name bytes): some JavaScript frames may be left unnamed",
                path.display()
            ),
            PerfMapStatus::Loaded { .. } => return,
            PerfMapStatus::Missing { path } => format!(
                "pid {pid}: no perf map at {}: JavaScript frames cannot be named until node runs with --perf-basic-prof-only-functions (and --interpreted-frames-native-stack for interpreted functions); native frames are still reported",
                path.display()
            ),
            PerfMapStatus::Unreadable { path, reason } => format!(
                "pid {pid}: perf map {} unreadable ({reason}): JavaScript frames are not named",
                path.display()
            ),
        };
        if self.perf_map_warned.insert(pid) {
            self.warn(Some(pid), &message);
        }
    }

    async fn episode(&mut self, e: Episode) {
        let pid = e.pid;
        let (mut report, status) = EpisodeReport::symbolize(e, &self.symbolizer).await;
        match status {
            Ok(perf_map) => self.perf_map_status(pid, &perf_map),
            Err(err) => {
                let message =
                    format!("pid {pid}: symbolization failed ({err}); frames left as addresses");
                self.warn(Some(pid), &message);
            }
        }
        let mut written = Written::default();
        if !report.stacks.is_empty() || !report.off_cpu.is_empty() {
            let profile = Profile::of_episode(&report, self.frequency_hz);
            written = write_all(&self.output_dir, &profile, &self.formats);
            (report.files, report.folded_path, report.folded_error) =
                self.files_outcome(&mut written);
        }
        *self.episodes.entry(report.episode.pid).or_default() += 1;
        let record = json::episode(&report, &self.clock).to_json();
        self.index(&record);
        if self.json {
            stdout_line(&record);
        } else {
            stdout_line(&text::episode(&report, &self.clock));
        }
        // Said first, synced after on a blocking thread: neither the line
        // nor the ring buffer's drain (same thread) waits for the disk.
        tokio::task::spawn_blocking(move || written.sync());
    }
}

/// One whole line per write, so a reader never sees two lines mixed; the
/// directory and file are checked as every output file is (`secure_fs`).
fn append_line(
    path: &std::path::Path,
    line: &str,
) -> Result<(), crate::export::common::ExportError> {
    use crate::{
        export::common::ExportError,
        secure_fs::{self, DirPolicy, SecureFsError},
    };
    if let Some(dir) = path.parent() {
        secure_fs::ensure_dir(dir, &DirPolicy::output()).map_err(ExportError::Dir)?;
    }
    secure_fs::open_append(path, 0o644)
        .map_err(ExportError::Write)?
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|source| {
            ExportError::Write(SecureFsError::Write {
                path: path.to_path_buf(),
                source,
            })
        })
}

/// A closed stdout (`loopbpf | head`) must not panic or stop the measurement.
fn stdout_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// The session's side of the lifecycle: everything goes, in order, to the
/// reporter's task.
impl crate::lifecycle::Output for tokio::sync::mpsc::UnboundedSender<Output> {
    fn episode(&mut self, e: Episode) {
        let _ = self.send(Output::Episode(e));
    }

    /// A terminal gets one line per stall; the daemon's log repeats it.
    fn stall(&mut self, s: crate::lifecycle::Stall) {
        if s.first {
            let _ = self.send(Output::Stall {
                pid: s.pid,
                tid: s.tid,
                start_ns: s.start_ns,
                now_ns: s.now_ns,
            });
        }
    }

    fn pool(&mut self, out: PoolOutput) {
        let _ = self.send(Output::Pool(out));
    }

    fn warning(&mut self, pid: Option<u32>, message: String) {
        let _ = self.send(Output::Warning { pid, message });
    }

    fn forget(&mut self, pid: u32) {
        let _ = self.send(Output::Forget(pid));
    }
}
