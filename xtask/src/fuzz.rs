//! `cargo xtask fuzz`: runs each fuzz target in fuzz/ (cargo-fuzz, libFuzzer)
//! for a bounded time. cargo-fuzz is installed from crates.io into the cache
//! once, like bpf-linker; the targets link profiler-user, whose build script
//! builds the eBPF object, so bpf-linker goes on PATH too.

use crate::{cmd, toolchain, Paths};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["perf_map", "ring_record"];

#[derive(clap::Args)]
pub struct Opts {
    /// Seconds to run each target for.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only these targets (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub fn run(paths: &Paths, opts: &Opts) -> Result<()> {
    for name in &opts.only {
        if !TARGETS.contains(&name.as_str()) {
            bail!("no fuzz target {name:?}; there are: {}", TARGETS.join(", "));
        }
    }
    let bpf_linker = toolchain::setup(&paths.cache)?;
    let cargo_fuzz = ensure_cargo_fuzz(&paths.cache)?;
    let path = cmd::path_with(&bpf_linker)?;
    let path =
        std::env::join_paths(std::iter::once(cargo_fuzz).chain(std::env::split_paths(&path)))?;
    let fuzz_dir = paths.root.join("fuzz");
    for target in TARGETS
        .iter()
        .filter(|t| opts.only.is_empty() || opts.only.iter().any(|o| o == *t))
    {
        let started = Instant::now();
        // libFuzzer stops cleanly after max_total_time; a crash fails the
        // command and leaves the input under fuzz/artifacts/<target>/.
        cmd::run(
            Command::new("cargo")
                .current_dir(&fuzz_dir)
                .env("PATH", &path)
                .args(["+nightly", "fuzz", "run", target, "--fuzz-dir"])
                .arg(&fuzz_dir)
                .args(["--", &format!("-max_total_time={}", opts.seconds)]),
        )?;
        println!(
            "cargo xtask fuzz: {target}: no crash in {}s of fuzzing ({:.0?} with the build)",
            opts.seconds,
            started.elapsed()
        );
    }
    Ok(())
}

/// Installs cargo-fuzz into the cache unless it is there; returns its bin dir.
fn ensure_cargo_fuzz(cache: &Path) -> Result<PathBuf> {
    let root = cache.join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin_dir = root.join("bin");
    let binary = bin_dir.join("cargo-fuzz");
    let expected = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    if cmd::probe(Command::new(&binary).arg("--version")).as_deref() == Some(&*expected) {
        println!("cargo-fuzz: cached {expected} at {}", binary.display());
        return Ok(bin_dir);
    }
    cmd::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin_dir)
}
