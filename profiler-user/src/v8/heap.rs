//! Validating reads of V8 heap objects: every pointer is checked for its tag,
//! every object for its map's instance type, every length for a bound.

use super::layout::Layout;
use super::memory::{read_u64, Memory, MemoryError};

/// Names and paths longer than this are cut (and say so with `…`).
pub const MAX_NAME_BYTES: usize = 512;
/// Cons strings nest; a crafted one must not recurse for ever.
const MAX_STRING_DEPTH: usize = 8;
/// A line is computed by counting newlines in at most this much source.
pub const MAX_SOURCE_SCAN_BYTES: u64 = 1 << 20;
/// Line-end tables longer than this are not searched.
const MAX_LINE_ENDS: u64 = 1 << 22;

#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("{what} {value:#x} is not a heap object")]
    NotHeapObject { what: &'static str, value: u64 },
    #[error("{what} at {addr:#x} has instance type {found:#x}")]
    WrongType {
        what: &'static str,
        addr: u64,
        found: u16,
    },
    #[error("{what} has out-of-range length {len}")]
    Length { what: &'static str, len: u64 },
    #[error("string at {addr:#x} has an unsupported representation {tag:#x}")]
    StringKind { addr: u64, tag: u16 },
    #[error("strings nest deeper than {MAX_STRING_DEPTH}")]
    StringDepth,
}

pub struct Heap<'a, M: Memory + ?Sized> {
    pub layout: &'a Layout,
    pub mem: &'a M,
}

pub fn is_heap_object(word: u64) -> bool {
    word & 3 == 1 && word > 0xffff
}

pub fn smi(word: u64) -> Option<i64> {
    (word & 1 == 0 && word as u32 == 0).then_some((word as i64) >> 32)
}

impl<M: Memory + ?Sized> Heap<'_, M> {
    pub fn word(&self, addr: u64) -> Result<u64, HeapError> {
        Ok(read_u64(self.mem, addr)?)
    }

    /// The untagged address of `tagged` and its instance type.
    pub fn object(&self, what: &'static str, tagged: u64) -> Result<(u64, u16), HeapError> {
        if !is_heap_object(tagged) {
            return Err(HeapError::NotHeapObject {
                what,
                value: tagged,
            });
        }
        let addr = tagged - 1;
        let map = self.word(addr + self.layout.heap_object_map)?;
        if !is_heap_object(map) {
            return Err(HeapError::NotHeapObject {
                what: "map",
                value: map,
            });
        }
        let mut ty = [0u8; 2];
        self.mem
            .read(map - 1 + self.layout.map_instance_type, &mut ty)?;
        Ok((addr, u16::from_le_bytes(ty)))
    }

    /// The object at `tagged`, which must have an instance type in `types`.
    pub fn typed(
        &self,
        what: &'static str,
        tagged: u64,
        types: (u16, u16),
    ) -> Result<u64, HeapError> {
        let (addr, found) = self.object(what, tagged)?;
        if found < types.0 || found > types.1 {
            return Err(HeapError::WrongType { what, addr, found });
        }
        Ok(addr)
    }

    pub fn is_string_type(&self, ty: u16) -> bool {
        ty < self.layout.first_nonstring_type
    }

    /// A string's text, at most [`MAX_NAME_BYTES`], lossily decoded.
    pub fn string(&self, tagged: u64) -> Result<String, HeapError> {
        let mut out = Vec::new();
        let mut cut = false;
        self.append_string(tagged, &mut out, &mut cut, MAX_STRING_DEPTH)?;
        let mut text = String::from_utf8_lossy(&out).into_owned();
        if cut {
            text.push('…');
        }
        Ok(text)
    }

    fn append_string(
        &self,
        tagged: u64,
        out: &mut Vec<u8>,
        cut: &mut bool,
        depth: usize,
    ) -> Result<(), HeapError> {
        let depth = depth.checked_sub(1).ok_or(HeapError::StringDepth)?;
        let (addr, ty) = self.object("string", tagged)?;
        let l = self.layout;
        if !self.is_string_type(ty) {
            return Err(HeapError::WrongType {
                what: "string",
                addr,
                found: ty,
            });
        }
        let representation = ty & l.string_representation_mask;
        if representation == l.cons_string_tag {
            self.append_string(self.word(addr + l.cons_first)?, out, cut, depth)?;
            return self.append_string(self.word(addr + l.cons_second)?, out, cut, depth);
        }
        if representation == l.thin_string_tag {
            return self.append_string(self.word(addr + l.thin_actual)?, out, cut, depth);
        }
        if representation != l.seq_string_tag {
            return Err(HeapError::StringKind { addr, tag: ty });
        }
        let len = self.string_length(addr)?;
        let room = MAX_NAME_BYTES.saturating_sub(out.len());
        let take = (len as usize).min(room);
        *cut |= take < len as usize;
        if ty & l.string_encoding_mask == l.one_byte_string_tag {
            let mut buf = vec![0u8; take];
            self.mem.read(addr + l.seq_one_byte_chars, &mut buf)?;
            // One-byte strings are Latin-1.
            out.extend(buf.iter().flat_map(|&b| {
                let mut utf8 = [0u8; 2];
                char::from(b).encode_utf8(&mut utf8).as_bytes().to_vec()
            }));
        } else {
            let mut buf = vec![0u8; take * 2];
            self.mem.read(addr + l.seq_two_byte_chars, &mut buf)?;
            let units = buf
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]));
            let text: String = char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect();
            out.extend_from_slice(text.as_bytes());
        }
        Ok(())
    }

    fn string_length(&self, addr: u64) -> Result<u64, HeapError> {
        let mut b = [0u8; 4];
        self.mem.read(addr + self.layout.string_length, &mut b)?;
        let len = i32::from_le_bytes(b);
        u64::try_from(len).map_err(|_| HeapError::Length {
            what: "string",
            len: len as u64,
        })
    }

    /// 1-based line and column of source position `pos` in `script` (untagged).
    pub fn line_column(&self, script: u64, pos: u64) -> Result<Option<(u32, u32)>, HeapError> {
        let l = self.layout;
        let ends = self.word(script + l.script_line_ends)?;
        if let Ok((array, ty)) = self.object("line ends", ends) {
            if ty == l.fixed_array_type {
                return self.search_line_ends(array, pos);
            }
        }
        // V8 computes line ends lazily; without them, count newlines.
        self.scan_source(self.word(script + l.script_source)?, pos)
    }

    /// Binary search in the target's own table: log2(lines) word reads.
    fn search_line_ends(&self, array: u64, pos: u64) -> Result<Option<(u32, u32)>, HeapError> {
        let l = self.layout;
        let raw = self.word(array + l.fixed_array_length)?;
        let len = smi(raw).unwrap_or(-1);
        if len < 0 || len as u64 > MAX_LINE_ENDS {
            return Err(HeapError::Length {
                what: "line ends",
                len: len as u64,
            });
        }
        let len = len as u64;
        let end_at = |i: u64| -> Result<u64, HeapError> {
            let w = self.word(array + l.fixed_array_data + i * 8)?;
            smi(w)
                .filter(|v| *v >= 0)
                .map(|v| v as u64)
                .ok_or(HeapError::Length {
                    what: "line end",
                    len: w,
                })
        };
        // First line whose end is at or after pos.
        let (mut lo, mut hi) = (0u64, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if end_at(mid)? < pos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == len {
            return Ok(None);
        }
        let line_start = if lo == 0 { 0 } else { end_at(lo - 1)? + 1 };
        let column = pos.saturating_sub(line_start);
        Ok(Some((lo as u32 + 1, column as u32 + 1)))
    }

    fn scan_source(&self, source: u64, pos: u64) -> Result<Option<(u32, u32)>, HeapError> {
        let l = self.layout;
        let (addr, ty) = self.object("source", source)?;
        if !self.is_string_type(ty) || ty & l.string_representation_mask != l.seq_string_tag {
            return Ok(None);
        }
        let len = self.string_length(addr)?;
        if pos > len || pos > MAX_SOURCE_SCAN_BYTES {
            return Ok(None);
        }
        let one_byte = ty & l.string_encoding_mask == l.one_byte_string_tag;
        let (chars, width) = if one_byte {
            (addr + l.seq_one_byte_chars, 1)
        } else {
            (addr + l.seq_two_byte_chars, 2)
        };
        let mut line = 1u32;
        let mut line_start = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < pos {
            let n = ((pos - at) as usize).min(buf.len() / width);
            let chunk = &mut buf[..n * width];
            self.mem.read(chars + at * width as u64, chunk)?;
            for i in 0..n {
                let newline = if one_byte {
                    chunk[i] == b'\n'
                } else {
                    chunk[2 * i] == b'\n' && chunk[2 * i + 1] == 0
                };
                if newline {
                    line += 1;
                    line_start = at + i as u64 + 1;
                }
            }
            at += n as u64;
        }
        Ok(Some((line, (pos - line_start) as u32 + 1)))
    }
}
