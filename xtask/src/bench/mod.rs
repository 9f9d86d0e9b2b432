//! `cargo xtask bench`: measures loopbpf against real Node processes and
//! writes BENCHMARKS.md. Not part of CI; needs root; installs wrk, perf and
//! express itself. Every number it prints is measured in that run.

mod accuracy;
mod agent_cost;
mod blocks;
mod daemon_cost;
mod latency;
mod overhead;
mod poll_cost;
mod probe_cost;
pub(crate) mod procs;
pub(crate) mod report;
mod report_page;
pub(crate) mod sections;
mod symbolization;
mod syscall_cost;
mod threadpool_cost;
mod unwind_cost;
mod v8_cost;

use crate::{cmd, toolchain, Paths};
use anyhow::{bail, Context, Result};
use procs::{Proc, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Opts {
    /// Rounds of the overhead runs (each condition once per round, the
    /// order rotating).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of each measured wrk run.
    #[arg(long, default_value_t = 4)]
    wrk_secs: u64,
    /// Only these sections: overhead, agent, syscall, poll, latency,
    /// accuracy, symbolization, threadpool, probes, report, unwind, v8.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Do not write BENCHMARKS.md (print the table only).
    #[arg(long)]
    no_write: bool,
    /// Another loopbpf binary (an older build) measured side by side with
    /// this one in the latency and agent sections: before/after in one run.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// What every benchmark needs: built binaries and the Node workloads.
pub struct Env {
    pub loopbpf: PathBuf,
    pub symbolize_bench: PathBuf,
    pub poll_loop: PathBuf,
    pub workloads: PathBuf,
    /// node_modules holding express.
    pub node_path: PathBuf,
    pub opts: Opts,
    /// What loopbpf's default syscall probes add to every syscall of the
    /// host (ns, median), once the syscall section has run: the overhead
    /// section turns it into a share of a server's CPU per request.
    pub syscall_added_ns: std::cell::Cell<Option<f64>>,
}

impl Env {
    /// `node` with the perf-map flags, cwd in `cwd` (V8 may write isolate logs there).
    pub fn node(&self, cwd: &Path, script: &str, extra_flags: &[&str]) -> Command {
        let mut c = Command::new("node");
        c.current_dir(cwd)
            .env("NODE_PATH", &self.node_path)
            .args([
                "--perf-basic-prof-only-functions",
                "--interpreted-frames-native-stack",
            ])
            .args(extra_flags)
            .arg(self.workloads.join(script));
        c
    }

    /// Starts loopbpf --json on `pids` and waits for its `ready` line.
    pub fn loopbpf(&self, kind: &str, pids: &[u32], args: &[&str], out: &Path) -> Result<Proc> {
        Ok(self.loopbpf_with_env(kind, pids, args, out, &[])?.0)
    }

    /// [`Self::loopbpf`] of binary `bin`; also returns its ready line.
    pub fn loopbpf_bin(
        &self,
        bin: &Path,
        kind: &str,
        pids: &[u32],
        args: &[&str],
        out: &Path,
    ) -> Result<(Proc, String)> {
        let mut c = Command::new(bin);
        for pid in pids {
            c.arg("--pid").arg(pid.to_string());
        }
        c.arg("--json").arg("--output").arg(out).args(args);
        let mut p = Proc::spawn(kind, &mut c)?;
        let ready = p
            .wait_for("\"type\":\"ready\"", Duration::from_secs(60))
            .context("loopbpf did not attach")?;
        Ok((p, ready.text))
    }

    /// The binaries to measure: this build, and the baseline if given.
    pub fn builds(&self) -> Vec<(&'static str, &Path)> {
        let mut builds = vec![("", self.loopbpf.as_path())];
        if let Some(b) = &self.opts.baseline {
            builds.push(("baseline: ", b.as_path()));
        }
        builds
    }

    /// `loopbpf` with environment variables; also returns the syscall probes
    /// its ready line names (`tracepoint` or `tp_btf`).
    pub fn loopbpf_with_env(
        &self,
        kind: &str,
        pids: &[u32],
        args: &[&str],
        out: &Path,
        vars: &[(&str, &str)],
    ) -> Result<(Proc, String)> {
        let mut c = Command::new(&self.loopbpf);
        c.envs(vars.iter().copied());
        for pid in pids {
            c.arg("--pid").arg(pid.to_string());
        }
        c.arg("--json").arg("--output").arg(out).args(args);
        let mut p = Proc::spawn(kind, &mut c)?;
        let ready = p
            .wait_for("\"type\":\"ready\"", Duration::from_secs(30))
            .context("loopbpf did not attach")?;
        let probes = ready
            .text
            .split_once("\"syscall_probes\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("unknown", |(probes, _)| probes)
            .to_string();
        Ok((p, probes))
    }
}

/// A benchmark: its rows of the table.
type Section = fn(&Env) -> Result<Vec<Row>>;

/// One result line of the table.
pub struct Row {
    pub section: &'static str,
    pub metric: String,
    pub value: String,
    /// The target and whether this run met it.
    pub target: Option<(String, bool)>,
}

impl Row {
    /// A measurement with no target.
    pub fn info(section: &'static str, metric: impl Into<String>, value: String) -> Row {
        Row {
            section,
            metric: metric.into(),
            value,
            target: None,
        }
    }
}

pub fn run(paths: &Paths, opts: Opts) -> Result<()> {
    anyhow::ensure!(
        crate::is_root()?,
        "cargo xtask bench needs root (eBPF, perf)"
    );
    let started = Instant::now();
    let env = setup(paths, opts)?;
    let want = |s: &str| env.opts.only.is_empty() || env.opts.only.iter().any(|o| o == s);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    // Other work on the machine makes every figure noisier; the report says how much there was.
    let busy_before = wait_for_quiet()?;
    let sections: [(&str, Section); 12] = [
        ("symbolization", symbolization::run),
        ("latency", latency::run),
        ("accuracy", accuracy::run),
        ("agent", agent_cost::run),
        ("syscall", syscall_cost::run),
        ("poll", poll_cost::run),
        ("overhead", overhead::run),
        ("threadpool", threadpool_cost::run),
        ("probes", probe_cost::run),
        ("report", report_page::run),
        ("unwind", unwind_cost::run),
        ("v8", v8_cost::run),
    ];
    let mut timings = Vec::new();
    for (name, section) in sections {
        if !want(name) {
            continue;
        }
        eprintln!("== bench: {name}");
        let t = Instant::now();
        match section(&env) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("bench {name} failed: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
        timings.push((name, t.elapsed()));
    }
    let total = started.elapsed();
    let busy = [busy_before, report::cpu_busy_pct(Duration::from_secs(2))?];
    let text = report::render(&env, &rows, &failures, &timings, total, busy)?;
    println!("{text}");
    if !env.opts.no_write {
        let path = paths.root.join("BENCHMARKS.md");
        // Sections this run does not write (the vm-test bench's, figures
        // pasted from `--only` runs) are not its to drop.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let text = sections::keep_other_sections(&text, &old);
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if !failures.is_empty() {
        bail!("{} benchmark section(s) failed", failures.len());
    }
    Ok(())
}

fn setup(paths: &Paths, opts: Opts) -> Result<Env> {
    ensure_apt("wrk", "wrk")?;
    ensure_apt("perf", "linux-perf")?;
    ensure_apt("taskset", "util-linux")?;
    let node_modules = paths.cache.join("bench-node_modules");
    if !node_modules
        .join("node_modules/express/package.json")
        .is_file()
    {
        std::fs::create_dir_all(&node_modules)?;
        let pkg = paths.root.join("bench/package.json");
        std::fs::copy(&pkg, node_modules.join("package.json"))
            .with_context(|| format!("copying {}", pkg.display()))?;
        cmd::run(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&node_modules),
        )
        .context("installing express with npm")?;
    }
    let bin_dir = toolchain::setup(&paths.cache)?;
    let loopbpf = crate::build(paths, &bin_dir, false)?;
    cmd::run(
        Command::new("cargo")
            .current_dir(&paths.root)
            .env("PATH", cmd::path_with(&bin_dir)?)
            .args([
                "build",
                "--release",
                "-p",
                "profiler-user",
                "--example",
                "symbolize_bench",
                "--example",
                "poll_loop",
            ]),
    )?;
    Ok(Env {
        loopbpf,
        symbolize_bench: paths.target.join("release/examples/symbolize_bench"),
        poll_loop: paths.target.join("release/examples/poll_loop"),
        workloads: paths.root.join("bench"),
        node_path: node_modules.join("node_modules"),
        opts,
        syscall_added_ns: Default::default(),
    })
}

/// Installs `package` with apt-get when `tool` is not on PATH (apt-get update on failure).
fn ensure_apt(tool: &str, package: &str) -> Result<()> {
    if cmd::find_in_path(tool).is_some() {
        return Ok(());
    }
    let install = || {
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", package]),
        )
    };
    if install().is_err() {
        cmd::run(Command::new("apt-get").arg("update"))?;
        install().with_context(|| format!("cannot install {package} (for {tool})"))?;
    }
    anyhow::ensure!(
        cmd::find_in_path(tool).is_some(),
        "{package} installed but {tool} is still not on PATH"
    );
    Ok(())
}

/// Waits up to a minute for the CPUs to be mostly idle (other work makes the
/// figures noisy) and returns the busy share last seen, for the report.
fn wait_for_quiet() -> Result<f64> {
    const QUIET_PCT: f64 = 20.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy = report::cpu_busy_pct(Duration::from_secs(2))?;
        if busy <= QUIET_PCT || Instant::now() > deadline {
            if busy > QUIET_PCT {
                eprintln!("bench: CPUs still {busy:.0}% busy with other work; measuring anyway");
            }
            return Ok(busy);
        }
        eprintln!("bench: CPUs {busy:.0}% busy with other work; waiting (up to 60 s) for quiet");
    }
}

/// A fresh temp dir for one workload (node's cwd, loopbpf's output).
pub fn scratch(label: &str) -> Result<TempDir> {
    TempDir::new(label)
}
