//! `loopbpf report` on a state directory of 10,000 episodes: how long it takes
//! to write the page, how big the page is, and how long headless Chromium
//! takes to load it and run its script (the page must stay usable). The
//! episodes are synthetic but shaped like real ones: an index line each and
//! a folded file of 40 stacks, 25 frames deep, JavaScript frames at the top.

use super::report::Stats;
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

const EPISODES: usize = 10_000;
const RUNS: usize = 3;
const TARGET_MS: f64 = 2000.0;
const SECTION: &str = "report";

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("report")?;
    let state = dir.path().join("state");
    let episodes = state.join("episodes");
    std::fs::create_dir_all(&episodes)?;
    let mut index = String::new();
    // Records of the JSON contract (schema_version 1), from 2027-01-15T08:00:00Z
    // (1_800_000_000_000 ms since the epoch) on, one every 500 ms.
    for i in 0..EPISODES {
        let at_ms = i as u64 * 500;
        let start_time = format!(
            "2027-01-15T{:02}:{:02}:{:02}.{:06}Z",
            8 + at_ms / 3_600_000,
            at_ms / 60_000 % 60,
            at_ms / 1000 % 60,
            at_ms % 1000 * 1000
        );
        let pid = 1000 + (i % 20) as u32;
        let start_ns = 1_000_000_000 + i as u64 * 500_000_000;
        let id = format!("{pid}-{pid}-{start_ns}");
        let verdict = ["javascript", "blocked", "gc", "cpu-starved"][i % 4];
        writeln!(
            index,
            r#"{{"type":"episode","schema_version":1,"time":"{start_time}","id":"{id}","pid":{pid},"tid":{pid},"thread":"main","thread_name":"node","start_ns":{start_ns},"start_time":"{start_time}","end_ns":{},"end_time":"{start_time}","duration_ms":{},"samples":40,"top_frame":"handler{} /srv/app/routes.js:{}:9","top_frame_kind":"js","top_frame_share":0.8,"verdict":"{verdict}","on_cpu_ms":60.0,"off_cpu_ms":30.0,"runqueue_ms":10.0,"gc_share":0.1,"syscall":"futex","folded":null,"files":[],"folded_error":null,"ongoing":false,"comm":"node","exe":"/usr/bin/node","container":null,"pod":null,"namespace":null,"cgroup":"0::/app.slice"}}"#,
            start_ns + 100_000_000,
            50 + i % 900,
            i % 97,
            i % 300,
        )?;
        let mut folded = String::new();
        for s in 0..40 {
            let mut frames: Vec<String> = (0..20)
                .map(|d| format!("node::native_frame_{d}(v8::Local<v8::Value>)"))
                .collect();
            frames.extend((0..5).map(|d| format!("fn{s}_{d} /srv/app/lib/module{d}.js:{s}:{d}")));
            writeln!(folded, "{} {}", frames.join(";"), 1 + s % 7)?;
        }
        std::fs::write(episodes.join(format!("{id}.folded")), folded)?;
    }
    std::fs::write(state.join("index.jsonl"), index)?;

    let html = dir.path().join("report.html");
    let mut ms = Vec::new();
    for _ in 0..RUNS {
        let mut c = Command::new(&env.loopbpf);
        c.arg("report").arg(&state).arg("-o").arg(&html);
        super::procs::log_command("report", &c);
        let t = Instant::now();
        let out = c.output().context("running loopbpf report")?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            out.status.success(),
            "loopbpf report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let size_mib = std::fs::metadata(&html)?.len() as f64 / (1 << 20) as f64;
    let report = Stats::of(&ms);

    // Load and run the page: --dump-dom returns once the load event's
    // script has built the timeline, histogram and first rows.
    let profile = dir.path().join("chromium");
    let t = Instant::now();
    let out = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .context("running chromium (the Debian package chromium)")?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let dom = String::from_utf8_lossy(&out.stdout);
    let rows = dom.matches("<tr class=\"ep\"").count();
    let marks = dom.matches("<rect").count();

    Ok(vec![
        Row {
            section: SECTION,
            metric: format!("loopbpf report, {EPISODES} episodes (state directory), {RUNS} runs"),
            value: format!("{} ms, page {size_mib:.1} MiB", report.fmt(0)),
            target: Some((format!("<= {TARGET_MS:.0} ms"), report.median <= TARGET_MS)),
        },
        Row::info(
            SECTION,
            "headless Chromium: load and run the page (--dump-dom)",
            format!("{load_ms:.0} ms; {rows} table rows drawn (500 a page), {marks} SVG marks"),
        ),
    ])
}
