//! Runs bench/blocker.js under loopbpf and pairs each block the workload
//! timed itself with the episode loopbpf reported for it: shared by the
//! latency and accuracy benchmarks.

use super::procs::{json_field, kv_field, Proc, SIGINT};
use super::{scratch, Env};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// A block as the workload measured it (its own hrtime).
pub struct Block {
    pub start_ns: u64,
    pub end_ns: u64,
    pub ms: f64,
    /// monitorEventLoopDelay({resolution: 10}).max after the block.
    pub eld_max_ms: f64,
}

/// An episode line of loopbpf, and when the harness read it.
pub struct Episode {
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ms: f64,
    pub arrived_ns: u64,
    /// Whether the folded file existed when the line was read.
    pub folded_present: bool,
}

pub struct Pair {
    pub block: Block,
    pub episode: Option<Episode>,
}

fn num<T: std::str::FromStr>(v: Option<&str>, what: &str, line: &str) -> Result<T> {
    v.and_then(|v| v.parse().ok())
        .with_context(|| format!("no {what} in {line:?}"))
}

fn parse_block(line: &str) -> Result<Block> {
    Ok(Block {
        start_ns: num(kv_field(line, "start_ns"), "start_ns", line)?,
        end_ns: num(kv_field(line, "end_ns"), "end_ns", line)?,
        ms: num(kv_field(line, "ms"), "ms", line)?,
        eld_max_ms: num(kv_field(line, "eld_max_ms"), "eld_max_ms", line)?,
    })
}

fn parse_episode(line: &str, arrived_ns: u64) -> Result<Episode> {
    let folded_present = json_field(line, "folded").is_some_and(|f| Path::new(f).is_file());
    Ok(Episode {
        start_ns: num(json_field(line, "start_ns"), "start_ns", line)?,
        end_ns: num(json_field(line, "end_ns"), "end_ns", line)?,
        duration_ms: num(json_field(line, "duration_ms"), "duration_ms", line)?,
        arrived_ns,
        folded_present,
    })
}

/// Blocks for each of `durations_ms`, `gap_ms` apart, watched by loopbpf with `loopbpf_args`.
pub fn run(
    env: &Env,
    label: &str,
    durations_ms: &[u32],
    gap_ms: u32,
    loopbpf_args: &[&str],
) -> Result<Vec<Pair>> {
    run_bin(env, &env.loopbpf, label, durations_ms, gap_ms, loopbpf_args)
}

/// [`run`] with loopbpf binary `bin`.
pub fn run_bin(
    env: &Env,
    bin: &Path,
    label: &str,
    durations_ms: &[u32],
    gap_ms: u32,
    loopbpf_args: &[&str],
) -> Result<Vec<Pair>> {
    let dir = scratch(label)?;
    let list: Vec<String> = durations_ms.iter().map(u32::to_string).collect();
    let mut node_cmd = env.node(dir.path(), "blocker.js", &[]);
    node_cmd.arg(list.join(",")).arg(gap_ms.to_string());
    let mut node = Proc::spawn(&format!("{label}: node"), &mut node_cmd)?;
    node.wait_for("ready", Duration::from_secs(10))?;
    let out = dir.path().join("out");
    let (mut loopbpf, _) = env.loopbpf_bin(
        bin,
        &format!("{label}: loopbpf"),
        &[node.pid()],
        loopbpf_args,
        &out,
    )?;
    node.send("go")?;

    let total_ms: u64 = durations_ms
        .iter()
        .map(|&d| u64::from(d + gap_ms + 30))
        .sum();
    let deadline = Instant::now() + Duration::from_millis(total_ms) + Duration::from_secs(20);
    let (mut blocks, mut episodes) = (Vec::new(), Vec::new());
    let mut done = false;
    while !done {
        if Instant::now() > deadline {
            bail!(
                "{label}: blocker did not finish in time ({} blocks seen)",
                blocks.len()
            );
        }
        for line in loopbpf.drain() {
            if json_field(&line.text, "type") == Some("episode") {
                episodes.push(parse_episode(&line.text, line.at_ns)?);
            }
        }
        match node.next_line(Duration::from_millis(2)) {
            Ok(line) if line.text.starts_with("block ") => blocks.push(parse_block(&line.text)?),
            Ok(line) if line.text == "done" => done = true,
            Ok(line) => eprintln!("{label}: node says {}", line.text),
            Err(_) if node.wait(Duration::ZERO).is_ok() => bail!("{label}: node exited early"),
            Err(_) => {}
        }
    }
    // The last episode may still be in flight.
    std::thread::sleep(Duration::from_millis(300));
    for line in loopbpf.drain() {
        if json_field(&line.text, "type") == Some("episode") {
            episodes.push(parse_episode(&line.text, line.at_ns)?);
        }
    }
    loopbpf.stop(SIGINT, Duration::from_secs(10))?;
    node.stop(SIGINT, Duration::from_secs(5))?;

    let pairs = blocks
        .into_iter()
        .map(|block| {
            let overlap = |e: &Episode| {
                e.end_ns
                    .min(block.end_ns)
                    .saturating_sub(e.start_ns.max(block.start_ns))
            };
            let best = episodes
                .iter()
                .enumerate()
                .filter(|(_, e)| overlap(e) > 0)
                .max_by_key(|(_, e)| overlap(e))
                .map(|(i, _)| i);
            let episode = best.map(|i| episodes.swap_remove(i));
            Pair { block, episode }
        })
        .collect();
    Ok(pairs)
}
