//! The daemon over many short Node process lifetimes: each is watched and
//! forgotten, and nothing accumulates.
use std::process::Command;
use std::time::Duration;

use integration_tests::daemon::{metric, poll, Daemon};

fn tail_of(s: String) -> String {
    integration_tests::tail(&s, 60)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `n` short-lived Node processes, `parallel` at a time; each polls a few times.
fn churn(n: usize, parallel: usize) {
    let node = integration_tests::node_for(20);
    for _ in 0..n / parallel {
        let mut children: Vec<_> = (0..parallel)
            .map(|_| {
                Command::new(&node)
                    .args(["-e", "let i = 0; const t = setInterval(() => { if (++i === 3) clearInterval(t); }, 5)", "loopbpf-churn-test"])
                    .spawn()
                    .expect("spawn node")
            })
            .collect();
        for c in &mut children {
            c.wait().expect("wait node");
        }
    }
}

#[test]
fn daemon_does_not_grow_over_many_process_lifetimes() {
    // Only this test's processes: other Node programs on the host (benchmarks,
    // other tests) would make the daemon's memory a measure of them.
    let mut daemon = Daemon::start("[match]\ncmdline = ['loopbpf-churn-test']\n");
    let pid = daemon.process.pid();
    let series = |d: &Daemon| {
        d.metrics()
            .iter()
            .filter(|s| s.labels.contains_key("pid"))
            .count()
    };
    // Warm-up: the first hundred lifetimes grow the allocator's arenas and the
    // symbolizer's caches (about 15 MiB here), a plateau rather than a leak.
    churn(104, 8);
    std::thread::sleep(Duration::from_secs(2));
    let total =
        |d: &Daemon| metric(&d.metrics(), "loopbpf_processes_watched_total", &[]).unwrap_or(0.0);
    let (rss_before, series_before, total_before) = (rss_kib(pid), series(&daemon), total(&daemon));
    churn(400, 8);
    // Every exit is handled within a second; the 10 s sweep catches any lost event.
    let settled = poll(Duration::from_secs(15), || {
        (series(&daemon) <= series_before).then_some(())
    });
    let series_after = series(&daemon);
    // Each lives ~50 ms: most, if not all, must have been caught by their exec event.
    let watched = total(&daemon) - total_before;
    let grown = rss_kib(pid).saturating_sub(rss_before);
    // describe() ends the daemon to collect its stderr: only after the reads above.
    let mut log = || tail_of(daemon.process.describe());
    assert!(
        settled.is_some(),
        "{series_after} series after the churn, {series_before} before:\n{}",
        log()
    );
    assert!(
        watched >= 360.0,
        "only {watched} of 400 short-lived node processes were watched:\n{}",
        log()
    );
    // Measured: ~3 MiB over the 400 after the warm-up, flattening out. Leaked
    // per-process state (maps, perf map, stats) would be tens of KiB each.
    assert!(
        grown < 8192,
        "daemon RSS grew by {grown} KiB over 400 process lifetimes"
    );
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
}
