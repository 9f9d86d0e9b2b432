//! Each attack a local user can make on the perf map of a process loopbpf
//! watches, against the real open path ([`PerfMap::for_pid`]) of a real
//! child process. These run as root (as loopbpf does): root ignores file
//! permissions, which is exactly why the checks are needed.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use super::super::perf_map::{PerfMap, PerfMapError};
use super::*;

const MAP: &str = "1000 10 JS:*planted /x.js:1:1\n";

/// A `sleep` child (in `root` when given) whose /tmp/perf-PID.map the test
/// plants; killed and the map removed on drop.
struct Target {
    child: Child,
    map: PathBuf,
}

impl Target {
    fn spawn(uid: Option<u32>) -> Target {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        Self::start(cmd, "sleep")
    }

    /// Chrooted to `root` (which must hold bin/busybox), in our mount
    /// namespace: its /tmp is `root`/tmp, not ours.
    fn chrooted(root: &Path) -> Target {
        let mut cmd = Command::new("chroot");
        cmd.arg(root).args(["/bin/busybox", "sleep", "30"]);
        Self::start(cmd, "busybox")
    }

    fn start(mut cmd: Command, comm: &str) -> Target {
        let child = cmd.spawn().expect("spawn sleep");
        let pid = child.id();
        // Wait for the exec, so start time and root are the final ones.
        let execed = (0..500).any(|_| {
            let done =
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm);
            if !done {
                std::thread::sleep(Duration::from_millis(10));
            }
            done
        });
        assert!(execed, "pid {pid} never became {comm}");
        let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        // A Node process that had this pid earlier may have left its perf map
        // behind (node never removes it); each test sets up its own.
        match fs::symlink_metadata(&map) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&map).unwrap(),
            Ok(_) => fs::remove_file(&map).unwrap(),
            Err(_) => {}
        }
        Target { map, child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Refreshes the pid's perf map on another thread: a blocking open
    /// fails the test instead of hanging it.
    fn refresh(&self) -> (Result<(), PerfMapError>, usize) {
        let pid = self.pid();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut map = PerfMap::for_pid(pid);
            let result = map.refresh();
            let _ = sender.send((result, map.len()));
        });
        receiver
            .recv_timeout(Duration::from_secs(5))
            .expect("refreshing the perf map blocked for 5 s")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.map);
    }
}

fn refused(result: &Result<(), PerfMapError>) -> String {
    match result {
        Err(PerfMapError::Refused { error, .. }) => error.to_string(),
        other => panic!("expected the map to be refused, got {other:?}"),
    }
}

#[test]
fn a_plain_map_of_the_process_is_read() {
    let target = Target::spawn(None);
    fs::write(&target.map, MAP).unwrap();
    let (result, entries) = target.refresh();
    result.unwrap();
    assert_eq!(entries, 1);
}

#[test]
fn a_fifo_map_is_refused_without_blocking() {
    let target = Target::spawn(None);
    let path = std::ffi::CString::new(target.map.to_str().unwrap()).unwrap();
    // SAFETY: `path` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let (result, _) = target.refresh();
    assert!(refused(&result).contains("fifo"), "{result:?}");
}

#[test]
fn symlinked_maps_are_refused() {
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c_fifo` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    for to in [
        Path::new("/etc/shadow"),
        Path::new("/dev/zero"),
        fifo.as_path(),
        fifo_dir.path(),
    ] {
        let target = Target::spawn(None);
        symlink(to, &target.map).unwrap();
        let (result, entries) = target.refresh();
        assert!(
            refused(&result).contains("symbolic link"),
            "link to {}",
            to.display()
        );
        assert_eq!(entries, 0);
    }
}

#[test]
fn a_directory_or_device_at_the_path_is_refused() {
    let target = Target::spawn(None);
    fs::create_dir(&target.map).unwrap();
    let (result, _) = target.refresh();
    fs::remove_dir(&target.map).unwrap();
    assert!(refused(&result).contains("directory"), "{result:?}");
}

#[test]
fn a_map_planted_by_another_user_is_refused() {
    // The watched process runs as nobody; the map belongs to a third user.
    let nobody = 65534;
    let target = Target::spawn(Some(nobody));
    fs::write(&target.map, MAP).unwrap();
    std::os::unix::fs::chown(&target.map, Some(12345), Some(12345)).unwrap();
    let (result, _) = target.refresh();
    assert!(refused(&result).contains("uid 12345"), "{result:?}");

    // Its own user's map (and root's) are read.
    std::os::unix::fs::chown(&target.map, Some(nobody), Some(nobody)).unwrap();
    let (result, entries) = target.refresh();
    result.unwrap();
    assert_eq!(entries, 1);
}

#[test]
fn a_map_older_than_the_process_is_refused() {
    // What pid reuse leaves: a map last written by an earlier process.
    let target = Target::spawn(None);
    fs::write(&target.map, MAP).unwrap();
    let file = fs::File::options().write(true).open(&target.map).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let (result, _) = target.refresh();
    assert!(
        refused(&result).contains("before the process started"),
        "{result:?}"
    );
}

#[test]
fn a_map_written_half_a_second_before_the_process_is_refused() {
    // Pid reuse right after an exit: the earlier process's map is fresh.
    let target = Target::spawn(None);
    fs::write(&target.map, MAP).unwrap();
    let start = ProcessIdentity::of(target.pid())
        .and_then(|id| id.started_at())
        .unwrap()
        + super::START_SLACK;
    let file = fs::File::options().write(true).open(&target.map).unwrap();
    file.set_modified(start - Duration::from_millis(500))
        .unwrap();
    let (result, _) = target.refresh();
    assert!(
        refused(&result).contains("before the process started"),
        "{result:?}"
    );
    // Written as it started (a tick early, as coarse file times can be): read.
    file.set_modified(start - Duration::from_millis(10))
        .unwrap();
    let (result, entries) = target.refresh();
    result.unwrap();
    assert_eq!(entries, 1);
}

#[test]
fn a_chrooted_process_map_is_read_inside_its_root() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("bin")).unwrap();
    fs::copy("/usr/bin/busybox", root.path().join("bin/busybox"))
        .expect("busybox-static is needed for this test");
    fs::set_permissions(
        root.path().join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // The process's /tmp is a symlink to a host directory holding a map:
    // resolved in the process's root, it leads nowhere.
    // Not under /tmp: inside the root, /tmp would lead back to the link.
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    symlink(host.path(), root.path().join("tmp")).unwrap();
    let target = Target::chrooted(root.path());
    let pid = target.pid();
    fs::write(host.path().join(format!("perf-{pid}.map")), MAP).unwrap();
    // The host's /tmp has one too, which is not this process's either.
    fs::write(&target.map, MAP).unwrap();
    let (result, entries) = target.refresh();
    assert!(
        matches!(result, Err(PerfMapError::Missing { .. })),
        "{result:?}"
    );
    assert_eq!(entries, 0);

    // Its real map, in its root, is read; one linking out of it is not.
    fs::remove_file(root.path().join("tmp")).unwrap();
    fs::create_dir(root.path().join("tmp")).unwrap();
    let inside = root.path().join(format!("tmp/perf-{pid}.map"));
    fs::write(&inside, MAP).unwrap();
    let (result, entries) = target.refresh();
    result.unwrap();
    assert_eq!(entries, 1);
    fs::remove_file(&inside).unwrap();
    symlink(&target.map, &inside).unwrap();
    let (result, _) = target.refresh();
    assert!(refused(&result).contains("symbolic link"), "{result:?}");
}

#[test]
fn process_identity_changes_with_the_process() {
    let a = Target::spawn(None);
    let id = ProcessIdentity::of(a.pid()).unwrap();
    assert_eq!(id.uid, 0);
    let started = id.started_at().unwrap();
    let now = SystemTime::now();
    assert!(started <= now, "{started:?} after {now:?}");
    assert!(now.duration_since(started).unwrap() < Duration::from_secs(60));
    drop(a);
}
