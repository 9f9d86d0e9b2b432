//! A loop that only ever runs short callbacks has no episode, and the
//! summary shows it was watched all along.

use integration_tests::{f64_field, node_tests, u64_field, Scenario, THRESHOLD_MS};

node_tests!(healthy_loop_has_no_episodes =>
    healthy_loop_has_no_episodes_node20 = 20,
    healthy_loop_has_no_episodes_node22 = 22,
    healthy_loop_has_no_episodes_node24 = 24,
);

fn healthy_loop_has_no_episodes(major: u32) {
    let run = Scenario::new(major, "healthy.js").run();
    let own = run.script_result("callbacks");
    let callbacks = u64_field(&own, "callbacks").unwrap_or(0);
    let max_ms = f64_field(&own, "max_ms").unwrap_or(f64::MAX);
    // Its callbacks take 3 ms at most unless the machine is busy enough to
    // preempt them for tens of ms, which would make this test meaningless.
    if callbacks < 500 || max_ms > THRESHOLD_MS / 2.0 {
        run.fail("healthy.js was not healthy by its own measure (want >= 500 callbacks, none over 25 ms): is the machine busy?");
    }

    let mut problems = Vec::new();
    let episodes = run.episodes();
    if !episodes.is_empty() {
        problems.push(format!(
            "{} episode(s), want none: {episodes:#?}",
            episodes.len()
        ));
    }
    let summary = run.summary();
    match u64_field(&summary, "iterations") {
        Ok(n) if n > 100 => {}
        other => problems.push(format!(
            "summary iterations {other:?}, want > 100: {summary}"
        )),
    }
    match f64_field(&summary, "busy_max_ms") {
        Ok(ms) if ms < THRESHOLD_MS => {}
        other => problems.push(format!(
            "summary busy_max_ms {other:?}, want < {THRESHOLD_MS}: {summary}"
        )),
    }
    run.check(problems);
}
