//! The symbolizer thread: owns blazesym, every perf map and all caches.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::Receiver;

use super::maps::{unknown_kernel_frame, unknown_user_frame, ProcessMaps};
use super::native::NativeSymbolizer;
use super::perf_map::{PerfMap, PerfMapError};
use super::{Command, Frame, FrameKind, LocatePerfMap, PerfMapStatus, StackRequest, Symbolized};

/// Past this many cached native names the cache starts over, bounding memory
/// when many processes or libraries come and go.
const NAME_CACHE_LIMIT: usize = 100_000;
/// Where the unwinder stopped at a frame it could not trust.
pub(crate) const TRUNCATED_FRAME: &str = "[truncated]";

pub(super) struct Worker {
    locate_perf_map: LocatePerfMap,
    processes: HashMap<u32, ProcessState>,
    native: NativeSymbolizer,
    names: HashMap<CacheKey, String>,
}

/// Kept until `forget`, so stacks of a process that exited meanwhile still
/// get JS names and mappings.
struct ProcessState {
    perf_map: PerfMap,
    maps: ProcessMaps,
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
    pub(super) fn new(locate_perf_map: LocatePerfMap) -> Self {
        Self {
            locate_perf_map,
            processes: HashMap::new(),
            native: NativeSymbolizer::new(),
            names: HashMap::new(),
        }
    }

    pub(super) fn run(mut self, commands: Receiver<Command>) {
        for command in commands {
            match command {
                Command::Symbolize { pid, stacks, reply } => reply(self.symbolize(pid, &stacks)),
                Command::Forget { pid } => self.forget(pid),
            }
        }
    }

    fn symbolize(&mut self, pid: u32, stacks: &[StackRequest]) -> Symbolized {
        let locate_perf_map = &self.locate_perf_map;
        let process = self.processes.entry(pid).or_insert_with(|| ProcessState {
            perf_map: PerfMap::new(locate_perf_map(pid)),
            maps: ProcessMaps::new(pid),
        });
        let perf_map = refresh_perf_map(&mut process.perf_map);
        // A refresh (no stacks) also re-reads the mappings, so they are known
        // if the process exits before its stacks are named.
        if stacks.is_empty() {
            process.maps.reload();
        }

        let user_sites: HashSet<Site> = stacks.iter().flat_map(|s| sites(&s.user)).collect();
        let kernel_sites: HashSet<Site> = stacks.iter().flat_map(|s| sites(&s.kernel)).collect();
        let user = self.resolve_user(pid, user_sites);
        let kernel = self.resolve_kernel(kernel_sites);

        let stacks = stacks
            .iter()
            .map(|stack| {
                let user_frames = sites(&stack.user).rev().map(|site| &user[&site]);
                let kernel_frames = sites(&stack.kernel).rev().map(|site| &kernel[&site]);
                user_frames.chain(kernel_frames).cloned().collect()
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

        let lookups: Vec<u64> = pending.iter().map(|site| site.lookup).collect();
        let mut unknown = Vec::new();
        for (site, name) in pending.into_iter().zip(native.user_names(pid, &lookups)) {
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
        if unknown
            .iter()
            .any(|site| process.maps.find(site.lookup).is_none())
        {
            process.maps.reload();
        }
        // A process that has exited cannot be asked for its mappings, but we
        // remember them: name file-backed addresses from the files themselves.
        let mut by_file: HashMap<String, Vec<Site>> = HashMap::new();
        let mut still_unknown = Vec::new();
        for site in unknown {
            match process.maps.file_offset(site.lookup) {
                Some((path, _)) => by_file.entry(path.to_string()).or_default().push(site),
                None => still_unknown.push(site),
            }
        }
        for (path, file_sites) in by_file {
            let offsets: Vec<u64> = file_sites
                .iter()
                .filter_map(|s| process.maps.file_offset(s.lookup).map(|(_, o)| o))
                .collect();
            for (site, name) in file_sites
                .into_iter()
                .zip(native.file_names(&path, &offsets))
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
            let name = unknown_user_frame(process.maps.find(site.lookup), site.captured);
            frames.insert(site, frame(&name, FrameKind::Unknown));
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

fn refresh_perf_map(perf_map: &mut PerfMap) -> PerfMapStatus {
    let path = perf_map.path().to_path_buf();
    match perf_map.refresh() {
        Ok(()) => loaded(perf_map),
        // The process exited, but the symbols already read still name its stacks.
        Err(error) if perf_map.ever_read() => {
            log::debug!("keeping cached perf map: {error}");
            loaded(perf_map)
        }
        Err(PerfMapError::Missing { path }) => PerfMapStatus::Missing { path },
        Err(PerfMapError::Read { error, .. }) => PerfMapStatus::Unreadable {
            path,
            reason: error.to_string(),
        },
    }
}

fn loaded(perf_map: &PerfMap) -> PerfMapStatus {
    PerfMapStatus::Loaded {
        path: perf_map.path().to_path_buf(),
        entries: perf_map.len(),
        bad_lines: perf_map.bad_lines(),
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
