//! Opening files that a watched process controls: its perf map and the files
//! its `/proc/PID/maps` names. Any local user (or container) can put a FIFO,
//! a symlink to a host file, a device or someone else's file at those paths,
//! so every open here is non-blocking, never follows a final symlink, resolves
//! inside the process's own root, and is checked (type, owner, age) on the
//! opened descriptor before a byte is read.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum UntrustedFileError {
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("opening {} failed: {error}", path.display())]
    Open { path: PathBuf, error: io::Error },
    /// ELOOP: the file is a symlink, or the path loops through symlinks (a
    /// container's link to a host path, resolved inside its root).
    #[error("{} is a symbolic link, or its path loops through them", path.display())]
    Symlink { path: PathBuf },
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is owned by uid {uid}, not by the process's uid {want} or root", path.display())]
    WrongOwner { path: PathBuf, uid: u32, want: u32 },
    #[error("{} was last written before the process started (left by an earlier process with the same pid)", path.display())]
    Stale { path: PathBuf },
    #[error("{} is not the file the process mapped (device/inode differ)", path.display())]
    Replaced { path: PathBuf },
}

/// What a file must satisfy besides being a regular file.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// The uid that may own it besides root.
    pub owner: Option<u32>,
    /// The file must have been written at or after this time.
    pub not_before: Option<SystemTime>,
    /// The (device, inode) it must be.
    pub identity: Option<(u64, u64)>,
}

/// The root directory paths are resolved in: a watched process's own root
/// (`/proc/PID/root`, held open so it still answers after the process exits),
/// or, for paths given by the operator, the ordinary filesystem.
#[derive(Clone, Debug)]
pub enum Root {
    Process(Arc<OwnedFd>),
    Host,
}

impl Root {
    /// `/proc/PID/root` as an `O_PATH` directory descriptor.
    pub fn of_process(pid: u32) -> io::Result<Root> {
        let path = CString::new(format!("/proc/{pid}/root")).expect("no NUL in a /proc path");
        // SAFETY: `path` is a valid NUL-terminated string; the returned fd is
        // checked before being owned.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly opened descriptor nothing else owns.
        Ok(Root::Process(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Opens `path` for reading. Inside a process root, absolute paths and
    /// `..` stay inside it (`RESOLVE_IN_ROOT`) and `/proc/*/fd`-style magic
    /// links are refused; a symlink as the last component is always refused.
    pub fn open(&self, path: &Path, expect: &Expect) -> Result<File, UntrustedFileError> {
        let (dirfd, resolve) = match self {
            Root::Process(root) => (
                root.as_raw_fd(),
                libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
            ),
            Root::Host => (libc::AT_FDCWD, libc::RESOLVE_NO_MAGICLINKS),
        };
        let file = openat2(dirfd, path, resolve).map_err(|error| match error.raw_os_error() {
            Some(libc::ENOENT) => UntrustedFileError::Missing {
                path: path.to_path_buf(),
            },
            Some(libc::ELOOP) => UntrustedFileError::Symlink {
                path: path.to_path_buf(),
            },
            _ => UntrustedFileError::Open {
                path: path.to_path_buf(),
                error,
            },
        })?;
        check(&file, path, expect)?;
        Ok(file)
    }
}

fn openat2(dirfd: i32, path: &Path, resolve: u64) -> io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer;
    // O_NOFOLLOW: a final symlink fails with ELOOP instead of being followed.
    let flags =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: `c_path` is NUL-terminated and `how` outlives the call; the size
    // passed is that of the struct passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor (it fits an i32) that
    // nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// Checks made on the opened descriptor, so the file cannot be swapped
/// between the check and the read.
fn check(file: &File, path: &Path, expect: &Expect) -> Result<(), UntrustedFileError> {
    let meta = file.metadata().map_err(|error| UntrustedFileError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_dir() {
            "directory"
        } else if file_type.is_fifo() {
            "fifo"
        } else if file_type.is_char_device() {
            "character device"
        } else if file_type.is_block_device() {
            "block device"
        } else if file_type.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(UntrustedFileError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    if let Some(want) = expect.owner {
        if meta.uid() != want && meta.uid() != 0 {
            return Err(UntrustedFileError::WrongOwner {
                path: path.to_path_buf(),
                uid: meta.uid(),
                want,
            });
        }
    }
    if let Some(not_before) = expect.not_before {
        let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if written < not_before {
            return Err(UntrustedFileError::Stale {
                path: path.to_path_buf(),
            });
        }
    }
    if let Some(identity) = expect.identity {
        if (meta.dev(), meta.ino()) != identity {
            return Err(UntrustedFileError::Replaced {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Who a process is, beyond its pid: its uid (the owner its files must have)
/// and its start time (a file older than that was left by another process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub uid: u32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat): with the pid, it
    /// names one process across pid reuse.
    pub start_ticks: u64,
}

impl ProcessIdentity {
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
        Some(ProcessIdentity {
            uid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// When the process started, on the wall clock, less [`START_SLACK`].
    /// A map a reused pid's earlier process wrote even half a second before
    /// this one started is older than that (a whole-second boot time, as in
    /// /proc/stat, would need seconds of slack and let it through).
    pub fn started_at(&self) -> Option<SystemTime> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
            .ok()
            .filter(|&hz| hz > 0)?;
        let after_boot = Duration::from_nanos(self.start_ticks.checked_mul(1_000_000_000 / hz)?);
        boot_wall_time()?
            .checked_add(after_boot)?
            .checked_sub(START_SLACK)
    }
}

/// Start times count clock ticks (10 ms), file times come from the coarse
/// clock (a jiffy behind), and the wall clock may be slewed meanwhile.
pub const START_SLACK: Duration = Duration::from_millis(100);

pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: fields resume after the last ')'.
    // Field 22 is the 20th after it (state is field 3).
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The wall-clock time of boot, to the nanosecond: the realtime clock less
/// the boot-time clock (which, like start times, counts suspend too).
fn boot_wall_time() -> Option<SystemTime> {
    let read = |clock| {
        // SAFETY: timespec is plain data, written by the call.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        (unsafe { libc::clock_gettime(clock, &mut ts) } == 0)
            .then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    };
    let since_boot = read(libc::CLOCK_BOOTTIME)?;
    let now = read(libc::CLOCK_REALTIME)?;
    SystemTime::UNIX_EPOCH.checked_add(now.checked_sub(since_boot)?)
}

#[cfg(test)]
#[path = "untrusted_tests.rs"]
mod tests;
