//! Bounded reads of another process's memory with `process_vm_readv`.
//!
//! The target's memory is hostile: every read has a size limit, and a frame's
//! reads share one byte budget, so a crafted heap cannot make naming one frame
//! read much or loop.

/// Where bytes of the target come from; tests substitute a doctored image.
pub trait Memory {
    /// Fills `buf` from `addr`, or fails (unmapped, short, process gone).
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error("failed to read {len} bytes at {addr:#x} of pid {pid}: {errno}")]
    Read {
        pid: u32,
        addr: u64,
        len: usize,
        errno: i32,
    },
    #[error("short read at {addr:#x} of pid {pid}: {got} of {len} bytes")]
    Short {
        pid: u32,
        addr: u64,
        len: usize,
        got: usize,
    },
    #[error("per-frame read budget of {budget} bytes used up")]
    Budget { budget: usize },
}

pub struct ProcessMemory {
    pid: u32,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which is valid for writes of its
        // length; the remote iovec is only read by the kernel, which checks it
        // against the target's address space.
        let got =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if got < 0 {
            return Err(MemoryError::Read {
                pid: self.pid,
                addr,
                len: buf.len(),
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            });
        }
        if got as usize != buf.len() {
            return Err(MemoryError::Short {
                pid: self.pid,
                addr,
                len: buf.len(),
                got: got as usize,
            });
        }
        Ok(())
    }
}

/// A [`Memory`] that stops after `budget` bytes.
pub struct Budgeted<'a, M: Memory + ?Sized> {
    inner: &'a M,
    budget: usize,
    used: std::cell::Cell<usize>,
}

impl<'a, M: Memory + ?Sized> Budgeted<'a, M> {
    pub fn new(inner: &'a M, budget: usize) -> Self {
        Self {
            inner,
            budget,
            used: std::cell::Cell::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }
}

impl<M: Memory + ?Sized> Memory for Budgeted<'_, M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let used = self.used.get().saturating_add(buf.len());
        if used > self.budget {
            return Err(MemoryError::Budget {
                budget: self.budget,
            });
        }
        self.used.set(used);
        self.inner.read(addr, buf)
    }
}

pub fn read_u64(mem: &(impl Memory + ?Sized), addr: u64) -> Result<u64, MemoryError> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}
