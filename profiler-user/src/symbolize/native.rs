//! Names for compiled code (node itself, shared libraries, the kernel) from
//! blazesym. Not `Send`: lives on the symbolizer thread.

use blazesym::symbolize::evict::{Evict, Process as EvictProcess};
use blazesym::symbolize::source::{Elf, Process, Source};
use blazesym::symbolize::{Input, Reason, Symbolized};

use super::kallsyms::Kallsyms;
use super::perf_map::sanitize_frame_name;

pub(super) struct NativeSymbolizer {
    blazesym: blazesym::symbolize::Symbolizer,
    /// Read on the first kernel address.
    kallsyms: Option<Kallsyms>,
}

impl NativeSymbolizer {
    pub(super) fn new() -> Self {
        // Frames carry names only, so skip line and inline information.
        let blazesym = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(false)
            .enable_inlined_fns(false)
            .enable_demangling(true)
            .build();
        Self {
            blazesym,
            kallsyms: None,
        }
    }

    /// One entry per address; `None` where no symbol covers it.
    pub(super) fn user_names(&self, pid: u32, addrs: &[u64]) -> Vec<Option<String>> {
        if addrs.is_empty() {
            return Vec::new();
        }
        // Only through /proc/PID/map_files, which are the very files mapped:
        // blazesym would open the paths in /proc/PID/maps by name, in our
        // root and blocking, which a process can point at a FIFO or, from a
        // container, at a host file. Addresses this cannot name (map_files
        // needs CAP_SYS_ADMIN) are named by the caller from files it opens
        // safely (see `file_names`).
        self.process_names(pid, addrs)
            .into_iter()
            .map(Lookup::into_name)
            .collect()
    }

    pub(super) fn kernel_names(&mut self, addrs: &[u64]) -> Vec<Option<String>> {
        if addrs.is_empty() {
            return Vec::new();
        }
        // kallsyms has every function name (a vmlinux's DWARF would cost
        // seconds for nothing more); read once, kept compact.
        let kallsyms = self.kallsyms.get_or_insert_with(|| match Kallsyms::load() {
            Ok(k) => {
                log::debug!("{} kernel functions read from /proc/kallsyms", k.len());
                k
            }
            Err(e) => {
                log::warn!("kernel frames will be unnamed: {e}");
                Kallsyms::default()
            }
        });
        addrs
            .iter()
            .map(|&a| {
                kallsyms
                    .name(a)
                    .map(sanitize_frame_name)
                    .filter(|n| !n.is_empty())
            })
            .collect()
    }

    /// Names by file offset in `file`, already opened and checked by the
    /// caller: for a process that has exited, whose mappings we remember,
    /// or one whose map_files we cannot read. blazesym opens by path, so it
    /// gets our descriptor's /proc/self/fd link, which reopens that same
    /// file (no name lookup an attacker could race).
    pub(super) fn file_names(
        &self,
        file: &std::fs::File,
        path: &str,
        offsets: &[u64],
    ) -> Vec<Option<String>> {
        use std::os::fd::AsRawFd;
        let mut elf = Elf::new(format!("/proc/self/fd/{}", file.as_raw_fd()));
        elf.debug_syms = false;
        match self
            .blazesym
            .symbolize(&Source::Elf(elf), Input::FileOffset(offsets))
        {
            Ok(symbolized) => symbolized
                .into_iter()
                .map(|s| Lookup::from(s).into_name())
                .collect(),
            Err(error) => {
                log::debug!(
                    "failed to symbolize {} offsets in {path}: {error}",
                    offsets.len()
                );
                vec![None; offsets.len()]
            }
        }
    }

    pub(super) fn forget(&mut self, pid: u32) {
        let evict = Evict::Process(EvictProcess::new(pid.into()));
        if let Err(error) = self.blazesym.evict(&evict) {
            log::debug!("failed to evict blazesym caches of pid {pid}: {error}");
        }
    }

    fn process_names(&self, pid: u32, addrs: &[u64]) -> Vec<Lookup> {
        let mut process = Process::new(pid.into());
        // Our own incremental PerfMap answers JIT addresses before we get here.
        process.perf_map = false;
        // ELF symbol tables name functions; DWARF of a large node binary is
        // slow to parse and would only add line numbers we do not report.
        process.debug_syms = false;
        process.map_files = true;
        self.names(&Source::Process(process), addrs)
    }

    fn names(&self, source: &Source, addrs: &[u64]) -> Vec<Lookup> {
        match self.blazesym.symbolize(source, Input::AbsAddr(addrs)) {
            Ok(symbolized) => symbolized.into_iter().map(Lookup::from).collect(),
            Err(error) => {
                // Typically the process has exited; the caller names these
                // addresses from what it remembers.
                log::debug!(
                    "failed to symbolize {} addresses from {source:?}: {error}",
                    addrs.len()
                );
                vec![Lookup::Failed; addrs.len()]
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Lookup {
    Named(String),
    NotFound,
    /// An error rather than a clean miss, so worth another attempt.
    Failed,
}

impl Lookup {
    fn into_name(self) -> Option<String> {
        match self {
            Lookup::Named(name) => Some(name),
            Lookup::NotFound | Lookup::Failed => None,
        }
    }
}

impl From<Symbolized<'_>> for Lookup {
    fn from(symbolized: Symbolized<'_>) -> Self {
        match symbolized {
            Symbolized::Sym(sym) => {
                let name = sanitize_frame_name(&sym.name);
                if name.is_empty() {
                    Lookup::NotFound
                } else {
                    Lookup::Named(name)
                }
            }
            Symbolized::Unknown(Reason::IgnoredError) => Lookup::Failed,
            Symbolized::Unknown(_) => Lookup::NotFound,
        }
    }
}
