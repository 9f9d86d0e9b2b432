//! Each blocking call of `node/blocks.js` is one episode, as long as the
//! script measured it, with the blocking function in its stacks.

use integration_tests::{
    contains, node_tests, overlaps, samples_with_frame, speed_factor, total_samples, Block,
    Episode, Run, Scenario,
};

node_tests!(blocking_functions_are_reported_per_block =>
    blocking_functions_are_reported_per_block_node20 = 20,
    blocking_functions_are_reported_per_block_node22 = 22,
    blocking_functions_are_reported_per_block_node24 = 24,
);

const BLOCKS: [&str; 3] = ["blockBusyLoop", "blockJsonParse", "blockRegex"];
/// Samples at 199 Hz in the shortest block (150 ms) are about 30.
const MIN_SAMPLES: u64 = 5;
const MIN_SHARE: f64 = 0.8;

fn blocking_functions_are_reported_per_block(major: u32) {
    // Threshold, block lengths and the bounds below scale by the machine's
    // measured slowness (1 here: today's bounds exactly).
    let factor = speed_factor();
    let run = Scenario::new(major, "blocks.js").speed_scaled().run();
    let blocks = run.blocks();
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    if names != BLOCKS || blocks.iter().any(|b| b.ms < 150.0 * factor) {
        run.fail(&format!(
            "blocks.js did not run its three blocks for >= {:.0} ms each: recalibrate it",
            150.0 * factor
        ));
    }

    let episodes = run.episodes();
    let mut problems = Vec::new();
    for block in &blocks {
        let matching: Vec<&Episode> = episodes
            .iter()
            .filter(|e| overlaps(e.span(), block.span()))
            .collect();
        match matching[..] {
            [episode] => problems.extend(check_episode(&run, block, episode, factor)),
            _ => problems.push(format!(
                "{} ({:.1} ms): {} overlapping episodes, want 1",
                block.name,
                block.ms,
                matching.len()
            )),
        }
    }
    // The script is idle except for its blocks, so nothing else is an episode.
    for e in episodes
        .iter()
        .filter(|e| !blocks.iter().any(|b| overlaps(e.span(), b.span())))
    {
        problems.push(format!("episode matching no block: {e:?}"));
    }
    run.check(problems);
}

fn check_episode(run: &Run, block: &Block, e: &Episode, factor: f64) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem =
        |msg: String| problems.push(format!("{}: {msg}\n      episode: {e:?}", block.name));
    if (e.pid, e.tid, e.thread.as_str()) != (run.node_pid, run.node_pid, "main") {
        problem(format!(
            "want pid = tid = {} on thread \"main\"",
            run.node_pid
        ));
    }
    // The iteration holds the call plus a little loop overhead around it, and
    // its edges are syscall stamps outside the script's own.
    if !contains(e.span(), block.span(), (1_000_000.0 * factor) as u64) {
        problem(format!(
            "does not contain the call [{}, {}]",
            block.start_ns, block.end_ns
        ));
    }
    let (below, above) = (1.0 * factor, 5.0 * factor);
    if e.duration_ms < block.ms - below || e.duration_ms > block.ms + above {
        problem(format!(
            "duration {:.2} ms, script measured {:.2} ms (want -{below:.0}..+{above:.0} ms)",
            e.duration_ms, block.ms
        ));
    }
    if e.samples < MIN_SAMPLES {
        problem(format!("{} samples, want >= {MIN_SAMPLES}", e.samples));
    }
    match run.folded(e) {
        Err(err) => problem(err),
        Ok(stacks) => {
            // Samples missing from the file count as not showing the function.
            // A preempted thread's wait for a CPU is a bare `[runqueue]` line:
            // no stack is taken on preemption (by design, for cost), so it can
            // name no function; on 2 cores V8's own helper threads make it a
            // quarter of a JSON.parse block now and then.
            let with_stack: Vec<_> = stacks
                .iter()
                .filter(|s| s.frames != ["[runqueue]"])
                .cloned()
                .collect();
            let total = total_samples(&with_stack).max(e.samples);
            let hits = samples_with_frame(&stacks, &block.name);
            if total == 0 || (hits as f64) < MIN_SHARE * total as f64 {
                let mut heaviest = stacks.clone();
                heaviest.sort_by_key(|s| std::cmp::Reverse(s.count));
                let shown: Vec<String> = heaviest
                    .iter()
                    .take(5)
                    .map(|s| format!("{} {}", s.frames.join(";"), s.count))
                    .collect();
                problem(format!(
                    "{hits} of {total} samples have a frame with `{}`, want >= {:.0}%; heaviest stacks:\n        {}",
                    block.name, MIN_SHARE * 100.0, shown.join("\n        ")
                ));
            }
        }
    }
    problems
}
