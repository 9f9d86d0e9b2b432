//! Byte offsets of kernel struct members, read from the kernel's own BTF.
//!
//! The eBPF side reads `task_struct.pid`/`tgid` of tasks other than the
//! current one (the thread being switched in or woken). Rust eBPF has no CO-RE
//! relocations, so the offsets are looked up here, at load time, for the
//! running kernel. (aya parses BTF but keeps struct members private; the one
//! BTF crate that exposes them is LGPL.) Format: Documentation/bpf/btf.rst.
use std::{fs, path::Path};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("reading kernel BTF {path} failed: {reason}")]
    Read { path: String, reason: String },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF struct {0} has no member {1}")]
    NoMember(String, String),
}

/// Where `pid` and `tgid` live in this kernel's `task_struct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
}

pub fn task_offsets(vmlinux: &Path) -> Result<TaskOffsets, BtfError> {
    let data = fs::read(vmlinux).map_err(|e| BtfError::Read {
        path: vmlinux.display().to_string(),
        reason: e.to_string(),
    })?;
    let btf = Btf::parse(&data)?;
    Ok(TaskOffsets {
        pid: btf.member_offset("task_struct", "pid")?,
        tgid: btf.member_offset("task_struct", "tgid")?,
    })
}

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = b.get(at..at + 4).ok_or(BtfError::Malformed("truncated"))?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        Ok(Btf {
            types: section(type_off, type_len)?,
            strings: section(str_off, str_len)?,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// Byte offset of `member` in the first struct named `name`.
    fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let mut at = 0;
        while at + 12 <= self.types.len() {
            let (name_off, info) = (u32_at(self.types, at)?, u32_at(self.types, at + 4)?);
            let (vlen, kind, kind_flag) =
                ((info & 0xffff) as usize, (info >> 24) & 0x1f, info >> 31);
            let body = at + 12;
            if kind == KIND_STRUCT && self.name(name_off) == name.as_bytes() {
                for m in 0..vlen {
                    let m_at = body + m * 12;
                    if self.name(u32_at(self.types, m_at)?) == member.as_bytes() {
                        let raw = u32_at(self.types, m_at + 8)?;
                        // With kind_flag the top byte is a bitfield size.
                        let bits = if kind_flag == 1 {
                            raw & 0x00ff_ffff
                        } else {
                            raw
                        };
                        return Ok(bits / 8);
                    }
                }
                return Err(BtfError::NoMember(name.into(), member.into()));
            }
            at = body + extra_len(kind, vlen)?;
        }
        Err(BtfError::NoStruct(name.into()))
    }
}

/// Bytes that follow a type's 12-byte header, by kind.
fn extra_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        3 => 12,                   // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,        // ENUM, FUNC_PROTO
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one INT and `struct s { int a; int b; }` (b at bit 32).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0".to_vec();
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] INT "int" size 4
        push(1);
        push(1 << 24);
        push(4);
        push(32);
        // [2] STRUCT "s" vlen 2 size 8
        push(5);
        push((KIND_STRUCT << 24) | 2);
        push(8);
        for (name, bit) in [(7, 0), (9, 32)] {
            push(name);
            push(1);
            push(bit);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn member_offsets_are_found_after_other_types() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member_offset("s", "a"), Ok(0));
        assert_eq!(btf.member_offset("s", "b"), Ok(4));
        assert_eq!(
            btf.member_offset("s", "c"),
            Err(BtfError::NoMember("s".into(), "c".into()))
        );
        assert_eq!(
            btf.member_offset("t", "a"),
            Err(BtfError::NoStruct("t".into()))
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Malformed(_))));
        let mut data = blob();
        data.truncate(40);
        assert!(Btf::parse(&data).is_err());
    }

    #[test]
    fn this_kernel_has_task_pid_before_tgid() {
        let offsets = task_offsets(Path::new("/sys/kernel/btf/vmlinux")).expect("kernel BTF");
        // pid_t pid; pid_t tgid; are adjacent in every kernel since 2.6.
        assert_eq!(offsets.tgid, offsets.pid + 4, "{offsets:?}");
        assert!(offsets.pid > 0 && offsets.pid < 16384, "{offsets:?}");
    }
}
