//! The daemon's kernel tests scrape it with a real Prometheus server: the
//! Debian package, installed here when missing so `cargo xtask test` (and so
//! CI's `.ci/run`) needs no setup of its own.
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

use crate::cmd;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

pub fn ensure() -> Result<()> {
    if Path::new(PROMETHEUS).is_file() {
        return Ok(());
    }
    eprintln!(
        "{PROMETHEUS} missing: installing the Debian package prometheus for the daemon tests"
    );
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "prometheus"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install prometheus (needed by tests/tests/daemon.rs)")?;
    anyhow::ensure!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} still missing after apt-get install"
    );
    Ok(())
}
