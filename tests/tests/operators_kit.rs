//! The operators' kit in dist/ against the real thing: promtool accepts the
//! rules, a real Prometheus scraping the daemon fires the stall alert while a
//! loop blocks, every dashboard query returns data, and a restarted Node
//! process continues its series instead of starting new ones.
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::daemon::{metric, node_target, poll, Daemon, MetricSample};
use integration_tests::prometheus::Prometheus;
use integration_tests::repo_dist;

/// Only this file's Node processes, whatever else runs on the host.
const ONLY_TARGETS: &str = "[match]\ncmdline = ['daemon_target\\.js']\n";

#[test]
fn promtool_accepts_the_rules() {
    let rules = repo_dist().join("prometheus-rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool check rules {}: {}\n{}{}",
        rules.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `expr` of the dashboard's panels, with Grafana's variables set the
/// way "All" and a 1 s scrape interval would set them.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo_dist().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let panels = dash["panels"].as_array().expect("panels");
    let mut out = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr").to_string();
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$comm", ".*")
                .replace("$container", ".*");
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            out.push((p["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    assert!(
        out.len() >= 10,
        "only {} queries in the dashboard",
        out.len()
    );
    out
}

#[test]
fn prometheus_fires_the_stall_alert_and_the_dashboard_has_data() {
    let queries = dashboard_queries();
    let mut node = node_target(20);
    let mut daemon = Daemon::start_with_labels("", ONLY_TARGETS);
    let rules = repo_dist().join("prometheus-rules.yml");
    let prometheus = Prometheus::start_with_rules(daemon.port, &[&rules]);
    let pid = node.pid();
    assert!(
        poll(Duration::from_secs(5), || daemon.watches(pid).then_some(())).is_some(),
        "pid {pid} not watched:\n{}",
        daemon.process.describe()
    );
    // Threadpool work (queue wait, saturation), then a short episode.
    node.write_line("pbkdf2 16").unwrap();
    node.wait_for_line(Instant::now() + Duration::from_secs(30), "pbkdf2", |l| {
        l.contains("\"pbkdf2\"")
    })
    .unwrap();
    node.write_line("block 300").unwrap();
    node.wait_for_line(Instant::now() + Duration::from_secs(5), "block", |l| {
        l.contains("daemonBlock")
    })
    .unwrap();

    // A 9 s block: past the rule's 5 s, the alert must fire during it.
    let firing = "ALERTS{alertname=\"LoopbpfEventLoopStalled\",alertstate=\"firing\"}";
    assert_eq!(prometheus.query(firing).unwrap().len(), 0, "fired early");
    let blocked_at = Instant::now();
    node.write_line("block 9000").unwrap();
    let fired = poll(Duration::from_secs(20), || {
        let r = prometheus.query(firing).ok()?;
        (!r.is_empty()).then(|| (r, blocked_at.elapsed()))
    });
    let Some((alerts, after)) = fired else {
        panic!(
            "LoopbpfEventLoopStalled never fired; stalled gauge: {:?}\n{}",
            prometheus.query("loopbpf_loop_stalled_seconds"),
            daemon.process.describe()
        );
    };
    eprintln!("LoopbpfEventLoopStalled fired {after:?} into the 9 s block");
    assert_eq!(alerts[0]["metric"]["comm"], "node", "{alerts:?}");
    assert!(
        after >= Duration::from_secs(5),
        "fired {after:?} into the block, before the 5 s the rule says"
    );
    node.wait_for_line(Instant::now() + Duration::from_secs(15), "block", |l| {
        l.contains("\"ms\":9")
    })
    .unwrap();

    // Every dashboard query returns data (rates need two scrapes of a 1m window).
    std::thread::sleep(Duration::from_secs(3));
    let mut empty = Vec::new();
    for (title, q) in &queries {
        let got = poll(Duration::from_secs(10), || {
            prometheus.query(q).ok().filter(|r| !r.is_empty())
        });
        if got.is_none() {
            empty.push(format!("{title}: {q} -> {:?}", prometheus.query(q)));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    // The recording rules evaluate to data too.
    for r in [
        "loopbpf:loop_busy_seconds:p99_5m",
        "loopbpf:loop_utilization:ratio_5m",
        "loopbpf:loop_episodes:rate5m",
    ] {
        assert!(
            poll(Duration::from_secs(10), || prometheus
                .query(r)
                .ok()
                .filter(|v| !v.is_empty()))
            .is_some(),
            "recording rule {r} has no data"
        );
    }
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
}

/// Label sets of the loop series (histogram buckets included).
fn loop_series(m: &[MetricSample]) -> BTreeSet<String> {
    m.iter()
        .filter(|s| s.name.starts_with("loopbpf_loop_"))
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect()
}

fn main_loop_count(m: &[MetricSample]) -> Option<f64> {
    metric(m, "loopbpf_loop_busy_seconds_count", &[("thread", "main")])
}

#[test]
fn a_restarted_node_process_continues_its_series() {
    let mut daemon = Daemon::start_with_labels("", ONLY_TARGETS);
    let mut first = node_target(20);
    let a = first.pid();
    let before = poll(Duration::from_secs(10), || {
        let m = daemon.metrics();
        let count = main_loop_count(&m).filter(|&c| c > 0.0)?;
        Some((loop_series(&m), count))
    });
    let Some((series_a, count_a)) = before else {
        panic!(
            "no main-loop series for pid {a}:\n{}",
            daemon.process.describe()
        );
    };
    assert!(
        series_a.iter().all(|s| !s.contains("\"pid\"")),
        "pid label by default: {series_a:?}"
    );

    first.write_line("exit").unwrap();
    let _ = first.wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(
        poll(Duration::from_secs(5), || (!daemon.watches(a))
            .then_some(()))
        .is_some(),
        "pid {a} still watched after it exited"
    );
    let second = node_target(20);
    let b = second.pid();
    assert_ne!(a, b);
    assert!(
        poll(Duration::from_secs(5), || daemon.watches(b).then_some(())).is_some(),
        "pid {b} not watched"
    );
    // Two refreshes, so the new loop's counts are in.
    std::thread::sleep(Duration::from_secs(3));
    let m = daemon.metrics();
    let series_b = loop_series(&m);
    eprintln!(
        "restart: {} loop series before, {} after; main-loop iterations {count_a} -> {:?}",
        series_a.len(),
        series_b.len(),
        main_loop_count(&m)
    );
    let new: Vec<_> = series_b.difference(&series_a).collect();
    assert!(
        new.is_empty(),
        "the restart created new loop series: {new:#?}\nbefore: {series_a:#?}"
    );
    let count_b = main_loop_count(&m).unwrap_or(0.0);
    assert!(
        count_b > count_a,
        "the main loop's iteration count went from {count_a} to {count_b}: it should continue"
    );
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
}
