//! Every thread of a watched process has a role: main, worker (its own event
//! loop), threadpool, v8-platform or other. Node ≥ 22 names its threads; on
//! Node 20, all named `node`, the entry point at the bottom of each idle
//! thread's stack tells them apart.

use integration_tests::{node_tests, Scenario};
use serde_json::Value;

node_tests!(idle_threads_are_classified_by_role =>
    idle_threads_are_classified_by_role_node20 = 20,
    idle_threads_are_classified_by_role_node24 = 24,
);

fn idle_threads_are_classified_by_role(major: u32) {
    let run = Scenario::new(major, "threads.js").run();
    let summary = run.summary();
    let roles = &summary["thread_roles"];
    let mut problems = Vec::new();
    for (role, want) in [("main", 1), ("worker", 1), ("threadpool", 4)] {
        if roles[role] != want {
            problems.push(format!("want {want} {role} thread(s): {roles}"));
        }
    }
    // V8's platform: --v8-pool-size workers (4 by default, at most the CPU
    // count... on this 2-core machine still 4) and a delayed-task scheduler.
    if roles["v8-platform"].as_u64().unwrap_or(0) < 2 {
        problems.push(format!("want V8 platform threads: {roles}"));
    }
    let threads: Vec<Value> = summary["threads"].as_array().cloned().unwrap_or_default();
    let evidence_of = |role: &str| -> Vec<String> {
        threads
            .iter()
            .filter(|t| t["role"] == role)
            .map(|t| t["evidence"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // The pool and the platform threads were idle throughout: named on
    // Node 24, recognised by their entry point on Node 20.
    let want = if major >= 22 { "name" } else { "stack-bottom" };
    for role in ["threadpool", "v8-platform"] {
        let ev = evidence_of(role);
        if ev.is_empty() || ev.iter().any(|e| e != want) {
            problems.push(format!(
                "want every {role} thread classified by {want}: {ev:?}"
            ));
        }
    }
    run.check(problems);
}
