//! Unwind tables of the files a process has mapped executable, read from the
//! files themselves and cached per file (device, inode, size, mtime).
//!
//! Every path and byte here comes from the watched process: its maps line
//! names the file, which is opened through `/proc/PID/root` with
//! `O_NOFOLLOW | O_NONBLOCK`, must be a regular file with the device and
//! inode the mapping has, and only bounded sections are read (with `pread`,
//! never mmap: a file truncated under us must not SIGBUS the agent).
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSegment};

use super::cfa_deref::{self, ExprFde};

const PAGE: u64 = 4096;
/// Largest unwind section read (node's `.eh_frame` is a few MiB).
const MAX_SECTION_BYTES: u64 = 64 << 20;
/// Largest file parsed at all.
const MAX_FILE_BYTES: u64 = 4 << 30;
/// Files whose tables are cached; past this the cache starts over.
const MAX_CACHED_FILES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("failed to open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is not the file the process mapped (device or inode differ)")]
    Replaced { path: String },
    #[error("{path} is too large ({size} bytes)")]
    TooLarge { path: String, size: u64 },
    #[error("failed to parse {path} as ELF: {reason}")]
    Parse { path: String, reason: String },
    #[error("failed to read {section} of {path}: {source}")]
    Read {
        path: String,
        section: &'static str,
        source: std::io::Error,
    },
}

/// One executable mapping of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecMapping {
    pub range: Range<u64>,
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Empty for anonymous memory (JIT code); `[vdso]` and the like as written.
    pub path: String,
}

/// Executable mappings of `maps`, sorted by start.
pub fn parse_exec_mappings(maps: &str) -> Vec<ExecMapping> {
    let mut out: Vec<ExecMapping> = maps.lines().filter_map(parse_line).collect();
    out.sort_by_key(|m| m.range.start);
    out
}

/// `start-end perms offset major:minor inode   path`, the path possibly with spaces.
fn parse_line(line: &str) -> Option<ExecMapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(ExecMapping {
        range: u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?,
        offset,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode,
        path: path.to_owned(),
    })
}

/// Identity of a file's contents as far as the cache is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    inode: u64,
    size: u64,
    mtime: i64,
}

/// What framehop needs of one ELF file, in stated (file) addresses.
#[derive(Clone, Debug)]
pub struct Tables {
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
    pub eh_frame_svma: Option<Range<u64>>,
    pub eh_frame: Option<Arc<[u8]>>,
    pub eh_frame_hdr_svma: Option<Range<u64>>,
    pub eh_frame_hdr: Option<Arc<[u8]>>,
    pub debug_frame: Option<Arc<[u8]>>,
    /// `(file offset range, vaddr)` of each executable PT_LOAD segment, to
    /// find the load bias of a mapping.
    pub segments: Vec<(Range<u64>, u64)>,
    /// FDEs framehop cannot follow, unwound by [`cfa_deref`] instead.
    pub cfa_exprs: Vec<ExprFde>,
    /// The section those FDEs are in (`.eh_frame` when the file has one).
    pub cfa_section: cfa_deref::Section,
    /// The file they were read from (set by [`TableCache`]).
    key: Option<FileKey>,
}

impl Tables {
    /// Process address minus stated address for `m`, from the executable
    /// segment it maps. The kernel maps whole pages: the mapping starts at the
    /// segment's file offset and address rounded down to a page, and an
    /// executable mapping's first page may also hold the end of the
    /// read-only segment before it, so only executable segments count.
    pub fn load_bias(&self, m: &ExecMapping) -> Option<u64> {
        let (file_range, vaddr) = self.segments.iter().find(|(r, _)| {
            r.start & !(PAGE - 1) <= m.offset && m.offset < r.end.max(r.start + 1)
        })?;
        let page_vaddr =
            (vaddr & !(PAGE - 1)).checked_add(m.offset - (file_range.start & !(PAGE - 1)))?;
        m.range.start.checked_sub(page_vaddr)
    }

    pub fn has_tables(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// The bytes of the section [`Self::cfa_exprs`] point into.
    pub fn cfa_data(&self) -> &[u8] {
        let section = match self.cfa_section {
            cfa_deref::Section::EhFrame => &self.eh_frame,
            cfa_deref::Section::DebugFrame => &self.debug_frame,
        };
        section.as_deref().unwrap_or_default()
    }

    pub fn bases(&self) -> cfa_deref::Bases {
        let start = |r: &Option<Range<u64>>| r.as_ref().map_or(0, |r| r.start);
        cfa_deref::Bases {
            eh_frame: start(&self.eh_frame_svma),
            text: start(&self.text_svma),
            got: start(&self.got_svma),
        }
    }
}

/// Tables per file, shared by every process that maps it. A clone shares
/// the tables (not the map): what a clone reads is added back with
/// [`Self::adopt`].
#[derive(Clone, Default)]
pub struct TableCache {
    files: HashMap<FileKey, Arc<Tables>>,
}

impl TableCache {
    /// The tables of the file behind `m` in process `pid`.
    pub fn tables(&mut self, pid: u32, m: &ExecMapping) -> Result<Arc<Tables>, ModuleError> {
        let (file, key) = open_mapped_file(pid, m)?;
        if let Some(t) = self.files.get(&key) {
            return Ok(t.clone());
        }
        let mut tables = read_tables(&file, &m.path)?;
        tables.key = Some(key);
        let tables = Arc::new(tables);
        if self.files.len() >= MAX_CACHED_FILES {
            self.files.clear();
        }
        self.files.insert(key, tables.clone());
        Ok(tables)
    }

    /// Caches `tables` (read through a clone of this cache), keeping an
    /// entry already there.
    pub fn adopt(&mut self, tables: &[Arc<Tables>]) {
        for t in tables {
            if let Some(key) = t.key {
                if self.files.len() >= MAX_CACHED_FILES && !self.files.contains_key(&key) {
                    self.files.clear();
                }
                self.files.entry(key).or_insert_with(|| t.clone());
            }
        }
    }

    /// Drops the tables no process holds any more (the cache's own
    /// reference is the only one left).
    pub fn drop_unused(&mut self) {
        self.files.retain(|_, t| Arc::strong_count(t) > 1);
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Opens the file `m` maps, as the process sees it, refusing anything but
/// the very regular file the mapping names.
fn open_mapped_file(pid: u32, m: &ExecMapping) -> Result<(File, FileKey), ModuleError> {
    let path = format!("/proc/{pid}/root{}", m.path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|source| ModuleError::Open {
            path: m.path.clone(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| ModuleError::Open {
        path: m.path.clone(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(ModuleError::NotRegular {
            path: m.path.clone(),
        });
    }
    let dev = libc::makedev(m.dev.0, m.dev.1);
    if meta.ino() != m.inode || meta.dev() != dev {
        return Err(ModuleError::Replaced {
            path: m.path.clone(),
        });
    }
    if meta.size() > MAX_FILE_BYTES {
        return Err(ModuleError::TooLarge {
            path: m.path.clone(),
            size: meta.size(),
        });
    }
    let key = FileKey {
        dev: meta.dev(),
        inode: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
    };
    Ok((file, key))
}

pub(super) fn read_tables(file: &File, path: &str) -> Result<Tables, ModuleError> {
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).map_err(|e| ModuleError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let range = |name: &str| {
        elf.section_by_name(name)
            .map(|s| s.address()..s.address().saturating_add(s.size()))
    };
    let read = |name: &'static str| -> Result<Option<Arc<[u8]>>, ModuleError> {
        let Some((offset, size)) = elf.section_by_name(name).and_then(|s| s.file_range()) else {
            return Ok(None);
        };
        if size == 0 || size > MAX_SECTION_BYTES {
            return Ok(None);
        }
        let mut bytes = vec![0; size as usize];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|source| ModuleError::Read {
                path: path.to_owned(),
                section: name,
                source,
            })?;
        Ok(Some(bytes.into()))
    };
    let segments = elf
        .segments()
        .filter(|s| {
            matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
        })
        .filter_map(|s| {
            let (offset, size) = s.file_range();
            Some((offset..offset.checked_add(size)?, s.address()))
        })
        .collect();
    let eh_frame = read(".eh_frame")?;
    // framehop prefers .eh_frame; .debug_frame is read only without it.
    let debug_frame = match eh_frame {
        Some(_) => None,
        None => read(".debug_frame")?,
    };
    let mut tables = Tables {
        text_svma: range(".text"),
        got_svma: range(".got"),
        eh_frame_svma: range(".eh_frame"),
        eh_frame,
        eh_frame_hdr_svma: range(".eh_frame_hdr"),
        eh_frame_hdr: read(".eh_frame_hdr")?,
        debug_frame,
        segments,
        cfa_exprs: Vec::new(),
        cfa_section: cfa_deref::Section::EhFrame,
        key: None,
    };
    if tables.eh_frame.is_none() {
        tables.cfa_section = cfa_deref::Section::DebugFrame;
    }
    tables.cfa_exprs = cfa_deref::scan(tables.cfa_data(), tables.cfa_section, &tables.bases());
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_executable_mappings() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 1234   /usr/bin/node
55d0c0001000-55d0c0400000 r-xp 00001000 fd:01 1234   /usr/bin/node
7f0000000000-7f0000100000 rwxp 00000000 00:00 0 \n\
7f1000000000-7f1000001000 r-xp 00000000 08:02 99   /tmp/a b.node
garbage line";
        let m = parse_exec_mappings(maps);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].range, 0x55d0c0001000..0x55d0c0400000);
        assert_eq!(
            (m[0].offset, m[0].dev, m[0].inode),
            (0x1000, (0xfd, 1), 1234)
        );
        assert_eq!(m[1].path, "");
        assert_eq!(m[2].path, "/tmp/a b.node");
    }

    #[test]
    fn reads_own_executable_tables() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let m = parse_exec_mappings(&maps)
            .into_iter()
            .find(|m| std::path::Path::new(&m.path) == exe)
            .expect("own executable mapped");
        let mut cache = TableCache::default();
        let t = cache.tables(std::process::id(), &m).unwrap();
        assert!(t.has_tables());
        let bias = t.load_bias(&m).unwrap();
        // This very function lies in the mapping, at its stated address + bias.
        let here = reads_own_executable_tables as *const () as u64;
        assert!(m.range.contains(&here));
        assert!(t.text_svma.clone().unwrap().contains(&(here - bias)));
        // Cached by file identity.
        let again = cache.tables(std::process::id(), &m).unwrap();
        assert!(Arc::ptr_eq(&t, &again));
    }

    #[test]
    fn refuses_a_replaced_file() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut m = parse_exec_mappings(&maps)
            .into_iter()
            .find(|m| m.path.starts_with('/'))
            .unwrap();
        m.inode += 1;
        assert!(matches!(
            TableCache::default().tables(std::process::id(), &m),
            Err(ModuleError::Replaced { .. })
        ));
    }
}
