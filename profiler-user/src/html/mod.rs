//! `loopbpf report` and `loopbpf episodes`: read the episodes a `--pid`
//! session (its output directory) or the daemon (its state directory) wrote,
//! and show them: one self-contained HTML page, or a table in the terminal.
//!
//! Both directories hold `index.jsonl` (one record per episode) and the
//! episodes' folded stacks, `ID.folded` or `episodes/ID.folded`. The files
//! are treated as untrusted: opened without following links, size-bounded,
//! and a malformed line or file is counted and skipped, never fatal.
use std::{
    fs,
    io::Read,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub(crate) mod page;
pub use page::render_html;

/// An index bigger than this is read only up to it (about a million episodes).
const MAX_INDEX_BYTES: u64 = 512 << 20;
/// A folded file bigger than this is left out of the page.
const MAX_FOLDED_BYTES: u64 = 4 << 20;
/// Stacks kept per episode in the page (the heaviest): a page of 10,000
/// episodes must still open.
pub const MAX_STACKS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {path} failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no index.jsonl: not a loopbpf output or state directory")]
    NoIndex(PathBuf),
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One episode as the index records it; every field is optional so records
/// of older versions (or damaged ones) still show what they have.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub pid: u32,
    pub tid: Option<u32>,
    pub thread: Option<String>,
    pub thread_name: Option<String>,
    pub comm: Option<String>,
    pub container: Option<String>,
    /// RFC 3339 (schema_version 1 on); older records have `start_unix_ms` only.
    #[serde(skip_serializing)]
    pub start_time: Option<String>,
    pub start_unix_ms: u64,
    pub start_ns: u64,
    pub duration_ms: f64,
    pub verdict: Option<String>,
    pub on_cpu_ms: Option<f64>,
    pub off_cpu_ms: Option<f64>,
    pub runqueue_ms: Option<f64>,
    pub syscall: Option<String>,
    pub samples: u64,
    pub top_frame: Option<String>,
    pub top_frame_share: Option<f64>,
    pub pool_size: Option<u64>,
    pub items: Option<u64>,
    pub top_work: Option<String>,
    pub ongoing: bool,
    /// The record as a line of the JSON contract (`loopbpf episodes
    /// --json` only; `None` there when it is of another version).
    #[serde(skip)]
    pub line: Option<String>,
}

/// What to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only episodes that started within this long before now.
    pub since: Option<Duration>,
    pub pids: Vec<u32>,
    /// Keep each record's JSON line (`Record::line`).
    pub lines: bool,
}

/// The episodes of a directory, oldest first, with what could not be read.
#[derive(Debug, Default, Serialize)]
pub struct Episodes {
    pub dir: PathBuf,
    pub episodes: Vec<Record>,
    /// Index lines that were not a record.
    pub malformed_lines: u64,
    /// Records whose stacks could not be read (missing, too big, not a file).
    pub stacks_missing: u64,
}

/// Opens a file of the directory without following a link or blocking on a
/// FIFO, and refuses anything but a regular file.
fn open_regular(path: &Path) -> std::io::Result<(fs::File, u64)> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((f, meta.len()))
}

fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    let mut buf = Vec::with_capacity(len.min(max) as usize);
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads the index of `dir` and keeps the records `filter` selects.
pub fn read(dir: &Path, filter: &Filter, now: SystemTime) -> Result<Episodes, ReportError> {
    let index = dir.join("index.jsonl");
    let bytes = read_bounded(&index, MAX_INDEX_BYTES).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ReportError::NoIndex(dir.to_path_buf())
        } else {
            ReportError::Read {
                path: index.clone(),
                source,
            }
        }
    })?;
    let oldest_ms = filter.since.map(|since| {
        now.checked_sub(since)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    });
    let mut out = Episodes {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(mut r) = serde_json::from_slice::<Record>(line) else {
            out.malformed_lines += 1;
            continue;
        };
        if let Some(ms) = r.start_time.as_deref().and_then(unix_ms_of_rfc3339) {
            r.start_unix_ms = ms;
        }
        if filter.lines {
            r.line = crate::export::json::stored_record(line);
        }
        if r.id.is_empty() || !is_safe_id(&r.id) {
            out.malformed_lines += 1;
            continue;
        }
        if oldest_ms.is_some_and(|t| r.start_unix_ms < t)
            || (!filter.pids.is_empty() && !filter.pids.contains(&r.pid))
        {
            continue;
        }
        out.episodes.push(r);
    }
    out.episodes.sort_by_key(|r| (r.start_unix_ms, r.start_ns));
    Ok(out)
}

/// Milliseconds since the epoch of an RFC 3339 time (`None` if it is not one).
fn unix_ms_of_rfc3339(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Ids name files: `PID-TID-STARTNS` or `PID-threadpool-STARTNS`, nothing
/// that could leave the directory.
fn is_safe_id(id: &str) -> bool {
    id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The folded stacks of an episode, heaviest first, at most `MAX_STACKS`
/// (with the number left out); `None` when there is no readable file.
pub fn stacks(dir: &Path, id: &str) -> Option<(Vec<(String, u64)>, usize)> {
    let name = format!("{id}.folded");
    let bytes = [dir.join("episodes").join(&name), dir.join(&name)]
        .iter()
        .find_map(|p| read_bounded(p, MAX_FOLDED_BYTES).ok())?;
    let text = String::from_utf8_lossy(&bytes);
    let mut stacks: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((stack.to_owned(), n.parse().ok()?))
        })
        .collect();
    stacks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let dropped = stacks.len().saturating_sub(MAX_STACKS);
    stacks.truncate(MAX_STACKS);
    Some((stacks, dropped))
}

/// Writes the page for `dir` to `out`; returns how many episodes it shows.
pub fn write_report(
    dir: &Path,
    filter: &Filter,
    out: &Path,
    now: SystemTime,
) -> Result<usize, ReportError> {
    let mut episodes = read(dir, filter, now)?;
    let html = render_html(&mut episodes, now);
    crate::export::common::write_file(
        out.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
        &out.file_name().map_or("loopbpf-report.html".into(), |n| {
            n.to_string_lossy().into_owned()
        }),
        html.as_bytes(),
    )
    .map_err(|e| ReportError::Write {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(episodes.episodes.len())
}

/// `loopbpf episodes`: one line per episode, oldest first.
pub fn table(e: &Episodes) -> String {
    let mut out = format!(
        "{:<23} {:>7} {:>7} {:<10} {:>10} {:<12} {}\n",
        "START (UTC)", "PID", "TID", "THREAD", "BUSY MS", "VERDICT", "HOTTEST"
    );
    for r in &e.episodes {
        let pool = r.kind == "threadpool_saturation";
        let hottest = if pool {
            r.top_work.as_deref()
        } else {
            r.top_frame.as_deref()
        };
        out.push_str(&format!(
            "{:<23} {:>7} {:>7} {:<10} {:>10.3} {:<12} {}\n",
            utc(r.start_unix_ms),
            r.pid,
            r.tid.map_or("-".into(), |t| t.to_string()),
            if pool {
                "threadpool"
            } else {
                r.thread.as_deref().unwrap_or("-")
            },
            r.duration_ms,
            if pool {
                "saturated"
            } else {
                r.verdict.as_deref().unwrap_or("-")
            },
            hottest.unwrap_or("-")
        ));
    }
    if e.malformed_lines > 0 {
        out.push_str(&format!(
            "({} malformed index lines skipped)\n",
            e.malformed_lines
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.mmm` of milliseconds since the epoch (UTC).
pub fn utc(unix_ms: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("@{unix_ms}ms"))
}

#[cfg(test)]
mod tests;
