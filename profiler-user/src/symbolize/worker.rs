//! The symbolizer thread: owns blazesym, every perf map and all caches.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::maps::{unknown_kernel_frame, unknown_user_frame, ProcessMaps};
use super::native::NativeSymbolizer;
use super::perf_map::{perf_map_path, PerfMap, PerfMapError};
use super::untrusted::{start_ticks, Expect, Root};
use super::v8_frames::{ProcessV8, V8Binaries};
use super::watchdog::Watch;
use super::{
    lock, Command, Frame, FrameKind, LocatePerfMap, PerfMapStatus, StackRequest, SymbolizeError,
    Symbolized, WorkerCounters, WorkerShared,
};

/// Serves the shared queue until every handle is gone, or until this
/// worker is retired (replaced while stuck) and its request returns. A panic
/// (a malformed ELF file tripping blazesym, say) answers that request with
/// addresses, is counted, and the worker starts over with empty caches.
pub(super) fn run(shared: WorkerShared, watch: Arc<Watch>) {
    watch.enter();
    // A worker replacing a stuck one starts with empty caches.
    shared.v8_names.retire_all();
    let (counters, v8_names) = (&shared.counters, &shared.v8_names);
    let fresh = || Worker::new(shared.locate_perf_map.clone(), counters.clone());
    let mut worker = fresh();
    while !watch.retired() {
        // Only the serving worker waits here: a stuck one is not holding the lock.
        let Ok(command) = lock(&shared.queue).recv() else {
            return;
        };
        let (pid, reply, abandoned, stacks) = match command {
            Command::Forget { pid } => {
                worker.forget(pid);
                v8_names.retire(pid);
                continue;
            }
            Command::Symbolize {
                pid,
                stacks,
                reply,
                abandoned,
            } => (pid, reply, abandoned, Some(stacks)),
            Command::Prepare {
                pid,
                reply,
                abandoned,
            } => (pid, reply, abandoned, None),
        };
        // Benched after this request was queued (a request before it stuck).
        let Some(strikes) = lock(&shared.strikes).current(pid, Instant::now()) else {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            reply(Err(SymbolizeError::Skipped { pid }));
            continue;
        };
        watch.begin(pid, strikes, &shared.policy, abandoned);
        let served = catch_unwind(AssertUnwindSafe(|| match &stacks {
            Some(stacks) => worker.symbolize(pid, stacks),
            None => {
                worker.prepare(pid);
                worker.symbolize(pid, &[])
            }
        }));
        watch.end();
        match served {
            Ok(symbolized) => {
                if let Some((stats, cached)) = worker.v8_stats(pid) {
                    v8_names.update(pid, stats, cached);
                }
                reply(Ok(symbolized))
            }
            Err(_) => {
                counters.panics.fetch_add(1, Ordering::Relaxed);
                log::warn!("symbolizing pid {pid} panicked: its frames are left as addresses; caches cleared");
                worker = fresh();
                v8_names.retire_all();
                reply(Ok(unnamed(pid, stacks.as_deref().unwrap_or_default())));
            }
        }
    }
}

/// Every frame as its address, for a request that could not be served.
fn unnamed(pid: u32, stacks: &[StackRequest]) -> Symbolized {
    let stacks = stacks
        .iter()
        .map(|stack| {
            let user = stack
                .user
                .iter()
                .rev()
                .map(|&addr| unknown_user_frame(None, addr));
            let kernel = stack
                .kernel
                .iter()
                .rev()
                .map(|&addr| unknown_kernel_frame(addr));
            user.chain(kernel)
                .map(|name| Frame::new(name, FrameKind::Unknown))
                .collect()
        })
        .collect();
    Symbolized {
        stacks,
        perf_map: PerfMapStatus::Unreadable {
            path: perf_map_path(pid),
            reason: "the symbolizer panicked on this request".to_owned(),
        },
    }
}

/// Past this many cached native names the cache starts over, bounding memory
/// when many processes or libraries come and go.
const NAME_CACHE_LIMIT: usize = 100_000;
/// A kernel text address, to make blazesym read /proc/kallsyms.
const KERNEL_WARM_UP_ADDR: u64 = 0xffff_ffff_8100_0000;
/// Where the unwinder stopped at a frame it could not trust.
pub(crate) const TRUNCATED_FRAME: &str = "[truncated]";

pub(super) struct Worker {
    locate_perf_map: LocatePerfMap,
    processes: HashMap<u32, ProcessState>,
    native: NativeSymbolizer,
    names: HashMap<CacheKey, String>,
    v8_binaries: V8Binaries,
    /// Kernel symbols have been read (they are read once, then shared).
    kernel_ready: bool,
    counters: Arc<WorkerCounters>,
}

/// Kept until `forget`, so stacks of a process that exited meanwhile still
/// get JS names and mappings.
struct ProcessState {
    perf_map: PerfMap,
    maps: ProcessMaps,
    /// The process's root, held from first sight: mapped files are opened
    /// inside it, also after the process has exited.
    root: Option<Root>,
    /// Start time when first seen; once /proc/PID shows another (or none),
    /// the pid is no longer this process and /proc/PID is not read again.
    start_ticks: Option<u64>,
    alive: bool,
    /// Read on the first stack that carries V8 slots.
    v8: Option<ProcessV8>,
    /// Its perf map's refusal was counted (once per process).
    refusal_counted: bool,
}

impl ProcessState {
    fn new(pid: u32, perf_map: PerfMap) -> Self {
        let start = start_ticks(pid);
        let root = Root::of_process(pid).ok();
        // Opened after the start time was read: if the pid was reused in
        // between, the start time no longer matches and we never use it.
        let alive = start.is_some() && start_ticks(pid) == start;
        Self {
            perf_map,
            maps: ProcessMaps::new(pid),
            root: root.filter(|_| alive),
            start_ticks: start,
            alive,
            v8: None,
            refusal_counted: false,
        }
    }

    /// Whether /proc/PID still is the process first seen.
    fn still_alive(&mut self, pid: u32) -> bool {
        if self.alive && start_ticks(pid) != self.start_ticks {
            self.alive = false;
        }
        self.alive
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AddrSpace {
    User(u32),
    Kernel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    space: AddrSpace,
    addr: u64,
}

/// A mapped file: its path in /proc/PID/maps and its (device, inode).
type MappedFile = (String, (u64, u64));

/// A captured address and the address to name it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Site {
    captured: u64,
    lookup: u64,
}

/// Every frame but the leaf is a return address, which points past the call;
/// when the call is a function's last instruction the return address already
/// belongs to the next function, so look one byte back.
fn sites(leaf_first: &[u64]) -> impl DoubleEndedIterator<Item = Site> + '_ {
    leaf_first
        .iter()
        .enumerate()
        .map(|(depth, &captured)| Site {
            captured,
            lookup: if depth == 0 {
                captured
            } else {
                captured.saturating_sub(1)
            },
        })
}

impl Worker {
    pub(super) fn new(locate_perf_map: LocatePerfMap, counters: Arc<WorkerCounters>) -> Self {
        Self {
            locate_perf_map,
            counters,
            processes: HashMap::new(),
            native: NativeSymbolizer::new(),
            names: HashMap::new(),
            v8_binaries: V8Binaries::default(),
            kernel_ready: false,
        }
    }

    /// Does now what the first stacks of `pid` would otherwise pay for:
    /// reading /proc/kallsyms (~120k symbols, tens of ms), the symbol
    /// tables of every executable file `pid` maps, and its V8 layout.
    fn prepare(&mut self, pid: u32) {
        if !self.kernel_ready {
            self.kernel_ready = true;
            // Any address loads the whole table; its name does not matter.
            let _ = self.native.kernel_names(&[KERNEL_WARM_UP_ADDR]);
        }
        let locate_perf_map = &self.locate_perf_map;
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessState::new(pid, locate_perf_map(pid)));
        if !process.still_alive(pid) {
            return;
        }
        process.maps.reload();
        // One address in each executable file makes blazesym parse its
        // symbol table (cached by file identity, so shared by every process
        // running the same binary).
        let firsts = process.maps.executable_file_starts();
        let _ = self.native.user_names(pid, &firsts);
        if process.v8.is_none() {
            process.v8 = Some(self.v8_binaries.process(pid));
        }
    }

    fn symbolize(&mut self, pid: u32, stacks: &[StackRequest]) -> Symbolized {
        let locate_perf_map = &self.locate_perf_map;
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessState::new(pid, locate_perf_map(pid)));
        let alive = process.still_alive(pid);
        let (perf_map, refused) = refresh_perf_map(&mut process.perf_map);
        if refused && !process.refusal_counted {
            process.refusal_counted = true;
            self.counters
                .perf_maps_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        // A refresh (no stacks) also re-reads the mappings, so they are known
        // if the process exits before its stacks are named.
        if stacks.is_empty() && alive {
            process.maps.reload();
        }

        let user_sites: HashSet<Site> = stacks.iter().flat_map(|s| sites(&s.user)).collect();
        let kernel_sites: HashSet<Site> = stacks.iter().flat_map(|s| sites(&s.kernel)).collect();
        let user = self.resolve_user(pid, user_sites);
        let kernel = self.resolve_kernel(kernel_sites);

        // Heap reads of a pid that is no longer this process would name
        // another process's functions.
        let mut v8 = None;
        if alive && stacks.iter().any(|s| !s.v8.is_empty()) {
            let Self {
                processes,
                v8_binaries,
                ..
            } = self;
            if let Some(process) = processes.get_mut(&pid) {
                let state = process.v8.get_or_insert_with(|| v8_binaries.process(pid));
                state.refresh(pid);
                v8 = Some(state);
            }
        }
        let stacks = stacks
            .iter()
            .map(|stack| {
                let user_frames = sites(&stack.user).rev().map(|site| &user[&site]);
                let kernel_frames = sites(&stack.kernel).rev().map(|site| &kernel[&site]);
                let mut frames: Vec<Frame> = user_frames.chain(kernel_frames).cloned().collect();
                if let Some(state) = v8.as_deref_mut() {
                    state.name(pid, stack, &mut frames);
                }
                frames
            })
            .collect();
        Symbolized { stacks, perf_map }
    }

    fn resolve_user(&mut self, pid: u32, sites: HashSet<Site>) -> HashMap<Site, Frame> {
        let Self {
            processes,
            native,
            names,
            ..
        } = self;
        let process = processes
            .get_mut(&pid)
            .expect("process state created by symbolize");
        let mut frames = HashMap::with_capacity(sites.len());
        let mut pending = Vec::new();
        for site in sites {
            let key = CacheKey {
                space: AddrSpace::User(pid),
                addr: site.lookup,
            };
            if site.captured == crate::unwind::TRUNCATED {
                frames.insert(site, frame(TRUNCATED_FRAME, FrameKind::Unknown));
            } else if let Some(name) = process.perf_map.lookup(site.lookup) {
                frames.insert(site, frame(name, FrameKind::Js));
            } else if let Some(name) = names.get(&key) {
                frames.insert(site, frame(name, FrameKind::Native));
            } else {
                pending.push(site);
            }
        }

        // Once the pid is no longer this process, asking blazesym about it
        // would name another process's code.
        let alive = process.still_alive(pid);
        let lookups: Vec<u64> = pending.iter().map(|site| site.lookup).collect();
        let native_names = if alive {
            native.user_names(pid, &lookups)
        } else {
            vec![None; lookups.len()]
        };
        let mut unknown = Vec::new();
        for (site, name) in pending.into_iter().zip(native_names) {
            match name {
                Some(name) => {
                    frames.insert(site, frame(&name, FrameKind::Native));
                    let key = CacheKey {
                        space: AddrSpace::User(pid),
                        addr: site.lookup,
                    };
                    remember(names, key, name);
                }
                None => unknown.push(site),
            }
        }

        // JIT code and late dlopen()s add mappings after we last looked.
        if alive
            && unknown
                .iter()
                .any(|site| process.maps.find(site.lookup).is_none())
        {
            process.maps.reload();
        }
        // A process that has exited cannot be asked for its mappings, but we
        // remember them: name file-backed addresses from the files
        // themselves, opened inside the process's root and only if they
        // still are the (device, inode) that was mapped.
        let mut by_file: HashMap<MappedFile, Vec<(Site, u64)>> = HashMap::new();
        let mut still_unknown = Vec::new();
        for site in unknown {
            match process.maps.file_offset(site.lookup) {
                Some((region, offset)) => by_file
                    .entry((region.path().to_owned(), region.identity()))
                    .or_default()
                    .push((site, offset)),
                None => still_unknown.push(site),
            }
        }
        for ((path, identity), file_sites) in by_file {
            let expect = Expect {
                identity: Some(identity),
                ..Expect::default()
            };
            let opened = match &process.root {
                Some(root) => root.open(std::path::Path::new(&path), &expect),
                None => {
                    still_unknown.extend(file_sites.into_iter().map(|(site, _)| site));
                    continue;
                }
            };
            let file = match opened {
                Ok(file) => file,
                Err(error) => {
                    log::debug!("pid {pid}: not naming frames from a mapped file: {error}");
                    still_unknown.extend(file_sites.into_iter().map(|(site, _)| site));
                    continue;
                }
            };
            let offsets: Vec<u64> = file_sites.iter().map(|&(_, offset)| offset).collect();
            for ((site, _), name) in file_sites
                .into_iter()
                .zip(native.file_names(&file, &path, &offsets))
            {
                match name {
                    Some(name) => {
                        frames.insert(site, frame(&name, FrameKind::Native));
                    }
                    None => still_unknown.push(site),
                }
            }
        }
        for site in still_unknown {
            let region = process.maps.find(site.lookup);
            let name = unknown_user_frame(region, site.captured);
            let kind = if region.is_some_and(|r| r.is_jit()) {
                FrameKind::Js
            } else {
                FrameKind::Unknown
            };
            frames.insert(site, frame(&name, kind));
        }
        frames
    }

    fn resolve_kernel(&mut self, sites: HashSet<Site>) -> HashMap<Site, Frame> {
        let mut frames = HashMap::with_capacity(sites.len());
        let mut pending = Vec::new();
        for site in sites {
            let key = CacheKey {
                space: AddrSpace::Kernel,
                addr: site.lookup,
            };
            match self.names.get(&key) {
                Some(name) => {
                    frames.insert(site, frame(name, FrameKind::Kernel));
                }
                None => pending.push(site),
            }
        }

        let lookups: Vec<u64> = pending.iter().map(|site| site.lookup).collect();
        let names = self.native.kernel_names(&lookups);
        for (site, name) in pending.into_iter().zip(names) {
            match name {
                Some(name) => {
                    frames.insert(site, frame(&name, FrameKind::Kernel));
                    let key = CacheKey {
                        space: AddrSpace::Kernel,
                        addr: site.lookup,
                    };
                    remember(&mut self.names, key, name);
                }
                None => {
                    let name = unknown_kernel_frame(site.captured);
                    frames.insert(site, frame(&name, FrameKind::Unknown));
                }
            }
        }
        frames
    }

    /// The V8 namer's counts and cache fill of `pid`, once it has one.
    fn v8_stats(&self, pid: u32) -> Option<(crate::v8::NamerStats, usize)> {
        self.processes.get(&pid)?.v8.as_ref()?.namer_stats()
    }

    fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.names
            .retain(|key, _| key.space != AddrSpace::User(pid));
        self.native.forget(pid);
    }
}

fn frame(name: &str, kind: FrameKind) -> Frame {
    Frame {
        name: name.to_owned(),
        kind,
    }
}

fn remember(names: &mut HashMap<CacheKey, String>, key: CacheKey, name: String) {
    if names.len() >= NAME_CACHE_LIMIT {
        names.clear();
    }
    names.insert(key, name);
}

/// The map's status, and whether it was refused as hostile.
fn refresh_perf_map(perf_map: &mut PerfMap) -> (PerfMapStatus, bool) {
    let path = perf_map.path().to_path_buf();
    match perf_map.refresh() {
        Ok(()) => (loaded(perf_map), false),
        // The process exited, but the symbols already read still name its stacks.
        Err(error) if perf_map.ever_read() => {
            log::debug!("keeping cached perf map: {error}");
            (loaded(perf_map), false)
        }
        Err(PerfMapError::Missing { path }) => (PerfMapStatus::Missing { path }, false),
        Err(PerfMapError::Read { error, .. }) => (
            PerfMapStatus::Unreadable {
                path,
                reason: error.to_string(),
            },
            false,
        ),
        Err(PerfMapError::Refused { error, .. }) => (
            PerfMapStatus::Unreadable {
                path,
                reason: format!("refused: {error}"),
            },
            true,
        ),
    }
}

fn loaded(perf_map: &PerfMap) -> PerfMapStatus {
    PerfMapStatus::Loaded {
        path: perf_map.path().to_path_buf(),
        entries: perf_map.len(),
        bad_lines: perf_map.bad_lines(),
        dropped_lines: perf_map.dropped_lines(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leaf_is_looked_up_as_is() {
        let looked_up: Vec<(u64, u64)> = sites(&[0x100, 0x200, 0x300])
            .map(|site| (site.captured, site.lookup))
            .collect();
        assert_eq!(looked_up, [(0x100, 0x100), (0x200, 0x1ff), (0x300, 0x2ff)]);
        assert_eq!(sites(&[0, 0]).nth(1).unwrap().lookup, 0);
    }
}
