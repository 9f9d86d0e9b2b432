//! Real consumers of what loopbpf writes, for the export tests: `go tool
//! pprof` reads the pprof profiles, headless Chromium opens the HTML report.
//! Debian packages, installed here when missing so `cargo xtask test` (and
//! CI's `.ci/run`) needs no setup of its own.
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

use crate::cmd;

/// (binary, Debian package, who needs it)
const TOOLS: [(&str, &str, &str); 2] = [
    (
        "/usr/bin/go",
        "golang-go",
        "tests/tests/exports.rs: go tool pprof",
    ),
    (
        "/usr/bin/chromium",
        "chromium",
        "tests/tests/exports.rs: the HTML report",
    ),
];

pub fn ensure() -> Result<()> {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|(bin, ..)| !Path::new(bin).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, pkg, _)| *pkg).collect();
    eprintln!(
        "installing the Debian packages {} for the export tests",
        packages.join(" ")
    );
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install {}", packages.join(" ")))?;
    for (bin, pkg, why) in missing {
        anyhow::ensure!(
            Path::new(bin).is_file(),
            "{bin} still missing after apt-get install {pkg} (needed by {why})"
        );
    }
    Ok(())
}
