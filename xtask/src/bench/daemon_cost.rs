//! The daemon's memory over many process lifetimes: RSS once it has watched
//! (and forgotten) 100 short-lived processes, and again after 10,000. What a
//! process left behind (symbol caches, maps entries, metric series) shows as
//! growth between the two.

use super::procs::{status_kib, Proc, SIGTERM};
use super::{scratch, Env, Row};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const EARLY: u64 = 100;
const LIFETIMES: u64 = 10_000;
/// Short-lived processes alive at once, and how long each lives: long
/// enough for the daemon to read /proc before it is gone.
const CONCURRENT: usize = 40;
const LIFETIME: &str = "0.3";
const TARGET_GROWTH: f64 = 0.10;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("daemon")?;
    // A copy of sleep under a name of its own: the daemon watches it and
    // nothing else on the machine (not named loopbpf-*: the daemon never
    // watches another loopbpf).
    let exe = dir.path().join("lifetime-sleep");
    std::fs::copy("/bin/sleep", &exe).context("copying /bin/sleep")?;
    let port = free_port()?;
    let config = dir.path().join("loopbpf.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nmetrics_address = \"127.0.0.1:{port}\"\nnode_only = false\nthreadpool = false\n[match]\nexecutables = [\"/lifetime-sleep$\"]\n",
            dir.path().join("state").display()
        ),
    )?;
    let mut cmd = Command::new(&env.loopbpf);
    cmd.arg("daemon").arg("--config").arg(&config);
    let mut daemon = Proc::spawn("daemon: loopbpf", &mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while watched(port).is_err() {
        if Instant::now() > deadline {
            bail!("the daemon did not serve metrics within 90 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut spawned = 0u64;
    let mut rss_early = None;
    while spawned < LIFETIMES || !children.is_empty() {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        while spawned < LIFETIMES && children.len() < CONCURRENT {
            children.push(Command::new(&exe).arg(LIFETIME).spawn()?);
            spawned += 1;
        }
        if rss_early.is_none() && spawned >= EARLY + CONCURRENT as u64 {
            // Once the first 100 have come and gone.
            rss_early = Some(status_kib(daemon.pid(), "VmRSS")?);
        }
        std::thread::sleep(Duration::from_millis(5));
        if started.elapsed() > Duration::from_secs(900) {
            bail!("10,000 lifetimes took over 15 minutes ({spawned} started)");
        }
    }
    // The daemon notices exits within its liveness period.
    std::thread::sleep(Duration::from_secs(2));
    let seen = watched(port)?;
    let rss_late = status_kib(daemon.pid(), "VmRSS")?;
    let hwm = status_kib(daemon.pid(), "VmHWM")?;
    let took = started.elapsed();
    daemon.stop(SIGTERM, Duration::from_secs(20))?;
    let early = rss_early.context("no early RSS")? as f64 / 1024.0;
    let late = rss_late as f64 / 1024.0;
    let growth = late / early - 1.0;
    Ok(vec![Row {
        section: "agent cost",
        metric: format!("daemon: RSS after {EARLY} and after {LIFETIMES} process lifetimes"),
        value: format!(
            "{early:.1} -> {late:.1} MiB ({:+.1}%), peak {:.1} MiB; {seen} watched in {:.0} s",
            growth * 100.0,
            hwm as f64 / 1024.0,
            took.as_secs_f64()
        ),
        target: Some((
            format!("within {:.0}%", TARGET_GROWTH * 100.0),
            growth <= TARGET_GROWTH && seen >= LIFETIMES * 9 / 10,
        )),
    }])
}

/// `loopbpf_processes_watched_total` (since start) from the metrics endpoint.
fn watched(port: u16) -> Result<u64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix("loopbpf_processes_watched_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no loopbpf_processes_watched_total in /metrics")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
