//! `loopbpf daemon` against real Node processes, this kernel and a real
//! Prometheus: discovery at start and from exec events, an episode stored and
//! counted, exited processes forgotten, SIGTERM a clean exit
//! (see daemon_lifetimes.rs and daemon_service.rs for the rest).
use std::time::{Duration, Instant};

use integration_tests::daemon::{metric, node_target, parse_metrics, poll, Daemon, MetricSample};
use integration_tests::prometheus::Prometheus;

const BLOCK_MS: u64 = 300;

fn watched(m: &[MetricSample], pid: u32) -> bool {
    metric(m, "loopbpf_process_info", &[("pid", &pid.to_string())]) == Some(1.0)
}

/// Iterations of `pid`'s main loop busy longer than 250 ms, from the histogram.
fn slow_iterations(m: &[MetricSample], pid: u32) -> Option<f64> {
    let p = pid.to_string();
    let bucket = |le| {
        metric(
            m,
            "loopbpf_loop_busy_seconds_bucket",
            &[("pid", &p), ("thread", "main"), ("le", le)],
        )
    };
    Some(bucket("+Inf")? - bucket("0.25")?)
}

#[test]
fn daemon_discovers_measures_and_forgets_node_processes() {
    let first = node_target(20);
    let mut daemon = Daemon::start("threshold = \"50ms\"\n");
    let a = first.pid();
    assert!(
        poll(Duration::from_secs(5), || watched(&daemon.metrics(), a)
            .then_some(()))
        .is_some(),
        "pid {a}, running before the daemon, was not discovered by the /proc scan:\n{}",
        daemon.process.describe()
    );

    // Two started after it: found through exec events, each within a second.
    let mut later = Vec::new();
    for _ in 0..2 {
        let p = node_target(20);
        let ready = Instant::now();
        let pid = p.pid();
        let found = poll(Duration::from_secs(3), || {
            watched(&daemon.metrics(), pid).then(Instant::now)
        });
        let Some(at) = found else {
            panic!(
                "pid {pid} started after the daemon was never watched:\n{}",
                daemon.process.describe()
            );
        };
        assert!(
            at - ready <= Duration::from_secs(1),
            "pid {pid} watched after {:?}",
            at - ready
        );
        later.push(p);
    }
    let mut prometheus = Prometheus::start(daemon.port);

    // A block in B: an episode on disk, the histogram's slow buckets move.
    let b = later[0].pid();
    let before = poll(Duration::from_secs(5), || {
        slow_iterations(&daemon.metrics(), b)
    })
    .unwrap_or_else(|| {
        panic!(
            "no busy-time histogram for pid {b}:\n{}",
            daemon.process.describe()
        )
    });
    later[0].write_line(&format!("block {BLOCK_MS}")).unwrap();
    later[0]
        .wait_for_line(Instant::now() + Duration::from_secs(5), "block", |l| {
            l.contains("daemonBlock")
        })
        .unwrap();
    let record = poll(Duration::from_secs(5), || {
        daemon
            .index()
            .into_iter()
            .find(|r| r["pid"] == b && r["duration_ms"].as_f64() >= Some(250.0))
    })
    .unwrap_or_else(|| {
        panic!(
            "no episode of pid {b} in index.jsonl:\n{}",
            daemon.process.describe()
        )
    });
    // Samples need CPU: on a loaded 2-CPU VM the blocked thread can spend the
    // block waiting for one, so the folded file is checked when there are samples.
    if record["samples"].as_u64() > Some(0) {
        let folded = record["folded"].as_str();
        let stacks = folded
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default();
        assert!(
            stacks.contains("daemonBlock"),
            "folded file of {record} lacks daemonBlock:\n{stacks}"
        );
    }
    // The stored record is the index line, and keeps the contract.
    let id = record["id"].as_str().unwrap();
    assert_eq!(daemon.record(id), record);
    assert!(
        record["comm"].is_string() && record["start_time"].is_string(),
        "the record does not say which process or when: {record}"
    );
    assert!(
        poll(Duration::from_secs(3), || (slow_iterations(
            &daemon.metrics(),
            b
        )? >= before + 1.0)
            .then_some(()))
        .is_some(),
        "histogram of pid {b} did not count the {BLOCK_MS} ms iteration"
    );

    // Prometheus scraped it all: three series, B's episode and slow iteration.
    let pids = format!("{a}|{b}|{}", later[1].pid());
    let queries = [
        (format!("count(loopbpf_process_info{{pid=~\"{pids}\"}})"), 3.0),
        (format!("sum(loopbpf_loop_episodes_total{{pid=\"{b}\",thread=\"main\"}})"), 1.0),
        (
            format!(
                "sum(loopbpf_loop_busy_seconds_bucket{{pid=\"{b}\",le=\"+Inf\"}}) - sum(loopbpf_loop_busy_seconds_bucket{{pid=\"{b}\",le=\"0.25\"}})"
            ),
            before + 1.0,
        ),
    ];
    for (q, want) in &queries {
        let got = poll(Duration::from_secs(20), || {
            prometheus.scalar(q).filter(|v| v >= want)
        });
        assert!(
            got.is_some(),
            "PromQL `{q}` never reached {want} (last: {:?}):\n{}",
            prometheus.query(q),
            prometheus.process.describe()
        );
    }

    // C exits by itself, B is killed: both lose their series, A keeps its.
    let c = later[1].pid();
    later[1].write_line("exit").unwrap();
    later[0].kill();
    for pid in [b, c] {
        let gone = poll(Duration::from_secs(3), || {
            let m = daemon.metrics();
            (!m.iter()
                .any(|s| s.labels.get("pid") == Some(&pid.to_string())))
            .then_some(())
        });
        assert!(
            gone.is_some(),
            "series of exited pid {pid} still exported:\n{}",
            daemon.process.describe()
        );
    }
    assert!(
        watched(&daemon.metrics(), a),
        "pid {a} lost while still running"
    );
    let q = format!("count(loopbpf_process_info{{pid=~\"{b}|{c}\"}})");
    let stale = poll(Duration::from_secs(20), || {
        prometheus.query(&q).ok().filter(|r| r.is_empty())
    });
    assert!(
        stale.is_some(),
        "Prometheus still has live series of exited processes: {:?}",
        prometheus.query(&q)
    );
    prometheus.process.kill();

    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    let log = daemon.process.describe();
    assert!(status.success(), "daemon exit on SIGTERM: {status}\n{log}");
    for want in [
        format!("unwatched pid={b}"),
        format!("unwatched pid={c}"),
        "stopped".to_string(),
        // The per-syscall tracepoints: this host has tracefs, or lets root mount it.
        "tracepoint syscall probes".to_string(),
    ] {
        assert!(log.contains(&want), "daemon log lacks `{want}`:\n{log}");
    }
    assert!(
        !log.contains("\x1b["),
        "colours in a log that is not a terminal:\n{log}"
    );
}

/// The daemon attaches the threadpool uprobes to what it discovers: a
/// saturated pool shows in the metrics and is stored as an episode.
#[test]
fn daemon_exports_threadpool_saturation() {
    let mut daemon = Daemon::start("threshold = \"50ms\"\n");
    let mut node = node_target(24);
    let pid = node.pid();
    let p = pid.to_string();
    assert!(
        poll(Duration::from_secs(5), || daemon.watches(pid).then_some(())).is_some(),
        "pid {pid} was never watched:\n{}",
        daemon.process.describe()
    );
    let port = daemon.port;
    let series = |name: &str| {
        let text = integration_tests::daemon::http_get(port, "/metrics").map(|(_, b)| b);
        metric(
            &parse_metrics(&text.unwrap_or_default()),
            name,
            &[("pid", &p)],
        )
    };
    // Uprobes go on a second after discovery: wait for the pool's series.
    let attached = poll(Duration::from_secs(5), || {
        series("loopbpf_threadpool_size").map(|_| ())
    });
    assert!(attached.is_some(), "no threadpool series for pid {pid}");
    node.write_line("pbkdf2 32").unwrap();
    node.wait_for_line(Instant::now() + Duration::from_secs(30), "pbkdf2", |l| {
        l.contains("\"pbkdf2\"")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let settled = poll(Duration::from_secs(5), || {
        let waited = series("loopbpf_threadpool_queue_wait_seconds_count")?;
        let saturations = series("loopbpf_threadpool_saturations_total")?;
        (waited >= 32.0 && saturations >= 1.0).then_some(())
    });
    let text = daemon.metrics();
    let threadpool: Vec<&MetricSample> = text
        .iter()
        .filter(|m| m.name.contains("threadpool"))
        .collect();
    assert!(
        settled.is_some(),
        "want 32 queue waits and a saturation for pid {pid}, got {threadpool:?}\n{}",
        daemon.process.describe()
    );
    assert_eq!(
        series("loopbpf_threadpool_size"),
        Some(4.0),
        "{threadpool:?}"
    );
    assert!(
        series("loopbpf_threadpool_items_total").unwrap_or(0.0) >= 32.0,
        "{threadpool:?}"
    );
    let stored = poll(Duration::from_secs(5), || {
        daemon
            .index()
            .into_iter()
            .find(|r| r["type"] == "threadpool_saturation" && r["pid"] == pid)
    });
    let record = stored.unwrap_or_else(|| {
        panic!(
            "no threadpool_saturation record in the index: {:?}\n{}",
            daemon.index(),
            daemon.process.describe()
        )
    });
    assert!(
        record["top_work"].as_str().unwrap_or("").contains("PBKDF2"),
        "{record}"
    );
    node.write_line("exit").unwrap();
    let gone = poll(Duration::from_secs(5), || {
        series("loopbpf_threadpool_size").is_none().then_some(())
    });
    assert!(gone.is_some(), "threadpool series of pid {pid} outlived it");
    daemon.terminate(Duration::from_secs(20)).unwrap();
}
