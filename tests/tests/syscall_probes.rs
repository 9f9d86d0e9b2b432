//! Which syscall probes loopbpf attaches, and that each set measures loops.
//! By default fentry/fexit where the kernel allows them (the `vm-test`
//! guests), else the per-syscall tracepoints (this host; every other test
//! checks its ready line names the default), mounting tracefs if it must; the
//! tp_btf fallback when tracefs cannot be had either, or when
//! `LOOPBPF_SYSCALL_PROBES=tp_btf` asks.
//! The fallback shares the loop logic, so one Node major is enough here.

use integration_tests::{
    checks, contains, default_syscall_probes, overlaps, time_scale, Block, Run, Scenario, Tracefs,
};

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

/// As under the systemd unit (no CAP_SYS_ADMIN) on a host without tracefs:
/// tp_btf, unless the kernel allows fentry (which needs no tracefs).
#[test]
fn without_tracefs_or_cap_sys_admin_falls_back_to_tp_btf() {
    let fentry = default_syscall_probes() == "fentry";
    let run = Scenario::new(NODE, "blocks.js")
        .without_tracefs(Tracefs::NotMountable)
        .expect_syscall_probes(if fentry { "fentry" } else { "tp_btf" })
        .run();
    let mut problems = blocks_measured(&run);
    if !fentry {
        problems.extend(warned_about_tp_btf(
            &run,
            "mounting it at /sys/kernel/tracing failed: Operation not permitted",
        ));
    }
    run.check(problems);
}

/// The tracepoints where fentry would be the default: both paths pass the
/// same checks in the `vm-test` guests.
#[test]
fn forced_tracepoint_measures_blocks() {
    let run = Scenario::new(NODE, "blocks.js")
        .loopbpf_env(ENV, "tracepoint")
        .expect_syscall_probes("tracepoint")
        .run();
    let problems = blocks_measured(&run);
    run.check(problems);
}

/// A loop asleep in a poll when loopbpf attaches, woken into a block: the
/// tracepoints see that poll return; fexit cannot (the call predates it), so
/// loopbpf marks such threads and takes the wakeup as the return.
#[test]
fn a_loop_asleep_at_attach_is_measured_from_its_wakeup() {
    let run = Scenario::new(NODE, "wake_block.js").run();
    let blocks = run.blocks();
    if blocks.len() != 1 || blocks[0].ms < 150.0 {
        run.fail("wake_block.js did not run its block for >= 150 ms");
    }
    let problems = one_episode_each(&run, &blocks);
    run.check(problems);
}

/// Each of blocks.js's three blocks is one episode of about its length, and
/// nothing else is.
fn blocks_measured(run: &Run) -> Vec<String> {
    let blocks = run.blocks();
    if blocks.len() != 3 || blocks.iter().any(|b| b.ms < 150.0) {
        run.fail("blocks.js did not run its three blocks for >= 150 ms each: recalibrate it");
    }
    one_episode_each(run, &blocks)
}

/// Each block is one episode of about its length, and nothing else is.
/// In an emulated guest (`time_scale()` > 1) Node's own work (cold code, GC,
/// teardown) is so slow that it passes the threshold in iterations of its
/// own and stretches the iteration around a block by up to seconds: there
/// each block must lie in one episode at least as long, nothing more.
fn one_episode_each(run: &Run, blocks: &[Block]) -> Vec<String> {
    let slow = time_scale() > 1.0;
    let slack_ms = if slow { f64::INFINITY } else { SLACK_MS };
    let episodes = run.episodes();
    let mut problems = Vec::new();
    for block in blocks {
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
                && e.duration_ms <= block.ms + slack_ms => {}
            _ => problems.push(format!(
                "{} ({:.1} ms): want one episode containing it, at most {slack_ms} ms longer, got {matching:?}",
                block.name, block.ms
            )),
        }
    }
    if episodes.len() != blocks.len() && !slow {
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
