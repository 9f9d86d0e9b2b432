//! A loop that only ever runs short callbacks has no episode, and the
//! summary shows it was watched all along.

use integration_tests::{f64_field, node_tests, speed_factor, u64_field, Scenario, THRESHOLD_MS};

node_tests!(healthy_loop_has_no_episodes =>
    healthy_loop_has_no_episodes_node20 = 20,
    healthy_loop_has_no_episodes_node22 = 22,
    healthy_loop_has_no_episodes_node24 = 24,
);

fn healthy_loop_has_no_episodes(major: u32) {
    // loopbpf's threshold, the script's run time and the bounds below scale
    // by the machine's measured slowness (1 here: today's bounds exactly).
    let threshold_ms = THRESHOLD_MS * speed_factor();
    let run = Scenario::new(major, "healthy.js").speed_scaled().run();
    let own = run.script_result("callbacks");
    let callbacks = u64_field(&own, "callbacks").unwrap_or(0);
    let max_ms = f64_field(&own, "max_ms").unwrap_or(f64::MAX);
    // Its callbacks take 3 ms at most unless the machine is busy enough to
    // preempt them for tens of ms, which would make this test meaningless.
    if callbacks < 500 || max_ms > threshold_ms / 2.0 {
        run.fail(&format!(
            "healthy.js was not healthy by its own measure (want >= 500 callbacks, none over {:.0} ms; got {callbacks}, {max_ms:.1} ms): is the machine busy?",
            threshold_ms / 2.0
        ));
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
        Ok(ms) if ms < threshold_ms => {}
        other => problems.push(format!(
            "summary busy_max_ms {other:?}, want < {threshold_ms}: {summary}"
        )),
    }
    run.check(problems);
}
