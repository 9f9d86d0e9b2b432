//! Accuracy: |loopbpf duration_ms - the workload's own ms| over blocks from
//! 20 ms to 2 s (--threshold 10ms), next to the error of
//! perf_hooks.monitorEventLoopDelay({resolution: 10}) for the same blocks.

use super::report::{percentile, Stats};
use super::{blocks, Env, Row};
use anyhow::{ensure, Result};

const DURATIONS_MS: [u32; 12] = [20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000];
const REPEATS: usize = 2;
const GAP_MS: u32 = 100;
const TARGET_ERROR_MS: f64 = 2.0;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let durations: Vec<u32> = (0..REPEATS).flat_map(|_| DURATIONS_MS).collect();
    let pairs = blocks::run(
        env,
        "accuracy",
        &durations,
        GAP_MS,
        &["--threshold", "10ms"],
    )?;
    let mut loopbpf_err = Vec::new();
    let mut loopbpf_signed = Vec::new();
    let mut eld_err = Vec::new();
    for pair in &pairs {
        eld_err.push((pair.block.eld_max_ms - pair.block.ms).abs());
        if let Some(e) = &pair.episode {
            if (e.duration_ms - pair.block.ms).abs() > TARGET_ERROR_MS / 2.0 {
                eprintln!(
                    "accuracy: block of {:.2} ms (workload) reported as {:.2} ms",
                    pair.block.ms, e.duration_ms
                );
            }
            loopbpf_signed.push(e.duration_ms - pair.block.ms);
            loopbpf_err.push((e.duration_ms - pair.block.ms).abs());
        }
    }
    ensure!(
        !loopbpf_err.is_empty(),
        "loopbpf reported none of the {} blocks",
        pairs.len()
    );
    let ours = Stats::of(&loopbpf_err);
    let signed = Stats::of(&loopbpf_signed);
    let eld = Stats::of(&eld_err);
    let p99 = percentile(&loopbpf_err, 99.0);
    let section = "accuracy";
    Ok(vec![
        Row {
            section,
            metric: format!(
                "blocks 20 ms..2 s matched to an episode ({} sizes x {REPEATS})",
                DURATIONS_MS.len()
            ),
            value: format!("{}/{}", loopbpf_err.len(), pairs.len()),
            target: Some(("all".into(), loopbpf_err.len() == pairs.len())),
        },
        Row {
            section,
            metric: "loopbpf |duration_ms - workload ms|".into(),
            value: format!(
                "median {:.2}, p99 {p99:.2}, max {:.2} ms",
                ours.median, ours.max
            ),
            target: Some((
                format!("max <= {TARGET_ERROR_MS} ms"),
                ours.max <= TARGET_ERROR_MS,
            )),
        },
        Row {
            section,
            metric: "loopbpf duration_ms - workload ms (signed)".into(),
            value: format!(
                "min {:+.2}, median {:+.2}, max {:+.2} ms",
                signed.min, signed.median, signed.max
            ),
            target: None,
        },
        Row {
            section,
            metric: "monitorEventLoopDelay(10 ms) |max - workload ms|".into(),
            value: format!(
                "median {:.2}, p99 {:.2}, max {:.2} ms",
                eld.median,
                percentile(&eld_err, 99.0),
                eld.max
            ),
            target: None,
        },
    ])
}
