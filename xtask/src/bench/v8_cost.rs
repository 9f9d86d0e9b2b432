//! What naming JavaScript frames from V8's memory costs (issue 10), with and
//! without, side by side in one run: bench/v8_frames.js, started with no
//! node flags (so no perf map), blocks its loop 200 ms every 500 ms in a
//! chain of functions drawn from 20000 distinct ones (more than the name
//! cache's 8192, so it evicts), watched at 999 Hz with V8 frame reading off
//! (`LOOPBPF_V8_FRAMES=off`) and on. Per condition: loopbpf's CPU time per
//! sample and in all, its peak RSS, the name cache's fill and evictions, the
//! ring buffer's losses, and the share of samples whose stack names a
//! JavaScript function.

use super::procs::{folded_share, json_field, status_kib, task_cpu_ns, Proc, SIGINT};
use super::{scratch, Env, Row};
use anyhow::Result;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);
const HZ: &str = "999";

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for on in [false, true] {
        rows.extend(measure(env, on)?);
    }
    Ok(rows)
}

fn measure(env: &Env, on: bool) -> Result<Vec<Row>> {
    let dir = scratch("v8")?;
    // No node flags: what a production process looks like.
    let mut node = Proc::spawn(
        "v8: node",
        Command::new("node")
            .current_dir(dir.path())
            .arg(env.workloads.join("v8_frames.js")),
    )?;
    node.wait_for("ready", Duration::from_secs(60))?;
    let out = dir.path().join("out");
    let (mut loopbpf, _) = env.loopbpf_with_env(
        "v8: loopbpf",
        &[node.pid()],
        &["--frequency", HZ],
        &out,
        &[("LOOPBPF_V8_FRAMES", if on { "on" } else { "off" })],
    )?;
    let cpu0 = task_cpu_ns(loopbpf.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let secs = t0.elapsed().as_secs_f64();
    let cpu_ns = task_cpu_ns(loopbpf.pid())? - cpu0;
    let hwm_mib = status_kib(loopbpf.pid(), "VmHWM")? as f64 / 1024.0;
    let mut lines = loopbpf.drain();
    loopbpf.stop(SIGINT, Duration::from_secs(10))?;
    // The summary comes at exit.
    std::thread::sleep(Duration::from_millis(300));
    lines.extend(loopbpf.drain());
    drop(node);

    let samples: u64 = lines
        .iter()
        .filter(|l| json_field(&l.text, "type") == Some("summary"))
        .filter_map(|l| json_field(&l.text, "samples")?.parse::<u64>().ok())
        .sum();
    let (named, total) = js_share(&lines, &out);
    let summary: Option<serde_json::Value> = lines
        .iter()
        .filter(|l| json_field(&l.text, "type") == Some("summary"))
        .find_map(|l| serde_json::from_str(&l.text).ok());
    let count = |key: &str| -> u64 { summary.as_ref().and_then(|s| s[key].as_u64()).unwrap_or(0) };
    let lost = format!(
        "{} samples, {} off-CPU stacks, {} episodes",
        count("samples_lost"),
        count("off_cpu_lost"),
        count("episodes_lost")
    );
    let cache = match summary.as_ref().map(|s| &s["v8_frames"]) {
        Some(v) if v.is_object() => {
            let n = |key: &str| v[key].as_u64().unwrap_or(0);
            format!(
                "{} of {} functions cached at exit, {} evicted; frames: {} named, {} by type, {} [js unknown]",
                n("cached"),
                n("capacity"),
                n("evicted"),
                n("named"),
                n("frame_type"),
                n("unknown")
            )
        }
        _ => "not read".to_string(),
    };

    let section = "v8 frames";
    let cond = if on {
        "V8 frame reading on"
    } else {
        "V8 frame reading off (perf maps only, none here)"
    };
    Ok(vec![
        Row::info(
            section,
            format!("{cond}: loopbpf CPU per sample"),
            if samples > 0 {
                format!(
                    "{:.1} µs ({samples} samples, {:.0} /s)",
                    cpu_ns as f64 / 1e3 / samples as f64,
                    samples as f64 / secs
                )
            } else {
                "no samples".to_string()
            },
        ),
        Row::info(
            section,
            format!("{cond}: loopbpf CPU, peak RSS"),
            format!(
                "{:.2}% of one core, {hwm_mib:.1} MiB",
                cpu_ns as f64 / 1e9 / secs * 100.0
            ),
        ),
        Row::info(section, format!("{cond}: name cache"), cache),
        Row::info(section, format!("{cond}: lost in the ring buffer"), lost),
        Row::info(
            section,
            format!("{cond}: samples naming a JavaScript function"),
            format!(
                "{named} of {total} ({:.0}%)",
                if total > 0 {
                    named as f64 * 100.0 / total as f64
                } else {
                    0.0
                }
            ),
        ),
    ])
}

/// Folded counts of the episodes, and of those the ones whose stack holds a
/// named JavaScript frame (`name /file:line:col`, or `(anonymous)` of the
/// workload's generated functions).
fn js_share(lines: &[super::procs::Line], out: &Path) -> (u64, u64) {
    folded_share(lines, out, |stack| {
        stack.contains("block ") || stack.contains("v8_frames.js:")
    })
}
