//! What an unwound user stack hands to frame namers (the interface for naming
//! JavaScript frames from V8's heap, issue 10).
//!
//! With each sample the kernel copies the thread's registers and the top of
//! its user stack; userspace unwinds that copy. A frame namer gets, per frame,
//! the pc and the frame pointer of that frame, and read access to exactly the
//! stack bytes that were captured: in a V8 JavaScript frame the function
//! object sits at `fp - 16` and the bytecode array / offset next to it, all
//! inside the copy. Nothing here reads the live process: a value outside the
//! copy is `None`, never a guess.

/// One frame of an unwound user stack, leaf first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnwoundFrame {
    /// The leaf's instruction pointer; for callers the return address as
    /// found on the stack (it points past the call: look up `pc - 1` to name
    /// the calling function, as the symbolizer does).
    pub pc: u64,
    /// The frame pointer (%rbp) value of this frame: for a frame that keeps
    /// frame pointers (V8's JIT and interpreter frames, node's C++), the
    /// address where it saved its caller's %rbp, with its return address at
    /// `fp + 8`. `None` where the unwinder did not learn it (a frame unwound
    /// by tables that does not use %rbp as a frame pointer).
    pub fp: Option<u64>,
}

/// The bytes of user stack captured with one sample: `bytes[i]` is the byte
/// at address `base + i`, `base` being `sp` or, when the red zone below it
/// was copied too, 128 bytes lower. Empty when only a frame-pointer walk was
/// possible.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StackSnapshot {
    /// The thread's stack pointer when the sample was taken.
    pub sp: u64,
    /// The address of `bytes[0]`.
    pub base: u64,
    pub bytes: Vec<u8>,
}

/// The range only: the bytes are the process's stack, not for logs.
impl std::fmt::Debug for StackSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StackSnapshot({:#x}..{:#x}, sp {:#x})",
            self.base,
            self.end(),
            self.sp
        )
    }
}

impl StackSnapshot {
    /// A copy that starts at `sp`.
    pub fn new(sp: u64, bytes: Vec<u8>) -> Self {
        StackSnapshot {
            sp,
            base: sp,
            bytes,
        }
    }

    /// A copy that starts `below` bytes under `sp` (the red zone); `None`
    /// if that would wrap.
    pub fn with_below(sp: u64, below: u64, bytes: Vec<u8>) -> Option<Self> {
        Some(StackSnapshot {
            sp,
            base: sp.checked_sub(below)?,
            bytes,
        })
    }

    /// The little-endian word at `addr`, if all eight of its bytes were
    /// captured; `None` for anything below the copy, past it, arithmetic
    /// that would overflow, or an empty snapshot.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = offset.checked_add(8)?;
        let word = self.bytes.get(offset..end)?;
        Some(u64::from_le_bytes(word.try_into().ok()?))
    }

    /// Whether `addr` lies in the captured range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.bytes.len() as u64
    }

    /// One past the highest captured address.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.bytes.len() as u64)
    }
}

/// A user stack after unwinding: frames leaf first, and the copy they were
/// unwound from, for namers that read frame slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwoundStack {
    pub frames: Vec<UnwoundFrame>,
    /// True when the unwinder stopped at a frame it could not trust (no
    /// tables and no usable frame pointer, or the copy ended): the stack is
    /// shown ending in a `[truncated]` frame, never a made-up address.
    pub truncated: bool,
    pub snapshot: StackSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_captured_words() {
        let mut bytes = vec![0u8; 24];
        bytes[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        let s = StackSnapshot::new(0x7000, bytes);
        assert_eq!(s.read_u64(0x7008), Some(0x1122_3344_5566_7788));
        assert_eq!(s.read_u64(0x7010), Some(0));
        // The last word would run one byte past the copy.
        assert_eq!(s.read_u64(0x7011), None);
        assert_eq!(s.read_u64(0x6ff8), None);
        assert_eq!(s.read_u64(u64::MAX - 3), None);
        assert!(s.contains(0x7017) && !s.contains(0x7018));
        assert_eq!(StackSnapshot::default().read_u64(0), None);
    }

    #[test]
    fn a_red_zone_copy_reads_below_sp() {
        let mut bytes = vec![0u8; 136];
        bytes[120..128].copy_from_slice(&7u64.to_le_bytes());
        let s = StackSnapshot::with_below(0x7080, 128, bytes).unwrap();
        assert_eq!(s.read_u64(0x7078), Some(7));
        assert_eq!(s.read_u64(0x6ff8), None);
        assert_eq!((s.base, s.end()), (0x7000, 0x7088));
        assert!(StackSnapshot::with_below(64, 128, vec![]).is_none());
    }
}
