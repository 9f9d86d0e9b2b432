//! `cargo xtask dist`: what an operator installs, in target/dist/:
//! - `loopbpf`: one static x86_64 binary (musl; every dependency is pure Rust);
//! - `loopbpf_VERSION_amd64.deb`: /usr/bin/loopbpf, the unit in
//!   /usr/lib/systemd/system, the default config as a conffile, man pages,
//!   bash/zsh/fish completions, licenses and the operators' kit (dashboard,
//!   rules, DaemonSet) in /usr/share/loopbpf;
//! - `loopbpf-VERSION-x86_64-linux-musl.tar.gz`: the same files for other distributions.
//!
//! The .deb is assembled with dpkg-deb directly: the layout is small and fixed,
//! and cargo-deb would be one more tool to install and build in CI.
use anyhow::{ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cmd, toolchain, Paths};

pub const MUSL: &str = "x86_64-unknown-linux-musl";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the static binary (profiler-user's build.rs builds the eBPF side
/// with bpf-linker, as for the host build).
fn build_static(paths: &Paths, bin_dir: &Path) -> Result<PathBuf> {
    let mut c = Command::new("cargo");
    c.current_dir(&paths.root)
        .env("PATH", cmd::path_with(bin_dir)?)
        .args(["build", "--release", "--package", "profiler-user"])
        // musl targets link statically by default (static-pie: no loader).
        .args(["--target", MUSL]);
    cmd::run(&mut c).context(
        "static build: is the musl target installed? (rustup target add x86_64-unknown-linux-musl)",
    )?;
    let bin = paths.target.join(MUSL).join("release/loopbpf");
    ensure!(bin.is_file(), "{} was not built", bin.display());
    ensure!(
        !has_interpreter(&fs::read(&bin)?),
        "{} asks for a dynamic loader: it is not static",
        bin.display()
    );
    Ok(bin)
}

/// Whether an ELF64 file has a PT_INTERP program header (dynamically linked).
pub fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..count as usize).any(|i| {
        let at = phoff as usize + i * entsize as usize;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Every file of the package under `root` (the .deb's and the tarball's tree).
fn stage(paths: &Paths, bin: &Path, root: &Path) -> Result<()> {
    let dist = paths.root.join("dist");
    copy(bin, &root.join("usr/bin/loopbpf"), 0o755)?;
    copy(
        &dist.join("loopbpf.service"),
        &root.join("usr/lib/systemd/system/loopbpf.service"),
        0o644,
    )?;
    copy(
        &dist.join("loopbpf.toml"),
        &root.join("etc/loopbpf/loopbpf.toml"),
        0o644,
    )?;
    // Man pages and completions from the binary's own clap definition.
    let assets = root.parent().context("no parent")?.join("assets");
    let _ = fs::remove_dir_all(&assets);
    cmd::run(Command::new(bin).arg("__assets").arg(&assets))?;
    for page in ["loopbpf.1", "loopbpf-daemon.1"] {
        let to = root.join("usr/share/man/man1").join(format!("{page}.gz"));
        fs::create_dir_all(to.parent().context("no parent")?)?;
        // -n: no name or time stamp inside, so rebuilds are byte-identical.
        let gz = cmd::output_bytes(
            Command::new("gzip")
                .args(["-9n", "-c"])
                .arg(assets.join(page)),
        )?;
        fs::write(&to, gz)?;
    }
    for (file, to) in [
        (
            "loopbpf.bash",
            "usr/share/bash-completion/completions/loopbpf",
        ),
        ("_loopbpf", "usr/share/zsh/vendor-completions/_loopbpf"),
        (
            "loopbpf.fish",
            "usr/share/fish/vendor_completions.d/loopbpf.fish",
        ),
    ] {
        copy(&assets.join(file), &root.join(to), 0o644)?;
    }
    let doc = root.join("usr/share/doc/loopbpf");
    for f in ["LICENSE-MIT", "LICENSE-APACHE", "README.md"] {
        copy(&paths.root.join(f), &doc.join(f), 0o644)?;
    }
    write(&doc.join("copyright"), COPYRIGHT, 0o644)?;
    let kit = root.join("usr/share/loopbpf");
    for f in KIT {
        copy(&dist.join(f), &kit.join(f), 0o644)?;
    }
    Ok(())
}

/// The operators' kit, shipped in /usr/share/loopbpf.
pub const KIT: [&str; 4] = [
    "grafana-dashboard.json",
    "prometheus-rules.yml",
    "daemonset.yaml",
    "loopbpf.toml",
];

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: loopbpf

Files: *
Copyright: the loopbpf authors
License: MIT or Apache-2.0
 The full texts are LICENSE-MIT and LICENSE-APACHE in this directory.
";

fn control(installed_kb: u64) -> String {
    format!(
        "Package: loopbpf
Version: {VERSION}
Architecture: amd64
Maintainer: loopbpf authors <loopbpf@localhost>
Section: admin
Priority: optional
Installed-Size: {installed_kb}
Description: why Node.js event loops block, from outside the process (eBPF)
 loopbpf measures every event-loop iteration of running Node.js processes from
 the kernel, with no inspector, flag or restart, and for each iteration busy
 longer than a threshold records where the time went. `loopbpf --pid N` runs a
 session; the loopbpf service watches every Node process on the host and
 serves Prometheus metrics. The service is installed but not started.
"
    )
}

/// Registers the unit with systemd, never enables nor starts it: an agent
/// that loads BPF programs starts when the operator says so.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    echo "loopbpf: installed, not started. Start it with: systemctl enable --now loopbpf"
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now loopbpf.service >/dev/null 2>&1 || true
fi
"#;

/// On purge the episode store goes too (dpkg removes the conffile itself).
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    rm -rf /var/lib/loopbpf
fi
"#;

fn du_kb(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = fs::symlink_metadata(e.path())?;
        total += if meta.is_dir() {
            du_kb(&e.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(total)
}

fn build_deb(root: &Path, out: &Path) -> Result<()> {
    let installed = du_kb(root)?;
    let debian = root.join("DEBIAN");
    write(&debian.join("control"), &control(installed), 0o644)?;
    write(
        &debian.join("conffiles"),
        "/etc/loopbpf/loopbpf.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(root)
            .arg(out),
    )
}

/// Builds everything into target/dist/ and returns that directory.
pub fn run(paths: &Paths) -> Result<PathBuf> {
    let bin_dir = toolchain::setup(&paths.cache)?;
    let built = build_static(paths, &bin_dir)?;
    let dir = paths.target.join("dist");
    fs::create_dir_all(&dir)?;
    let binary = dir.join("loopbpf");
    copy(&built, &binary, 0o755)?;

    // `docker build -f Containerfile target/dist`: the DaemonSet's image.
    copy(
        &paths.root.join("dist/Containerfile"),
        &dir.join("Containerfile"),
        0o644,
    )?;

    let name = format!("loopbpf_{VERSION}_amd64");
    // The package tree is staged beside target/dist, which holds only what ships.
    let root = paths.target.join("dist-stage").join(&name);
    let _ = fs::remove_dir_all(&root);
    stage(paths, &built, &root)?;

    let tar_name = format!("loopbpf-{VERSION}-x86_64-linux-musl");
    let tarball = dir.join(format!("{tar_name}.tar.gz"));
    cmd::run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--owner=0", "--group=0", "--transform"])
            .arg(format!("s,^\\.,{tar_name},"))
            .arg("-czf")
            .arg(&tarball)
            .arg("."),
    )?;

    let deb = dir.join(format!("{name}.deb"));
    build_deb(&root, &deb)?;
    for f in [&binary, &deb, &tarball] {
        println!("{}", f.display());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_dynamically_linked_xtask_has_an_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(super::has_interpreter(&me));
        assert!(super::has_interpreter(b"not an elf"));
    }
}
