//! V8's JIT symbol file, `/tmp/perf-PID.map`, as written by
//! `node --perf-basic-prof-only-functions`: one `<start-hex> <size-hex> <name>`
//! line per compiled function, appended for the life of the process.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::name_table::NameTable;
use super::untrusted::{Expect, ProcessIdentity, Root, UntrustedFileError};

#[derive(Debug, thiserror::Error)]
pub enum PerfMapError {
    #[error("perf map {} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("failed to read perf map {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("perf map {}: {error}", path.display())]
    Refused {
        path: PathBuf,
        error: UntrustedFileError,
    },
}

/// What one process's perf map may cost us. A hostile map (a sparse
/// `truncate -s 1T` file, a 1 GiB line, millions of names at one address)
/// meets these instead of our memory; what they drop is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A V8 line is a few hundred bytes (the name carries the script's
    /// path); longer ones are dropped, so a file without newlines cannot
    /// grow memory.
    pub line_bytes: usize,
    /// Read per refresh, so one refresh of a huge (or sparse) file takes
    /// bounded time; the rest is read by the next refreshes.
    pub read_per_refresh: u64,
    /// Read over the life of one map: past this the file is no longer read
    /// (a real map of a long-lived process is a few hundred MiB at most).
    pub read_total: u64,
    /// JIT ranges kept (about 30 bytes each in memory).
    pub entries: usize,
    /// Bytes of distinct names kept; past it the table is compacted to the
    /// live names, and lines are dropped if that is not enough.
    pub name_bytes: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        line_bytes: 64 * 1024,
        read_per_refresh: 128 * 1024 * 1024,
        read_total: 1024 * 1024 * 1024,
        entries: 2_000_000,
        name_bytes: 128 * 1024 * 1024,
    };
}

/// Where V8 writes the perf map of `pid`, as shown to the operator: named by
/// the pid the process sees (NSpid), in its own /tmp. A node inside a
/// container (another mount namespace) is reached through its root. The file
/// itself is always opened inside the process's root (see [`PerfMap::for_pid`]).
pub fn perf_map_path(pid: u32) -> PathBuf {
    let ns_pid = ns_pid(pid);
    if same_mount_namespace(pid) {
        PathBuf::from(format!("/tmp/perf-{ns_pid}.map"))
    } else {
        PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{ns_pid}.map"))
    }
}

fn ns_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| ns_pid_from_status(&status))
        .unwrap_or(pid)
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

/// How the map file is reached: the path opened inside `root`, the path
/// shown in messages, and what the opened file must satisfy.
struct Location {
    root: Root,
    open_path: PathBuf,
    shown_path: PathBuf,
    expect: Expect,
}

/// The symbols of one perf map, kept in sync with the file incrementally.
pub struct PerfMap {
    location: Location,
    symbols: BTreeMap<u64, JitSymbol>,
    names: NameTable,
    file: Option<FileIdentity>,
    read_offset: u64,
    /// Bytes after the last newline: V8 may be midway through writing a line.
    partial_line: Vec<u8>,
    /// The current line outgrew [`Limits::line_bytes`]: skip to its newline.
    skipping_line: bool,
    /// The file is longer than [`Limits::read_total`] and its rest unread.
    truncated: bool,
    bad_lines: usize,
    dropped_lines: usize,
    ever_read: bool,
    limits: Limits,
}

impl PerfMap {
    /// A map at an operator-given `path`: opened without following a final
    /// symlink and read only if it is a regular file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self::at(Location {
            root: Root::Host,
            open_path: path.clone(),
            shown_path: path,
            expect: Expect::default(),
        })
    }

    /// The perf map V8 writes for `pid`, opened inside the process's root
    /// (held open, so it still answers once the process has exited), owned
    /// by the process's uid or root and written since the process started.
    pub fn for_pid(pid: u32) -> Self {
        let shown_path = perf_map_path(pid);
        let open_path = PathBuf::from(format!("/tmp/perf-{}.map", ns_pid(pid)));
        let identity = ProcessIdentity::of(pid);
        let root = match Root::of_process(pid) {
            Ok(root) => root,
            // Gone already: /proc/PID/root no longer resolves, nor may the
            // path be trusted to be this process's.
            Err(_) => Root::Host,
        };
        let expect = Expect {
            owner: identity.map(|id| id.uid).or(Some(0)),
            not_before: identity.and_then(|id| id.started_at()),
            identity: None,
        };
        let open_path = match &root {
            Root::Process(_) => open_path,
            // Refuses to read anything rather than the host's /tmp.
            Root::Host => PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{}.map", ns_pid(pid))),
        };
        Self::at(Location {
            root,
            open_path,
            shown_path,
            expect,
        })
    }

    fn at(location: Location) -> Self {
        Self {
            location,
            symbols: BTreeMap::new(),
            names: NameTable::default(),
            file: None,
            read_offset: 0,
            partial_line: Vec::new(),
            skipping_line: false,
            truncated: false,
            bad_lines: 0,
            dropped_lines: 0,
            ever_read: false,
            limits: Limits::DEFAULT,
        }
    }

    /// The same map under other limits (tests use small ones).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn path(&self) -> &Path {
        &self.location.shown_path
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

    /// Lines dropped for exceeding a limit (line length, entries, name bytes;
    /// the unread rest of a file over the read limit counts as one) since the
    /// file was last read from scratch.
    pub fn dropped_lines(&self) -> usize {
        self.dropped_lines
    }

    /// Whether reading stopped at [`Limits::read_total`].
    pub fn read_limit_reached(&self) -> bool {
        self.read_offset >= self.limits.read_total
    }

    /// Whether any refresh succeeded, i.e. whether the symbols are worth
    /// using after the file has gone away with its process.
    pub fn ever_read(&self) -> bool {
        self.ever_read
    }

    /// Reads what was appended since the last refresh, at most
    /// [`Limits::read_per_refresh`] bytes. A file that shrank or was replaced is
    /// read again from the start. On error the symbols read so far are kept.
    pub fn refresh(&mut self) -> Result<(), PerfMapError> {
        let location = &self.location;
        let file = location
            .root
            .open(&location.open_path, &location.expect)
            .map_err(|error| self.open_error(error))?;
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
        let end = metadata.len().min(self.limits.read_total);
        if end <= self.read_offset {
            if metadata.len() > end && !self.truncated {
                // What lies past the limit is never read: one drop, once.
                self.truncated = true;
                self.dropped_lines += 1;
            }
            return Ok(());
        }
        let budget = (end - self.read_offset).min(self.limits.read_per_refresh);

        let mut reader = BufReader::with_capacity(1 << 16, file);
        reader
            .seek(SeekFrom::Start(self.read_offset))
            .map_err(|error| self.read_error(error))?;
        let mut reader = reader.take(budget);
        loop {
            let chunk = match reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.read_error(error)),
            };
            if chunk.is_empty() {
                break;
            }
            let read = chunk.len();
            self.feed(chunk);
            self.read_offset += read as u64;
            reader.consume(read);
        }
        Ok(())
    }

    /// Parses `bytes` as the continuation of what was fed before: complete
    /// lines are inserted, a trailing partial line waits for the rest.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let newline = memchr::memchr(b'\n', bytes);
            let (part, rest, complete) = match newline {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping_line {
                if self.partial_line.len() + part.len() > self.limits.line_bytes {
                    self.partial_line = Vec::new();
                    self.skipping_line = true;
                    self.dropped_lines += 1;
                } else {
                    self.partial_line.extend_from_slice(part);
                }
            }
            if complete {
                if !self.skipping_line {
                    let line = std::mem::take(&mut self.partial_line);
                    self.insert_line(&line);
                    self.partial_line = line;
                    self.partial_line.clear();
                }
                self.skipping_line = false;
            }
        }
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
        self.partial_line = Vec::new();
        self.skipping_line = false;
        self.truncated = false;
        self.bad_lines = 0;
        self.dropped_lines = 0;
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
        let name = normalize(raw_name);
        let name_bytes = self.limits.name_bytes;
        if self.names.bytes() + name.len() > name_bytes {
            // Only when at least half the names are dead, so compacting
            // stays amortised O(1) per line.
            if self.names.len() > 2 * self.symbols.len() {
                self.compact_names();
            }
            if self.names.bytes() + name.len() > name_bytes {
                self.dropped_lines += 1;
                return;
            }
        }
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
        if self.symbols.len() >= self.limits.entries {
            self.dropped_lines += 1;
            return;
        }
        let name = self.names.intern(&name);
        self.symbols.insert(start, JitSymbol { len, name });
    }

    /// Names of ranges that were since replaced stay in the table; rebuild
    /// it from the live ranges only (many names at one address otherwise
    /// grow it without bound).
    fn compact_names(&mut self) {
        let mut names = NameTable::default();
        for symbol in self.symbols.values_mut() {
            symbol.name = names.intern(self.names.get(symbol.name));
        }
        self.names = names;
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

    fn open_error(&self, error: UntrustedFileError) -> PerfMapError {
        let path = self.location.shown_path.clone();
        match error {
            UntrustedFileError::Missing { .. } => PerfMapError::Missing { path },
            UntrustedFileError::Open { error, .. } => PerfMapError::Read { path, error },
            error => PerfMapError::Refused { path, error },
        }
    }

    fn read_error(&self, error: io::Error) -> PerfMapError {
        PerfMapError::Read {
            path: self.location.shown_path.clone(),
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
