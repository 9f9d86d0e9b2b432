//! Target overhead: req/s and p99 latency of bench/server.js (plain http and
//! express) under wrk on 127.0.0.1, without a profiler and under each
//! profiler. Every round runs each profiler next to a baseline run (ABAB:
//! the pair's order alternates) and each result is a ratio to its pair's
//! baseline. Besides req/s and p99, the server's own CPU time per request
//! (sum of /proc/PID/task/*/schedstat) shows the cost even when other load
//! on the machine makes throughput noisy. The server is pinned to CPU 1 and
//! wrk to CPU 0 (taskset); profilers are not pinned.

use super::procs::{log_command, task_cpu_ns, Proc, SIGINT, SIGTERM};
use super::report::Stats;
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Condition {
    Baseline,
    Loopbpf,
    Loopbpf999,
    Perf199,
    Perf99,
    CpuProf,
}

const CONDITIONS: [Condition; 6] = [
    Condition::Baseline,
    Condition::Loopbpf,
    Condition::Loopbpf999,
    Condition::Perf199,
    Condition::Perf99,
    Condition::CpuProf,
];

impl Condition {
    fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "no profiler",
            Condition::Loopbpf => "loopbpf (default, 199 Hz)",
            Condition::Loopbpf999 => "loopbpf --frequency 999",
            Condition::Perf199 => "perf record -F 199 -g",
            Condition::Perf99 => "perf record -F 99 -g",
            Condition::CpuProf => "node --cpu-prof",
        }
    }
}

struct Sample {
    rps: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
}

const TARGET_LOSS_PCT: f64 = 1.0;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for server in ["http", "express"] {
        // condition index -> per-pair ratios to the paired baseline.
        let mut ratios: BTreeMap<usize, Vec<[f64; 3]>> = BTreeMap::new();
        let mut base = Vec::new();
        for round in 0..env.opts.rounds {
            for k in 0..CONDITIONS.len() - 1 {
                let i = 1 + (k + round) % (CONDITIONS.len() - 1);
                let order = if (round + k) % 2 == 0 { [0, i] } else { [i, 0] };
                let mut pair = [None, None];
                for c in order {
                    let cond = CONDITIONS[c];
                    // A run that served nothing (the server not up in time,
                    // wrk refused) says nothing about a profiler: run it again.
                    let mut s = one_run(env, server, cond)
                        .with_context(|| format!("{server}: {}", cond.name()))?;
                    if s.rps <= 0.0 {
                        eprintln!(
                            "   {server} round {round} {}: no requests served; again",
                            cond.name()
                        );
                        s = one_run(env, server, cond)
                            .with_context(|| format!("{server}: {}", cond.name()))?;
                    }
                    anyhow::ensure!(
                        s.rps > 0.0,
                        "{server}: {}: wrk got no responses twice",
                        cond.name()
                    );
                    eprintln!(
                        "   {server} round {round} {}: {:.0} req/s, p99 {:.2} ms, {:.1} us CPU/req",
                        cond.name(),
                        s.rps,
                        s.p99_ms,
                        s.cpu_us_per_req
                    );
                    pair[usize::from(c != 0)] = Some(s);
                }
                let (b, s) = (
                    pair[0].take().context("no baseline")?,
                    pair[1].take().context("no run")?,
                );
                ratios.entry(i).or_default().push([
                    s.rps / b.rps,
                    s.p99_ms / b.p99_ms,
                    s.cpu_us_per_req / b.cpu_us_per_req,
                ]);
                base.push(b);
            }
        }
        let stats =
            |rs: &[[f64; 3]], j: usize| Stats::of(&rs.iter().map(|r| r[j]).collect::<Vec<_>>());
        let b = |f: fn(&Sample) -> f64| Stats::of(&base.iter().map(f).collect::<Vec<_>>());
        let section = "target overhead";
        rows.push(Row {
            section,
            metric: format!("{server}: no profiler (absolute, {} runs)", base.len()),
            value: format!(
                "{} req/s; p99 {} ms; {} us CPU/req",
                b(|s| s.rps).fmt(0),
                b(|s| s.p99_ms).fmt(2),
                b(|s| s.cpu_us_per_req).fmt(1)
            ),
            target: None,
        });
        let perf_same = stats(&ratios[&3], 0);
        for (i, rs) in &ratios {
            let rps = stats(rs, 0);
            let target = (CONDITIONS[*i] == Condition::Loopbpf).then(|| {
                let loss = (1.0 - rps.median) * 100.0;
                let ok = loss <= TARGET_LOSS_PCT && rps.median > perf_same.median;
                (
                    format!("req/s loss <= {TARGET_LOSS_PCT}% and above perf -F 199"),
                    ok,
                )
            });
            rows.push(Row {
                section,
                metric: format!("{server}: {}", CONDITIONS[*i].name()),
                value: format!(
                    "req/s x{}; p99 x{}; CPU/req x{}",
                    rps.fmt(3),
                    stats(rs, 1).fmt(2),
                    stats(rs, 2).fmt(3)
                ),
                target,
            });
        }
    }
    Ok(rows)
}

fn one_run(env: &Env, server: &str, condition: Condition) -> Result<Sample> {
    let dir = scratch("overhead")?;
    let flags: Vec<String> = match condition {
        Condition::CpuProf => vec![
            "--cpu-prof".into(),
            format!("--cpu-prof-dir={}", dir.path().display()),
        ],
        _ => Vec::new(),
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (mut srv, url) = start_server(env, dir.path(), server, &flags)?;
    wrk(&url, 1, "overhead: wrk warm-up")?;
    let profiler = match condition {
        Condition::Loopbpf => Some(env.loopbpf(
            "overhead: loopbpf",
            &[srv.pid()],
            &[],
            &dir.path().join("out"),
        )?),
        Condition::Loopbpf999 => Some(env.loopbpf(
            "overhead: loopbpf -F 999",
            &[srv.pid()],
            &["--frequency", "999"],
            &dir.path().join("out"),
        )?),
        Condition::Perf199 | Condition::Perf99 => Some(perf(
            dir.path(),
            srv.pid(),
            condition == Condition::Perf199,
        )?),
        Condition::Baseline | Condition::CpuProf => None,
    };
    let cpu_before = task_cpu_ns(srv.pid())?;
    let (rps, p99_ms, requests) = wrk(
        &url,
        env.opts.wrk_secs,
        &format!("overhead: wrk ({})", condition.name()),
    )?;
    let cpu_us_per_req = (task_cpu_ns(srv.pid())? - cpu_before) as f64 / 1e3 / requests;
    let sample = Sample {
        rps,
        p99_ms,
        cpu_us_per_req,
    };
    if let Some(mut p) = profiler {
        p.stop(SIGINT, Duration::from_secs(30))?;
    }
    srv.stop(SIGTERM, Duration::from_secs(10))?;
    Ok(sample)
}

fn perf(dir: &Path, pid: u32, f199: bool) -> Result<Proc> {
    let mut c = Command::new("perf");
    c.current_dir(dir)
        .args(["record", "-F", if f199 { "199" } else { "99" }, "-g", "-o"])
        .arg(dir.join("perf.data"))
        .args(["-p", &pid.to_string()]);
    let p = Proc::spawn(
        if f199 {
            "overhead: perf -F 199"
        } else {
            "overhead: perf -F 99"
        },
        &mut c,
    )?;
    // perf prints nothing when it starts; give it time to open its events.
    std::thread::sleep(Duration::from_millis(700));
    Ok(p)
}

/// req/s, p99 latency (ms) and the number of requests of one wrk run.
/// bench/server.js of `kind` (http, express) pinned to CPU 1; its URL.
pub fn start_server(env: &Env, dir: &Path, kind: &str, flags: &[&str]) -> Result<(Proc, String)> {
    let mut node = env.node(dir, "server.js", flags);
    node.arg(kind);
    let mut pinned = Command::new("taskset");
    pinned
        .current_dir(dir)
        .args(["-c", "1"])
        .arg(node.get_program())
        .args(node.get_args());
    for (k, v) in node.get_envs() {
        if let Some(v) = v {
            pinned.env(k, v);
        }
    }
    let mut srv = Proc::spawn(&format!("{kind} server"), &mut pinned)?;
    let port =
        srv.wait_for("listening ", Duration::from_secs(20))?.text["listening ".len()..].to_string();
    Ok((srv, format!("http://127.0.0.1:{port}/")))
}

/// wrk pinned to CPU 0 for `secs`: (req/s, p99 ms, requests).
pub fn wrk(url: &str, secs: u64, kind: &str) -> Result<(f64, f64, f64)> {
    let mut c = Command::new("taskset");
    c.args([
        "-c",
        "0",
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{secs}s"),
        "--latency",
        url,
    ]);
    log_command(kind, &c);
    let out = c.output().context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed ({}): {text}", out.status);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| wrk_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk output: {text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output: {text}"))?;
    Ok((rps, p99, requests))
}

/// wrk's `1.23ms`, `850.00us`, `1.20s` as milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let n: f64 = v[..split].parse().ok()?;
    match &v[split..] {
        "us" => Some(n / 1e3),
        "ms" => Some(n),
        "s" => Some(n * 1e3),
        "m" => Some(n * 60e3),
        _ => None,
    }
}
