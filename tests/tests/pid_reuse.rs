//! Pid reuse, for real: a watched Node process dies and, within
//! milliseconds, a new process gets its pid (root writes
//! /proc/sys/kernel/ns_last_pid), while the daemon still holds the old one's
//! symbols, perf map and kernel state. The new process must be watched under
//! its own identity, and the old process's perf map, left at
//! /tmp/perf-PID.map and last written half a second before the new process
//! started, must not name the new one's frames.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::daemon::{metric, node_target_with, poll, Daemon};
use integration_tests::{node_for, Process};

/// Named on every user frame if the old process's map were used.
const MARKER: &str = "STALE_MAP_OF_THE_PIDS_LAST_OWNER";
const OLD_MAJOR: u32 = 22;
const NEW_MAJOR: u32 = 20;

/// Appends ranges covering the 47-bit user address space (4 GiB each, the
/// most a perf-map line holds) to the old process's map, as its last write.
fn poison(map: &str) {
    let mut text = String::with_capacity(32768 * 48);
    for i in 0u64..32768 {
        text.push_str(&format!("{:x} ffffffff {MARKER}\n", i << 32));
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(map)
        .unwrap_or_else(|e| panic!("opening {map}: {e}"));
    f.write_all(text.as_bytes()).expect("appending to the map");
}

/// `daemon_target.js` on another node binary (Node 20: another `exe` than
/// the old process's Node 22, read at exec as the daemon does), started as
/// pid `pid`, or `None` when another process took the pid first.
fn spawn_at(pid: u32) -> Option<Process> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/node/daemon_target.js");
    for _ in 0..200 {
        // The next pid the kernel hands out is the one after ns_last_pid;
        // anything forking on the host in between takes it: try again.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("writing ns_last_pid (needs root)");
        let mut cmd = Command::new(node_for(NEW_MAJOR));
        cmd.arg("--interpreted-frames-native-stack").arg(script);
        let mut p = Process::spawn("reused", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
        if p.pid() == pid {
            p.wait_for_line(Instant::now() + Duration::from_secs(10), "ready", |l| {
                l.contains("\"ready\"")
            })
            .unwrap_or_else(|e| panic!("{e}"));
            return Some(p);
        }
        p.kill();
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            eprintln!("pid {pid} was taken by {}", comm.trim());
            return None;
        }
    }
    None
}

fn block(p: &mut Process) {
    p.write_line("block 300").unwrap();
    p.wait_for_line(Instant::now() + Duration::from_secs(10), "block", |l| {
        l.contains("daemonBlock")
    })
    .unwrap();
}

#[test]
#[ignore = "harness: the spawned node never got the freed pid in 2 runs (200 tries each after writing ns_last_pid; a Python fork gets it at once)"]
fn a_reused_pid_gets_nothing_of_its_last_owner() {
    let mut daemon = Daemon::start("threshold = \"50ms\"\n");
    // A few rounds, in case another process takes the pid first.
    let (mut reused, pid, map) = (0..3)
        .find_map(|round| {
            let mut old = node_target_with(OLD_MAJOR, true);
            let pid = old.pid();
            poll(Duration::from_secs(10), || {
                daemon.watches(pid).then_some(())
            })
            .unwrap_or_else(|| panic!("pid {pid} not watched"));
            // Its frames symbolized once: the daemon holds its perf map.
            block(&mut old);
            poll(Duration::from_secs(10), || {
                daemon.index().into_iter().find(|r| r["pid"] == pid)
            })
            .unwrap_or_else(|| panic!("no episode of pid {pid}\n{}", daemon.process.describe()));
            let map = format!("/tmp/perf-{pid}.map");
            poison(&map);
            std::thread::sleep(Duration::from_millis(500));
            old.kill();
            // The only run so far lost the pid three times within 10 s:
            // after the first round, let the daemon's own reaction to the
            // exit (threads take pids too) pass before asking for the pid.
            if round > 0 {
                poll(Duration::from_secs(5), || {
                    (!daemon.watches(pid)).then_some(())
                });
            }
            let new = spawn_at(pid);
            if new.is_none() {
                let _ = std::fs::remove_file(&map);
            }
            new.map(|n| (n, pid, map))
        })
        .expect("the pid was taken by another process three times");
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(map.clone());

    // Watched under its own identity.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .expect("the new process's exe")
        .to_string_lossy()
        .into_owned();
    let pid_label = pid.to_string();
    let labelled = poll(Duration::from_secs(10), || {
        metric(
            &daemon.metrics(),
            "loopbpf_process_info",
            &[("pid", &pid_label), ("exe", &exe)],
        )
    });
    assert!(
        labelled.is_some(),
        "pid {pid} is not watched as the new process (exe {exe}):\n{}",
        daemon.process.describe()
    );

    // Its episodes: stacks sampled and named, none from the old map. On a
    // loaded host a block may get no sample; a few tries.
    let mut checked = None;
    for _ in 0..4 {
        let before = daemon.index().len();
        block(&mut reused);
        let record = poll(Duration::from_secs(10), || {
            let index = daemon.index();
            index
                .into_iter()
                .skip(before)
                .find(|r| r["pid"] == pid && r["duration_ms"].as_f64() >= Some(250.0))
        })
        .unwrap_or_else(|| {
            panic!(
                "no episode of the new pid {pid}\n{}",
                daemon.process.describe()
            )
        });
        assert_eq!(
            record["exe"],
            exe.as_str(),
            "episode under the old labels: {record}"
        );
        if record["samples"].as_u64() > Some(0) {
            checked = Some(record);
            break;
        }
    }
    let record = checked.expect("no episode of the new process had a stack sample");
    let folded = record["folded"]
        .as_str()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    assert!(!folded.is_empty(), "no folded stacks for {record}");
    assert!(
        !folded.contains(MARKER),
        "the new process's frames were named from the old process's map:\n{folded}"
    );
    // Metrics are refreshed every second.
    let refused = poll(Duration::from_secs(5), || {
        metric(
            &daemon.metrics(),
            "loopbpf_symbolizer_events_total",
            &[("what", "perf_maps_refused")],
        )
        .filter(|&n| n >= 1.0)
    });
    assert!(
        refused.is_some(),
        "the stale map was not counted in loopbpf_symbolizer_events_total{{what=\"perf_maps_refused\"}}:\n{}",
        daemon.process.describe()
    );
    let _ = reused.write_line("exit");
    let status = daemon.terminate(Duration::from_secs(5));
    let log = daemon.process.stderr().to_owned();
    assert!(status.is_ok(), "{status:?}\n{log}");
    assert!(
        log.contains("before the process started"),
        "the daemon's log does not say the stale map was refused:\n{log}"
    );
}
