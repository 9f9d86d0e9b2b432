//! Statistics helpers and the report: a markdown table printed to stdout and
//! written to BENCHMARKS.md, with the machine, date and commands of the run.

use super::procs::commands;
use super::{Env, Row};
use crate::cmd;
use anyhow::Result;
use std::fmt::Write;
use std::process::Command;
use std::time::Duration;

/// `with[i] - without[i]`: each round's run against the same round's baseline.
pub fn differences(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter().zip(without).map(|(w, o)| w - o).collect()
}

pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        Stats {
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            median: percentile(values, 50.0),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// `median (min..max)`.
    pub fn fmt(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}..{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// Nearest-rank percentile; NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Share of all CPUs busy (not idle/iowait) over `window`, from /proc/stat.
pub fn cpu_busy_pct(window: Duration) -> Result<f64> {
    let sample = || -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        anyhow::ensure!(v.len() >= 5, "malformed /proc/stat: {line}");
        // user nice system idle iowait irq softirq steal (guest is inside user).
        let total: u64 = v.iter().take(8).sum();
        Ok((total, v[3] + v[4]))
    };
    let (t0, i0) = sample()?;
    std::thread::sleep(window);
    let (t1, i1) = sample()?;
    let total = (t1 - t0).max(1) as f64;
    Ok(100.0 * (1.0 - (i1 - i0) as f64 / total))
}

fn machine(busy: [f64; 2]) -> Result<String> {
    let kernel = cmd::output(Command::new("uname").arg("-r"))?;
    let nproc = cmd::output(&mut Command::new("nproc"))?;
    let date = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let node = cmd::output(Command::new("node").arg("--version"))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    Ok(format!(
        "- date: {date}\n- kernel: {kernel}\n- CPUs: {nproc} ({cpu})\n- node: {node}\n\
         - other work on the machine: CPUs {:.0}% busy in the 2 s before the benchmarks (after \
         waiting up to 60 s for under 20%) and {:.0}% in the 2 s after; load average at the end {} (1, 5, 15 min). Anything but \
         an idle machine makes the overhead and latency figures noisy.\n",
        busy[0],
        busy[1],
        load.join(" ")
    ))
}

pub fn render(
    env: &Env,
    rows: &[Row],
    failures: &[String],
    timings: &[(&str, Duration)],
    total: Duration,
    busy: [f64; 2],
) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "# loopbpf benchmarks\n")?;
    writeln!(
        s,
        "Written by `cargo xtask bench` (not part of CI; run it as root on an idle machine). \
         Every number below was measured in the run described here; rerun to refresh.\n"
    )?;
    writeln!(s, "## Machine\n\n{}", machine(busy)?)?;
    writeln!(s, "## Results\n")?;
    writeln!(s, "| section | measurement | result | target |")?;
    writeln!(s, "|---|---|---|---|")?;
    for r in rows {
        let target = match &r.target {
            Some((t, true)) => format!("PASS ({t})"),
            Some((t, false)) => format!("**FAIL** ({t})"),
            None => String::new(),
        };
        writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.section, r.metric, r.value, target
        )?;
    }
    for f in failures {
        writeln!(
            s,
            "| error | {} | | **FAIL** |",
            f.replace('|', "/").replace('\n', " ")
        )?;
    }
    let passed = rows
        .iter()
        .filter(|r| matches!(r.target, Some((_, true))))
        .count();
    let targets = rows.iter().filter(|r| r.target.is_some()).count() + failures.len();
    writeln!(s, "\n{passed}/{targets} targets met.\n")?;
    writeln!(s, "## How it was measured\n")?;
    writeln!(
        s,
        "- **Target overhead**: twins. Two copies of `bench/server.js` (plain `http`, or \
         `express`) pinned together to CPU 1 with taskset, each loaded by its own \
         `wrk -t1 -c32` pinned to CPU 0, for {} s at the same time after a 1 s warm-up; one twin \
         runs under the profiler (loopbpf and perf are not pinned), the other does not, and \
         which one alternates by round. Results are the profiled twin's figure over its \
         twin's from the same seconds, as median (min..max) over {} rounds; the A/A row (no \
         profiler on either) is the noise floor. Back-to-back runs of one server could not \
         show a 1% effect here: its req/s moved up to 2x between runs a minute apart, and \
         the twins' drift cancels. What both twins pay is outside the ratio: the \
         profiler's own process (see agent cost) and loopbpf's host-wide probe costs, of \
         which the syscall-tracing slow path is the larger: the host-wide row multiplies the \
         server's syscalls per request (`perf stat -e raw_syscalls:sys_enter -C 1`, the \
         server alone on CPU 1) by the per-syscall cost from the syscall section, and the \
         target adds it to the twin ratio's loss. CPU/req is a server's on-CPU time \
         (/proc/PID/task/*/schedstat) per request. All servers run with the perf-map flags.",
        env.opts.wrk_secs, env.opts.rounds
    )?;
    writeln!(
        s,
        "- **Agent cost**: loopbpf's utime+stime (/proc/PID/stat) from its `ready` line over a \
         15 s window, and VmHWM, watching `bench/busy.js` processes (0.5 ms of work every 10 ms, \
         a 60 ms block every 2 s)."
    )?;
    writeln!(
        s,
        "- **Detection latency**: `bench/blocker.js` blocks 30 x 100 ms; latency is the \
         CLOCK_MONOTONIC time the harness read the episode line minus the block's end \
         (`process.hrtime.bigint()` in the workload)."
    )?;
    writeln!(
        s,
        "- **Accuracy**: the same workload with blocks from 20 ms to 2 s and `--threshold 10ms`; \
         error is |`duration_ms` - the workload's own measurement|. `monitorEventLoopDelay` \
         (resolution 10 ms) is reset before each block and read 25 ms after it."
    )?;
    writeln!(
        s,
        "- **Poll cost**: `bench/poll_loop.rs` calls `epoll_wait` with \
         timeout 0 on an empty set, 3 x 1M times (median batch), with no loopbpf, with \
         loopbpf watching a `bench/busy.js` process, and with `loopbpf --force` watching the \
         loop itself (every call is then a whole event-loop iteration: enter, exit, \
         statistics), 5 rounds in rotating order; added = with minus the same round's run \
         without. Unwatched, it is the tracepoint and the watched-bitmap test; watched, the \
         full per-iteration path."
    )?;
    writeln!(
        s,
        "- **Symbolization**: `bench/symbolize_bench.rs` writes a synthetic V8 \
         perf map for a sleeping child, loads it with `PerfMap`, appends 10% and refreshes, then \
         symbolizes random JIT addresses (200 stacks x 24 frames per request) through `Symbolizer` for 2 s."
    )?;
    writeln!(
        s,
        "- **Syscall cost**: `perf bench syscall basic` (getppid in a loop, in a process loopbpf \
         does not watch) without loopbpf, with loopbpf as it starts by default and with \
         `LOOPBPF_SYSCALL_PROBES=tp_btf`, attached to a `bench/busy.js` process, interleaved in \
         rotating order; added = with minus the same round's run without. Any syscall tracepoint \
         sends every syscall on the host through the kernel's syscall-tracing slow path; the \
         per-syscall tracepoints (the default where tracefs is mounted or mountable) add only \
         that, the tp_btf fallback also runs loopbpf's `sys_enter`/`sys_exit` programs on each.\n\
         - **Threadpool uprobes**: `bench/pool_rate.js` runs `fs.stat` at 1500 items/s for 4 s \
         and reports its own CPU time (`process.cpuUsage()`, all threads) per item, without \
         loopbpf, with `loopbpf --no-threadpool` and with loopbpf's default (uprobes on libuv), \
         3 rounds in rotating order.\n\
         - **Probe cost**: with `BPF_ENABLE_STATS` on, the kernel's run count and run time of \
         each of loopbpf's programs over one wrk run against the http server (loopbpf default, \
         watching the server); the syscall and scheduler probes also run for wrk and every other \
         process.\n"
    )?;
    writeln!(s, "## Time\n")?;
    for (name, t) in timings {
        writeln!(s, "- {name}: {:.0} s", t.as_secs_f64())?;
    }
    writeln!(
        s,
        "- total (including setup and build): {:.0} s\n",
        total.as_secs_f64()
    )?;
    writeln!(
        s,
        "## Commands\n\n`cargo xtask bench`; the first command of each kind it ran:\n"
    )?;
    writeln!(s, "```")?;
    for (kind, command) in commands() {
        writeln!(s, "# {kind}\n{command}")?;
    }
    writeln!(s, "```")?;
    Ok(s)
}
