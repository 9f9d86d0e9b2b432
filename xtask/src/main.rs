//! loopbpf's build tooling: `cargo xtask <setup|build|run|test|lint|install|dist|fuzz|bench>`.

mod bench;
mod cmd;
mod dist;
mod fuzz;
mod install;
mod layout;
mod node;
mod prometheus;
mod test;
mod toolchain;
mod tools;
mod vm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test loopbpf"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs: nightly rust-src and bpf-linker (cached).
    Setup,
    /// Build the `loopbpf` binary (eBPF programs embedded).
    Build {
        /// Debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run loopbpf with the arguments after `--` (through sudo when not root).
    Run {
        #[arg(long)]
        debug: bool,
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Unit tests, then the kernel tests against real Node processes (as root).
    Test {
        /// Node.js major versions to test against.
        #[arg(long, value_delimiter = ',', default_value = "20,22,24,26")]
        node: Vec<u32>,
        /// Passed to `cargo test`, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fetch the Node.js versions into the cache; prints the LOOPBPF_NODES value.
    Nodes {
        #[arg(long, value_delimiter = ',', default_value = "20,22,24,26")]
        node: Vec<u32>,
    },
    /// rustfmt check and clippy (host crates, and the eBPF crate for its own target).
    Lint,
    /// Build loopbpf and install the service: /usr/local/bin/loopbpf,
    /// /etc/systemd/system/loopbpf.service, /etc/loopbpf/loopbpf.toml (kept if present).
    Install {
        /// Install under this directory instead of / (packaging, trying it out).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// The kernel tests in qemu guests on Debian's 6.1 and 6.12 kernels
    /// (fentry probes there); kernels fetched with apt-get download, cached.
    VmTest(vm::Opts),
    /// Inside a vm-test guest: the fentry against tracepoint cost bench.
    #[command(hide = true)]
    VmGuestBench(vm::guest_bench::Opts),
    /// Static binary, .deb and tarball in target/dist/ (man pages, completions,
    /// unit, config, licenses, dashboard, rules, DaemonSet).
    Dist,
    /// Benchmarks (not CI; as root): target overhead, agent cost, latency, accuracy,
    /// symbolization; prints a table and writes BENCHMARKS.md.
    Bench(bench::Opts),
    /// Run each fuzz target (perf-map parser, ring-record decoder) for a
    /// bounded time; installs cargo-fuzz into the cache.
    Fuzz(fuzz::Opts),
}

pub struct Paths {
    root: PathBuf,
    target: PathBuf,
    cache: PathBuf,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let paths = paths()?;
    match cli.command {
        Cmd::Setup => toolchain::setup(&paths.cache).map(drop),
        Cmd::Build { debug } => {
            let bin_dir = toolchain::setup(&paths.cache)?;
            build(&paths, &bin_dir, debug).map(drop)
        }
        Cmd::Run { debug, args } => {
            let bin_dir = toolchain::setup(&paths.cache)?;
            let loopbpf = build(&paths, &bin_dir, debug)?;
            run(&loopbpf, &args)
        }
        Cmd::Test { node, args } => test::run(&paths, &node, &args),
        Cmd::Nodes { node } => {
            println!(
                "LOOPBPF_NODES={}",
                node::ensure(&paths.cache, &node)?.env_value()
            );
            Ok(())
        }
        Cmd::Lint => lint(&paths),
        Cmd::Install { root } => install::run(&paths, install::Target { root }),
        Cmd::Dist => dist::run(&paths).map(drop),
        Cmd::Bench(opts) => bench::run(&paths, opts),
        Cmd::VmTest(opts) => vm::run(&paths, opts),
        Cmd::VmGuestBench(opts) => vm::guest_bench::run(opts),
        Cmd::Fuzz(opts) => fuzz::run(&paths, &opts),
    }
}

fn paths() -> Result<Paths> {
    // `cargo run` sets CARGO_MANIFEST_DIR at run time; the baked-in value covers a direct exec.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest
        .parent()
        .context("xtask has no parent dir")?
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::absolute(dir)?,
        None => root.join("target"),
    };
    let cache = match std::env::var_os("LOOPBPF_CACHE") {
        Some(dir) => std::path::absolute(dir)?,
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .context("neither LOOPBPF_CACHE, XDG_CACHE_HOME nor HOME is set")?
            .join("loopbpf"),
    };
    Ok(Paths {
        root,
        target,
        cache,
    })
}

/// Builds profiler-user; its build.rs (aya-build) finds bpf-linker on PATH.
pub fn build(paths: &Paths, bin_dir: &Path, debug: bool) -> Result<PathBuf> {
    let mut c = Command::new("cargo");
    c.current_dir(&paths.root)
        .env("PATH", cmd::path_with(bin_dir)?)
        .args(["build", "--package", "profiler-user"]);
    if !debug {
        c.arg("--release");
    }
    cmd::run(&mut c)?;
    let profile = if debug { "debug" } else { "release" };
    let loopbpf = paths.target.join(profile).join("loopbpf");
    anyhow::ensure!(loopbpf.is_file(), "{} was not built", loopbpf.display());
    println!("{}", loopbpf.display());
    Ok(loopbpf)
}

fn run(loopbpf: &Path, args: &[OsString]) -> Result<()> {
    let mut c = match cmd::find_in_path("sudo") {
        Some(sudo) if !is_root()? => {
            let mut c = Command::new(sudo);
            c.arg("-E").arg(loopbpf);
            c
        }
        // Root already, or no sudo: loopbpf reports missing privileges itself.
        _ => Command::new(loopbpf),
    };
    c.args(args);
    eprintln!("$ {}", cmd::show(&c));
    // exec, so Ctrl-C and loopbpf's exit status reach the caller directly.
    Err(c.exec()).with_context(|| format!("cannot exec {}", loopbpf.display()))
}

fn lint(paths: &Paths) -> Result<()> {
    let bin_dir = toolchain::setup(&paths.cache)?;
    let path = cmd::path_with(&bin_dir)?;
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(&paths.root).env("PATH", &path).args(args);
        c
    };
    // aya-build passes this cfg when it builds the eBPF crate; clippy must see the same code.
    let ebpf_cfg = format!("bpf_target_arch=\"{}\"", std::env::consts::ARCH);
    let ebpf = "profiler-ebpf";
    // profiler-ebpf only compiles for the BPF target, so it is linted on its own.
    let host: &[&str] = &["clippy", "--workspace", "--all-targets", "--exclude", ebpf];
    let bpf: &[&str] = &["+nightly", "clippy", "--package", ebpf, "--release"];
    let bpf_target: &[&str] = &["--target", "bpfel-unknown-none", "-Z", "build-std=core"];
    let deny: &[&str] = &["--", "-D", "warnings"];
    let checks = [
        ("rustfmt", vec!["fmt", "--all", "--check"]),
        ("clippy", [host, deny].concat()),
        (
            "clippy (eBPF)",
            [bpf, bpf_target, deny, &["--cfg", &ebpf_cfg]].concat(),
        ),
    ];
    // Run every check so one report lists all that need fixing.
    let mut failed = Vec::new();
    if let Err(e) = layout::check(&paths.root) {
        eprintln!("{e:#}");
        failed.push("layout (import cycles, file length)");
    }
    for (name, args) in checks {
        if let Err(e) = cmd::run(&mut cargo(&args)) {
            eprintln!("{e:#}");
            failed.push(name);
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "cargo xtask lint: {} failed",
        failed.join(", ")
    );
    println!("cargo xtask lint: clean");
    Ok(())
}

/// The effective uid, from /proc so no unsafe FFI is needed.
pub fn is_root() -> Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    Ok(euid == "0")
}
