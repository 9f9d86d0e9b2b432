//! The daemon's episode store under its state directory:
//!
//! ```text
//! STATE/episodes/PID-TID-STARTNS.folded   stacks, for flamegraph tools
//! STATE/episodes/PID-TID-STARTNS.json     the episode record
//! STATE/index.jsonl                       one line per stored episode, oldest first
//! ```
//!
//! Episode files are written to a temporary name and renamed, so a crash never
//! leaves half a file. The index is appended one line per write; a crash can
//! at worst tear its last line, which readers skip and the next start repairs
//! (the index is rewritten atomically from what is on disk).
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating state directory {path} failed: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Limits on what the store keeps; the oldest episodes go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// One stored episode, as the index lists it.
#[derive(Clone, Debug)]
struct Entry {
    id: String,
    /// Seconds since the epoch when it was stored: ages are judged by this.
    stored_s: u64,
    bytes: u64,
}

pub struct Store {
    dir: PathBuf,
    retention: Retention,
    /// Oldest first.
    entries: Vec<Entry>,
    total_bytes: u64,
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_data()
        })
        .and_then(|()| fs::rename(&tmp, path));
    written.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        StoreError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

impl Store {
    /// Opens (creating) the store, rebuilds the index from the episode files
    /// and applies retention.
    pub fn open(dir: &Path, retention: Retention) -> Result<Store, StoreError> {
        let episodes = dir.join("episodes");
        fs::create_dir_all(&episodes).map_err(|source| StoreError::CreateDir {
            path: episodes.clone(),
            source,
        })?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            retention,
            entries: Vec::new(),
            total_bytes: 0,
        };
        store.rescan();
        store.enforce(SystemTime::now())?;
        store.rewrite_index()?;
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

    fn episodes_dir(&self) -> PathBuf {
        self.dir.join("episodes")
    }

    /// Entries from the `.json` records on disk, oldest first; a temp file
    /// left by a crash is removed.
    fn rescan(&mut self) {
        let mut by_id: std::collections::BTreeMap<String, Entry> = Default::default();
        let Ok(dir) = fs::read_dir(self.episodes_dir()) else {
            return;
        };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Ok(meta) = f.metadata() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(f.path());
                continue;
            }
            let Some(id) = name
                .strip_suffix(".json")
                .or_else(|| name.strip_suffix(".folded"))
            else {
                continue;
            };
            let e = by_id.entry(id.to_string()).or_insert(Entry {
                id: id.to_string(),
                stored_s: u64::MAX,
                bytes: 0,
            });
            e.bytes += meta.len();
            e.stored_s = e.stored_s.min(meta.modified().map(unix_s).unwrap_or(0));
        }
        self.entries = by_id.into_values().collect();
        self.entries
            .sort_by(|a, b| (a.stored_s, &a.id).cmp(&(b.stored_s, &b.id)));
        self.total_bytes = self.entries.iter().map(|e| e.bytes).sum();
    }

    /// Stores one episode: `id` names its files, `folded` may be absent (an
    /// episode without samples). Returns the paths written.
    pub fn put(
        &mut self,
        id: &str,
        folded: Option<&str>,
        mut record: Value,
    ) -> Result<(Option<PathBuf>, PathBuf), StoreError> {
        let dir = self.episodes_dir();
        fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let mut bytes = 0;
        let folded_path = match folded {
            Some(text) => {
                let p = dir.join(format!("{id}.folded"));
                write_atomic(&p, text.as_bytes())?;
                bytes += text.len() as u64;
                Some(p)
            }
            None => None,
        };
        record["folded"] = serde_json::json!(folded_path);
        let json_path = dir.join(format!("{id}.json"));
        let text = record.to_string();
        write_atomic(&json_path, text.as_bytes())?;
        bytes += text.len() as u64;
        self.append_index(&record)?;
        let now = SystemTime::now();
        self.entries.push(Entry {
            id: id.to_string(),
            stored_s: unix_s(now),
            bytes,
        });
        self.total_bytes += bytes;
        self.enforce(now)?;
        Ok((folded_path, json_path))
    }

    fn append_index(&self, record: &Value) -> Result<(), StoreError> {
        let path = self.dir.join("index.jsonl");
        let line = format!("{record}\n");
        // One write of the whole line: readers never see a line mixed with another.
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| StoreError::Write { path, source })
    }

    /// Deletes the oldest episodes until the store is within its limits;
    /// rewrites the index when anything went.
    pub fn enforce(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let oldest_kept = unix_s(now).saturating_sub(self.retention.max_age.as_secs());
        let mut removed = 0;
        while let Some(e) = self.entries.first() {
            if e.stored_s >= oldest_kept && self.total_bytes <= self.retention.max_bytes {
                break;
            }
            let e = self.entries.remove(0);
            for ext in ["folded", "json"] {
                let _ = fs::remove_file(self.episodes_dir().join(format!("{}.{ext}", e.id)));
            }
            self.total_bytes -= e.bytes;
            removed += 1;
        }
        if removed > 0 {
            log::info!("retention: removed {removed} oldest episodes");
            self.rewrite_index()?;
        }
        Ok(())
    }

    /// The index rebuilt from the JSON records still on disk, written atomically.
    fn rewrite_index(&self) -> Result<(), StoreError> {
        let mut text = String::new();
        for e in &self.entries {
            let path = self.episodes_dir().join(format!("{}.json", e.id));
            if let Ok(record) = fs::read_to_string(&path) {
                if serde_json::from_str::<Value>(&record).is_ok() {
                    text.push_str(record.trim_end());
                    text.push('\n');
                }
            }
        }
        write_atomic(&self.dir.join("index.jsonl"), text.as_bytes())
    }
}

#[cfg(test)]
mod tests;
