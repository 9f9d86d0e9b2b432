//! Symbolization: runs bench/symbolize_bench.rs (release)
//! for perf maps of 10k, 100k and 1M synthetic V8 entries and parses its
//! `bench-symbolize key=value ...` line.

use super::procs::{kv_field, log_command};
use super::{Env, Row};
use anyhow::{Context, Result};
use std::process::Command;

const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];
const TARGET_LOAD_MS_1M: f64 = 1000.0;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let section = "symbolization";
    let mut rows = Vec::new();
    for entries in SIZES {
        let mut c = Command::new(&env.symbolize_bench);
        c.arg(entries.to_string());
        log_command("symbolization", &c);
        let out = c.output().context("cannot run symbolize_bench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "symbolize_bench {entries} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with("bench-symbolize "))
            .context("symbolize_bench printed no bench-symbolize line")?;
        let get = |key: &str| -> Result<f64> {
            kv_field(line, key)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in {line:?}"))
        };
        let load_ms = get("load_ms")?;
        let n = human(entries);
        let target = (entries == 1_000_000).then(|| {
            (
                format!("<= {TARGET_LOAD_MS_1M} ms"),
                load_ms <= TARGET_LOAD_MS_1M,
            )
        });
        rows.push(Row {
            section,
            metric: format!("{n} entries: first load"),
            value: format!(
                "{load_ms:.1} ms, RSS +{:.1} MiB",
                get("rss_delta_kib")? / 1024.0
            ),
            target,
        });
        rows.push(Row {
            section,
            metric: format!(
                "{n} entries: append {} and refresh",
                human(get("update_entries")? as u64)
            ),
            value: format!("{:.1} ms", get("update_ms")?),
            target: None,
        });
        rows.push(Row {
            section,
            metric: format!("{n} entries: Symbolizer, JIT frames"),
            value: format!(
                "{:.2} M frames/s (first request incl. load {:.1} ms)",
                get("frames_per_s")? / 1e6,
                get("first_symbolize_ms")?
            ),
            target: None,
        });
    }
    Ok(rows)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
