//! One watched process floods the shared ring buffer (issue 11): its loop
//! threads sleep 0.3 ms at a time inside busy iterations, each sleep an
//! off-CPU record with stacks (~18.5 KiB), thousands a second. Another Node
//! process watched by the same daemon blocks its loop meanwhile: each of its
//! episodes must be stored with its stacks, and the flood's excess must show
//! as dropped by the per-process budget, not as the victim's losses.
use std::time::{Duration, Instant};

use integration_tests::daemon::{metric, node_target, poll, Daemon, MetricSample};
use integration_tests::{node_tests, Process};

node_tests!(a_flooding_process_leaves_room_for_another_s_episodes =>
    a_flooding_process_leaves_room_for_another_s_episodes_node20 = 20,
    a_flooding_process_leaves_room_for_another_s_episodes_node22 = 22,
);

/// The flood: the main thread and this many workers, for this long.
const FLOOD_WORKERS: u32 = 1;
const FLOOD_MS: u64 = 6_000;
/// The victim's blocks, one after another during the flood.
const BLOCKS: usize = 5;
const BLOCK_MS: u64 = 300;

fn dropped(metrics: &[MetricSample], what: &str) -> f64 {
    metric(metrics, "loopbpf_kernel_dropped_total", &[("what", what)]).unwrap_or(0.0)
}

fn drops_line(metrics: &[MetricSample]) -> String {
    metrics
        .iter()
        .filter(|m| m.name == "loopbpf_kernel_dropped_total" && m.value > 0.0)
        .map(|m| format!("{:?}={}", m.labels, m.value))
        .collect::<Vec<_>>()
        .join(" ")
}

fn a_flooding_process_leaves_room_for_another_s_episodes(major: u32) {
    let mut daemon = Daemon::start("");
    let mut flooder = node_target(major);
    let mut victim = node_target(major);
    for p in [&flooder, &victim] {
        let pid = p.pid();
        poll(Duration::from_secs(10), || {
            daemon.watches(pid).then_some(())
        })
        .unwrap_or_else(|| panic!("the daemon never watched pid {pid}"));
    }
    flooder
        .write_line(&format!("flood {FLOOD_MS} {FLOOD_WORKERS}"))
        .unwrap();
    // Let the flood fill the ring buffer before the first block.
    std::thread::sleep(Duration::from_millis(500));
    let mut blocks = 0;
    for _ in 0..BLOCKS {
        victim.write_line(&format!("block {BLOCK_MS}")).unwrap();
        victim
            .wait_for_line(Instant::now() + Duration::from_secs(10), "block", |l| {
                l.contains("daemonBlock")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        blocks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    flooder
        .wait_for_line(
            Instant::now() + Duration::from_millis(FLOOD_MS + 10_000),
            "flood",
            |l| l.contains("\"flood\""),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let flood = flooder.stdout().last().cloned().unwrap_or_default();
    let problems = check(&daemon, &victim, blocks, &flood);
    let metrics = daemon.metrics();
    assert!(
        problems.is_empty(),
        "{}\n  kernel drops: {}\n{}",
        problems.join("\n"),
        drops_line(&metrics),
        daemon.process.describe()
    );
    let samples: Vec<String> = episodes_of(&daemon, victim.pid())
        .iter()
        .map(|e| format!("{}/{}", e["samples"], e["on_cpu_ms"]))
        .collect();
    println!(
        "flood {flood}; victim samples/on-CPU ms {samples:?}; kernel drops: {}",
        drops_line(&metrics)
    );
}

fn episodes_of(daemon: &Daemon, pid: u32) -> Vec<serde_json::Value> {
    daemon
        .index()
        .into_iter()
        .filter(|r| r["pid"] == pid)
        .collect()
}

fn check(daemon: &Daemon, victim: &Process, blocks: usize, flood: &str) -> Vec<String> {
    let pid = victim.pid();
    let mut problems = Vec::new();
    let episodes = poll(Duration::from_secs(10), || {
        let e: Vec<serde_json::Value> = daemon
            .index()
            .into_iter()
            .filter(|r| r["pid"] == pid && r["duration_ms"].as_f64() >= Some(BLOCK_MS as f64 - 5.0))
            .collect();
        (e.len() >= blocks).then_some(e)
    })
    .unwrap_or_else(|| {
        let e = episodes_of(daemon, pid);
        problems.push(format!(
            "{} of the victim's {blocks} blocks stored: {e:?}",
            e.len()
        ));
        e
    });
    for e in &episodes {
        let stacks = e["folded"]
            .as_str()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default();
        if e["samples"].as_u64() < Some(1) || !stacks.contains("daemonBlock") {
            problems.push(format!(
                "episode {} without its stacks: {} samples, daemonBlock {}, {} ms on CPU",
                e["id"],
                e["samples"],
                stacks.contains("daemonBlock"),
                e["on_cpu_ms"]
            ));
        }
    }
    // The flood really flooded, and its excess is counted as such.
    let metrics = daemon.metrics();
    let over = dropped(&metrics, "off_cpu_budget");
    if over < 100.0 {
        problems.push(format!(
            "{over} off-CPU records dropped over the budget, want >= 100 (flood: {flood})"
        ));
    }
    problems
}
