//! A Node process in its own pid and mount namespaces (as in a container)
//! writes its perf map into its own /tmp under its own pid: loopbpf must read
//! it through /proc/PID/root/tmp/perf-<NSpid>.map and name its JS frames.

use integration_tests::{node_tests, Scenario};

node_tests!(contained_process_gets_js_frame_names =>
    contained_process_gets_js_frame_names_node20 = 20,
    contained_process_gets_js_frame_names_node24 = 24,
);

fn contained_process_gets_js_frame_names(major: u32) {
    let run = Scenario::new(major, "blocks.js").contained().run();
    let mut problems = Vec::new();
    // The host /tmp has no map for this pid: names can only come from inside.
    if std::path::Path::new(&format!("/tmp/perf-{}.map", run.node_pid)).exists() {
        problems.push("a perf map for the contained pid exists on the host's /tmp".into());
    }
    for block in run.blocks() {
        let named = run.episodes().into_iter().any(|e| {
            integration_tests::overlaps(e.span(), block.span())
                && e.top_frame
                    .as_deref()
                    .is_some_and(|f| f.starts_with(&block.name))
        });
        if !named {
            problems.push(format!(
                "no episode of {} names it as its top frame",
                block.name
            ));
        }
    }
    let warnings = run.warnings();
    if warnings.iter().any(|w| w.contains("perf map")) {
        problems.push(format!("perf map warnings: {warnings:?}"));
    }
    run.check(problems);
}
