//! Detection latency: from the end of a block (the workload's own hrtime) to
//! the harness reading loopbpf's episode line (CLOCK_MONOTONIC at arrival),
//! with the folded file already on disk. The first episode is held to the
//! others: nothing slow (kernel symbols, the binary's tables) may wait for it.

use super::report::{percentile, Stats};
use super::{blocks, Env, Row};
use anyhow::{ensure, Result};

const BLOCKS: usize = 30;
const BLOCK_MS: u32 = 100;
const GAP_MS: u32 = 150;
const TARGET_P99_MS: f64 = 10.0;
/// The first episode may be this much later than the median.
const TARGET_FIRST_OVER_MEDIAN_MS: f64 = 5.0;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (which, bin) in env.builds() {
        rows.extend(measure(env, which, bin)?);
    }
    Ok(rows)
}

fn measure(env: &Env, which: &str, bin: &std::path::Path) -> Result<Vec<Row>> {
    let durations = vec![BLOCK_MS; BLOCKS];
    // Default threshold (50 ms) and frequency: what an operator runs.
    let pairs = blocks::run_bin(env, bin, "latency", &durations, GAP_MS, &[])?;
    let mut latencies = Vec::new();
    let mut folded = 0;
    let mut first = None;
    for pair in &pairs {
        if let Some(e) = &pair.episode {
            let ms = (e.arrived_ns as f64 - pair.block.end_ns as f64) / 1e6;
            first.get_or_insert(ms);
            latencies.push(ms);
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
    let first = first.unwrap_or_default();
    let over = first - stats.median;
    let section = "detection latency";
    // A baseline's rows are for comparison: no targets.
    let target = |t: String, met: bool| (which.is_empty()).then_some((t, met));
    Ok(vec![
        Row {
            section,
            metric: format!("{which}{BLOCK_MS} ms blocks reported"),
            value: format!("{}/{}", latencies.len(), pairs.len()),
            target: target("all".into(), latencies.len() == pairs.len()),
        },
        Row {
            section,
            metric: format!("{which}folded file present when the line arrived"),
            value: format!("{folded}/{}", latencies.len()),
            target: target("all".into(), folded == latencies.len()),
        },
        Row {
            section,
            metric: format!("{which}block end -> episode line read (ms)"),
            value: format!(
                "p50 {:.1}, p99 {p99:.1}, min {:.1}, max {:.1}",
                stats.median, stats.min, stats.max
            ),
            target: target(format!("p99 <= {TARGET_P99_MS} ms"), p99 <= TARGET_P99_MS),
        },
        Row {
            section,
            metric: format!("{which}first episode: latency, and over the median"),
            value: format!("{first:.1} ms, {over:+.1} ms"),
            target: target(
                format!("<= median + {TARGET_FIRST_OVER_MEDIAN_MS} ms"),
                over <= TARGET_FIRST_OVER_MEDIAN_MS,
            ),
        },
    ])
}
