//! With no node flags (no perf map), JavaScript frames are named from V8's
//! own memory: each block of `node/blocks.js` is an episode whose top frame
//! is the blocking function with its file:line, present in most samples.

use integration_tests::checks::folded_with_stacks;
use integration_tests::{
    node_tests, overlaps, samples_with_frame, Block, Episode, FoldedStack, Run, Scenario,
};

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
            [episode] => {
                problems.extend(check(&run, block, episode, major));
                // The busy loop is JavaScript even where its samples end in
                // a native clock call.
                let want = (block.name == "blockBusyLoop").then_some("javascript");
                if let Some(problem) = wrong_verdict(episode, want) {
                    problems.push(format!("{}: {problem}", block.name));
                }
            }
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

node_tests!(interpreted_and_waiting_callers_are_named_without_node_flags =>
    interpreted_and_waiting_callers_are_named_without_node_flags_node20 = 20,
    interpreted_and_waiting_callers_are_named_without_node_flags_node22 = 22,
    interpreted_and_waiting_callers_are_named_without_node_flags_node24 = 24,
    interpreted_and_waiting_callers_are_named_without_node_flags_node26 = 26,
);

/// Block, the file its function is in, the share of its samples that must
/// name it (0: not yet named; `top_frame` is then not checked either), and
/// the verdict its episode must get (None: not checked).
const TIER_BLOCKS: [(&str, &str, f64, Option<&str>); 3] = [
    // A `Date.now()` loop: JavaScript, though most samples end in the vDSO.
    (
        "blockInterpreted",
        "interpreted.js",
        MIN_SHARE,
        Some("javascript"),
    ),
    // Its JavaScript frames lie 17.0-18.3 KiB above the stack pointer of
    // its wait (libuv's uv__io_poll keeps a 12 KiB epoll_event array on the
    // stack; measured with gdb on Node 20 and 24), past the 16 KiB stack
    // copy: named from the V8 slots the kernel reads along the frame-pointer
    // chain as the thread leaves the CPU.
    ("blockExecSync", "js_tiers.js", MIN_SHARE, Some("blocked")),
    // Its samples are in OpenSSL's sha512 assembly: named once the unwinder
    // gets through it (its realigning CFA, see unwind::cfa_deref) to the
    // JIT frames in the stack copy.
    ("blockPbkdf2Sync", "js_tiers.js", MIN_SHARE, None),
];

/// A function in the interpreter (Node 24, 26; Sparkplug on 20, 22, see
/// js_tiers.js), and callers of calls that wait off the CPU (named by the
/// V8 slots the kernel reads as the thread leaves the CPU) or run in
/// OpenSSL (named once the unwinder gets past its assembly).
fn interpreted_and_waiting_callers_are_named_without_node_flags(major: u32) {
    let run = Scenario::new(major, "js_tiers.js")
        .without_node_flags()
        .run();
    let blocks = run.blocks();
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    let want: Vec<&str> = TIER_BLOCKS.iter().map(|b| b.0).collect();
    if names != want || blocks.iter().any(|b| b.ms < 150.0) {
        run.fail(&format!(
            "js_tiers.js did not run its blocks for >= 150 ms each: {blocks:?}"
        ));
    }
    let episodes = run.episodes();
    let mut problems = Vec::new();
    for (block, (_, file, min_share, verdict)) in blocks.iter().zip(TIER_BLOCKS) {
        let matching: Vec<&Episode> = episodes
            .iter()
            .filter(|e| overlaps(e.span(), block.span()))
            .collect();
        match matching[..] {
            [e] => {
                problems.extend(check_tier(&run, (&block.name, file, min_share), e, major));
                if let Some(problem) = wrong_verdict(e, verdict) {
                    problems.push(format!("{}: {problem}", block.name));
                }
            }
            _ => problems.push(format!(
                "{}: {} overlapping episodes, want 1",
                block.name,
                matching.len()
            )),
        }
    }
    run.check(problems);
}

/// The episode's verdict unless it is `want`. On a loaded machine a busy
/// block can wait for a CPU longer than it runs: `cpu-starved` is then the
/// right verdict, and what it says about JavaScript cannot be checked.
fn wrong_verdict(e: &Episode, want: Option<&str>) -> Option<String> {
    let want = want?;
    let got = e.verdict.as_deref();
    let starved = e.runqueue_ms.unwrap_or(0.0) >= e.on_cpu_ms.unwrap_or(f64::MAX);
    if got == Some(want) || (want == "javascript" && got == Some("cpu-starved") && starved) {
        if got != Some(want) {
            println!(
                "verdict {got:?}, not checked: {:?} ms waiting for a CPU",
                e.runqueue_ms
            );
        }
        return None;
    }
    Some(format!(
        "verdict {got:?} ({:?} ms on a CPU, {:?} waiting for one), want {want:?}",
        e.on_cpu_ms, e.runqueue_ms
    ))
}

/// `top_frame` is `name /…/file:LINE:COL`, and the function is in >= 90% of
/// the episode's stacks, on-CPU samples and off-CPU time alike (the folded
/// file weighs off-CPU time at the sampling rate). Time waiting for a CPU
/// after a preemption has no stack by design (`[runqueue]` alone).
fn check_tier(
    run: &Run,
    (name, file, min_share): (&str, &str, f64),
    e: &Episode,
    major: u32,
) -> Vec<String> {
    let mut problems = Vec::new();
    let named = |frame: &str| {
        frame.starts_with(&format!("{name} /"))
            && frame.rsplit_once(' ').is_some_and(|(_, at)| {
                at.contains(&format!("/{file}:"))
                    && at
                        .rsplit(':')
                        .nth(1)
                        .is_some_and(|l| l.parse::<u32>().is_ok())
            })
    };
    if min_share > 0.0 && !e.top_frame.as_deref().is_some_and(named) {
        problems.push(format!(
            "{name}: top_frame {:?}, want `{name} …/{file}:LINE:COL`",
            e.top_frame
        ));
    }
    let stacks: Vec<FoldedStack> = match folded_with_stacks(run, e) {
        Ok(s) => s,
        Err(err) => return vec![format!("{name}: {err}")],
    };
    let total: u64 = stacks.iter().map(|s| s.count).sum();
    let hits = samples_with_frame(&stacks, &format!("{name} /"));
    let share = hits as f64 / total.max(1) as f64;
    println!(
        "node {major} {name}: top_frame {:?}, {hits} of {total} samples ({:.0}%) name it",
        e.top_frame,
        share * 100.0
    );
    // A frame naming another block's function is a wrong name.
    for s in &stacks {
        let wrong = TIER_BLOCKS
            .iter()
            .map(|b| b.0)
            .filter(|other| *other != name)
            .find(|other| {
                s.frames
                    .iter()
                    .any(|f| f.starts_with(&format!("{other} /")))
            });
        if let Some(other) = wrong {
            problems.push(format!(
                "{name}: a stack names {other}: {}",
                s.frames.join(";")
            ));
        }
    }
    if share < min_share {
        let mut heaviest = stacks.clone();
        heaviest.sort_by_key(|s| std::cmp::Reverse(s.count));
        let shown: Vec<String> = heaviest
            .iter()
            .take(4)
            .map(|s| format!("{} {}", s.frames.join(";"), s.count))
            .collect();
        problems.push(format!(
            "{name}: {hits} of {total} samples name it, want >= {:.0}%; heaviest:\n        {}",
            min_share * 100.0,
            shown.join("\n        ")
        ));
    }
    problems
}
