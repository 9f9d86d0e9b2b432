//! The daemon as a service: SIGHUP reloads, and the systemd unit verifies.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::daemon::{node_target, poll, Daemon};

#[test]
fn sighup_reloads_matching_and_threshold() {
    let mut target = node_target(20);
    let mut daemon = Daemon::start("");
    let pid = target.pid();
    let is_watched = |d: &Daemon| d.watches(pid);
    assert!(
        poll(Duration::from_secs(5), || is_watched(&daemon).then_some(())).is_some(),
        "pid {pid} not watched"
    );

    daemon.reload("[exclude]\ncmdline = ['daemon_target\\.js']\n");
    assert!(
        poll(Duration::from_secs(3), || (!is_watched(&daemon))
            .then_some(()))
        .is_some(),
        "pid {pid} still watched after SIGHUP excluded it"
    );

    // Back in, with a threshold above the block: no episode for it.
    daemon.reload("threshold = \"2s\"\n");
    // A reload rescans every process of the host; after the long daemon
    // tests that scan has met a busy /proc (it failed twice at 3 s in full
    // runs and never alone).
    if poll(Duration::from_secs(10), || {
        is_watched(&daemon).then_some(())
    })
    .is_none()
    {
        let _ = daemon.terminate(Duration::from_secs(10));
        panic!("pid {pid} not re-watched:\n{}", daemon.process.describe());
    }
    target.write_line("block 300").unwrap();
    target
        .wait_for_line(Instant::now() + Duration::from_secs(5), "block", |l| {
            l.contains("daemonBlock")
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let episodes = daemon
        .index()
        .into_iter()
        .filter(|r| r["pid"] == pid)
        .count();
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
    let log = daemon.process.describe();
    assert_eq!(
        episodes, 0,
        "a 300 ms block under a 2 s threshold was stored:\n{log}"
    );
    assert!(log.contains("reloaded"), "no reload logged:\n{log}");
}

#[test]
fn systemd_unit_passes_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/loopbpf.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    // verify wants ExecStart's binary to exist: point it at the one under test.
    let bin = integration_tests::loopbpf_bin();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("loopbpf.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/loopbpf", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // Documentation= names loopbpf's man pages, installed by the .deb
        // (tests/tests/package.rs verifies the installed unit with them).
        .arg("--man=no")
        .arg(&copy)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this host are not ours to judge.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("loopbpf")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The unit's resource limits and start limit (issue 11), and kernel names
/// kept: `ProtectKernelTunables=yes` would make /proc/kallsyms inaccessible.
#[test]
fn systemd_unit_bounds_the_daemon_and_keeps_kallsyms() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/loopbpf.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    for key in [
        "MemoryMax",
        "LimitNOFILE",
        "TasksMax",
        "StartLimitIntervalSec",
        "StartLimitBurst",
    ] {
        assert!(value(key).is_some(), "no {key}= in the unit");
    }
    assert_eq!(value("UMask"), Some("0077"));
    assert_eq!(value("StateDirectoryMode"), Some("0700"));
    let nofile: u64 = value("LimitNOFILE").unwrap().parse().unwrap();
    // Room for the metrics connections (64) and far more than the default 1024.
    assert!(nofile > 1024, "LimitNOFILE={nofile}");
    assert_ne!(value("ProtectKernelTunables"), Some("yes"));
    let read_only = value("ReadOnlyPaths").unwrap_or_default();
    for p in ["/sys", "/proc/sys", "/proc/sysrq-trigger"] {
        assert!(
            read_only.split_whitespace().any(|x| x == p),
            "{p} not in ReadOnlyPaths"
        );
    }
    assert!(value("InaccessiblePaths").is_some_and(|v| v.contains("/proc/kcore")));
    assert!(!value("InaccessiblePaths").unwrap().contains("kallsyms"));
}
