//! `cargo xtask install`: builds loopbpf and installs the service: the binary
//! to /usr/local/bin, the systemd unit to /etc/systemd/system and the default
//! configuration to /etc/loopbpf (an existing configuration is kept).
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{build, cmd, toolchain, Paths};

/// Where to install; `--root` prefixes every path (packaging, tests).
pub struct Target {
    pub root: PathBuf,
}

impl Target {
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(to.parent().context("no parent")?)?;
    // Through a temporary name: replacing a running binary in place would
    // fail (ETXTBSY) or corrupt it.
    let tmp = to.with_extension("xtask-tmp");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    println!("installed {}", to.display());
    Ok(())
}

pub fn run(paths: &Paths, target: Target) -> Result<()> {
    if target.root == Path::new("/") && !crate::is_root()? {
        bail!("cargo xtask install writes to /usr/local/bin and /etc: run it as root (sudo -E cargo xtask install)");
    }
    let bin_dir = toolchain::setup(&paths.cache)?;
    let loopbpf = build(paths, &bin_dir, false)?;
    copy(&loopbpf, &target.path("/usr/local/bin/loopbpf"), 0o755)?;
    let dist = paths.root.join("dist");
    // The shipped unit names the packaged /usr/bin/loopbpf; this install's
    // binary is in /usr/local/bin, and its unit in the administrator's directory.
    let unit = fs::read_to_string(dist.join("loopbpf.service"))?;
    let unit = unit.replace(
        "ExecStart=/usr/bin/loopbpf",
        "ExecStart=/usr/local/bin/loopbpf",
    );
    anyhow::ensure!(
        unit.contains("ExecStart=/usr/local/bin/loopbpf "),
        "dist/loopbpf.service has no ExecStart=/usr/bin/loopbpf line to rewrite"
    );
    let staged = paths.target.join("loopbpf.service.local");
    fs::write(&staged, unit)?;
    copy(
        &staged,
        &target.path("/etc/systemd/system/loopbpf.service"),
        0o644,
    )?;
    let config = target.path("/etc/loopbpf/loopbpf.toml");
    if config.exists() {
        println!("kept existing {}", config.display());
    } else {
        copy(&dist.join("loopbpf.toml"), &config, 0o644)?;
    }
    if target.root == Path::new("/") && cmd::find_in_path("systemctl").is_some() {
        // Fails harmlessly where systemd is not PID 1 (containers, chroots).
        let _ = cmd::run(Command::new("systemctl").arg("daemon-reload"));
    }
    println!(
        "next: systemctl enable --now loopbpf   (metrics: curl http://127.0.0.1:9569/metrics)"
    );
    Ok(())
}
