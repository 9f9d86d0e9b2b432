//! What a local user can put at /tmp/perf-PID.map for a process loopbpf
//! watches: a FIFO (which blocked the symbolizer for ever before any read
//! was bounded), a 1 TiB sparse file without a newline. loopbpf must refuse
//! or bound it, say so, and go on measuring every episode, in the CLI and
//! in the daemon, where other processes' episodes must keep being stored
//! and SIGTERM must still exit promptly.

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::daemon::{node_target_with, poll, Daemon};
use integration_tests::{overlaps, Run, Scenario};

fn plant_fifo(path: &Path) {
    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c_path` is NUL-terminated.
    let made = unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

/// Sparse: a terabyte of NULs that costs no disk and has no newline.
fn plant_sparse_terabyte(path: &Path) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(1 << 40))
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
}

/// Each of blocks.js's three blocks is reported as one episode.
fn every_block_measured(run: &Run) -> Vec<String> {
    let blocks = run.blocks();
    if blocks.len() != 3 {
        run.fail("blocks.js did not report its three blocks");
    }
    let episodes = run.episodes();
    blocks
        .iter()
        .filter_map(|block| {
            let n = episodes
                .iter()
                .filter(|e| overlaps(e.span(), block.span()))
                .count();
            (n != 1).then(|| format!("{}: {n} overlapping episodes, want 1", block.name))
        })
        .collect()
}

#[test]
fn fifo_perf_map_is_refused_and_episodes_still_reported() {
    let run = Scenario::new(22, "blocks.js")
        .perf_map_planted(plant_fifo)
        .run();
    let mut problems = every_block_measured(&run);
    let warnings = run.warnings();
    if !warnings
        .iter()
        .any(|w| w.contains("perf map") && w.contains("fifo"))
    {
        problems.push(format!(
            "no warning says the perf map is a fifo: {warnings:?}"
        ));
    }
    run.check(problems);
}

#[test]
fn sparse_terabyte_perf_map_is_bounded_and_episodes_still_reported() {
    let run = Scenario::new(22, "blocks.js")
        .perf_map_planted(plant_sparse_terabyte)
        .run();
    let mut problems = every_block_measured(&run);
    let warnings = run.warnings();
    if !warnings
        .iter()
        .any(|w| w.contains("perf map") && w.contains("dropped"))
    {
        problems.push(format!(
            "no warning says perf-map lines were dropped: {warnings:?}"
        ));
    }
    run.check(problems);
}

#[test]
fn daemon_keeps_storing_episodes_past_a_fifo_perf_map() {
    // A: a user's node whose perf map path holds a FIFO; B: anyone else's.
    let mut hostile = node_target_with(22, false);
    let map = format!("/tmp/perf-{}.map", hostile.pid());
    let _ = std::fs::remove_file(&map);
    plant_fifo(Path::new(&map));
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(map);
    let mut other = node_target_with(22, true);
    let mut daemon = Daemon::start("threshold = \"50ms\"\n");
    for pid in [hostile.pid(), other.pid()] {
        assert!(
            poll(Duration::from_secs(10), || daemon
                .watches(pid)
                .then_some(()))
            .is_some(),
            "pid {pid} was not watched:\n{}",
            daemon.process.describe()
        );
    }

    let block = |p: &mut integration_tests::Process| {
        p.write_line("block 300").unwrap();
        p.wait_for_line(Instant::now() + Duration::from_secs(10), "block", |l| {
            l.contains("daemonBlock")
        })
        .unwrap();
    };
    let stored = |daemon: &Daemon, pid: u32| {
        poll(Duration::from_secs(10), || {
            daemon
                .index()
                .into_iter()
                .find(|r| r["pid"] == pid && r["duration_ms"].as_f64() >= Some(250.0))
        })
    };
    // The hostile process's episode first, then the other's: both stored.
    block(&mut hostile);
    let hostile_record = stored(&daemon, hostile.pid());
    block(&mut other);
    let other_record = stored(&daemon, other.pid());
    assert!(
        other_record.is_some() && hostile_record.is_some(),
        "episodes stored: hostile pid {}: {}, other pid {}: {}\n{}",
        hostile.pid(),
        hostile_record.is_some(),
        other.pid(),
        other_record.is_some(),
        daemon.process.describe()
    );
    let started = Instant::now();
    let status = daemon.terminate(Duration::from_secs(5));
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "SIGTERM: {status:?} after {:?}\n{}",
        started.elapsed(),
        daemon.process.describe()
    );
    // Read once it has exited (reading stderr ends the process).
    let log = daemon.process.stderr().to_owned();
    assert!(
        log.contains("perf map") && log.contains("is a fifo"),
        "the daemon's log does not say the perf map is a fifo:\n{log}"
    );
    let _ = hostile.write_line("exit");
    let _ = other.write_line("exit");
}
