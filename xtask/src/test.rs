//! `cargo xtask test`: unit tests, then the kernel (integration) tests against real Node processes.

use crate::{build, cmd, dist, node, toolchain, Paths};
use anyhow::{bail, Result};
use std::ffi::OsString;
use std::process::Command;
use std::time::Instant;

pub fn run(paths: &Paths, majors: &[u32], args: &[String]) -> Result<()> {
    if !crate::is_root()? {
        bail!("cargo xtask test: the kernel tests load BPF programs and must run as root (try: sudo -E cargo xtask test)");
    }
    let start = Instant::now();
    let bin_dir = toolchain::setup(&paths.cache)?;
    let loopbpf = build(paths, &bin_dir, false)?;
    // Built once per run: tests/tests/package.rs installs the .deb and runs
    // the static binary from here.
    let dist = dist::run(paths)?;
    let nodes = node::ensure(&paths.cache, majors)?.env_value();
    crate::prometheus::ensure()?;
    crate::tools::ensure()?;
    let path = cmd::path_with(&bin_dir)?;
    let cargo_test = || {
        let mut c = Command::new("cargo");
        c.current_dir(&paths.root)
            .env("PATH", &path)
            .env("LOOPBPF_BIN", &loopbpf)
            .env("LOOPBPF_DIST", &dist)
            .env("LOOPBPF_NODES", &nodes)
            // Tests that cannot load BPF must fail here rather than skip: this run is the proof.
            .env("LOOPBPF_REQUIRE_KERNEL", "1")
            // Report every failing test binary in one run, not just the first.
            .args(["test", "--release", "--no-fail-fast"]);
        c
    };

    let mut failed = Vec::new();
    let unit = cmd::run(
        cargo_test()
            .args(["--workspace", "--exclude", "profiler-ebpf"])
            .args(["--exclude", "integration-tests"])
            .args(args),
    );
    if let Err(e) = unit {
        eprintln!("{e:#}");
        failed.push("unit tests");
    }
    // The kernel tests measure how long a loop was blocked: two at once would skew each other.
    let kernel = cmd::run(
        cargo_test()
            .args(["--package", "integration-tests"])
            .args(with_test_threads_1(args)),
    );
    if let Err(e) = kernel {
        eprintln!("{e:#}");
        failed.push("kernel tests");
    }
    let took = start.elapsed().as_secs();
    if !failed.is_empty() {
        bail!(
            "cargo xtask test: {} failed ({took}s)",
            failed.join(" and ")
        );
    }
    println!("cargo xtask test: unit and kernel tests passed ({took}s)");
    Ok(())
}

/// Appends `--test-threads=1` for libtest, after the caller's own `--` if they gave one.
fn with_test_threads_1(args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = args.iter().map(OsString::from).collect();
    if !args.iter().any(|a| a == "--") {
        out.push("--".into());
    }
    out.push("--test-threads=1".into());
    out
}
