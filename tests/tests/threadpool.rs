//! The libuv threadpool: 32 concurrent `crypto.pbkdf2` calls keep its 4
//! workers saturated while the event loop stays healthy; loopbpf reports the
//! saturation with the workers' stacks, the queue wait, and the utilization.
//! A node binary without libuv's symbols degrades with a note.

use integration_tests::{
    node_for, node_tests, parse_folded, samples_with_frame, total_samples, Run, Scenario,
};
use serde_json::Value;

node_tests!(saturated_pool_is_reported_with_pbkdf2_stacks =>
    saturated_pool_is_reported_with_pbkdf2_stacks_node20 = 20,
    saturated_pool_is_reported_with_pbkdf2_stacks_node22 = 22,
    saturated_pool_is_reported_with_pbkdf2_stacks_node24 = 24,
);

const CALLS: u64 = 32;

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(-1.0)
}

fn saturated_pool_is_reported_with_pbkdf2_stacks(major: u32) {
    let run = Scenario::new(major, "threadpool.js").run();
    let batch = run.script_result("max_loop_lag_ms");
    let batch_ms = f(&batch, "ms");
    let mut problems = Vec::new();

    let saturations = run.events("threadpool_saturation");
    let longest = saturations
        .iter()
        .max_by(|a, b| f(a, "duration_ms").total_cmp(&f(b, "duration_ms")));
    let Some(s) = longest else {
        run.fail(&format!(
            "no threadpool_saturation line; the batch took {batch_ms} ms"
        ));
    };
    // Saturated from the fourth item's start until the first worker finds
    // the queue empty: at least the first 7 of 8 rounds of 4 items.
    let d = f(s, "duration_ms");
    if d < batch_ms * 0.5 || d > batch_ms + 5.0 {
        problems.push(format!(
            "want a saturation of most of the {batch_ms} ms batch: {s}"
        ));
    }
    let span = |v: &Value| -> Option<(u64, u64)> {
        let n = |k: &str| v[k].as_u64().or_else(|| v[k].as_str()?.parse().ok());
        Some((n("start_ns")?, n("end_ns")?))
    };
    match (span(s), span(&batch)) {
        (Some((a, b)), Some((start, end))) if a >= start && b <= end + 5_000_000 => {}
        _ => problems.push(format!("want the saturation inside the batch {batch}: {s}")),
    }
    let workers: Vec<u64> = s["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    if s["pool_size"] != 4 || workers.len() != 4 || workers.contains(&u64::from(run.node_pid)) {
        problems.push(format!("want 4 workers, none of them the main thread: {s}"));
    }
    let work = s["top_work"].as_str().unwrap_or_default();
    if !work.to_lowercase().contains("pbkdf2") {
        problems.push(format!(
            "want pbkdf2 as the work the workers were running: {s}"
        ));
    }
    check_folded(&run, s, &mut problems);

    let main_episodes: Vec<Value> = run
        .events("episode")
        .into_iter()
        .filter(|e| e["thread"] == "main")
        .collect();
    if !main_episodes.is_empty() {
        problems.push(format!(
            "the main loop only dispatched, yet: {main_episodes:?}"
        ));
    }
    let summary = run.summary();
    // Started after loopbpf attached, and the process is gone at the summary:
    // the workers are known from the census while it ran.
    if summary["thread_roles"]["threadpool"] != 4 {
        problems.push(format!(
            "want 4 threadpool threads: {}",
            summary["thread_roles"]
        ));
    }
    let pool = &summary["threadpool"];
    if pool["items"] != CALLS || pool["queue_wait_items"] != CALLS {
        problems.push(format!(
            "want {CALLS} items, each with a queue wait: {pool}"
        ));
    }
    // Items queued behind 7 rounds wait most of the batch.
    if f(pool, "queue_wait_max_ms") < batch_ms * 0.5
        || f(pool, "queue_wait_max_ms") > batch_ms + 5.0
    {
        problems.push(format!(
            "want a longest queue wait of most of the {batch_ms} ms batch: {pool}"
        ));
    }
    if pool["saturations"].as_u64().unwrap_or(0) < 1 || f(pool, "peak_utilization") < 0.85 {
        problems.push(format!(
            "want the saturation and a full second in the summary: {pool}"
        ));
    }
    let points = run.events("threadpool_utilization");
    if !points
        .iter()
        .any(|p| f(p, "utilization") >= 0.85 && p["busy_workers"] == 4)
    {
        problems.push(format!(
            "want a utilization point of a busy pool: {points:?}"
        ));
    }
    run.check(problems);
}

/// PBKDF2 names a good share of the workers' samples. Not all: OpenSSL's
/// assembly (sha512_block_data_order_avx2) keeps no frame pointer, so a
/// sample landing in it has only its leaf.
fn check_folded(run: &Run, s: &Value, problems: &mut Vec<String>) {
    let Some(path) = s["folded"].as_str() else {
        problems.push(format!("the saturation has no folded file: {s}"));
        return;
    };
    let stacks = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| parse_folded(&t));
    let stacks = match stacks {
        Ok(s) => s,
        Err(e) => return problems.push(format!("{path}: {e}")),
    };
    let (total, pbkdf2) = (
        total_samples(&stacks),
        samples_with_frame(&stacks, "PBKDF2"),
    );
    if total == 0 || (pbkdf2 as f64) < total as f64 * 0.2 {
        problems.push(format!(
            "want PBKDF2 in at least 20% of the {total} worker samples, got {pbkdf2}"
        ));
    }
    if !stacks
        .iter()
        .all(|st| st.frames.first().is_some_and(|f| f == "[threadpool]"))
    {
        problems.push(format!("{path}: every stack should start at [threadpool]"));
    }
    let _ = run;
}

/// Official builds keep libuv's internal symbols; a stripped copy has only the
/// exported ones (uv_queue_work, uv_cond_wait), not uv__fs_work and friends.
#[test]
fn stripped_node_degrades_with_a_note() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stripped = dir.path().join("node");
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(node_for(20))
        .status()
        .expect("running strip (binutils)");
    assert!(status.success(), "strip failed: {status}");
    let run = Scenario::new(20, "threadpool.js")
        .node_binary(&stripped)
        .run();
    let mut problems = Vec::new();
    let notes: Vec<String> = run
        .warnings()
        .into_iter()
        .filter(|w| {
            w.contains("uv__fs_work") && w.contains("not found") && w.contains("threadpool")
        })
        .collect();
    if notes.len() != 1 {
        problems.push(format!(
            "want one note naming the missing symbols, got {:?}",
            run.warnings()
        ));
    }
    if !run.events("threadpool_saturation").is_empty() {
        problems.push("no saturation can be measured without the symbols".into());
    }
    let summary = run.summary();
    if !summary["threadpool"].is_null() {
        problems.push(format!(
            "want no threadpool figures: {}",
            summary["threadpool"]
        ));
    }
    if summary["iterations"].as_u64().unwrap_or(0) == 0 {
        problems.push(format!("the event loop is still measured: {summary}"));
    }
    run.check(problems);
}

/// Past 2000 items a second the uprobes would cost over 1% of a
/// CPU: they come off with a warning, and the summary says figures stopped.
#[test]
fn a_storm_of_small_items_detaches_the_uprobes() {
    let run = Scenario::new(20, "fs_storm.js").run();
    let per_s = f(&run.script_result("fs_storm"), "per_s");
    let mut problems = Vec::new();
    let detached: Vec<String> = run
        .warnings()
        .into_iter()
        .filter(|w| w.contains("work items/s") && w.contains("detached"))
        .collect();
    if detached.len() != 1 {
        problems.push(format!(
            "the script ran {per_s:.0} stat calls/s; want one warning that the uprobes came off, got {:?}",
            run.warnings()
        ));
    }
    let summary = run.summary();
    let pool = &summary["threadpool"];
    if pool["stopped_early"] != true || pool["items"].as_u64().unwrap_or(0) < 2_000 {
        problems.push(format!(
            "want the figures up to the detach, marked stopped_early: {pool}"
        ));
    }
    run.check(problems);
}
