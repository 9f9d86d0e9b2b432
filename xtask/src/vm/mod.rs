//! `cargo xtask vm-test --kernel 6.1|6.12|all`: the kernel tests in qemu
//! guests running Debian's 6.1 and 6.12 kernels, where (unlike this host)
//! ftrace hooks are allowed and loopbpf picks its fentry probes.
//!
//! One initramfs serves every kernel: busybox, loopbpf, the kernel-test
//! binaries (`cargo test --no-run`), Node and the test scripts. Its /init runs
//! `GUEST_TESTS` and prints `qemu::END_MARKER` with their status on the serial
//! console, which is all the host reads back. Guests use KVM when a KVM guest
//! boots here, else pure emulation (TCG, JIT code ~100x slower): the tests'
//! timeouts are stretched (`LOOPBPF_TEST_TIME_SCALE`), their blocks are timed
//! by the scripts themselves, and the tests that bound loop work (blocks,
//! wedged, healthy) scale their thresholds and block lengths by the guest's
//! speed factor, measured at boot against the host with a calibration loop
//! (`LOOPBPF_TEST_SPEED_FACTOR`), so nothing depends on the guest's speed.

pub mod guest_bench;
mod image;
mod kernel;
mod qemu;
mod systemd;

use crate::{build, cmd, node, toolchain, Paths};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kernel::Series;
use qemu::{Accel, Boot, Outcome};

/// BENCHMARKS.md's section written by `vm-test --bench` (and kept by
/// `cargo xtask bench`, which does not write it).
const EMULATED_SECTION: &str = "## fentry against tracepoints, under emulation";

/// The Node major in the guests (the machine's own Node where it is 20).
const NODE: u32 = 20;

/// Kernel tests run in each guest: (test binary, name filter). A stated
/// subset: every syscall-probe test (fentry by default there, tracepoint and
/// tp_btf forced, tracefs missing, a loop asleep at attach, blocks.js and
/// execSync through each), a nested execSync loop, and the tests whose
/// thresholds and block lengths scale by the guest's measured speed factor
/// (blocks, wedged, healthy: `LOOPBPF_TEST_SPEED_FACTOR`, see test_script),
/// on one Node major. The full suite under emulation would not fit CI's hour.
const GUEST_TESTS: [(&str, &str); 5] = [
    ("syscall_probes", ""),
    ("exec_sync", "node20"),
    ("wedged", "node20"),
    ("blocks", "node20"),
    ("healthy", "node20"),
];

/// `--tests` name of the systemd case (systemd.rs): in the default set, run
/// once, on the newest kernel selected.
const SYSTEMD_CASE: &str = "systemd";

#[derive(clap::Args)]
pub struct Opts {
    /// Kernel series to boot: 6.1, 6.12 or all.
    #[arg(long, default_value = "all")]
    kernel: String,
    /// auto (KVM if a KVM guest boots here, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Guest CPUs. Under TCG each one can take a host core.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Minutes a guest may run before it is stopped and counted as failed.
    #[arg(long, default_value_t = 25)]
    timeout_minutes: u64,
    /// Only these tests (`binary` or `binary:filter`, comma-separated, and
    /// `systemd` for the unit under systemd) instead of the standard set.
    #[arg(long, value_delimiter = ',')]
    tests: Vec<String>,
    /// Instead of the tests: what the fentry probes cost against the
    /// tracepoints in each guest (see guest_bench.rs), printed as a table.
    #[arg(long)]
    bench: bool,
}

pub fn run(paths: &Paths, opts: Opts) -> Result<()> {
    let series = Series::parse(&opts.kernel)?;
    ensure_host_tools()?;
    let (selected, systemd_case): (Vec<(String, String)>, bool) = if opts.tests.is_empty() {
        let standard = GUEST_TESTS
            .iter()
            .map(|(b, f)| (b.to_string(), f.to_string()))
            .collect();
        (standard, !opts.bench)
    } else {
        let named = opts
            .tests
            .iter()
            .filter(|t| *t != SYSTEMD_CASE)
            .map(|t| match t.split_once(':') {
                Some((b, f)) => (b.to_string(), f.to_string()),
                None => (t.clone(), String::new()),
            })
            .collect();
        (named, opts.tests.iter().any(|t| t == SYSTEMD_CASE))
    };
    // The rootfs is built (minutes of downloads and dpkg, little CPU) while
    // cargo builds, when this recipe has no cached one.
    let rootfs = systemd_case.then(|| {
        let cache = paths.cache.clone();
        std::thread::spawn(move || systemd::rootfs(&cache))
    });
    let bin_dir = toolchain::setup(&paths.cache)?;
    let loopbpf = build(paths, &bin_dir, false)?;
    let binaries = if opts.bench {
        Vec::new()
    } else {
        build_test_binaries(paths, &bin_dir, &selected)?
    };
    // Before any guest boots: a build, package or mirror failure ends the
    // run at once.
    let systemd_parts = match rootfs {
        Some(rootfs) => {
            let deb = systemd::deb_in(&crate::dist::run(paths)?)?;
            let rootfs = rootfs
                .join()
                .map_err(|_| anyhow::anyhow!("the rootfs build panicked"))??;
            Some((deb, rootfs))
        }
        None => None,
    };
    let nodes = node::ensure(&paths.cache, &[NODE])?.env_value();
    let node_path = nodes
        .split_once('=')
        .map(|(_, p)| PathBuf::from(p))
        .context("node path")?;

    let work = paths.target.join("vm");
    std::fs::create_dir_all(&work)?;
    let kernels: Vec<_> = series
        .iter()
        .map(|&s| kernel::ensure(&paths.cache, s).map(|k| (s, k)))
        .collect::<Result<_>>()?;

    let accel = match opts.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        "auto" => {
            let probe = work.join("probe.cpio");
            let mut img = image::Image::new(&work.join("probe-root"))?;
            img.init(&format!(
                "#!/bin/busybox sh\n/bin/busybox echo '{} 0'\n/bin/busybox poweroff -f\n",
                qemu::END_MARKER
            ))?;
            img.pack(&probe)?;
            if qemu::kvm_works(&kernels[0].1.vmlinuz, &probe)? {
                Accel::Kvm
            } else {
                println!("vm-test: a KVM guest does not boot here; emulating (TCG)");
                Accel::Tcg
            }
        }
        other => bail!("--accel {other}: want auto, kvm or tcg"),
    };
    // Timeouts only: TCG runs JIT code ~100x slower, the kernel ~10-30x.
    let time_scale = match accel {
        Accel::Kvm => 3,
        Accel::Tcg => 20,
    };

    let initrd = work.join("initramfs.cpio");
    let mut img = image::Image::new(&work.join("root"))?;
    img.binary(&loopbpf)?;
    img.binary(&node_path)?;
    for (_, path, _) in &binaries {
        img.binary(path)?;
    }
    img.dir(&paths.root.join("tests").join("node"))?;
    let script = if opts.bench {
        let poll_loop = build_poll_loop(paths, &bin_dir)?;
        let xtask = std::env::current_exe().context("the xtask binary")?;
        img.binary(&poll_loop)?;
        img.binary(&xtask)?;
        let run = format!(
            "'{}' vm-guest-bench --rounds 4 --calls 500000 --loopbpf '{}' --poll-loop '{}' || status=1\n",
            xtask.display(),
            loopbpf.display(),
            poll_loop.display()
        );
        guest_script(&run, &loopbpf, &nodes, time_scale)
    } else {
        let calibrate = paths.root.join("tests").join("node").join("calibrate.js");
        let speed = Calibration {
            host_cpu_ms: host_calibration_ms(&node_path, &calibrate)?,
            node: node_path.clone(),
            script: calibrate,
        };
        println!(
            "vm-test: speed calibration on the host: {:.1} ms of CPU (best of 3)",
            speed.host_cpu_ms
        );
        test_script(&loopbpf, &nodes, &binaries, time_scale, &speed)
    };
    img.init(&script)?;
    img.pack(&initrd)?;

    let mut failed = Vec::new();
    let mut summary = Vec::new();
    let mut bench_tables = Vec::new();
    let busybox_guests = opts.bench || !binaries.is_empty();
    for (s, k) in kernels.iter().filter(|_| busybox_guests) {
        let boot = Boot {
            vmlinuz: &k.vmlinuz,
            initrd: &initrd,
            accel,
            // The bench on one vCPU: under single-threaded TCG a second
            // vCPU running loopbpf would take host time from the measured one.
            cpus: if opts.bench { 1 } else { opts.cpus },
            memory_mb: 2048,
            append: qemu::BUSYBOX_INIT,
            tag: format!("[{}]", s.name()),
            timeout: Duration::from_secs(opts.timeout_minutes * 60),
        };
        let outcome = boot.run()?;
        summary.push(summarize(s.name(), &k.package, accel, &outcome));
        if opts.bench && outcome.status == Some(0) {
            let table: Vec<&str> = outcome
                .lines
                .iter()
                .filter_map(|l| l.trim().strip_prefix("loopbpf-vm-bench: |"))
                .collect();
            bench_tables.push(format!(
                "Kernel {} (`{}`), {}, vCPUs: {}\n\n{}\n",
                s.name(),
                k.package,
                accel.name(),
                if opts.bench { 1 } else { opts.cpus },
                table
                    .iter()
                    .map(|l| format!("|{l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        if let Err(e) = qemu::check(s.name(), &outcome) {
            eprintln!("{e:#}");
            failed.push(s.name());
        }
    }
    if let (Some((deb, rootfs)), Some((s, k))) = (&systemd_parts, kernels.last()) {
        let overlay = systemd::overlay(&work, deb, &node_path, time_scale)?;
        let initrd = systemd::initrd(&work, rootfs, &overlay)?;
        let boot = Boot {
            vmlinuz: &k.vmlinuz,
            initrd: &initrd,
            accel,
            cpus: opts.cpus,
            memory_mb: 2048,
            append: systemd::APPEND,
            tag: format!("[{} systemd]", s.name()),
            timeout: Duration::from_secs(opts.timeout_minutes * 60),
        };
        let outcome = boot.run()?;
        summary.push(systemd::summarize(s.name(), &outcome));
        if let Err(e) = qemu::check(&format!("{} (systemd)", s.name()), &outcome) {
            eprintln!("{e:#}");
            failed.push("systemd");
        }
    }
    if opts.bench && !bench_tables.is_empty() {
        write_bench_section(&paths.root.join("BENCHMARKS.md"), &bench_tables)?;
    }
    println!("vm-test summary:");
    for line in &summary {
        println!("  {line}");
    }
    if !failed.is_empty() {
        bail!(
            "cargo xtask vm-test: failed on kernel {}",
            failed.join(", ")
        );
    }
    println!(
        "cargo xtask vm-test: passed on kernel {}",
        kernels
            .iter()
            .map(|(s, _)| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Replaces BENCHMARKS.md's emulated section with these tables.
fn write_bench_section(path: &Path, tables: &[String]) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!(
        "{EMULATED_SECTION}\n\n\
         Written by `cargo xtask vm-test --bench` on {}: measured inside qemu guests under \
         emulation (TCG unless KVM is named), where every time is many times the host's. \
         Only the ratios mean anything outside the guest. Each cell is the median (min..max) \
         over rounds of the median of 3 batches; conditions interleaved in rotating order; \
         `+ fentry`/`+ tracepoint` are what loopbpf adds to the call with \
         `LOOPBPF_SYSCALL_PROBES` set so (`poll_loop`, watched with `--force --no-threadpool`, \
         or a second `poll_loop getppid` it does not watch).\n\n{}",
        crate::cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?,
        tables.join("\n")
    );
    let text = crate::bench::sections::replace_section(&old, EMULATED_SECTION, &section);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// One line per kernel: package, accelerator, time, and libtest's totals.
fn summarize(name: &str, package: &str, accel: Accel, o: &Outcome) -> String {
    let (mut passed, mut failed) = (0u32, 0u32);
    for l in &o.lines {
        // "test result: ok. 7 passed; 0 failed; 0 ignored; …"
        if let Some(rest) = l.trim().strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(what)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u32>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let took: Vec<&str> = o
        .lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix(TOOK))
        .map(str::trim)
        .collect();
    format!(
        "kernel {name} ({package}, {}): {passed} passed, {failed} failed, status {}, {:.0} s ({})",
        accel.name(),
        o.status.map_or("none".to_string(), |s| s.to_string()),
        o.took.as_secs_f64(),
        took.join("; ")
    )
}

/// Builds the kernel-test binaries without running them; returns (name,
/// executable, filter) for each selected one.
fn build_test_binaries(
    paths: &Paths,
    bin_dir: &Path,
    selected: &[(String, String)],
) -> Result<Vec<(String, PathBuf, String)>> {
    let mut c = Command::new("cargo");
    c.current_dir(&paths.root)
        .env("PATH", cmd::path_with(bin_dir)?)
        .args([
            "test",
            "--release",
            "--package",
            "integration-tests",
            "--no-run",
        ])
        .args(["--message-format", "json"]);
    let out = cmd::output(&mut c)?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        if v["target"]["kind"][0] != "test" {
            continue;
        }
        for (b, f) in selected {
            if b == name {
                found.push((b.clone(), PathBuf::from(exe), f.clone()));
            }
        }
    }
    for (b, _) in selected {
        if !found.iter().any(|(n, _, _)| n == b) {
            bail!("no kernel-test binary named {b} (see tests/tests/)");
        }
    }
    Ok(found)
}

/// The example the guest bench times (`bench/poll_loop.rs`).
fn build_poll_loop(paths: &Paths, bin_dir: &Path) -> Result<PathBuf> {
    cmd::run(
        Command::new("cargo")
            .current_dir(&paths.root)
            .env("PATH", cmd::path_with(bin_dir)?)
            .args(["build", "--release", "--package", "profiler-user"])
            .args(["--example", "poll_loop"]),
    )?;
    Ok(paths.target.join("release/examples/poll_loop"))
}

/// Console line prefix of the guest's speed calibration.
const SPEED: &str = "loopbpf-vm-test: speed calibration";

/// Console line prefix of a test binary's guest time.
const TOOK: &str = "loopbpf-vm-test: took";

/// `tests/node/calibrate.js` and what it took on the host.
struct Calibration {
    node: PathBuf,
    script: PathBuf,
    host_cpu_ms: f64,
}

/// The calibration's CPU time on the host, best of 3: CPU time, not wall
/// time, so that builds running beside it do not make the guest look fast.
fn host_calibration_ms(node: &Path, script: &Path) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let out = cmd::output(Command::new(node).arg(script))?;
        let cpu = out
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms > 0.0)
            .with_context(|| format!("{}: no CPU time in {out:?}", script.display()))?;
        best = best.min(cpu);
    }
    Ok(best)
}

/// Runs the tests one binary at a time, after measuring how much slower the
/// guest runs the calibration than the host (its wall time against the
/// host's CPU time): `LOOPBPF_TEST_SPEED_FACTOR`, at least 1.
fn test_script(
    loopbpf: &Path,
    nodes: &str,
    binaries: &[(String, PathBuf, String)],
    time_scale: u32,
    speed: &Calibration,
) -> String {
    let mut run = format!(
        "cal=$('{}' '{}' | awk '{{print $1}}')\n\
         factor=$(awk -v g=\"$cal\" -v h={:.1} 'BEGIN {{ f = g / h; if (!(f >= 1)) f = 1; printf \"%.1f\", f }}')\n\
         [ -n \"$cal\" ] || {{ echo 'loopbpf-vm-test: FAIL: the speed calibration printed nothing'; status=1; }}\n\
         echo \"{SPEED}: guest $cal ms wall, host {:.1} ms CPU: factor $factor\"\n\
         export LOOPBPF_TEST_SPEED_FACTOR=$factor\n",
        speed.node.display(),
        speed.script.display(),
        speed.host_cpu_ms,
        speed.host_cpu_ms,
    );
    for (name, exe, filter) in binaries {
        run += &format!(
            "echo 'loopbpf-vm-test: {name} {filter}'\n\
             t0=$(date +%s)\n\
             '{}' --test-threads=1 {filter} || status=1\n\
             echo \"{TOOK} {name} {filter}: $(($(date +%s) - t0)) s\"\n",
            exe.display()
        );
    }
    guest_script(&run, loopbpf, nodes, time_scale)
}

/// The guest's PID 1: mounts what loopbpf and the tests need, runs `run`
/// (shell lines that set `status` on failure), prints the end marker and
/// powers off.
fn guest_script(run: &str, loopbpf: &Path, nodes: &str, time_scale: u32) -> String {
    // Debian's kernels default to perf_event_paranoid=3, where the cpu-clock
    // events cannot be opened without CAP_SYS_ADMIN (the no-CAP_SYS_ADMIN
    // test fails on that, not on the syscall probes): 2, as on the host.
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t debugfs debugfs /sys/kernel/debug\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         ip link set lo up 2>/dev/null\n\
         echo \"loopbpf-vm-test: perf_event_paranoid was $(cat /proc/sys/kernel/perf_event_paranoid), set to 2 as on the host\"\n\
         echo 2 > /proc/sys/kernel/perf_event_paranoid\n\
         echo \"loopbpf-vm-test: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB\"\n\
         cd /root\n",
    );
    s += &format!(
        "export LOOPBPF_BIN='{}' LOOPBPF_NODES='{nodes}' LOOPBPF_REQUIRE_KERNEL=1\n\
         export LOOPBPF_TEST_TIME_SCALE={time_scale} LOOPBPF_EXPECT_SYSCALL_PROBES=fentry\n\
         status=0\n",
        loopbpf.display()
    );
    s += run;
    s += &format!("echo \"{} $status\"\npoweroff -f\n", qemu::END_MARKER);
    s
}

/// qemu, cpio and a static busybox, installed from Debian's packages when
/// missing (as root).
fn ensure_host_tools() -> Result<()> {
    let missing = ["qemu-system-x86_64", "cpio"]
        .iter()
        .any(|t| cmd::find_in_path(t).is_none())
        || !Path::new("/bin/busybox").is_file();
    if !missing {
        return Ok(());
    }
    if !crate::is_root()? {
        bail!("vm-test needs qemu-system-x86, cpio and busybox-static: apt-get install qemu-system-x86 cpio busybox-static");
    }
    cmd::run(Command::new("apt-get").args([
        "install",
        "-y",
        "-q",
        "qemu-system-x86",
        "cpio",
        "busybox-static",
    ]))
}
