//! The daemon while a loop is wedged, before the iteration ends (it may never
//! end: a liveness probe kills the process): the stalled gauge and a "still
//! blocked" log line within 1.5 s of the threshold, a provisional record with
//! the stacks so far in the state directory, replaced by the final one when
//! the iteration ends or the process is killed, and left, marked provisional,
//! when the daemon itself is killed.
use std::time::{Duration, Instant};

use integration_tests::{
    daemon::{metric, node_target, poll, Daemon},
    node_tests, time_scale, timeout, Process,
};

const THRESHOLD_MS: u64 = 100;
const WEDGE_MS: u64 = 5000;
/// A wedge that a kill ends: long enough to outlast a slow (emulated) daemon.
const UNTIL_KILLED_MS: u64 = 120_000;

node_tests!(daemon_shows_a_wedged_loop_while_it_lasts =>
    daemon_shows_a_wedged_loop_while_it_lasts_node20 = 20,
    daemon_shows_a_wedged_loop_while_it_lasts_node22 = 22,
    daemon_shows_a_wedged_loop_while_it_lasts_node24 = 24,
    daemon_shows_a_wedged_loop_while_it_lasts_node26 = 26,
);

node_tests!(daemon_replaces_the_provisional_record_of_a_process_killed_mid_wedge =>
    daemon_replaces_the_provisional_record_of_a_process_killed_mid_wedge_node20 = 20,
    daemon_replaces_the_provisional_record_of_a_process_killed_mid_wedge_node22 = 22,
    daemon_replaces_the_provisional_record_of_a_process_killed_mid_wedge_node24 = 24,
    daemon_replaces_the_provisional_record_of_a_process_killed_mid_wedge_node26 = 26,
);

node_tests!(daemon_killed_mid_wedge_leaves_the_provisional_record =>
    daemon_killed_mid_wedge_leaves_the_provisional_record_node20 = 20,
    daemon_killed_mid_wedge_leaves_the_provisional_record_node22 = 22,
    daemon_killed_mid_wedge_leaves_the_provisional_record_node24 = 24,
    daemon_killed_mid_wedge_leaves_the_provisional_record_node26 = 26,
);

fn start(major: u32) -> (Daemon, Process) {
    let target = node_target(major);
    let daemon = Daemon::start(&format!("threshold = \"{THRESHOLD_MS}ms\"\n"));
    let pid = target.pid();
    let mut daemon = daemon;
    if poll(timeout(Duration::from_secs(5)), || {
        daemon.watches(pid).then_some(())
    })
    .is_none()
    {
        panic!("pid {pid} not watched:\n{}", daemon.process.describe());
    }
    // Its threadpool uprobes come a second after it is watched; attaching
    // them holds the daemon's loop (long in an emulated guest): not during
    // the wedge this test times.
    let pool = || {
        metric(
            &daemon.metrics(),
            "loopbpf_threadpool_size",
            &[("pid", &pid.to_string())],
        )
    };
    if poll(timeout(Duration::from_secs(10)), pool).is_none() {
        panic!(
            "pid {pid}: no threadpool series:\n{}",
            daemon.process.describe()
        );
    }
    (daemon, target)
}

fn stalled_seconds(daemon: &Daemon, pid: u32) -> f64 {
    metric(
        &daemon.metrics(),
        "loopbpf_loop_stalled_seconds",
        &[("pid", &pid.to_string()), ("thread", "main")],
    )
    .unwrap_or(0.0)
}

/// The records of `pid` in the index: (provisional ones, final ones).
fn records(daemon: &Daemon, pid: u32) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    daemon
        .index()
        .into_iter()
        .filter(|r| r["pid"] == pid && r["thread"] == "main")
        .partition(|r| r["provisional"] == true)
}

/// The provisional record of `pid`, once stored, checked against its file.
fn provisional(daemon: &mut Daemon, pid: u32, within: Duration) -> serde_json::Value {
    let Some(record) = poll(within, || records(daemon, pid).0.into_iter().next()) else {
        panic!(
            "no provisional record of pid {pid} in {}:\n{}",
            daemon.state_dir.display(),
            daemon.process.describe()
        );
    };
    let id = record["id"].as_str().unwrap_or("");
    let file = daemon.state_dir.join("episodes").join(format!("{id}.json"));
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
            .unwrap_or_default();
    assert_eq!(
        on_disk["provisional"],
        true,
        "{}: {on_disk}",
        file.display()
    );
    assert_eq!(record["ongoing"], true, "{record}");
    assert!(
        record["samples"].as_u64().unwrap_or(0) >= 20,
        "want the samples of >= 1 s of spinning: {record}"
    );
    // An emulated guest spends its first second mostly in the kernel.
    if time_scale() == 1.0 {
        assert!(
            record["top_frame"]
                .as_str()
                .unwrap_or("")
                .contains("daemonBlock"),
            "top frame is not daemonBlock: {record}"
        );
    }
    record
}

fn daemon_shows_a_wedged_loop_while_it_lasts(major: u32) {
    let (mut daemon, mut target) = start(major);
    let pid = target.pid();
    target.write_line(&format!("block {WEDGE_MS}")).unwrap();
    // The script blocks from a 20 ms timer; the threshold is crossed after it.
    let crossed = Instant::now() + Duration::from_millis(20 + THRESHOLD_MS);
    let limit = Duration::from_secs_f64(1.5 * time_scale());

    let gauge_at = poll(timeout(Duration::from_secs(4)), || {
        (stalled_seconds(&daemon, pid) >= 1.0).then(Instant::now)
    });
    let log_at = poll(timeout(Duration::from_secs(4)), || {
        daemon
            .process
            .stderr_line(|l| l.contains("still blocked for") && l.contains(&format!("pid={pid} ")))
    });
    let mut problems = Vec::new();
    match gauge_at {
        Some(at) if at.saturating_duration_since(crossed) <= limit => {}
        Some(at) => problems.push(format!(
            "loopbpf_loop_stalled_seconds >= 1 only {:?} after the threshold",
            at.saturating_duration_since(crossed)
        )),
        None => problems.push("loopbpf_loop_stalled_seconds never reached 1".into()),
    }
    match &log_at {
        Some((at, line)) => {
            if at.saturating_duration_since(crossed) > limit {
                problems.push(format!(
                    "'still blocked' logged {:?} after the threshold: {line}",
                    at.saturating_duration_since(crossed)
                ));
            }
            if !line.contains("hottest so far: daemonBlock") && time_scale() == 1.0 {
                problems.push(format!("the log line does not name daemonBlock: {line}"));
            }
        }
        None => problems.push("no 'still blocked' log line".into()),
    }
    let first = provisional(&mut daemon, pid, timeout(Duration::from_secs(3)));

    // The iteration ends: its final record replaces the provisional one.
    target
        .wait_for_line(
            Instant::now() + timeout(Duration::from_secs(10)),
            "block",
            |l| l.contains("daemonBlock"),
        )
        .unwrap();
    let finals = poll(timeout(Duration::from_secs(5)), || {
        let (prov, fin) = records(&daemon, pid);
        (prov.is_empty() && !fin.is_empty()).then_some(fin)
    });
    match finals.as_deref() {
        Some([e]) => {
            if e["ongoing"] != false
                || e["duration_ms"].as_f64().unwrap_or(0.0) < WEDGE_MS as f64 * 0.95
            {
                problems.push(format!("final record is not the whole wedge: {e}"));
            }
            let id = first["id"].as_str().unwrap_or("");
            if daemon
                .state_dir
                .join("episodes")
                .join(format!("{id}.json"))
                .exists()
            {
                problems.push(format!("the provisional record {id} is still on disk"));
            }
        }
        _ => problems.push(format!(
            "want one final record and no provisional one: {:?}",
            records(&daemon, pid)
        )),
    }
    let after = poll(timeout(Duration::from_secs(3)), || {
        (stalled_seconds(&daemon, pid) == 0.0).then_some(())
    });
    if after.is_none() {
        problems.push("loopbpf_loop_stalled_seconds not back to 0 after the wedge".into());
    }
    if !problems.is_empty() {
        panic!("{}\n{}", problems.join("\n"), daemon.process.describe());
    }
}

fn daemon_replaces_the_provisional_record_of_a_process_killed_mid_wedge(major: u32) {
    let (mut daemon, mut target) = start(major);
    let pid = target.pid();
    target
        .write_line(&format!("block {UNTIL_KILLED_MS}"))
        .unwrap();
    provisional(&mut daemon, pid, timeout(Duration::from_secs(4)));
    // What a liveness probe does.
    target.kill();
    let finals = poll(timeout(Duration::from_secs(5)), || {
        let (prov, fin) = records(&daemon, pid);
        (prov.is_empty() && !fin.is_empty()).then_some(fin)
    });
    match finals.as_deref() {
        // Cut short: ongoing, up to its last sample, its stacks named.
        Some([e])
            if e["ongoing"] == true
                && e["duration_ms"].as_f64().unwrap_or(0.0) >= 1000.0
                && e["top_frame"]
                    .as_str()
                    .unwrap_or("")
                    .contains("daemonBlock") => {}
        other => panic!(
            "want one final, ongoing record of >= 1 s in daemonBlock, got {other:?}\n{}",
            daemon.process.describe()
        ),
    }
}

fn daemon_killed_mid_wedge_leaves_the_provisional_record(major: u32) {
    let (mut daemon, mut target) = start(major);
    let pid = target.pid();
    target
        .write_line(&format!("block {UNTIL_KILLED_MS}"))
        .unwrap();
    let record = provisional(&mut daemon, pid, timeout(Duration::from_secs(4)));
    daemon.process.kill();
    // Then the process: no daemon saw the wedge end, what is on disk is all there is.
    target.kill();
    let (prov, fin) = records(&daemon, pid);
    assert!(fin.is_empty(), "{fin:?}");
    assert_eq!(prov.len(), 1, "{prov:?}");
    assert_eq!(prov[0]["id"], record["id"]);
}
