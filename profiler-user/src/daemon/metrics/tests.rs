use super::*;

fn labels(pid: u32) -> ProcessLabels {
    ProcessLabels {
        pid,
        comm: "node".into(),
        exe: "/usr/bin/node".into(),
        container: "api".into(),
        container_id: "abc123".into(),
        pod: "api-7d9f".into(),
        namespace: "shop".into(),
    }
}

fn main_loop(tid: u32, slow: u64, idle_ns: u64) -> LoopSeries {
    let mut stats = LoopStats::ZERO;
    stats.buckets[profiler_common::histogram::bucket(300_000_000)] = slow;
    stats.busy_ns = slow * 300_000_000;
    stats.idle_ns = idle_ns;
    stats.blocked_ns = 100_000_000;
    stats.episodes = slow;
    LoopSeries {
        tid,
        role: ThreadRole::Main,
        stats,
        open_busy_ns: 0,
    }
}

const ID: &str = r#"comm="node",exe="/usr/bin/node",container="api",pod="api-7d9f",namespace="shop",thread="main""#;

fn has(text: &str, line: &str) {
    assert!(text.contains(line), "missing {line} in\n{text}");
}

#[test]
fn series_are_named_by_identity_and_survive_a_restart() {
    let m = Metrics::default();
    m.add_process(labels(42));
    m.set_loops(42, vec![main_loop(42, 2, 600_000_000)]);
    m.episode(&labels(42), ThreadRole::Main, 42, Verdict::Javascript);
    let text = m.render();
    for line in [
        format!("loopbpf_loop_busy_seconds_bucket{{le=\"0.25\",{ID}}} 0"),
        format!("loopbpf_loop_busy_seconds_bucket{{le=\"0.5\",{ID}}} 2"),
        format!("loopbpf_loop_busy_seconds_count{{{ID}}} 2"),
        format!("loopbpf_loop_episodes_total{{{ID},verdict=\"javascript\"}} 1"),
        format!("loopbpf_loop_utilization{{{ID}}} 0.5"),
        format!("loopbpf_loop_asleep_seconds_total{{{ID}}} 0.1"),
        "loopbpf_watched_processes 1".into(),
        r#"loopbpf_process_info{comm="node",exe="/usr/bin/node",container="api",pod="api-7d9f",namespace="shop",pid="42",container_id="abc123"} 1"#.into(),
        format!("loopbpf_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        has(&text, &line);
    }
    assert!(!text.contains("tid=") && !text.contains("thread=\"main\",pid"));

    // Restarted: pid 43, same identity. Counters continue from the old ones.
    m.remove_process(42);
    let text = m.render();
    has(&text, &format!("loopbpf_loop_busy_seconds_count{{{ID}}} 2"));
    assert!(!text.contains("loopbpf_loop_utilization{"), "{text}");
    m.add_process(labels(43));
    m.set_loops(43, vec![main_loop(43, 1, 300_000_000)]);
    let text = m.render();
    has(&text, &format!("loopbpf_loop_busy_seconds_count{{{ID}}} 3"));
    has(&text, &format!("loopbpf_loop_busy_seconds_sum{{{ID}}} 0.9"));
    has(&text, &format!("loopbpf_loop_utilization{{{ID}}} 0.5"));
    has(
        &text,
        &format!("loopbpf_loop_asleep_seconds_total{{{ID}}} 0.2"),
    );
    assert_eq!(text.matches("loopbpf_loop_busy_seconds_count{").count(), 1);
}

#[test]
fn loops_sharing_labels_are_summed_and_a_gone_thread_keeps_its_counts() {
    let m = Metrics::default();
    m.add_process(labels(7));
    let worker = |tid, open| LoopSeries {
        role: ThreadRole::Worker,
        open_busy_ns: open,
        ..main_loop(tid, 1, 0)
    };
    m.set_loops(7, vec![worker(8, 0), worker(9, 2_000_000_000)]);
    let w = ID.replace("main", "worker");
    let text = m.render();
    has(&text, &format!("loopbpf_loop_busy_seconds_count{{{w}}} 2"));
    has(&text, &format!("loopbpf_loop_stalled_seconds{{{w}}} 2.0"));
    m.set_loops(7, vec![worker(8, 0)]);
    has(
        &m.render(),
        &format!("loopbpf_loop_busy_seconds_count{{{w}}} 2"),
    );
    m.set_series_labels(SeriesLabels {
        pid: true,
        tid: true,
    });
    m.set_loops(7, vec![worker(8, 0)]);
    has(
        &m.render(),
        &format!("loopbpf_loop_busy_seconds_count{{{w},pid=\"7\",tid=\"8\"}} 1"),
    );
}

#[test]
fn with_pid_labels_an_exited_process_leaves_no_series() {
    let m = Metrics::default();
    m.set_series_labels(SeriesLabels::parse(&["pid".into()]).unwrap());
    m.add_process(labels(42));
    m.set_loops(42, vec![main_loop(42, 2, 0)]);
    m.episode(&labels(42), ThreadRole::Main, 42, Verdict::Blocked);
    has(&m.render(), "verdict=\"blocked\"");
    m.remove_process(42);
    // Its last episode, analysed after it was let go.
    m.episode(&labels(42), ThreadRole::Main, 42, Verdict::Blocked);
    let text = m.render();
    assert!(!text.contains("pid=\"42\""), "{text}");
    assert_eq!(m.series_count(), 0);
    assert!(SeriesLabels::parse(&["pod".into()]).is_err());
}

#[test]
fn every_kernel_drop_is_a_labelled_counter() {
    let m = Metrics::default();
    m.set_kernel(KernelCounters {
        stats_full: 3,
        threads_full: 2,
        ..Default::default()
    });
    let text = m.render();
    for line in [
        "loopbpf_kernel_dropped_total{what=\"loop_stats\"} 3",
        "loopbpf_kernel_dropped_total{what=\"threads\"} 2",
        "loopbpf_kernel_dropped_total{what=\"off_cpu\"} 0",
    ] {
        has(&text, line);
    }
}

#[test]
fn retired_label_sets_expire_without_a_live_loop() {
    let m = Metrics::default();
    m.add_process(labels(42));
    m.set_loops(42, vec![main_loop(42, 2, 0)]);
    m.remove_process(42);
    m.with(|s| s.expire(Instant::now() + RETIRED_TTL + Duration::from_secs(1)));
    assert!(!m.render().contains("loopbpf_loop_busy_seconds_count{"));
}
