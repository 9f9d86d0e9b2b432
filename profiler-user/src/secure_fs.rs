//! Files loopbpf writes as root (the daemon's state directory, `--output`).
//! A local user must not be able to redirect them or read them:
//! directories are opened without following a symlink and must belong to
//! an expected owner; new files get a random temporary name created with
//! `O_EXCL` (no symlink or existing file is ever opened), are written, synced
//! and renamed into place (a rename replaces a planted symlink, never follows
//! it); appended files are opened with `O_NOFOLLOW` and must be regular files.
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum SecureFsError {
    #[error("creating directory {path} failed: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening directory {path} failed (a symlink is refused): {source}")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("directory {path} belongs to uid {owner}, not to {expected}: refusing to write in it")]
    Owner {
        path: PathBuf,
        owner: u32,
        expected: String,
    },
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file: refusing to write to it")]
    NotRegular { path: PathBuf },
}

/// Who may own a directory loopbpf writes in, and its mode.
#[derive(Clone, Debug)]
pub struct DirPolicy {
    pub owners: Vec<u32>,
    /// Mode of a directory created here.
    pub mode: u32,
    /// Also set `mode` on an existing directory (the state directory is private).
    pub force_mode: bool,
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

impl DirPolicy {
    /// The daemon's state: ours alone, 0700.
    pub fn private() -> Self {
        DirPolicy {
            owners: vec![euid()],
            mode: 0o700,
            force_mode: true,
        }
    }

    /// `--output` of `sudo loopbpf`: ours or the invoking user's (sudo sets
    /// SUDO_UID), created 0755 so that user can read the results.
    pub fn output() -> Self {
        let mut owners = vec![euid()];
        if let Some(uid) = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok()) {
            owners.push(uid);
        }
        DirPolicy {
            owners,
            mode: 0o755,
            force_mode: false,
        }
    }
}

/// Creates `dir` (and missing parents) and checks it: not a symlink, a
/// directory, owned as `policy` says; a private directory of ours with a
/// looser mode is tightened.
pub fn ensure_dir(dir: &Path, policy: &DirPolicy) -> Result<(), SecureFsError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| SecureFsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match fs::DirBuilder::new().mode(policy.mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(SecureFsError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    let open_error = |source| SecureFsError::OpenDir {
        path: dir.to_path_buf(),
        source,
    };
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(open_error)?;
    let meta = handle.metadata().map_err(open_error)?;
    if !policy.owners.contains(&meta.uid()) {
        let expected = policy
            .owners
            .iter()
            .map(|u| format!("uid {u}"))
            .collect::<Vec<_>>()
            .join(" or ");
        return Err(SecureFsError::Owner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            expected,
        });
    }
    if policy.force_mode && meta.mode() & 0o7777 != policy.mode {
        // fchmod on the handle: the directory checked is the one changed.
        handle
            .set_permissions(fs::Permissions::from_mode(policy.mode))
            .map_err(open_error)?;
        log::info!(
            "{}: mode {:o} tightened to {:o}",
            dir.display(),
            meta.mode() & 0o7777,
            policy.mode
        );
    }
    Ok(())
}

/// Writes `bytes` as `dir/name` with `mode`: a temporary file with a random
/// name (`O_CREAT | O_EXCL`), synced, then renamed over `name`.
pub fn write_new(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<PathBuf, SecureFsError> {
    write_renamed(dir, name, bytes, mode, true).map(|(path, _)| path)
}

/// [`write_new`] without waiting for the disk: the file is complete and in
/// place when this returns (readers see all of it or the old one), and the
/// returned handle is synced by the caller once it has said so (an episode
/// line must not wait for fsyncs behind a busy disk).
pub fn write_new_sync_later(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(PathBuf, File), SecureFsError> {
    write_renamed(dir, name, bytes, mode, false)
}

/// `bytes` in a new temporary file in `dir` (random name, `O_EXCL`, `mode`),
/// synced first if `sync`, then renamed over `dir/name`.
fn write_renamed(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    sync: bool,
) -> Result<(PathBuf, File), SecureFsError> {
    let path = dir.join(name);
    let write_error = |source| SecureFsError::Write {
        path: path.clone(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".loopbpf-")
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(write_error)?;
    tmp.write_all(bytes).map_err(write_error)?;
    if sync {
        tmp.as_file().sync_data().map_err(write_error)?;
    }
    // On error the temporary file is removed when `tmp` drops.
    let file = tmp.persist(&path).map_err(|e| write_error(e.error))?;
    Ok((path, file))
}

/// Opens `path` to append (creating it with `mode`), refusing a symlink or
/// anything but a regular file (a FIFO would block, a device would be written).
pub fn open_append(path: &Path, mode: u32) -> Result<File, SecureFsError> {
    let write_error = |source| SecureFsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(write_error)?;
    if !f.metadata().map_err(write_error)?.is_file() {
        return Err(SecureFsError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(f)
}

/// Reads a regular file of at most `MAX_READ` bytes without following a
/// symlink or blocking on a FIFO; `None` for anything else.
pub fn read_regular(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_READ {
        return None;
    }
    let mut text = String::new();
    f.take(MAX_READ).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Largest file [`read_regular`] reads: an episode record is a few KiB.
pub const MAX_READ: u64 = 16 << 20;

/// True for the temporary names [`write_new`] uses (left by a crash).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_symlinked_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        let link = t.path().join("state");
        symlink(&target, &link).unwrap();
        let e = ensure_dir(&link, &DirPolicy::private()).unwrap_err();
        assert!(matches!(e, SecureFsError::OpenDir { .. }), "{e}");
    }

    #[test]
    fn a_directory_of_another_owner_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let policy = DirPolicy {
            owners: vec![euid().wrapping_add(1)],
            ..DirPolicy::private()
        };
        let e = ensure_dir(t.path(), &policy).unwrap_err();
        assert!(e.to_string().contains("belongs to uid"), "{e}");
    }

    #[test]
    fn private_directories_are_0700_and_files_0600() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/state");
        ensure_dir(&dir, &DirPolicy::private()).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // An existing, looser directory of ours is tightened.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&dir, &DirPolicy::private()).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let p = write_new(&dir, "x.json", b"{}", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let f = open_append(&dir.join("index.jsonl"), 0o600).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn planted_symlinks_are_replaced_or_refused_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let dir = t.path().join("out");
        fs::create_dir(&dir).unwrap();
        symlink(&victim, dir.join("1-1-1.folded")).unwrap();
        // The temporary name the old code used, planted by a local user.
        symlink(&victim, dir.join(".1-1-1.folded.tmp")).unwrap();
        write_new(&dir, "1-1-1.folded", b"a 1\n", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!fs::symlink_metadata(dir.join("1-1-1.folded"))
            .unwrap()
            .is_symlink());
        symlink(&victim, dir.join("index.jsonl")).unwrap();
        assert!(open_append(&dir.join("index.jsonl"), 0o600).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }
}
