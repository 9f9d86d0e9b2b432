//! `/proc/PID/maps`, read only to say where an address nobody could name lives.

use std::io::Read;

use super::perf_map::sanitize_frame_name;

/// /proc/PID/maps is at most max_map_count (65,530 by default) lines of
/// about 100 bytes; a process with more mappings than this is named from
/// the first ones only.
const MAX_MAPS_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Region {
    start: u64,
    end: u64,
    offset: u64,
    /// The mapped file's device and inode: a file opened by `path` must be
    /// this one, not whatever was put at that path since.
    dev: u64,
    inode: u64,
    /// Empty for anonymous memory (where V8's JIT code lives).
    path: String,
    executable: bool,
}

impl Region {
    /// Anonymous executable memory in a Node process is V8's JIT code:
    /// JavaScript, even when nothing names it.
    pub(super) fn is_jit(&self) -> bool {
        self.executable && self.path.is_empty()
    }
}

impl Region {
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    pub(super) fn identity(&self) -> (u64, u64) {
        (self.dev, self.inode)
    }
}

/// The last mappings we could read, kept after the process exits.
pub(super) struct ProcessMaps {
    pid: u32,
    regions: Vec<Region>,
}

impl ProcessMaps {
    pub(super) fn new(pid: u32) -> Self {
        Self {
            pid,
            regions: Vec::new(),
        }
    }

    /// The mapping and file offset behind `addr`, if it is file-backed:
    /// enough to name it from the file itself once the process is gone.
    pub(super) fn file_offset(&self, addr: u64) -> Option<(&Region, u64)> {
        let r = self.find(addr)?;
        r.path
            .starts_with('/')
            .then(|| (r, addr - r.start + r.offset))
    }

    pub(super) fn find(&self, addr: u64) -> Option<&Region> {
        let index = self.regions.partition_point(|region| region.start <= addr);
        let region = self.regions.get(index.checked_sub(1)?)?;
        (addr < region.end).then_some(region)
    }

    /// The first address of each executable file mapping, one per file.
    pub(super) fn executable_file_starts(&self) -> Vec<u64> {
        let mut seen = std::collections::HashSet::new();
        self.regions
            .iter()
            .filter(|r| r.executable && r.path.starts_with('/') && seen.insert(r.identity()))
            .map(|r| r.start)
            .collect()
    }

    /// Keeps the previous mappings if the process is gone.
    pub(super) fn reload(&mut self) {
        let mut text = Vec::new();
        let read = std::fs::File::open(format!("/proc/{}/maps", self.pid))
            .and_then(|file| file.take(MAX_MAPS_BYTES).read_to_end(&mut text));
        match read {
            // Paths are bytes; a lossy one is only shown, never opened
            // (it would not match the file's identity).
            Ok(_) => self.regions = parse_maps(&String::from_utf8_lossy(&text)),
            Err(error) => log::debug!("failed to read /proc/{}/maps: {error}", self.pid),
        }
    }
}

fn parse_maps(text: &str) -> Vec<Region> {
    let mut regions: Vec<Region> = text.lines().filter_map(parse_maps_line).collect();
    regions.sort_by_key(|region| region.start);
    regions
}

/// `start-end perms offset dev inode   path`, the path possibly with spaces.
fn parse_maps_line(line: &str) -> Option<Region> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(Region {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: libc::makedev(
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path: path.to_owned(),
        executable: perms.as_bytes().get(2) == Some(&b'x'),
    })
}

/// A file-backed address is shown as `file+offset` (what addr2line takes);
/// anything else by its absolute address.
pub(super) fn unknown_user_frame(region: Option<&Region>, addr: u64) -> String {
    let Some(region) = region else {
        return format!("[unknown] {addr:#x}");
    };
    let name = if region.path.is_empty() {
        format!("[unknown] [anon] {addr:#x}")
    } else if region.path.starts_with('/') {
        let file_offset = addr - region.start + region.offset;
        format!("[unknown] {}+{file_offset:#x}", region.path)
    } else {
        format!("[unknown] {} {addr:#x}", region.path)
    };
    sanitize_frame_name(&name)
}

pub(super) fn unknown_kernel_frame(addr: u64) -> String {
    format!("[unknown] [kernel] {addr:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/node
7f1200000000-7f1200040000 rwxp 00000000 00:00 0 
7f1200040000-7f1200050000 rw-p 00000000 00:00 0 
7f12a0000000-7f12a0100000 r-xp 00028000 08:01 456                        /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f12b0000000-7f12b0001000 r-xp 00000000 08:01 789 /tmp/odd;name (deleted)
";

    fn maps() -> ProcessMaps {
        ProcessMaps {
            pid: 0,
            regions: parse_maps(MAPS),
        }
    }

    #[test]
    fn names_unknown_addresses_by_mapping() {
        let maps = maps();
        let frame = |addr| unknown_user_frame(maps.find(addr), addr);
        assert_eq!(
            frame(0x7f12a0001a2b),
            "[unknown] /usr/lib/x86_64-linux-gnu/libc.so.6+0x29a2b"
        );
        assert_eq!(frame(0x7f1200000010), "[unknown] [anon] 0x7f1200000010");
        assert!(maps.find(0x7f1200000010).unwrap().is_jit());
        assert!(!maps.find(0x7f1200040010).unwrap().is_jit());
        assert!(!maps.find(0x7f12a0001a2b).unwrap().is_jit());
        assert_eq!(frame(0x7ffd00000008), "[unknown] [stack] 0x7ffd00000008");
        assert_eq!(
            frame(0x7f12b0000004),
            "[unknown] /tmp/odd:name (deleted)+0x4"
        );
        assert_eq!(frame(0x10), "[unknown] 0x10");
        assert_eq!(frame(0x7f1200050000), "[unknown] 0x7f1200050000");
        assert_eq!(
            unknown_kernel_frame(0xffffffff81000000),
            "[unknown] [kernel] 0xffffffff81000000"
        );
    }

    #[test]
    fn reads_own_maps() {
        let mut maps = ProcessMaps::new(std::process::id());
        let here = reads_own_maps as *const () as usize as u64;
        assert!(maps.find(here).is_none());
        maps.reload();
        let region = maps.find(here).expect("test code is mapped");
        assert!(region.path.starts_with('/'), "{region:?}");
        let meta = std::fs::metadata(&region.path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(region.identity(), (meta.dev(), meta.ino()));
    }
}
