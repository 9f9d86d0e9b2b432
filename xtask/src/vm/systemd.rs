//! The systemd case of `vm-test`: loopbpf's .deb installed in a Debian guest
//! whose PID 1 is systemd, `loopbpf.service` started and checked from outside
//! (systemd/check.sh), `systemd-analyze security` printed.
//!
//! The guest's initramfs is two cpio archives one after the other (the kernel
//! unpacks both): a Debian rootfs with systemd, built by mmdebstrap from the
//! package mirror and cached under `cache/vm/rootfs/` keyed by a hash of the
//! whole recipe, and a small per-run archive with the .deb, Node and the check.

use super::image::{pack_tree, Image};
use super::qemu::{Outcome, END_MARKER};
use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's userland: Debian 12, as this host (the per-run archive's Node
/// is the host's npm build, which needs only glibc and libstdc++).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// `essential` plus systemd as init, libstdc++ for Node, procps for the
/// unit's `ExecReload=/bin/kill`, curl to scrape /metrics.
const PACKAGES: &str = "systemd,systemd-sysv,libstdc++6,procps,curl";
/// Run by mmdebstrap on the finished tree (`$1`). A fixed machine id: an empty
/// one would be a first boot, where systemd-firstboot prompts on the console.
/// No gettys: the serial console carries the check's output only.
const CUSTOMIZE: &str = r#"set -e
echo loopbpf-vm > "$1/etc/hostname"
echo 4c6f6f706270662d766d2d6775657374 > "$1/etc/machine-id"
for u in getty@.service serial-getty@.service console-getty.service getty-static.service systemd-firstboot.service; do
    ln -sf /dev/null "$1/etc/systemd/system/$u"
done
rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*"#;

/// The kernel command line's init for this guest.
pub const APPEND: &str = "rdinit=/sbin/init systemd.show_status=false";

const CHECK: &str = include_str!("systemd/check.sh");
const CHECK_UNIT: &str = include_str!("systemd/loopbpf-vm-check.service");
const TARGET_JS: &str = include_str!("systemd/target.js");

fn mmdebstrap_args() -> Vec<String> {
    let mut args = vec![
        "--variant=essential".to_string(),
        format!("--include={PACKAGES}"),
    ];
    // Documentation and translations: a quarter of the tree, unused.
    for dir in ["doc", "man", "locale", "info"] {
        args.push(format!("--dpkgopt=path-exclude=/usr/share/{dir}/*"));
    }
    args.push(format!("--customize-hook={CUSTOMIZE}"));
    args.push(SUITE.to_string());
    args
}

/// The cached rootfs archive, built first if this recipe has none.
pub fn rootfs(cache: &Path) -> Result<PathBuf> {
    let args = mmdebstrap_args();
    let recipe = format!("{}\n{MIRROR}\n", args.join("\n"));
    let digest = cmd::output(Command::new("sh").args([
        "-c",
        "printf %s \"$1\" | sha256sum",
        "sh",
        &recipe,
    ]))?;
    let key = digest.get(..16).context("sha256sum printed no digest")?;
    let dir = cache.join("vm").join("rootfs");
    let out = dir.join(format!("systemd-{SUITE}-{key}.cpio"));
    if out.is_file() {
        println!("systemd rootfs: cached {}", out.display());
        return Ok(out);
    }
    if !crate::is_root()? {
        bail!("building the systemd guest's rootfs takes root (mmdebstrap, device nodes, file owners)");
    }
    if cmd::find_in_path("mmdebstrap").is_none() {
        cmd::run(Command::new("apt-get").args(["install", "-y", "-q", "mmdebstrap"]))?;
    }
    fs::create_dir_all(&dir)?;
    let tree = dir.join(format!(".tree-{}", std::process::id()));
    let tmp = out.with_extension("cpio.tmp");
    let result = (|| {
        cmd::run(
            Command::new("mmdebstrap")
                .arg("--quiet")
                .args(&args)
                .arg(&tree)
                .arg(MIRROR),
        )?;
        pack_tree(&tree, &tmp)?;
        fs::rename(&tmp, &out).with_context(|| format!("moving into {}", out.display()))
    })();
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_file(&tmp);
    result?;
    println!("systemd rootfs: built {}", out.display());
    Ok(out)
}

/// The per-run archive: the .deb at /root/loopbpf.deb, Node at
/// /usr/local/bin/node (readable by user nobody, unlike the host's cache
/// under /root), the Node script, and the check enabled as a unit.
pub fn overlay(work: &Path, deb: &Path, node: &Path, time_scale: u32) -> Result<PathBuf> {
    let mut img = Image::bare(&work.join("systemd-overlay"))?;
    img.file_at(deb, "/root/loopbpf.deb", 0o644)?;
    img.file_at(node, "/usr/local/bin/node", 0o755)?;
    img.write("/usr/local/share/loopbpf-vm/target.js", TARGET_JS, 0o644)?;
    let script = format!(
        "#!/bin/bash\nTIME_SCALE={time_scale}\nEXPECT_PROBES=fentry\nEND_MARKER='{END_MARKER}'\n{CHECK}"
    );
    img.write("/usr/local/sbin/loopbpf-vm-check", &script, 0o755)?;
    let unit = "/etc/systemd/system/loopbpf-vm-check.service";
    img.write(unit, CHECK_UNIT, 0o644)?;
    img.symlink(
        unit,
        "/etc/systemd/system/multi-user.target.wants/loopbpf-vm-check.service",
    )?;
    let out = work.join("systemd-overlay.cpio");
    img.pack(&out)?;
    Ok(out)
}

/// `rootfs` then `overlay` in one file, as qemu takes one -initrd.
pub fn initrd(work: &Path, rootfs: &Path, overlay: &Path) -> Result<PathBuf> {
    let out = work.join("systemd-initrd.cpio");
    let mut to = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    for part in [rootfs, overlay] {
        let mut from =
            fs::File::open(part).with_context(|| format!("opening {}", part.display()))?;
        std::io::copy(&mut from, &mut to)?;
    }
    Ok(out)
}

/// The .deb `cargo xtask dist` wrote to `dir`.
pub fn deb_in(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("no .deb in {}", dir.display()))
}

/// `systemd-analyze security`'s verdict line from the guest's console.
pub fn exposure(o: &Outcome) -> Option<String> {
    o.lines.iter().find_map(|l| {
        let rest = l.trim().strip_prefix("loopbpf-vm-security: ")?;
        let at = rest.find("Overall exposure level")?;
        Some(rest[at..].to_string())
    })
}

/// One summary line: the check's ok, FAIL and degraded counts, time,
/// exposure score.
pub fn summarize(kernel: &str, o: &Outcome) -> String {
    let count = |what: &str| {
        o.lines
            .iter()
            .filter(|l| l.contains(&format!("loopbpf-vm-systemd: {what}")))
            .count()
    };
    format!(
        "systemd guest on kernel {kernel}: {} checks ok, {} failed, {} degraded, status {}, {:.0} s; {}",
        count("ok: "),
        count("FAIL: "),
        count("degraded: "),
        o.status.map_or("none".to_string(), |s| s.to_string()),
        o.took.as_secs_f64(),
        exposure(o).unwrap_or_else(|| "no systemd-analyze security score".into())
    )
}
