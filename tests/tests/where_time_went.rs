//! Each episode says where its time went: on the CPU (JavaScript or garbage
//! collection), asleep in a syscall, or waiting for a CPU; and a worker_threads
//! loop is watched as a loop of its own.

use integration_tests::{contains, node_tests, Episode, Run, Scenario};
use serde_json::Value;

node_tests!(exec_sync_is_asleep_with_its_javascript_stack =>
    exec_sync_is_asleep_with_its_javascript_stack_node20 = 20,
    exec_sync_is_asleep_with_its_javascript_stack_node22 = 22,
    exec_sync_is_asleep_with_its_javascript_stack_node24 = 24,
);
node_tests!(atomics_wait_is_asleep_in_futex =>
    atomics_wait_is_asleep_in_futex_node20 = 20,
    atomics_wait_is_asleep_in_futex_node24 = 24,
);
node_tests!(starved_loop_is_waiting_for_a_cpu =>
    starved_loop_is_waiting_for_a_cpu_node20 = 20,
    starved_loop_is_waiting_for_a_cpu_node24 = 24,
);
node_tests!(major_gc_is_reported_as_gc =>
    major_gc_is_reported_as_gc_node20 = 20,
    major_gc_is_reported_as_gc_node24 = 24,
);
node_tests!(blocked_worker_is_its_own_loop =>
    blocked_worker_is_its_own_loop_node20 = 20,
    blocked_worker_is_its_own_loop_node24 = 24,
);

/// The one episode containing the script's one block, with its JSON line.
fn block_episode(run: &Run, name: &str) -> (Episode, Value) {
    let block = match &run.blocks()[..] {
        [b] if b.name == name => b.clone(),
        other => run.fail(&format!(
            "want one {name} block from the script, got {other:?}"
        )),
    };
    let found = run
        .episodes()
        .into_iter()
        .zip(run.events("episode"))
        .find(|(e, _)| contains(e.span(), block.span(), 1_000_000));
    found.unwrap_or_else(|| {
        run.fail(&format!(
            "no episode contains {name} [{}, {}]",
            block.start_ns, block.end_ns
        ))
    })
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(-1.0)
}

/// Folded lines of the episode ending in `marker`, joined.
fn marked_stacks(run: &Run, e: &Episode, marker: &str) -> String {
    let stacks = run.folded(e).unwrap_or_else(|err| run.fail(&err));
    let lines: Vec<String> = stacks
        .iter()
        .filter(|s| s.frames.last().is_some_and(|f| f == marker))
        .map(|s| s.frames.join(";"))
        .collect();
    lines.join("\n")
}

fn exec_sync_is_asleep_with_its_javascript_stack(major: u32) {
    let run = Scenario::new(major, "exec_sync.js").run();
    let (e, v) = block_episode(&run, "runChildSync");
    let mut problems = Vec::new();
    if ms(&v, "off_cpu_ms") < 250.0 || v["verdict"] != "blocked" {
        problems.push(format!("want >= 250 ms asleep and verdict blocked: {v}"));
    }
    let off = marked_stacks(&run, &e, "[off-cpu]");
    if !off.contains("execSync") && !off.contains("spawnSync") {
        problems.push(format!(
            "no [off-cpu] stack names execSync/spawnSync:\n{off}"
        ));
    }
    run.check(problems);
}

fn atomics_wait_is_asleep_in_futex(major: u32) {
    let run = Scenario::new(major, "atomics_wait.js").run();
    let (e, v) = block_episode(&run, "blockAtomicsWait");
    let mut problems = Vec::new();
    if ms(&v, "off_cpu_ms") < 200.0 || v["verdict"] != "blocked" || v["syscall"] != "futex" {
        problems.push(format!("want >= 200 ms asleep in futex: {v}"));
    }
    if !marked_stacks(&run, &e, "[off-cpu]").contains("futex") {
        problems.push("no [off-cpu] kernel stack with futex".into());
    }
    run.check(problems);
}

fn starved_loop_is_waiting_for_a_cpu(major: u32) {
    let run = Scenario::new(major, "starved.js").pinned_to_cpu(1).run();
    let (e, v) = block_episode(&run, "spinStarved");
    let mut problems = Vec::new();
    // The hog spins 300 ms of the 400: most of it runnable, not running.
    if ms(&v, "runqueue_ms") < 150.0 || v["verdict"] != "cpu-starved" {
        problems.push(format!(
            "want >= 150 ms waiting for a CPU, verdict cpu-starved: {v}"
        ));
    }
    if ms(&v, "runqueue_ms") <= ms(&v, "on_cpu_ms") {
        problems.push(format!("waiting for a CPU should exceed running: {v}"));
    }
    if marked_stacks(&run, &e, "[runqueue]").is_empty() {
        problems.push("no [runqueue] stack in the folded file".into());
    }
    run.check(problems);
}

fn major_gc_is_reported_as_gc(major: u32) {
    let run = Scenario::new(major, "gc.js").node_flag("--expose-gc").run();
    let (e, v) = block_episode(&run, "collectEverything");
    let mut problems = Vec::new();
    // Not the verdict: V8's parallel GC threads compete with the main thread
    // for the CPUs, so on a loaded machine the collection can be mostly time
    // spent waiting for a CPU. Its on-CPU samples are GC either way.
    if v["gc_share"].as_f64().unwrap_or(0.0) < 0.5 {
        problems.push(format!("want a GC share >= 0.5 of on-CPU samples: {v}"));
    }
    let stacks = run.folded(&e).unwrap_or_else(|err| run.fail(&err));
    if !stacks.iter().any(|s| {
        s.frames
            .iter()
            .any(|f| f.starts_with("v8::internal::Heap::"))
    }) {
        problems.push("no v8::internal::Heap frame in the episode's stacks".into());
    }
    run.check(problems);
}

fn blocked_worker_is_its_own_loop(major: u32) {
    let run = Scenario::new(major, "worker.js").run();
    let (e, v) = block_episode(&run, "blockInWorker");
    let mut problems = Vec::new();
    if e.thread != "worker" || e.tid == run.node_pid || e.pid != run.node_pid {
        problems.push(format!(
            "want an episode of a worker thread (tid != pid {}): {v}",
            run.node_pid
        ));
    }
    if !(195.0..=210.0).contains(&e.duration_ms) {
        problems.push(format!("want ~200 ms: {v}"));
    }
    let main: Vec<_> = run
        .episodes()
        .into_iter()
        .filter(|e| e.thread == "main")
        .collect();
    if !main.is_empty() {
        problems.push(format!("the main loop stayed responsive, yet: {main:?}"));
    }
    let summary = run.summary();
    let loops = summary["loops"].as_array().cloned().unwrap_or_default();
    if !loops
        .iter()
        .any(|l| l["thread"] == "worker" && l["episodes"] == 1)
    {
        problems.push(format!(
            "the summary has no worker loop with its episode: {summary}"
        ));
    }
    run.check(problems);
}
