//! Without `--perf-basic-prof-only-functions` JS frames cannot be named, but
//! the episodes are still measured, and loopbpf says how to get the names.

use integration_tests::{node_tests, overlaps, Scenario, PERF_MAP_FLAG};

node_tests!(missing_perf_map_warns_and_still_reports_episodes =>
    missing_perf_map_warns_and_still_reports_episodes_node20 = 20,
    missing_perf_map_warns_and_still_reports_episodes_node22 = 22,
    missing_perf_map_warns_and_still_reports_episodes_node24 = 24,
);

fn missing_perf_map_warns_and_still_reports_episodes(major: u32) {
    let run = Scenario::new(major, "blocks.js").without_perf_map().run();
    let blocks = run.blocks();
    if blocks.len() != 3 {
        run.fail("blocks.js did not report its three blocks");
    }
    let episodes = run.episodes();
    let mut problems = Vec::new();
    for block in &blocks {
        let n = episodes
            .iter()
            .filter(|e| overlaps(e.span(), block.span()))
            .count();
        if n != 1 {
            problems.push(format!(
                "{} ({:.1} ms): {n} overlapping episodes, want 1",
                block.name, block.ms
            ));
        }
    }
    let warnings = run.warnings();
    if !warnings.iter().any(|w| w.contains(PERF_MAP_FLAG)) {
        problems.push(format!(
            "no warning mentions {PERF_MAP_FLAG}; warnings: {warnings:?}"
        ));
    }
    run.check(problems);
}
