//! V8's JIT symbol file, `/tmp/perf-PID.map`, as written by
//! `node --perf-basic-prof-only-functions`: one `<start-hex> <size-hex> <name>`
//! line per compiled function, appended for the life of the process.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::name_table::NameTable;

#[derive(Debug, thiserror::Error)]
pub enum PerfMapError {
    #[error("perf map {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("failed to read perf map {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
}

/// Where V8 writes the perf map of `pid`: named by the pid the process sees
/// (NSpid), in its own /tmp. A node inside a container (another mount
/// namespace) is reached through its root, /proc/PID/root. One in our own
/// mount namespace is read at /tmp directly: V8 never deletes the file, so
/// that path still answers after the process died (killed mid-block), when
/// /proc/PID is gone.
pub fn perf_map_path(pid: u32) -> PathBuf {
    let ns_pid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| ns_pid_from_status(&status))
        .unwrap_or(pid);
    if same_mount_namespace(pid) {
        PathBuf::from(format!("/tmp/perf-{ns_pid}.map"))
    } else {
        PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map"))
    }
}

fn same_mount_namespace(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt"));
    let ours = std::fs::read_link("/proc/self/ns/mnt");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

/// V8 names the file after the pid it sees, which is the innermost one: the
/// last field of `NSpid:`.
fn ns_pid_from_status(status: &str) -> Option<u32> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// One JIT code range; kept to 8 bytes because long-running processes log
/// millions of them.
#[derive(Clone, Copy, Debug)]
struct JitSymbol {
    len: u32,
    name: u32,
}

/// Identifies the file we have been reading, to notice it being replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

/// The symbols of one perf map, kept in sync with the file incrementally.
pub struct PerfMap {
    path: PathBuf,
    symbols: BTreeMap<u64, JitSymbol>,
    names: NameTable,
    file: Option<FileIdentity>,
    read_offset: u64,
    /// Bytes after the last newline: V8 may be midway through writing a line.
    partial_line: Vec<u8>,
    bad_lines: usize,
    ever_read: bool,
}

impl PerfMap {
    /// A map that reads `path` on the first `refresh`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            symbols: BTreeMap::new(),
            names: NameTable::default(),
            file: None,
            read_offset: 0,
            partial_line: Vec::new(),
            bad_lines: 0,
            ever_read: false,
        }
    }

    pub fn for_pid(pid: u32) -> Self {
        Self::new(perf_map_path(pid))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Lines skipped as unparseable since the file was last read from scratch.
    pub fn bad_lines(&self) -> usize {
        self.bad_lines
    }

    /// Whether any refresh succeeded, i.e. whether the symbols are worth
    /// using after the file has gone away with its process.
    pub fn ever_read(&self) -> bool {
        self.ever_read
    }

    /// Reads what was appended since the last refresh. A file that shrank or
    /// was replaced is read again from the start. On error the symbols read
    /// so far are kept.
    pub fn refresh(&mut self) -> Result<(), PerfMapError> {
        let file = File::open(&self.path).map_err(|error| self.open_error(error))?;
        let metadata = file.metadata().map_err(|error| self.read_error(error))?;
        let identity = FileIdentity {
            dev: metadata.dev(),
            ino: metadata.ino(),
        };
        if self.file != Some(identity) || metadata.len() < self.read_offset {
            self.clear();
            self.file = Some(identity);
        }
        self.ever_read = true;
        if metadata.len() == self.read_offset {
            return Ok(());
        }

        let mut reader = BufReader::with_capacity(1 << 16, file);
        reader
            .seek(SeekFrom::Start(self.read_offset))
            .map_err(|error| self.read_error(error))?;
        let mut line = std::mem::take(&mut self.partial_line);
        loop {
            let accounted = line.len();
            let read = match reader.read_until(b'\n', &mut line) {
                Ok(read) => read,
                Err(error) => {
                    // What this failed read appended is not in read_offset.
                    line.truncate(accounted);
                    self.partial_line = line;
                    return Err(self.read_error(error));
                }
            };
            if read == 0 {
                break;
            }
            self.read_offset += read as u64;
            if line.last() != Some(&b'\n') {
                break;
            }
            line.pop();
            self.insert_line(&line);
            line.clear();
        }
        self.partial_line = line;
        Ok(())
    }

    /// The normalised name of the JIT function containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let (&start, symbol) = self.symbols.range(..=addr).next_back()?;
        (addr - start < u64::from(symbol.len)).then(|| self.names.get(symbol.name))
    }

    fn clear(&mut self) {
        self.symbols.clear();
        self.names = NameTable::default();
        self.read_offset = 0;
        self.partial_line.clear();
        self.bad_lines = 0;
    }

    fn insert_line(&mut self, line: &[u8]) {
        // Checked first: the lossy conversion is much slower on valid text.
        let line = match std::str::from_utf8(line) {
            Ok(line) => Cow::Borrowed(line),
            Err(_) => String::from_utf8_lossy(line),
        };
        if line.trim().is_empty() {
            return;
        }
        match parse_line(&line) {
            Some((start, len, raw_name)) => self.insert(start, len, raw_name),
            None => self.bad_lines += 1,
        }
    }

    /// V8 reuses code space after GC, so a new range replaces every older
    /// range it overlaps: the newest entry is the live code.
    fn insert(&mut self, start: u64, len: u32, raw_name: &str) {
        let end = start + u64::from(len);
        let after_last = match self.symbols.last_key_value() {
            Some((&last, symbol)) => last + u64::from(symbol.len) <= start,
            None => true,
        };
        // V8 mostly allocates upwards, so most lines land past the last
        // entry and cannot overlap anything.
        if !after_last {
            self.remove_overlapping(start, end);
        }
        let name = self.names.intern(&normalize(raw_name));
        self.symbols.insert(start, JitSymbol { len, name });
    }

    fn remove_overlapping(&mut self, start: u64, end: u64) {
        if let Some((&previous, symbol)) = self.symbols.range(..start).next_back() {
            if previous + u64::from(symbol.len) > start {
                self.symbols.remove(&previous);
            }
        }
        while let Some((&overlapped, _)) = self.symbols.range(start..end).next() {
            self.symbols.remove(&overlapped);
        }
    }

    fn open_error(&self, error: io::Error) -> PerfMapError {
        if error.kind() == io::ErrorKind::NotFound {
            PerfMapError::Missing {
                path: self.path.clone(),
            }
        } else {
            self.read_error(error)
        }
    }

    fn read_error(&self, error: io::Error) -> PerfMapError {
        PerfMapError::Read {
            path: self.path.clone(),
            error,
        }
    }
}

/// `<start> <size> <name>`; the name may itself contain spaces.
fn parse_line(line: &str) -> Option<(u64, u32, &str)> {
    let (start, rest) = line.trim_start().split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    let start = parse_hex(start)?;
    // A zero size would make the entry unreachable; it still names its start.
    let len = u32::try_from(parse_hex(size)?).ok()?.max(1);
    start.checked_add(u64::from(len))?;
    let name = name.trim();
    (!name.is_empty()).then_some((start, len, name))
}

fn parse_hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() {
        return None;
    }
    digits.chars().try_fold(0u64, |value, digit| {
        value
            .checked_mul(16)?
            .checked_add(u64::from(digit.to_digit(16)?))
    })
}

/// Tags V8 puts on JavaScript functions across Node versions
/// (`JS:` today, `LazyCompile:`/`Function:`/`Script:` before).
const JS_TAGS: &[&str] = &[
    "JS",
    "LazyCompile",
    "Function",
    "Script",
    "Eval",
    "InterpretedFunction",
    "NativeFunction",
    "NativeLazyCompile",
    "NativeScript",
];

/// Turns a V8 perf-map name into a folded-stack-safe frame: `fib /app/x.js:2:13`,
/// `(anonymous) /app/x.js:1:1`, `[builtin] JsonParse`, ...
pub fn normalize_v8_name(raw: &str) -> String {
    normalize(raw).into_owned()
}

/// Borrows where it can: most names need nothing but the tier marker cut off.
fn normalize(raw: &str) -> Cow<'_, str> {
    let raw = raw.trim();
    let readable = match split_tag(raw) {
        Some((tag, rest)) if JS_TAGS.contains(&tag) => js_frame(rest),
        Some((tag, rest)) => Cow::Owned(format!("[{}] {}", tag_category(tag), rest.trim())),
        None => Cow::Borrowed(raw),
    };
    match readable {
        Cow::Borrowed(name) => sanitized(name),
        Cow::Owned(name) => Cow::Owned(sanitized(&name).into_owned()),
    }
}

/// V8's tags are CamelCase words; requiring that keeps an untagged name that
/// happens to contain ':' intact.
fn split_tag(raw: &str) -> Option<(&str, &str)> {
    let (tag, rest) = raw.split_once(':')?;
    let is_tag = tag.starts_with(|c: char| c.is_ascii_uppercase())
        && tag.bytes().all(|b| b.is_ascii_alphanumeric());
    is_tag.then_some((tag, rest))
}

fn tag_category(tag: &str) -> String {
    match tag {
        "Builtin" => "builtin".to_owned(),
        "BytecodeHandler" => "bytecode".to_owned(),
        "Stub" => "stub".to_owned(),
        "RegExp" => "regexp".to_owned(),
        "Handler" => "handler".to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

/// `<marker><function> <location>`; an empty function name (the location
/// directly after the marker) is an anonymous function.
fn js_frame(rest: &str) -> Cow<'_, str> {
    let unmarked = strip_tier_marker(rest).trim_end();
    if unmarked.is_empty() || unmarked.starts_with(char::is_whitespace) {
        let location = unmarked.trim_start();
        if location.is_empty() {
            Cow::Borrowed("(anonymous)")
        } else {
            Cow::Owned(format!("(anonymous) {location}"))
        }
    } else {
        Cow::Borrowed(unmarked)
    }
}

/// Tier markers (interpreted, baseline, maglev, turbofan) change across Node
/// versions and would split one function into several frames. Node 26 adds
/// `o` for on-stack replacement (`o*`, `o+`) and `'` after `*` as after `+`.
fn strip_tier_marker(name: &str) -> &str {
    let name = match name.strip_prefix('o') {
        Some(rest) if rest.starts_with(['*', '+']) => rest,
        _ => name,
    };
    match name.as_bytes().first() {
        Some(b'*' | b'~' | b'^' | b'+') => {
            let rest = &name[1..];
            rest.strip_prefix('\'').unwrap_or(rest)
        }
        _ => name,
    }
}

/// Folded stacks use ';' between frames and one stack per line.
pub(super) fn sanitize_frame_name(name: &str) -> String {
    sanitized(name).into_owned()
}

fn sanitized(name: &str) -> Cow<'_, str> {
    let name = name.trim();
    if !name.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        return Cow::Borrowed(name);
    }
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_ascii_control() => ' ',
            c => c,
        })
        .collect();
    Cow::Owned(cleaned.trim().to_owned())
}

#[cfg(test)]
#[path = "perf_map_tests.rs"]
mod tests;
