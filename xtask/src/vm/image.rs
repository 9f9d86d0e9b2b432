//! The guest's initramfs: busybox, the binaries under test at the paths they
//! have on the host (so LOOPBPF_BIN, LOOPBPF_NODES and the test binaries'
//! compiled-in script directory stay valid), and every library they link.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// busybox-static: the guest's shell, mount, poweroff and the rest.
const BUSYBOX: &str = "/bin/busybox";
/// /bin/sh for the tests (not for /init, which runs busybox's).
const DASH: &str = "/usr/bin/dash";
/// Host tools the tests run whose busybox versions lack options they use
/// (`umount -R`, `unshare --propagation`, `setpriv --bounding-set`,
/// `mountpoint -q` on tracefs, `taskset -c`), copied with their libraries.
const HOST_TOOLS: [&str; 6] = [
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/bin/unshare",
    "/usr/bin/setpriv",
    "/usr/bin/mountpoint",
    "/usr/bin/taskset",
];

pub struct Image {
    root: PathBuf,
    libs: BTreeSet<PathBuf>,
}

impl Image {
    /// An empty tree at `root` (an old one is removed).
    pub fn new(root: &Path) -> Result<Image> {
        if root.exists() {
            fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
        }
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        let mut image = Image {
            root: root.to_path_buf(),
            libs: BTreeSet::new(),
        };
        if !Path::new(BUSYBOX).is_file() {
            bail!("{BUSYBOX} is missing: apt-get install busybox-static");
        }
        image.file(Path::new(BUSYBOX), 0o755)?;
        // busybox's sh runs its own applets before PATH (its umount has no
        // -R): the tests' shell commands get dash, which looks PATH up.
        image.binary(Path::new(DASH))?;
        std::os::unix::fs::symlink(DASH, root.join("bin/sh"))?;
        for tool in HOST_TOOLS {
            image.binary(Path::new(tool))?;
        }
        // Node and libc look these up; an empty passwd is enough for root.
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(root.join("etc/group"), "root:x:0:\n")?;
        Ok(image)
    }

    /// An empty tree at `root` with nothing in it: an archive unpacked over
    /// another one (whose /etc/passwd and libraries must stay).
    pub fn bare(root: &Path) -> Result<Image> {
        if root.exists() {
            fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
        }
        fs::create_dir_all(root)?;
        Ok(Image {
            root: root.to_path_buf(),
            libs: BTreeSet::new(),
        })
    }

    /// Copies `path` to the same place in the image.
    pub fn file(&mut self, path: &Path, mode: u32) -> Result<()> {
        self.file_at(path, &path.to_string_lossy(), mode)
    }

    /// `self.root` + the absolute path `at`, its parents created.
    fn place(&self, at: &str) -> Result<PathBuf> {
        let to = self.root.join(at.trim_start_matches('/'));
        fs::create_dir_all(to.parent().context("no parent")?)?;
        Ok(to)
    }

    /// Copies `path` to `at` in the image.
    pub fn file_at(&mut self, path: &Path, at: &str, mode: u32) -> Result<()> {
        let to = self.place(at)?;
        fs::copy(path, &to)
            .with_context(|| format!("copying {} into the image", path.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// A file at `at` holding `text`.
    pub fn write(&mut self, at: &str, text: &str, mode: u32) -> Result<()> {
        let to = self.place(at)?;
        fs::write(&to, text).with_context(|| format!("writing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// A symbolic link at `at` to `target`.
    pub fn symlink(&mut self, target: &str, at: &str) -> Result<()> {
        let to = self.place(at)?;
        std::os::unix::fs::symlink(target, &to).with_context(|| format!("linking {}", to.display()))
    }

    /// An executable and the shared libraries `ldd` says it loads.
    pub fn binary(&mut self, path: &Path) -> Result<()> {
        self.file(path, 0o755)?;
        let listed = cmd::output(Command::new("ldd").arg(path)).unwrap_or_default();
        for lib in ldd_paths(&listed) {
            if self.libs.insert(lib.clone()) {
                self.file(&lib, 0o755)?;
            }
        }
        Ok(())
    }

    /// Every file of `dir`, not recursive (the test scripts).
    pub fn dir(&mut self, dir: &Path) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_file() {
                self.file(&path, 0o644)?;
            }
        }
        Ok(())
    }

    /// `/init`, the script the kernel runs as PID 1.
    pub fn init(&mut self, script: &str) -> Result<()> {
        let to = self.root.join("init");
        fs::write(&to, script)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Packs the tree into an uncompressed newc cpio archive (no
    /// decompression for the emulated guest to pay for).
    pub fn pack(&self, out: &Path) -> Result<()> {
        pack_tree(&self.root, out)
    }
}

/// `tree` as a newc cpio archive at `out`, owners and device nodes kept.
pub fn pack_tree(tree: &Path, out: &Path) -> Result<()> {
    let script = format!(
        "cd '{}' && find . -print0 | cpio --null --quiet -o -H newc > '{}'",
        tree.display(),
        out.display()
    );
    cmd::run(Command::new("sh").args(["-c", &script]))
}

/// The library paths in `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)`
/// and the loader's own `/lib64/ld-linux-x86-64.so.2 (0x…)` line.
fn ldd_paths(listed: &str) -> Vec<PathBuf> {
    listed
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let listed = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f8b)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f8b)\n\
                      \tlibgone.so => not found\n";
        assert_eq!(
            ldd_paths(listed),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
