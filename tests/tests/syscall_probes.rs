//! Which syscall probes loopbpf attaches, and that each set measures loops.
//! By default the per-syscall tracepoints (every other test checks its ready
//! line says `tracepoint`), mounting tracefs if it must; the tp_btf fallback
//! when tracefs cannot be had, or when `LOOPBPF_SYSCALL_PROBES=tp_btf` asks.
//! The fallback shares the loop logic, so one Node major is enough here.

use integration_tests::{checks, contains, overlaps, Run, Scenario, Tracefs};

const NODE: u32 = 20;
const ENV: &str = "LOOPBPF_SYSCALL_PROBES";
const SLACK_MS: f64 = 25.0;

#[test]
fn forced_tp_btf_measures_blocks_and_says_so() {
    let run = Scenario::new(NODE, "blocks.js")
        .loopbpf_env(ENV, "tp_btf")
        .expect_syscall_probes("tp_btf")
        .run();
    let mut problems = blocks_measured(&run);
    problems.extend(warned_about_tp_btf(&run, "LOOPBPF_SYSCALL_PROBES=tp_btf"));
    run.check(problems);
}

/// Nested loops and `close` freeing their slots, through the fallback.
#[test]
fn forced_tp_btf_keeps_exec_sync_one_episode() {
    let run = Scenario::new(NODE, "exec_sync.js")
        .loopbpf_env(ENV, "tp_btf")
        .expect_syscall_probes("tp_btf")
        .run();
    let problems = checks::exec_sync_is_one_episode(&run);
    run.check(problems);
}

#[test]
fn tracefs_is_mounted_when_missing() {
    let run = Scenario::new(NODE, "blocks.js")
        .without_tracefs(Tracefs::Mountable)
        .run();
    let mut problems = blocks_measured(&run);
    for w in run.warnings() {
        if w.contains("syscall probes") {
            problems.push(format!("unexpected warning: {w}"));
        }
    }
    run.check(problems);
}

/// As under the systemd unit (no CAP_SYS_ADMIN) on a host without tracefs.
#[test]
fn without_tracefs_or_cap_sys_admin_falls_back_to_tp_btf() {
    let run = Scenario::new(NODE, "blocks.js")
        .without_tracefs(Tracefs::NotMountable)
        .expect_syscall_probes("tp_btf")
        .run();
    let mut problems = blocks_measured(&run);
    problems.extend(warned_about_tp_btf(
        &run,
        "mounting it at /sys/kernel/tracing failed: Operation not permitted",
    ));
    run.check(problems);
}

/// Each of blocks.js's three blocks is one episode of about its length, and
/// nothing else is.
fn blocks_measured(run: &Run) -> Vec<String> {
    let blocks = run.blocks();
    if blocks.len() != 3 || blocks.iter().any(|b| b.ms < 150.0) {
        run.fail("blocks.js did not run its three blocks for >= 150 ms each: recalibrate it");
    }
    let episodes = run.episodes();
    let mut problems = Vec::new();
    for block in &blocks {
        let matching: Vec<_> = episodes
            .iter()
            .filter(|e| overlaps(e.span(), block.span()))
            .collect();
        match matching[..] {
            // The iteration is the call plus a little loop work around it
            // (blocks.rs holds that to +5 ms; here it only has to be there,
            // whatever else this machine runs meanwhile).
            [e] if contains(e.span(), block.span(), 1_000_000)
                && e.duration_ms >= block.ms - 1.0
                && e.duration_ms <= block.ms + SLACK_MS => {}
            _ => problems.push(format!(
                "{} ({:.1} ms): want one episode containing it, at most {SLACK_MS} ms longer, got {matching:?}",
                block.name, block.ms
            )),
        }
    }
    if episodes.len() != blocks.len() {
        problems.push(format!(
            "{} episodes for {} blocks: {episodes:?}",
            episodes.len(),
            blocks.len()
        ));
    }
    problems
}

/// One warning names the fallback, its cost and `why`.
fn warned_about_tp_btf(run: &Run, why: &str) -> Vec<String> {
    let warnings = run.warnings();
    let found = warnings.iter().filter(|w| {
        w.starts_with("syscall probes: tp_btf")
            && w.contains("every syscall of the host")
            && w.contains(why)
    });
    match found.count() {
        1 => Vec::new(),
        n => vec![format!(
            "want one warning on the tp_btf syscall probes naming `{why}`, got {n}: {warnings:?}"
        )],
    }
}
