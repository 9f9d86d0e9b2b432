//! What unwinding through native code costs (issue 16), before and after,
//! side by side in one run: bench/native_block.js blocks its loop in
//! OpenSSL (pbkdf2Sync, no frame pointers) and in Atomics.wait, watched by
//! loopbpf at 199 and 999 Hz with the stack copy off (`LOOPBPF_STACK_COPY=off`:
//! frame pointers only, as before) and on. Per condition: the kernel's own
//! run time of `sample_stack` and `sched_switch` per call (BPF_ENABLE_STATS),
//! ring-buffer bytes per sample, loopbpf's CPU (also per sample: the
//! userspace unwind is in it) and peak RSS, what the ring buffer dropped, and
//! the share of samples whose stack names the JavaScript caller.

use super::procs::{cpu_ticks, folded_share, json_field, status_kib, Proc, SIGINT};
use super::{scratch, Env, Row};
use crate::cmd;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(8);
const PROGRAMS: [&str; 2] = ["sample_stack", "sched_switch"];
/// Ring-buffer bytes per sample record: header, 127 user and 64 kernel
/// frames; since issue 16 also the registers (32 B) and the stack copy.
const RECORD_BEFORE: usize = 48 + (127 + 64) * 8;
const RECORD_AFTER: usize = RECORD_BEFORE + 32 + profiler_common::STACK_COPY_BYTES;

fn stats() -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if PROGRAMS.contains(&name) {
            let e = out.entry(name.to_string()).or_insert((0, 0));
            e.0 += info.run_count();
            e.1 += info.run_time().as_nanos() as u64;
        }
    }
    Ok(out)
}

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let ticks_per_s: f64 = cmd::output(Command::new("getconf").arg("CLK_TCK"))?
        .parse()
        .context("getconf CLK_TCK")?;
    let mut rows = Vec::new();
    for hz in [199u32, 999] {
        for copy in [false, true] {
            rows.extend(measure(env, hz, copy, ticks_per_s)?);
        }
    }
    Ok(rows)
}

fn measure(env: &Env, hz: u32, copy: bool, ticks_per_s: f64) -> Result<Vec<Row>> {
    let dir = scratch("unwind")?;
    let mut node = Proc::spawn(
        "unwind: node",
        &mut env.node(dir.path(), "native_block.js", &[]),
    )?;
    node.wait_for("ready", Duration::from_secs(30))?;
    let out = dir.path().join("out");
    let freq = hz.to_string();
    let (mut loopbpf, _) = env.loopbpf_with_env(
        "unwind: loopbpf",
        &[node.pid()],
        &["--frequency", &freq],
        &out,
        &[("LOOPBPF_STACK_COPY", if copy { "on" } else { "off" })],
    )?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = stats()?;
    let ticks0 = cpu_ticks(loopbpf.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let secs = t0.elapsed().as_secs_f64();
    let ticks = cpu_ticks(loopbpf.pid())? - ticks0;
    let after = stats()?;
    let hwm_mib = status_kib(loopbpf.pid(), "VmHWM")? as f64 / 1024.0;
    let mut lines = loopbpf.drain();
    loopbpf.stop(SIGINT, Duration::from_secs(10))?;
    drop(node);
    // The summary comes at exit; its reader thread may still hold it.
    std::thread::sleep(Duration::from_millis(200));
    lines.extend(loopbpf.drain());
    let summary = lines
        .iter()
        .find(|l| json_field(&l.text, "type") == Some("summary"))
        .map(|l| l.text.clone())
        .unwrap_or_default();
    let count = |key| {
        json_field(&summary, key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (samples, samples_lost, episodes_lost) = (
        count("samples"),
        count("samples_lost"),
        count("episodes_lost"),
    );

    // Share of samples (folded counts) naming the caller, over the episodes.
    let (hits, total) = folded_share(&lines, &out, |stack| {
        stack.contains("blockPbkdf2") || stack.contains("blockAtomicsWait")
    });

    let section = "unwind cost";
    let cond = format!(
        "{hz} Hz, stack copy {}",
        if copy { "on (after)" } else { "off (before)" }
    );
    let mut rows = Vec::new();
    for name in PROGRAMS {
        let (c1, t1) = after.get(name).copied().unwrap_or((0, 0));
        let (c0, t0) = before.get(name).copied().unwrap_or((0, 0));
        let calls = c1.saturating_sub(c0);
        let ns = t1.saturating_sub(t0);
        rows.push(Row::info(
            section,
            format!("{cond}: {name}"),
            format!(
                "{:.0} calls/s, {:.0} ns/call",
                calls as f64 / secs,
                if calls > 0 {
                    ns as f64 / calls as f64
                } else {
                    0.0
                }
            ),
        ));
    }
    rows.push(Row::info(
        section,
        format!("{cond}: ring-buffer bytes per sample"),
        if copy {
            format!("{RECORD_AFTER} B")
        } else {
            format!(
                "{RECORD_BEFORE} B before issue 16 (this build reserves {RECORD_AFTER} B and leaves the copy unwritten)"
            )
        },
    ));
    let cpu_s = ticks as f64 / ticks_per_s;
    rows.push(Row::info(
        section,
        format!("{cond}: loopbpf CPU, peak RSS"),
        format!("{:.2}% of one core, {hwm_mib:.1} MiB", cpu_s / secs * 100.0),
    ));
    rows.push(Row::info(
        section,
        format!("{cond}: loopbpf CPU per sample (all of it: decode, unwind, symbolize)"),
        if samples > 0 {
            format!(
                "{:.0} us over {samples} samples",
                cpu_s * 1e6 / samples as f64
            )
        } else {
            "no samples".to_string()
        },
    ));
    rows.push(Row::info(
        section,
        format!("{cond}: lost in the ring buffer"),
        format!("{samples_lost} samples, {episodes_lost} episodes"),
    ));
    rows.push(Row::info(
        section,
        format!("{cond}: samples naming the JavaScript caller"),
        format!(
            "{hits} of {total} ({:.0}%)",
            if total > 0 {
                hits as f64 * 100.0 / total as f64
            } else {
                0.0
            }
        ),
    ));
    Ok(rows)
}
