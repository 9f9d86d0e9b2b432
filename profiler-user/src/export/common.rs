//! What every file format of an episode shares: its stacks with their weight
//! and state (on the CPU, asleep, waiting for a CPU), its headline, and the
//! atomic write. Each format (folded, SVG, pprof) renders a [`Profile`].
use std::path::{Path, PathBuf};

use crate::{
    clock::WallClock,
    export::{pool_report::PoolReport, report::EpisodeReport},
    secure_fs::{self, DirPolicy, SecureFsError},
    symbolize::{Frame, FrameKind},
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("output directory: {0}")]
    Dir(#[source] SecureFsError),
    #[error("episode file: {0}")]
    Write(#[source] SecureFsError),
    #[error("rendering {format} failed: {source}")]
    Render {
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Mode of `--output` files: the operator who ran `sudo loopbpf` reads them.
const OUTPUT_FILE_MODE: u32 = 0o644;

/// Where a stack's time went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    OnCpu,
    /// Asleep: a syscall, a lock, I/O.
    OffCpu,
    /// Runnable, waiting for a CPU.
    Runqueue,
    /// Samples whose stack the kernel could not keep (map full).
    NotKept,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::OnCpu => "on-cpu",
            State::OffCpu => "off-cpu",
            State::Runqueue => "runqueue",
            State::NotKept => "stack-not-kept",
        }
    }

    /// The leaf the folded format and the flamegraph give such time.
    pub fn marker(self) -> Option<&'static str> {
        match self {
            State::OnCpu => None,
            State::OffCpu => Some("[off-cpu]"),
            State::Runqueue => Some("[runqueue]"),
            State::NotKept => Some("[stack not kept]"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Stack {
    /// Root first; may be empty (a preempted thread's runqueue time).
    pub frames: Vec<Frame>,
    pub state: State,
    /// Samples, or for off-CPU time its equivalent at the sampling rate (so
    /// flamegraph widths are proportional to time); milliseconds when
    /// sampling is off.
    pub weight: u64,
    /// On-CPU samples (0 for off-CPU time).
    pub samples: u64,
    /// Time it stands for: off-CPU time as measured, samples at the
    /// episode's measured on-CPU time per sample.
    pub ns: u64,
}

/// An episode (or threadpool saturation) as the file formats see it.
#[derive(Clone, Debug)]
pub struct Profile {
    /// File stem: `PID-TID-STARTNS` or `PID-threadpool-STARTNS`.
    pub id: String,
    /// `pid 7 tid 7 main: loop blocked 615.7 ms`.
    pub headline: String,
    /// Verdict and where the time went, in words.
    pub detail: String,
    pub pid: u32,
    pub tid: Option<u32>,
    /// `main`, `worker`, `threadpool`, …
    pub thread: String,
    pub thread_name: Option<String>,
    pub verdict: Option<String>,
    pub start_ns: u64,
    /// Wall-clock time of `start_ns`, nanoseconds since the epoch.
    pub start_unix_ns: i64,
    pub duration_ns: u64,
    /// Sampling period, for pprof; 0 when sampling was off.
    pub period_ns: u64,
    /// Prepended to every stack (`[threadpool]` for the workers' stacks).
    pub root: Option<&'static str>,
    pub stacks: Vec<Stack>,
}

/// `PID-TID-STARTNS`: names an episode's files and its JSON record.
pub fn episode_id(pid: u32, tid: u32, start_ns: u64) -> String {
    format!("{pid}-{tid}-{start_ns}")
}

/// `PID-threadpool-STARTNS`: names a threadpool saturation's files and record.
pub fn pool_id(pid: u32, start_ns: u64) -> String {
    format!("{pid}-threadpool-{start_ns}")
}

/// `pid P tid T ROLE: loop blocked X ms, N samples`: an episode's headline,
/// the same in the text line and in a flamegraph's title.
pub fn episode_headline(r: &EpisodeReport) -> String {
    let e = &r.episode;
    format!(
        "pid {} tid {} {}: loop {} {:.1} ms, {} samples",
        e.pid,
        e.tid,
        r.role.as_str(),
        if e.ongoing {
            "still blocked after"
        } else {
            "blocked"
        },
        e.busy_ns as f64 / 1e6,
        e.samples
    )
}

/// `on-CPU x%, asleep y%, waiting for CPU z%` (and the GC share of on-CPU
/// samples when there was any): where an episode's busy time went.
pub fn where_time_went(r: &EpisodeReport) -> String {
    let (e, b) = (&r.episode, &r.breakdown);
    let mut out = format!(
        "on-CPU {:.0}%, asleep {:.0}%, waiting for CPU {:.0}%",
        pct(b.on_cpu_ns, e.busy_ns),
        pct(b.blocked_ns, e.busy_ns),
        pct(b.runq_ns, e.busy_ns)
    );
    if b.gc_share > 0.0 {
        out.push_str(&format!(
            ", GC {:.0}% of on-CPU samples",
            b.gc_share * 100.0
        ));
    }
    out
}

/// Sampled stacks as profile stacks, each sample standing for `ns_per_sample`.
fn on_cpu_stacks(sampled: &[(Vec<Frame>, u64)], ns_per_sample: u64) -> Vec<Stack> {
    sampled
        .iter()
        .map(|(frames, n)| Stack {
            frames: frames.clone(),
            state: State::OnCpu,
            weight: *n,
            samples: *n,
            ns: n * ns_per_sample,
        })
        .collect()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Profile {
    pub fn of_episode(r: &EpisodeReport, frequency_hz: u64) -> Profile {
        let e = &r.episode;
        let b = &r.breakdown;
        // With sampling off, off-CPU time is weighed in milliseconds.
        let weight_per_ns = if frequency_hz == 0 {
            1e-6
        } else {
            frequency_hz as f64 / 1e9
        };
        let samples: u64 = r.stacks.iter().map(|s| s.1).sum();
        let ns_per_sample = b.on_cpu_ns.checked_div(samples).unwrap_or(0);
        let mut stacks = on_cpu_stacks(&r.stacks, ns_per_sample);
        for o in &r.off_cpu {
            for (state, ns) in [(State::OffCpu, o.blocked_ns), (State::Runqueue, o.runq_ns)] {
                let weight = (ns as f64 * weight_per_ns).round() as u64;
                if weight > 0 {
                    stacks.push(Stack {
                        frames: o.frames.clone(),
                        state,
                        weight,
                        samples: 0,
                        ns,
                    });
                }
            }
        }
        if e.samples_without_stack > 0 {
            stacks.push(not_kept(e.samples_without_stack, ns_per_sample));
        }
        let verdict = serde_json::to_value(b.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        let mut detail = format!(
            "{}: {}",
            b.verdict.describe(b.syscall.as_deref()),
            where_time_went(r)
        );
        if let Some(h) = &r.top_frame {
            detail.push_str(&format!("; hottest: {} ({:.0}%)", h.name, h.share * 100.0));
        }
        Profile {
            id: episode_id(e.pid, e.tid, e.start_ns),
            headline: episode_headline(r),
            detail,
            pid: e.pid,
            tid: Some(e.tid),
            thread: r.role.as_str().to_owned(),
            thread_name: r.thread_name.clone(),
            verdict,
            start_ns: e.start_ns,
            start_unix_ns: WallClock::now().unix_ns(e.start_ns),
            duration_ns: e.busy_ns,
            period_ns: 1_000_000_000u64.checked_div(frequency_hz).unwrap_or(0),
            root: None,
            stacks,
        }
    }

    /// A saturation's worker stacks: samples only (workers are not followed
    /// off the CPU), each standing for one sampling period.
    pub fn of_pool(r: &PoolReport, frequency_hz: u64) -> Profile {
        let e = &r.episode;
        let period_ns = 1_000_000_000u64.checked_div(frequency_hz).unwrap_or(0);
        let mut stacks = on_cpu_stacks(&r.stacks, period_ns);
        if e.samples_without_stack > 0 {
            stacks.push(not_kept(e.samples_without_stack, period_ns));
        }
        let duration_ns = e.end_ns.saturating_sub(e.start_ns);
        let mut detail = match &r.top_work {
            Some(w) => format!("running {} ({:.0}%)", w.name, w.share * 100.0),
            None => "running: unknown".to_owned(),
        };
        if let Some(h) = &r.top_frame {
            detail.push_str(&format!("; hottest: {} ({:.0}%)", h.name, h.share * 100.0));
        }
        Profile {
            id: pool_id(e.pid, e.start_ns),
            headline: format!(
                "pid {} threadpool: {} {:.1} ms, all {} workers busy ({} items, {} samples)",
                e.pid,
                if e.ongoing {
                    "still saturated after"
                } else {
                    "saturated"
                },
                duration_ns as f64 / 1e6,
                e.pool_size,
                e.items,
                e.samples
            ),
            detail,
            pid: e.pid,
            tid: None,
            thread: "threadpool".to_owned(),
            thread_name: None,
            verdict: None,
            start_ns: e.start_ns,
            start_unix_ns: WallClock::now().unix_ns(e.start_ns),
            duration_ns,
            period_ns,
            root: Some("[threadpool]"),
            stacks,
        }
    }

    /// Frames of a stack with the profile's root prepended.
    pub fn frames<'a>(&self, s: &'a Stack) -> impl Iterator<Item = std::borrow::Cow<'a, Frame>> {
        self.root
            .map(|r| std::borrow::Cow::Owned(Frame::new(r, FrameKind::Unknown)))
            .into_iter()
            .chain(s.frames.iter().map(std::borrow::Cow::Borrowed))
    }
}

fn not_kept(samples: u64, ns_per_sample: u64) -> Stack {
    Stack {
        frames: Vec::new(),
        state: State::NotKept,
        weight: samples,
        samples,
        ns: samples * ns_per_sample,
    }
}

/// A file format of an episode's stacks.
pub trait Format {
    /// As `--formats` names it.
    const NAME: &'static str;
    /// File name extension, without the dot.
    const EXT: &'static str;
    fn render(p: &Profile) -> Result<Vec<u8>, ExportError>;
}

/// A JavaScript frame `func /path/file.js:LINE:COL` split into its parts;
/// other frames (and JS frames without a location) are a function only.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceFrame<'a> {
    pub function: &'a str,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

pub fn source_frame(f: &Frame) -> SourceFrame<'_> {
    let bare = SourceFrame {
        function: &f.name,
        file: None,
        line: None,
        column: None,
    };
    if f.kind != FrameKind::Js {
        return bare;
    }
    let Some((function, location)) = f.name.rsplit_once(' ') else {
        return bare;
    };
    let mut parts = location.rsplitn(3, ':');
    let (Some(col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return bare;
    };
    match (line.parse(), col.parse()) {
        (Ok(line), Ok(col)) if !file.is_empty() => SourceFrame {
            function,
            file: Some(file),
            line: Some(line),
            column: Some(col),
        },
        _ => bare,
    }
}

/// Writes `bytes` as `dir/name` through a temporary file and a rename, so a
/// reader or a crash never sees half a file; the directory is not followed
/// through a symlink and must be root's or the sudo user's (`secure_fs`).
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, ExportError> {
    secure_fs::ensure_dir(dir, &DirPolicy::output()).map_err(ExportError::Dir)?;
    secure_fs::write_new(dir, name, bytes, OUTPUT_FILE_MODE).map_err(ExportError::Write)
}

/// [`write_file`], the file to be synced by the caller (see
/// [`secure_fs::write_new_sync_later`]).
pub fn write_file_sync_later(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(PathBuf, std::fs::File), ExportError> {
    secure_fs::ensure_dir(dir, &DirPolicy::output()).map_err(ExportError::Dir)?;
    secure_fs::write_new_sync_later(dir, name, bytes, OUTPUT_FILE_MODE).map_err(ExportError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_frames_split_into_function_file_and_line() {
        let f = Frame::new("parseReport /tmp/demo/app.js:3:21", FrameKind::Js);
        assert_eq!(
            source_frame(&f),
            SourceFrame {
                function: "parseReport",
                file: Some("/tmp/demo/app.js"),
                line: Some(3),
                column: Some(21)
            }
        );
        let f = Frame::new("listOnTimeout node:internal/timers:581:17", FrameKind::Js);
        assert_eq!(source_frame(&f).file, Some("node:internal/timers"));
        // No location, a native name with spaces: the whole name.
        for f in [
            Frame::new("spin", FrameKind::Js),
            Frame::new("spin /a.js:x:1", FrameKind::Js),
            Frame::new("node::Start(int, char**) /x:1:2", FrameKind::Native),
        ] {
            assert_eq!(source_frame(&f).function, f.name);
            assert_eq!(source_frame(&f).file, None);
        }
    }
}
