//! Detection latency: from the end of a block (the workload's own hrtime) to
//! the harness reading loopbpf's episode line (CLOCK_MONOTONIC at arrival),
//! with the folded file already on disk.

use super::report::{percentile, Stats};
use super::{blocks, Env, Row};
use anyhow::{ensure, Result};

const BLOCKS: usize = 30;
const BLOCK_MS: u32 = 100;
const GAP_MS: u32 = 150;
const TARGET_P99_MS: f64 = 100.0;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let durations = vec![BLOCK_MS; BLOCKS];
    // Default threshold (50 ms) and frequency: what an operator runs.
    let pairs = blocks::run(env, "latency", &durations, GAP_MS, &[])?;
    let mut latencies = Vec::new();
    let mut folded = 0;
    for pair in &pairs {
        if let Some(e) = &pair.episode {
            latencies.push((e.arrived_ns as f64 - pair.block.end_ns as f64) / 1e6);
            folded += usize::from(e.folded_present);
        }
    }
    ensure!(
        !latencies.is_empty(),
        "loopbpf reported none of the {} blocks",
        pairs.len()
    );
    let stats = Stats::of(&latencies);
    let p99 = percentile(&latencies, 99.0);
    let section = "detection latency";
    Ok(vec![
        Row {
            section,
            metric: format!("{BLOCK_MS} ms blocks reported"),
            value: format!("{}/{}", latencies.len(), pairs.len()),
            target: Some(("all".into(), latencies.len() == pairs.len())),
        },
        Row {
            section,
            metric: "folded file present when the line arrived".into(),
            value: format!("{folded}/{}", latencies.len()),
            target: Some(("all".into(), folded == latencies.len())),
        },
        Row {
            section,
            metric: "block end -> episode line read (ms)".into(),
            value: format!(
                "p50 {:.1}, p99 {p99:.1}, min {:.1}, max {:.1}; first episode {:.1}",
                stats.median, stats.min, stats.max, latencies[0]
            ),
            target: Some((format!("p99 <= {TARGET_P99_MS} ms"), p99 <= TARGET_P99_MS)),
        },
    ])
}
