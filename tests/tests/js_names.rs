//! With no node flags (no perf map), JavaScript frames are named from V8's
//! own memory: each block of `node/blocks.js` is an episode whose top frame
//! is the blocking function with its file:line, present in most samples.

use integration_tests::{node_tests, overlaps, samples_with_frame, Block, Episode, Run, Scenario};

node_tests!(js_functions_are_named_without_node_flags =>
    js_functions_are_named_without_node_flags_node20 = 20,
    js_functions_are_named_without_node_flags_node22 = 22,
    js_functions_are_named_without_node_flags_node24 = 24,
    js_functions_are_named_without_node_flags_node26 = 26,
);

const BLOCKS: [&str; 3] = ["blockBusyLoop", "blockJsonParse", "blockRegex"];
const MIN_SHARE: f64 = 0.9;

fn js_functions_are_named_without_node_flags(major: u32) {
    let run = Scenario::new(major, "blocks.js").without_node_flags().run();
    let blocks = run.blocks();
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    if names != BLOCKS || blocks.iter().any(|b| b.ms < 150.0) {
        run.fail("blocks.js did not run its three blocks for >= 150 ms each: recalibrate it");
    }
    let episodes = run.episodes();
    let mut problems = Vec::new();
    for block in &blocks {
        let matching: Vec<&Episode> = episodes
            .iter()
            .filter(|e| overlaps(e.span(), block.span()))
            .collect();
        match matching[..] {
            [episode] => problems.extend(check(&run, block, episode, major)),
            _ => problems.push(format!(
                "{}: {} overlapping episodes, want 1",
                block.name,
                matching.len()
            )),
        }
    }
    run.check(problems);
}

fn check(run: &Run, block: &Block, e: &Episode, major: u32) -> Vec<String> {
    let mut problems = Vec::new();
    // `name /path/to/blocks.js:line:column`
    let named = |frame: &str| {
        frame.starts_with(&format!("{} /", block.name))
            && frame.rsplit_once(' ').is_some_and(|(_, at)| {
                at.contains("blocks.js:")
                    && at
                        .split(':')
                        .nth(1)
                        .is_some_and(|l| l.parse::<u32>().is_ok())
            })
    };
    match &e.top_frame {
        Some(top) if named(top) => {}
        other => problems.push(format!(
            "{}: top_frame {other:?}, want `{} …/blocks.js:LINE:COL`",
            block.name, block.name
        )),
    }
    match run.folded(e) {
        Err(err) => problems.push(err),
        Ok(stacks) => {
            // On-CPU samples: the folded file also weighs runqueue and
            // off-CPU time, whose stacks carry no V8 slots (yet).
            let total = e.samples;
            let hits = samples_with_frame(&stacks, &format!("{} /", block.name)).min(total);
            let share = hits as f64 / total.max(1) as f64;
            println!(
                "node {major} {}: top_frame {:?}, {hits} of {total} samples ({:.0}%) name it",
                block.name,
                e.top_frame,
                share * 100.0
            );
            if share < MIN_SHARE {
                let mut heaviest = stacks.clone();
                heaviest.sort_by_key(|s| std::cmp::Reverse(s.count));
                let shown: Vec<String> = heaviest
                    .iter()
                    .take(3)
                    .map(|s| format!("{} {}", s.frames.join(";"), s.count))
                    .collect();
                problems.push(format!(
                    "{}: {hits} of {total} samples name it, want >= {:.0}%; heaviest:\n        {}",
                    block.name,
                    MIN_SHARE * 100.0,
                    shown.join("\n        ")
                ));
            }
        }
    }
    problems
}
