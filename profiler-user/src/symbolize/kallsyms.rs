//! Kernel function names from `/proc/kallsyms`, held compactly: the
//! addresses sorted in one array, the names in one string.
//!
//! blazesym keeps each of the ~122k symbols as its own boxed string beside
//! an enum per symbol (~10 MiB of heap on this kernel, and more while its
//! vector grows); here it is 12 bytes per symbol plus the names (~4.5 MiB).
//! `/proc/kallsyms` is the kernel's own file, not a watched process's.

use std::io::{BufRead, BufReader, Read};

/// Longest name kept (the kernel's KSYM_NAME_LEN is 512).
const MAX_NAME: usize = 512;
/// Most symbols read: a kernel with many modules has a few hundred thousand.
const MAX_SYMBOLS: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("failed to read /proc/kallsyms: {0}")]
    Read(#[from] std::io::Error),
    #[error("/proc/kallsyms shows no addresses (kptr_restrict, or not root)")]
    Hidden,
}

#[derive(Debug, Default)]
pub struct Kallsyms {
    /// Sorted by address.
    addrs: Vec<u64>,
    /// `(start, len)` of each symbol's name in `names`, in `addrs` order.
    spans: Vec<(u32, u16)>,
    names: String,
}

impl Kallsyms {
    pub fn load() -> Result<Self, KallsymsError> {
        let file = std::fs::File::open("/proc/kallsyms")?;
        Self::parse(file)
    }

    /// `address type name [module]` lines; text symbols only (the only ones
    /// a stack holds), zero addresses (hidden) skipped.
    pub fn parse(reader: impl Read) -> Result<Self, KallsymsError> {
        let mut entries: Vec<(u64, u32, u16)> = Vec::new();
        let mut names = String::new();
        let mut hidden = 0usize;
        for line in BufReader::with_capacity(64 << 10, reader).split(b'\n') {
            let line = line?;
            let mut fields = line
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty());
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(kind, [b't' | b'T' | b'w' | b'W']) {
                continue;
            }
            let Some(addr) = std::str::from_utf8(addr)
                .ok()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
            else {
                continue;
            };
            if addr == 0 {
                hidden += 1;
                continue;
            }
            let Ok(name) = std::str::from_utf8(&name[..name.len().min(MAX_NAME)]) else {
                continue;
            };
            let Ok(start) = u32::try_from(names.len()) else {
                break;
            };
            if entries.len() >= MAX_SYMBOLS {
                break;
            }
            names.push_str(name);
            entries.push((addr, start, name.len() as u16));
        }
        if entries.is_empty() && hidden > 0 {
            return Err(KallsymsError::Hidden);
        }
        entries.sort_unstable_by_key(|e| e.0);
        names.shrink_to_fit();
        Ok(Kallsyms {
            addrs: entries.iter().map(|e| e.0).collect(),
            spans: entries.iter().map(|e| (e.1, e.2)).collect(),
            names,
        })
    }

    /// The function `addr` is in: the last symbol at or below it. Like
    /// blazesym (kallsyms has no sizes), an address past the last function
    /// of the text still gets that function's name.
    pub fn name(&self, addr: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let (start, len) = self.spans[i];
        self.names
            .get(start as usize..start as usize + len as usize)
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_the_symbol_at_or_below() {
        let text = "\
ffffffff81000000 T _stext
ffffffff81000100 t helper
ffffffff81000080 T startup_64
ffffffff82000000 D some_data
ffffffffc0000000 t mod_fn\t[some_module]
0000000000000000 A hidden
";
        let k = Kallsyms::parse(text.as_bytes()).unwrap();
        assert_eq!(k.len(), 4);
        assert_eq!(k.name(0xffffffff81000000), Some("_stext"));
        assert_eq!(k.name(0xffffffff81000090), Some("startup_64"));
        assert_eq!(k.name(0xffffffff81000150), Some("helper"));
        assert_eq!(k.name(0xffffffffc0000010), Some("mod_fn"));
        assert_eq!(k.name(0xffffffff80000000), None);
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let text = "0000000000000000 T _stext\n0000000000000000 t helper\n";
        assert!(matches!(
            Kallsyms::parse(text.as_bytes()),
            Err(KallsymsError::Hidden)
        ));
    }

    #[test]
    fn reads_this_kernel() {
        // As root (CI, the kernel tests) the addresses are visible.
        match Kallsyms::load() {
            Ok(k) => {
                assert!(k.len() > 1000, "{} symbols", k.len());
                let some = k.addrs[k.len() / 2];
                assert!(k.name(some).is_some_and(|n| !n.is_empty()));
            }
            Err(KallsymsError::Hidden) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
