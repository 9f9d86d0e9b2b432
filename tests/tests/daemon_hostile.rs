//! The daemon against what any local user can do to it (issue 11): config
//! values that used to panic or wipe the store, a process whose `comm` is a
//! terminal escape sequence with a newline, 2,000 idle connections to the
//! metrics endpoint while episodes keep coming.
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::daemon::{
    http_get, metric, node_target, node_target_titled, parse_metrics, poll, Daemon,
};
use integration_tests::{loopbpf_bin, Process};

/// Blocks `target` for 300 ms and waits for the daemon to store it.
fn block_and_wait_stored(daemon: &Daemon, target: &mut Process, timeout: Duration) -> bool {
    let pid = target.pid();
    let before = stored(daemon, pid);
    target.write_line("block 300").unwrap();
    target
        .wait_for_line(Instant::now() + Duration::from_secs(5), "block", |l| {
            l.contains("daemonBlock")
        })
        .unwrap();
    poll(timeout, || (stored(daemon, pid) > before).then_some(())).is_some()
}

fn stored(daemon: &Daemon, pid: u32) -> usize {
    daemon.index().iter().filter(|r| r["pid"] == pid).count()
}

/// Each used to panic in `Duration::from_secs_f64` (exit 101 and a backtrace)
/// or, for the size, to wrap to 0 and delete every episode. No BPF is loaded:
/// the config is read first.
#[test]
fn a_bad_config_at_start_exits_1_with_one_line_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("threshold", "\"-1d\""),
        ("threshold", "\"nand\""),
        ("threshold", "\"infd\""),
        ("threshold", "\"1e20d\""),
        ("retention_max_age", "\"1e20d\""),
        ("retention_max_size_mb", "17592186044416"),
    ] {
        let config = dir.path().join("bad.toml");
        let state = dir.path().join("state");
        std::fs::write(
            &config,
            format!("state_dir = {:?}\n{key} = {value}\n", state.display()),
        )
        .unwrap();
        let out = Command::new(loopbpf_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key} = {value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{key} = {value}: {stderr}");
        let bare = value.trim_matches('"');
        assert!(
            lines[0].contains(key) && lines[0].contains(bare),
            "{key} = {value}: {stderr}"
        );
    }
    // The same grammar and checks for the flag.
    let out = Command::new(loopbpf_bin())
        .args(["daemon", "--threshold=-1d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// SIGHUP with each hostile value keeps the daemon, its configuration and its
/// episodes; a `comm` with an escape sequence and a newline reaches the log
/// escaped; stored files are root's alone.
#[test]
fn hostile_reloads_and_names_leave_the_daemon_running_and_its_log_clean() {
    let title = "\u{1b}[31mev\nil";
    let mut target = node_target_titled(20, Some(title));
    let mut daemon = Daemon::start("threshold = \"100ms\"\n");
    let pid = target.pid();
    assert!(
        poll(Duration::from_secs(5), || daemon.watches(pid).then_some(())).is_some(),
        "pid {pid} not watched:\n{}",
        daemon.process.describe()
    );
    assert!(
        block_and_wait_stored(&daemon, &mut target, Duration::from_secs(10)),
        "first episode not stored:\n{}",
        daemon.process.describe()
    );
    for (n, bad) in [
        "threshold = \"-1d\"\n",
        "threshold = \"nand\"\n",
        "threshold = \"infd\"\n",
        "threshold = \"1e20d\"\n",
        "retention_max_size_mb = 17592186044416\n",
    ]
    .into_iter()
    .enumerate()
    {
        daemon.reload(bad);
        // Signals coalesce: the next one only once this one was handled.
        let handled = poll(Duration::from_secs(10), || {
            let failures = metric(
                &daemon.metrics(),
                "loopbpf_config_reload_failures_total",
                &[],
            )?;
            (failures == (n + 1) as f64).then_some(())
        });
        assert!(
            handled.is_some(),
            "reloading {bad:?} was not refused (daemon gone?):\n{}",
            daemon.process.describe()
        );
    }
    // Still the old threshold (100 ms) and nothing deleted.
    assert!(
        block_and_wait_stored(&daemon, &mut target, Duration::from_secs(10)),
        "no episode stored after the bad reloads:\n{}",
        daemon.process.describe()
    );
    assert_eq!(stored(&daemon, pid), 2, "{:?}", daemon.index());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.state_dir), 0o700);
    assert_eq!(mode(&daemon.state_dir.join("episodes")), 0o700);
    assert_eq!(mode(&daemon.state_dir.join("index.jsonl")), 0o600);
    for f in std::fs::read_dir(daemon.state_dir.join("episodes")).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
    let log = daemon.process.stderr().to_string();
    assert_eq!(
        log.matches("reload failed, keeping the running configuration")
            .count(),
        5,
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "raw escape in the log:\n{log:?}");
    let watching = log
        .lines()
        .find(|l| l.contains(&format!("watching pid={pid} ")))
        .unwrap_or_else(|| panic!("no watching line:\n{log}"));
    assert!(
        watching.contains("comm=\\u{1b}[31mev\\nil exe="),
        "{watching:?}"
    );
}

/// 2,000 idle connections used up the daemon's 1024 file descriptors: no
/// scrape was accepted and no episode file could be created (issue 11).
#[test]
fn idle_metrics_connections_neither_starve_scrapes_nor_episodes() {
    const IDLE: usize = 2000;
    // This test holds the client ends of the connections.
    // SAFETY: plain getrlimit/setrlimit of this process with valid pointers.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        assert!(
            lim.rlim_max >= 4096,
            "hard RLIMIT_NOFILE {} < 4096",
            lim.rlim_max
        );
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let mut target = node_target(20);
    let mut daemon = Daemon::start_limited("threshold = \"100ms\"\n", Some(1024));
    let pid = target.pid();
    assert!(
        poll(Duration::from_secs(5), || daemon.watches(pid).then_some(())).is_some(),
        "pid {pid} not watched:\n{}",
        daemon.process.describe()
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let opening = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    while idle.len() < IDLE && opening.elapsed() < Duration::from_secs(60) {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            idle.push(s);
        }
    }
    assert_eq!(
        idle.len(),
        IDLE,
        "only {} connections in 60 s:\n{}",
        idle.len(),
        daemon.process.describe()
    );
    // Episodes keep being stored while every connection is held open.
    for n in 0..3 {
        assert!(
            block_and_wait_stored(&daemon, &mut target, Duration::from_secs(10)),
            "episode {n} not stored with {IDLE} idle connections:\n{}",
            daemon.process.describe()
        );
    }
    // A scrape gets through within the header timeout of the idle ones.
    let answered = poll(Duration::from_secs(15), || {
        http_get(daemon.port, "/metrics")
            .ok()
            .filter(|(s, _)| *s == 200)
    });
    let Some((_, body)) = answered else {
        panic!(
            "/metrics unanswered with {IDLE} idle connections:\n{}",
            daemon.process.describe()
        )
    };
    let refused = metric(
        &parse_metrics(&body),
        "loopbpf_metrics_connections_refused_total",
        &[],
    );
    assert!(
        refused.unwrap_or(0.0) > 0.0,
        "refusals not counted: {refused:?}"
    );
    // The idle connections the daemon kept were closed by its header timeout.
    let mut buf = [0u8; 1];
    let closed = idle
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(1))).ok();
            match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .filter(|&closed| closed)
        .count();
    assert!(closed >= IDLE - 64, "{closed} of {IDLE} closed");
    drop(idle);
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
}

/// Worker-thread churn in one long-lived process: the kernel state of each
/// exited thread is freed, so map use (one loop series per LOOP_STATS entry of
/// the process) stays flat instead of growing by one per thread.
#[test]
fn worker_thread_churn_keeps_kernel_map_use_flat() {
    const WORKERS: usize = 60;
    let mut target = node_target(20);
    let mut daemon = Daemon::start("");
    let pid = target.pid();
    assert!(
        poll(Duration::from_secs(5), || daemon.watches(pid).then_some(())).is_some(),
        "pid {pid} not watched:\n{}",
        daemon.process.describe()
    );
    // The kernel's own count, not the loop series: those of ended threads
    // are kept a while on purpose, so counters never go backwards.
    let loops = |d: &Daemon| {
        d.metrics()
            .iter()
            .find(|s| s.name == "loopbpf_kernel_loop_threads")
            .map(|s| s.value as usize)
    };
    let churn = |target: &mut Process| {
        target.write_line(&format!("workers {WORKERS}")).unwrap();
        target
            .wait_for_line(Instant::now() + Duration::from_secs(60), "workers", |l| {
                l.contains("\"workers\"")
            })
            .unwrap();
    };
    // Workers' loops are measured: one living 3 s has its series meanwhile.
    target.write_line("workers 1 3000").unwrap();
    let seen = poll(Duration::from_secs(30), || {
        loops(&daemon).is_some_and(|n| n >= 2).then_some(())
    });
    target
        .wait_for_line(Instant::now() + Duration::from_secs(60), "workers", |l| {
            l.contains("\"workers\"")
        })
        .unwrap();
    assert!(
        seen.is_some(),
        "no worker loop ever measured:\n{}",
        daemon.process.describe()
    );
    churn(&mut target);
    // Only the main loop's series is left within a few refreshes.
    let flat = poll(Duration::from_secs(5), || {
        (loops(&daemon) == Some(1)).then_some(())
    });
    let left = loops(&daemon);
    assert!(
        flat.is_some(),
        "{left:?} loop threads of pid {pid} in the kernel after {} worker threads ended:\n{}",
        WORKERS + 1,
        daemon.process.describe()
    );
    assert!(daemon.terminate(Duration::from_secs(10)).unwrap().success());
}
