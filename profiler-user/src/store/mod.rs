//! The daemon's episode store under its state directory:
//!
//! ```text
//! STATE/episodes/PID-TID-STARTNS.folded   stacks, for flamegraph tools
//! STATE/episodes/PID-TID-STARTNS.svg      the flamegraph (as `--formats` chose)
//! STATE/episodes/PID-TID-STARTNS.pb.gz    the pprof profile (as chosen)
//! STATE/episodes/PID-TID-STARTNS.json     the episode record
//! STATE/index.jsonl                       one line per stored episode, oldest first
//! ```
//!
//! Episode files are written to a random temporary name and renamed, so a
//! crash never leaves half a file. The index is appended one line per write;
//! a crash can at worst tear its last line, which readers skip and the next
//! start repairs (the index is rewritten atomically from what is on disk).
//!
//! Only root reads what is stored (stacks and command lines of every user):
//! the directories are 0700 and checked (no symlink, owned by us), files 0600
//! (see `secure_fs`). The size limit counts the index too. Retention deletes
//! the oldest episodes down to 90% of the limit, then drops their lines from
//! the head of the index in one pass; no record is re-read after start.
use std::{
    collections::VecDeque,
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::Value;

use crate::secure_fs::{self, DirPolicy, SecureFsError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory: {0}")]
    Dir(#[source] SecureFsError),
    #[error(transparent)]
    File(#[from] SecureFsError),
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Extensions of an episode's files (`ID.EXT`).
const EXTS: [&str; 4] = ["json", "folded", "svg", "pb.gz"];

/// Limits on what the store keeps; the oldest episodes go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// Mode of every stored file: root's alone.
const FILE_MODE: u32 = 0o600;
/// Once over the size limit, delete down to this share of it, so the index is
/// compacted once per tenth of the store rather than at every write.
const LOW_WATER_PERCENT: u64 = 90;

/// One stored episode, as the index lists it.
#[derive(Clone, Debug)]
struct Entry {
    id: String,
    /// Seconds since the epoch when it was stored: ages are judged by this.
    stored_s: u64,
    /// Its files and its index line.
    bytes: u64,
    /// Length of its line in `index.jsonl` (0: none, its record was unreadable).
    index_len: u64,
}

pub struct Store {
    dir: PathBuf,
    retention: Retention,
    /// Oldest first, in the order of the index's lines.
    entries: VecDeque<Entry>,
    /// Every file of every entry plus the index.
    total_bytes: u64,
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` (0600) through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    secure_fs::write_new(dir, name, bytes, FILE_MODE)?;
    Ok(())
}

impl Store {
    /// Opens (creating) the store, rebuilds the index from the episode files
    /// and applies retention.
    pub fn open(dir: &Path, retention: Retention) -> Result<Store, StoreError> {
        let policy = DirPolicy::private();
        secure_fs::ensure_dir(dir, &policy).map_err(StoreError::Dir)?;
        secure_fs::ensure_dir(&dir.join("episodes"), &policy).map_err(StoreError::Dir)?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            retention,
            entries: VecDeque::new(),
            total_bytes: 0,
        };
        store.rescan();
        store.rewrite_index()?;
        store.enforce(SystemTime::now())?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_retention(&mut self, retention: Retention) -> Result<(), StoreError> {
        self.retention = retention;
        self.enforce(SystemTime::now())
    }

    /// Stored episodes (for tests and the index).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the store holds, index included.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    fn episodes_dir(&self) -> PathBuf {
        self.dir.join("episodes")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.jsonl")
    }

    /// Entries from the files on disk, oldest first; a temp file left by a
    /// crash is removed, anything but a regular file ignored, files readable
    /// by others (older versions wrote 0644) made 0600.
    fn rescan(&mut self) {
        let mut by_id: std::collections::BTreeMap<String, Entry> = Default::default();
        let Ok(dir) = fs::read_dir(self.episodes_dir()) else {
            return;
        };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            // lstat: a symlink is not followed, and not counted.
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if secure_fs::is_temporary(&name) {
                let _ = fs::remove_file(f.path());
                continue;
            }
            let Some(id) = EXTS
                .iter()
                .find_map(|ext| name.strip_suffix(ext).and_then(|n| n.strip_suffix('.')))
            else {
                continue;
            };
            if meta.mode() & 0o077 != 0 {
                let _ = fs::set_permissions(f.path(), fs::Permissions::from_mode(FILE_MODE));
            }
            let e = by_id.entry(id.to_string()).or_insert(Entry {
                id: id.to_string(),
                stored_s: u64::MAX,
                bytes: 0,
                index_len: 0,
            });
            e.bytes += meta.len();
            e.stored_s = e.stored_s.min(meta.modified().map(unix_s).unwrap_or(0));
        }
        let mut entries: Vec<Entry> = by_id.into_values().collect();
        entries.sort_by(|a, b| (a.stored_s, &a.id).cmp(&(b.stored_s, &b.id)));
        self.entries = entries.into();
        self.total_bytes = self.entries.iter().map(|e| e.bytes).sum();
    }

    /// Stores one episode: `id` names its record, `files` are its stack
    /// files (`ID.folded`, `ID.svg`, … ; none for an episode without
    /// samples), `record` makes its JSON line from the paths written (the
    /// folded file's, every file's). Returns the paths written.
    pub fn put(
        &mut self,
        id: &str,
        files: &[(String, Vec<u8>)],
        record: impl FnOnce(Option<PathBuf>, Vec<PathBuf>) -> String,
    ) -> Result<(Vec<PathBuf>, PathBuf), StoreError> {
        let dir = self.episodes_dir();
        // Cheap (open + fstat), and catches the directory being removed or swapped.
        secure_fs::ensure_dir(&dir, &DirPolicy::private()).map_err(StoreError::Dir)?;
        let mut bytes = 0;
        let mut paths = Vec::with_capacity(files.len());
        for (name, content) in files {
            // Names come from the exporters, never from a watched process.
            paths.push(secure_fs::write_new(&dir, name, content, FILE_MODE)?);
            bytes += content.len() as u64;
        }
        let folded_path = paths
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "folded"))
            .cloned();
        let text = record(folded_path, paths.clone());
        let json_path =
            secure_fs::write_new(&dir, &format!("{id}.json"), text.as_bytes(), FILE_MODE)?;
        bytes += text.len() as u64;
        let index_len = self.append_index(&text)?;
        bytes += index_len;
        let now = SystemTime::now();
        self.entries.push_back(Entry {
            id: id.to_string(),
            stored_s: unix_s(now),
            bytes,
            index_len,
        });
        self.total_bytes += bytes;
        self.enforce(now)?;
        Ok((paths, json_path))
    }

    /// Appends `record` as one line; returns its length.
    fn append_index(&self, record: &str) -> Result<u64, StoreError> {
        let path = self.index_path();
        let line = format!("{record}\n");
        // One write of the whole line: readers never see a line mixed with another.
        secure_fs::open_append(&path, FILE_MODE)?
            .write_all(line.as_bytes())
            .map_err(|source| StoreError::Write { path, source })?;
        Ok(line.len() as u64)
    }

    /// Deletes the oldest episodes until the store is within its limits
    /// (down to 90% of the size limit once over it), then drops their lines
    /// from the index.
    pub fn enforce(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let oldest_kept = unix_s(now).saturating_sub(self.retention.max_age.as_secs());
        let max = self.retention.max_bytes;
        let target = if self.total_bytes > max {
            (u128::from(max) * u128::from(LOW_WATER_PERCENT) / 100) as u64
        } else {
            max
        };
        let mut removed = 0;
        let mut index_cut = 0;
        while let Some(e) = self.entries.front() {
            if e.stored_s >= oldest_kept && self.total_bytes <= target {
                break;
            }
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            for ext in EXTS {
                let _ = fs::remove_file(self.episodes_dir().join(format!("{}.{ext}", e.id)));
            }
            self.total_bytes = self.total_bytes.saturating_sub(e.bytes);
            index_cut += e.index_len;
            removed += 1;
        }
        if removed > 0 {
            log::info!("retention: removed {removed} oldest episodes");
            self.cut_index(index_cut)?;
        }
        Ok(())
    }

    /// Drops the first `len` bytes (the lines of removed episodes) of the
    /// index, atomically.
    fn cut_index(&self, len: u64) -> Result<(), StoreError> {
        let path = self.index_path();
        let text = fs::read(&path).map_err(|source| StoreError::Write {
            path: path.clone(),
            source,
        })?;
        let rest = text.get(len as usize..).unwrap_or_default();
        write_atomic(&path, rest)
    }

    /// The index rebuilt from the JSON records on disk, written atomically
    /// (at start only: it repairs a torn line or a crash between writes).
    fn rewrite_index(&mut self) -> Result<(), StoreError> {
        let mut text = String::new();
        for e in self.entries.iter_mut() {
            let path = self.dir.join("episodes").join(format!("{}.json", e.id));
            let record = secure_fs::read_regular(&path).unwrap_or_default();
            if serde_json::from_str::<Value>(&record).is_ok() {
                let start = text.len();
                text.push_str(record.trim_end());
                text.push('\n');
                e.index_len = (text.len() - start) as u64;
                e.bytes += e.index_len;
                self.total_bytes += e.index_len;
            }
        }
        write_atomic(&self.index_path(), text.as_bytes())
    }
}

#[cfg(test)]
mod tests;
