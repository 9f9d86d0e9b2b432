//! A loop that never polls again: loopbpf must say so while it happens (a
//! `stall` line) and, when the process is killed mid-block, still report the
//! episode with its stacks: measured data is never lost with the process.

use integration_tests::{node_tests, speed_factor, str_field, u64_field, Scenario};

node_tests!(killed_wedged_loop_is_announced_then_reported =>
    killed_wedged_loop_is_announced_then_reported_node20 = 20,
    killed_wedged_loop_is_announced_then_reported_node22 = 22,
    killed_wedged_loop_is_announced_then_reported_node24 = 24,
);

fn killed_wedged_loop_is_announced_then_reported(major: u32) {
    let run = Scenario::new(major, "wedged.js")
        .speed_scaled()
        .kill_node_on("stall")
        .run();
    let mut problems = Vec::new();
    let start = run.script_result("block");
    let block_start = str_field(&start, "start_ns")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| run.fail("wedged.js printed no start_ns"));

    // Between the timer's poll return and the script's stamp: a few ms of
    // loop work, that many times longer on a machine measured slower.
    let max_lead_ns = (5_000_000.0 * speed_factor()) as u64;
    let stalls = run.events("stall");
    match &stalls[..] {
        [stall] => {
            let stall_start = u64_field(stall, "start_ns").unwrap_or(0);
            if stall_start > block_start || block_start - stall_start > max_lead_ns {
                problems.push(format!(
                    "stall starts at {stall_start}, the block at {block_start}: {stall}"
                ));
            }
        }
        _ => problems.push(format!("{} stall lines, want 1: {stalls:?}", stalls.len())),
    }

    let episodes = run.events("episode");
    match &episodes[..] {
        [e] => {
            if e["ongoing"] != true {
                problems.push(format!("episode not marked ongoing: {e}"));
            }
            // Announced after 1 s of busy time, killed right after.
            if e["duration_ms"].as_f64().unwrap_or(0.0) < 1000.0 {
                problems.push(format!(
                    "episode shorter than the 1 s before the stall notice: {e}"
                ));
            }
            if e["samples"].as_u64().unwrap_or(0) < 50 {
                problems.push(format!("want >= 50 samples of a >= 1 s spin: {e}"));
            }
            if !e["top_frame"]
                .as_str()
                .unwrap_or("")
                .contains("spinUntilKilled")
            {
                problems.push(format!("top frame is not spinUntilKilled: {e}"));
            }
        }
        _ => problems.push(format!("{} episodes, want 1: {episodes:?}", episodes.len())),
    }
    run.check(problems);
}
