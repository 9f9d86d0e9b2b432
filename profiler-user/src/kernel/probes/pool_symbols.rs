//! libuv's symbols in a node binary, resolved to file offsets once per binary
//! file: a node binary's symbol table has hundreds of thousands of entries,
//! and the daemon attaches to every Node process that starts.
use std::{collections::HashMap, fs::File, os::unix::fs::MetadataExt, path::Path, sync::Arc};

use object::{Object, ObjectSection, ObjectSymbol};

/// Symbol name → offset in the file, for the names asked for that exist.
pub type Offsets = HashMap<&'static str, u64>;

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("opening {path} failed: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file loopbpf can read: {source}")]
    Parse {
        path: String,
        #[source]
        source: object::Error,
    },
}

/// What identifies one version of a binary file: an upgrade that writes a
/// new node over the old one in place keeps its (device, inode) but not its
/// size and modification time, and stale offsets would put breakpoints in the
/// middle of instructions of a live process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileVersion {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileVersion {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Offsets per binary version: every process of one binary, in a container
/// or not, shares one entry.
#[derive(Default)]
pub struct SymbolCache {
    by_file: HashMap<FileVersion, Arc<Offsets>>,
}

impl SymbolCache {
    pub fn offsets(
        &mut self,
        exe: &Path,
        names: &[&'static str],
    ) -> Result<Arc<Offsets>, SymbolError> {
        // Keyed and parsed from one open file, so what is cached is what
        // was read even if the path changes meanwhile.
        let open_error = |source| SymbolError::Open {
            path: exe.display().to_string(),
            source,
        };
        let file = File::open(exe).map_err(open_error)?;
        let key = FileVersion::of(&file.metadata().map_err(open_error)?);
        if let Some(o) = self.by_file.get(&key) {
            return Ok(o.clone());
        }
        let offsets = Arc::new(resolve_file(file, exe, names)?);
        self.by_file.insert(key, offsets.clone());
        Ok(offsets)
    }
}

/// File offsets of `names` in the ELF file at `path` (symbol table, then
/// dynamic symbols), as uprobes want them.
pub fn resolve(path: &Path, names: &[&'static str]) -> Result<Offsets, SymbolError> {
    let file = File::open(path).map_err(|source| SymbolError::Open {
        path: path.display().to_string(),
        source,
    })?;
    resolve_file(file, path, names)
}

fn resolve_file(file: File, path: &Path, names: &[&'static str]) -> Result<Offsets, SymbolError> {
    // Reads only the parts parsed (headers, symbol and string tables).
    let data = object::read::ReadCache::new(file);
    let obj = object::File::parse(&data).map_err(|source| SymbolError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Offsets::new();
    for sym in obj.symbols().chain(obj.dynamic_symbols()) {
        if out.len() == names.len() {
            break;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(&wanted) = names.iter().find(|&&n| n == name) else {
            continue;
        };
        if out.contains_key(wanted) || sym.address() == 0 {
            continue;
        }
        let Some(section) = sym
            .section_index()
            .and_then(|i| obj.section_by_index(i).ok())
        else {
            continue;
        };
        if let Some((offset, _)) = section.file_range() {
            out.insert(wanted, sym.address() - section.address() + offset);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exported_functions_in_the_c_library_and_skips_unknown_names() {
        // Any ELF with a dynamic symbol table will do: this test binary links libc.
        let exe = std::env::current_exe().unwrap();
        let libc_path = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .map(str::to_string);
        let path = libc_path.map(std::path::PathBuf::from).unwrap_or(exe);
        let found = resolve(&path, &["malloc", "no_such_symbol_here"]).unwrap();
        assert!(
            found.contains_key("malloc"),
            "{found:?} in {}",
            path.display()
        );
        assert!(!found.contains_key("no_such_symbol_here"));
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    /// A binary rewritten in place (same inode) must be parsed again.
    #[test]
    fn a_binary_rewritten_in_place_is_parsed_again() {
        let libc_path = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .map(std::path::PathBuf::from)
            .expect("this test binary maps libc");
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("node");
        std::fs::copy(&libc_path, &exe).unwrap();
        let mut cache = SymbolCache::default();
        let first = cache.offsets(&exe, &["malloc"]).unwrap();
        let ino = std::fs::metadata(&exe).unwrap().ino();

        // Overwrite in place (O_TRUNC keeps the inode) with a different build:
        // here, the same library padded at the end, which changes size and mtime.
        let mut grown = std::fs::read(&libc_path).unwrap();
        grown.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&exe, &grown).unwrap();
        assert_eq!(std::fs::metadata(&exe).unwrap().ino(), ino);
        let second = cache.offsets(&exe, &["malloc"]).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "served the old version's offsets"
        );
        assert_eq!(first.get("malloc"), second.get("malloc"));
        assert_eq!(cache.by_file.len(), 2);
    }
}
