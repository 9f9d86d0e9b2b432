//! A container without images: node in new pid and mount namespaces,
//! chrooted into a directory that bind-mounts the host's /usr and /dev and
//! the node binary. Its root is a plain directory of the host, so a test
//! plants files (or symlinks to host paths) in the container's /tmp from
//! outside, as a user who owns the container could from inside.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Inside the new pid namespace `unshare --fork` makes the shell pid 1, and
/// the shell execs chroot, which execs node: node is pid 1 and writes
/// /tmp/perf-1.map.
pub const CONTAINED_NODE_PID: u32 = 1;

/// Mounts what node needs inside the root (the mounts live and die with the
/// private mount namespace, so the host never sees them), then becomes node.
const ENTER: &str = concat!(
    "set -e; r=$1; node=$2; shift 2; ",
    "mount --rbind /usr \"$r/usr\"; ",
    "mount --rbind /dev \"$r/dev\"; ",
    "mount --bind \"$node\" \"$r/node\"; ",
    "mount -t proc proc \"$r/proc\"; ",
    "exec chroot \"$r\" /node \"$@\""
);

pub struct ContainerRoot {
    dir: TempDir,
}

impl ContainerRoot {
    /// An empty root with mount points, the host's /bin, /lib and /lib64
    /// symlinks, and `scripts` copied to /app.
    pub fn new(scripts: &[&Path]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("loopbpf-test-root-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a container root: {e}"));
        let root = dir.path();
        for d in ["usr", "dev", "proc", "tmp", "app"] {
            std::fs::create_dir(root.join(d)).expect("mkdir in the container root");
        }
        std::fs::write(root.join("node"), b"").expect("node mount point");
        // The host's merged-/usr links, recreated relative to the new root.
        for link in ["bin", "lib", "lib64", "sbin"] {
            if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
                std::os::unix::fs::symlink(target, root.join(link)).expect("symlink");
            }
        }
        for script in scripts {
            let name = script.file_name().expect("a script file");
            std::fs::copy(script, root.join("app").join(name))
                .unwrap_or_else(|e| panic!("copying {}: {e}", script.display()));
        }
        ContainerRoot { dir }
    }

    /// The container's root directory, as the host sees it.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `unshare` ready to run `node` as the container's pid 1; append node's
    /// arguments. The process to watch is unshare's only child.
    pub fn command(&self, node: &Path) -> Command {
        let mut c = Command::new("unshare");
        // util-linux makes the new mount namespace's propagation private.
        c.args(["--pid", "--mount", "--fork", "--", "sh", "-c", ENTER, "sh"])
            .arg(self.path())
            .arg(node);
        c
    }

    /// Where a script copied to /app is, inside the container.
    pub fn script(name: &str) -> PathBuf {
        Path::new("/app").join(name)
    }
}
