//! `cargo xtask vm-test --bench`, the part that runs inside the guest (as the
//! hidden `xtask vm-guest-bench`): what the fentry probes cost against the
//! per-syscall tracepoints, on the same emulated kernel, interleaved in
//! rotating order. Two costs, as in `cargo xtask bench`'s poll and syscall
//! sections: a getppid in a process loopbpf does not watch (every syscall of
//! the host), and an `epoll_wait(timeout 0)` in a loop it watches (one full
//! iteration). Emulated time is not host time: only the ratios carry over.

use crate::bench::procs::{kv_field, Proc, SIGINT};
use crate::bench::report::{differences, Stats};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Opts {
    #[arg(long)]
    loopbpf: PathBuf,
    #[arg(long)]
    poll_loop: PathBuf,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls per batch (3 batches per measurement).
    #[arg(long, default_value_t = 100_000)]
    calls: u32,
}

/// No loopbpf, then each syscall probe set it can be forced to use.
const CONDITIONS: [Option<&str>; 3] = [None, Some("fentry"), Some("tracepoint")];

pub fn run(opts: Opts) -> Result<()> {
    // [condition] -> medians per round, for getppid and for a watched poll.
    let mut getppid: [Vec<f64>; 3] = Default::default();
    let mut poll: [Vec<f64>; 3] = Default::default();
    let out = std::env::temp_dir().join("loopbpf-vm-bench");
    std::fs::create_dir_all(&out)?;
    for round in 0..opts.rounds {
        for k in 0..CONDITIONS.len() {
            let c = (round + k) % CONDITIONS.len();
            let (g, p) = measure(&opts, CONDITIONS[c], &out)?;
            println!(
                "loopbpf-vm-bench: round {round} {}: getppid {g:.0} ns, watched poll {p:.0} ns",
                CONDITIONS[c].unwrap_or("no loopbpf")
            );
            getppid[c].push(g);
            poll[c].push(p);
        }
    }
    let added = |v: &[Vec<f64>; 3], c: usize| Stats::of(&differences(&v[c], &v[0]));
    let ratio = |v: &[Vec<f64>; 3]| {
        let f = added(v, 1).median;
        let t = added(v, 2).median;
        if t > 0.0 {
            format!("{:.2}", f / t)
        } else {
            "n/a (tracepoint adds nothing measurable)".into()
        }
    };
    let rows = [
        ("getppid, unwatched process", &getppid),
        ("epoll_wait(0), watched loop (one iteration)", &poll),
    ];
    println!("loopbpf-vm-bench: | call | no loopbpf | + fentry | + tracepoint | fentry/tracepoint added cost |");
    println!("loopbpf-vm-bench: |---|---|---|---|---|");
    for (what, v) in rows {
        println!(
            "loopbpf-vm-bench: | {what} | {} ns | {} ns | {} ns | {} |",
            Stats::of(&v[0]).fmt(0),
            added(v, 1).fmt(0),
            added(v, 2).fmt(0),
            ratio(v)
        );
    }
    Ok(())
}

/// Median ns per getppid (unwatched process) and per poll (watched loop)
/// with loopbpf absent or using `probes`.
fn measure(opts: &Opts, probes: Option<&str>, out: &Path) -> Result<(f64, f64)> {
    let calls = opts.calls.to_string();
    let mut looper = Proc::spawn(
        "poll_loop",
        Command::new(&opts.poll_loop).args(["poll", &calls]),
    )?;
    looper.wait_for("ready", Duration::from_secs(60))?;
    let mut other = Proc::spawn(
        "poll_loop getppid",
        Command::new(&opts.poll_loop).args(["getppid", &calls]),
    )?;
    other.wait_for("ready", Duration::from_secs(60))?;
    let mut loopbpf = match probes {
        None => None,
        Some(probes) => {
            let mut c = Command::new(&opts.loopbpf);
            c.env("LOOPBPF_SYSCALL_PROBES", probes)
                .arg("--pid")
                .arg(looper.pid().to_string())
                .args(["--force", "--no-threadpool", "--json", "--output"])
                .arg(out);
            let mut p = Proc::spawn("loopbpf", &mut c)?;
            let ready = p
                .wait_for("\"type\":\"ready\"", Duration::from_secs(600))
                .context("loopbpf did not attach")?;
            let used = format!("\"syscall_probes\":\"{probes}\"");
            ensure!(
                ready.text.contains(&used),
                "loopbpf did not use {probes}: {}",
                ready.text
            );
            Some(p)
        }
    };
    let getppid = batches(&mut other, "ns_per_call")?;
    let poll = batches(&mut looper, "ns_per_poll")?;
    if let Some(l) = loopbpf.as_mut() {
        l.stop(SIGINT, Duration::from_secs(60))?;
    }
    Ok((getppid, poll))
}

fn batches(p: &mut Proc, key: &str) -> Result<f64> {
    p.send("go")?;
    let mut ns = Vec::new();
    for _ in 0..3 {
        let line = p.wait_for(key, Duration::from_secs(600))?;
        let v: f64 = kv_field(&line.text, key)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {:?}", line.text))?;
        ns.push(v);
    }
    p.wait(Duration::from_secs(60))?;
    Ok(Stats::of(&ns).median)
}
