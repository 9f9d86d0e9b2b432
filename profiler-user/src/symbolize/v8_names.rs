//! What naming JavaScript frames from V8's memory did, per process and in
//! all: shown in the exit summary and exported as metrics, so that a bound
//! reached (the name cache evicting) is seen, not guessed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::v8::{NamerStats, CACHE_CAPACITY};

/// Frames named, and the name cache's fill, of one process or of all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Names {
    pub stats: NamerStats,
    /// Functions in the name cache now.
    pub cached: u64,
    /// The cache's bound (per process).
    pub capacity: u64,
}

/// What V8 frame reading did for one process, and its name cache's fill.
#[derive(Debug, serde::Serialize)]
pub struct V8Frames {
    pub named: u64,
    /// V8 frames named by their frame type (`[v8] ExitFrame`, …).
    pub frame_type: u64,
    /// `[js unknown]`: unreadable or not validating.
    pub unknown: u64,
    pub cached: u64,
    pub capacity: u64,
    pub evicted: u64,
}

impl V8Frames {
    pub fn of(v: &V8Names) -> Self {
        Self {
            named: v.stats.named,
            frame_type: v.stats.markers,
            unknown: v.stats.unknown,
            cached: v.cached,
            capacity: v.capacity,
            evicted: v.stats.evicted,
        }
    }
}

/// Written by the symbolizer thread, read by the reporter and the metrics.
#[derive(Clone, Default)]
pub(super) struct V8NameBook {
    inner: Arc<Mutex<Book>>,
}

#[derive(Default)]
struct Book {
    live: HashMap<u32, (NamerStats, u64)>,
    /// Counts of processes forgotten (or whose caches a restart cleared),
    /// so totals never go down.
    retired: NamerStats,
}

impl V8NameBook {
    fn with<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        // Plain counters, consistent at every step: a poisoned lock is fine.
        let mut book = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut book)
    }

    /// The namer of `pid` now holds `cached` functions after `stats`.
    pub(super) fn update(&self, pid: u32, stats: NamerStats, cached: usize) {
        self.with(|b| b.live.insert(pid, (stats, cached as u64)));
    }

    /// `pid`'s namer is gone; its counts stay in the totals.
    pub(super) fn retire(&self, pid: u32) {
        self.with(|b| {
            if let Some((stats, _)) = b.live.remove(&pid) {
                add(&mut b.retired, &stats);
            }
        });
    }

    /// Every namer is gone (the worker restarted with empty caches).
    pub(super) fn retire_all(&self) {
        self.with(|b| {
            for (_, (stats, _)) in b.live.drain() {
                add(&mut b.retired, &stats);
            }
        });
    }

    /// One process's figures (`None` until a stack of it carried V8 slots),
    /// or, for `None`, all processes' since the start.
    pub(super) fn get(&self, pid: Option<u32>) -> Option<V8Names> {
        self.with(|b| {
            let (stats, cached) = match pid {
                Some(pid) => *b.live.get(&pid)?,
                None => b.live.values().fold((b.retired, 0), |(mut s, c), (x, n)| {
                    add(&mut s, x);
                    (s, c + n)
                }),
            };
            Some(V8Names {
                stats,
                cached,
                capacity: CACHE_CAPACITY as u64,
            })
        })
    }
}

fn add(total: &mut NamerStats, x: &NamerStats) {
    total.named += x.named;
    total.markers += x.markers;
    total.unknown += x.unknown;
    total.cache_hits += x.cache_hits;
    total.evicted += x.evicted;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_keep_forgotten_processes_and_never_go_down() {
        let book = V8NameBook::default();
        let s = |named, evicted| NamerStats {
            named,
            evicted,
            ..Default::default()
        };
        book.update(1, s(10, 2), 5);
        book.update(2, s(1, 0), 1);
        assert_eq!(book.get(Some(1)).unwrap().cached, 5);
        assert_eq!(book.get(Some(3)), None);
        book.retire(1);
        let all = book.get(None).unwrap();
        assert_eq!((all.stats.named, all.stats.evicted, all.cached), (11, 2, 1));
        book.retire_all();
        let all = book.get(None).unwrap();
        assert_eq!((all.stats.named, all.cached), (11, 0));
        assert_eq!(all.capacity, CACHE_CAPACITY as u64);
    }
}
