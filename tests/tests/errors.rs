//! Targets loopbpf cannot profile: it says so instead of reporting nothing.

use integration_tests::{loopbpf_bin, schema, tail, Process};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Runs loopbpf to its exit; returns its status, stdout lines and stderr.
fn run_loopbpf(args: &[&str], timeout: Duration) -> (ExitStatus, Vec<String>, String) {
    let mut p = Process::spawn("loopbpf", Command::new(loopbpf_bin()).args(args))
        .unwrap_or_else(|e| panic!("{e}"));
    match p.wait_exit(Instant::now() + timeout) {
        Ok(status) => (status, p.stdout().to_vec(), p.stderr().to_string()),
        Err(e) => panic!("{e}\n{}", p.describe()),
    }
}

/// A pid no process has: kill(pid, 0) fails with ESRCH.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .find(|&pid| {
            // SAFETY: signal 0 only checks existence.
            let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
            r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        })
        .expect("some pid is free")
}

#[test]
fn nonexistent_pid_is_a_one_line_error() {
    let pid = unused_pid().to_string();
    let args = ["--pid", &pid, "--json", "--duration", "5s"];
    let (status, stdout, stderr) = run_loopbpf(&args, Duration::from_secs(20));
    let context = format!(
        "exit: {status}\nstdout:\n{}\nstderr:\n{}",
        stdout.join("\n"),
        tail(&stderr, 50)
    );
    assert!(
        !status.success(),
        "loopbpf accepted pid {pid}, which does not exist\n{context}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "want a one-line error on stderr\n{context}"
    );
    assert!(
        stderr.contains(&pid),
        "the error does not name pid {pid}\n{context}"
    );
    // --json: the reader of stdout learns it too, from a last `error` line
    // with the exit status (the README's exit codes: 1, the run failed).
    assert_eq!(status.code(), Some(1), "{context}");
    let last = stdout.last().map(String::as_str).unwrap_or_default();
    let error = schema::loopbpf_line(last)
        .unwrap_or_else(|e| panic!("{e}\n{context}"))
        .unwrap_or_else(|| panic!("the last stdout line is not JSON\n{context}"));
    assert_eq!(error["type"], "error", "{context}");
    assert_eq!(error["exit_code"], 1, "{context}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains(&pid)),
        "the error line does not name pid {pid}\n{context}"
    );
}

/// A bad flag in --json mode: exit 2 and one `error` line on stdout. Needs
/// no BPF, but runs the binary under test like the rest.
#[test]
fn usage_error_in_json_mode_is_an_error_line_and_exit_2() {
    let args = ["--pid", "1", "--json", "--threshold", "50 parsecs"];
    let (status, stdout, stderr) = run_loopbpf(&args, Duration::from_secs(20));
    let context = format!(
        "exit: {status}\nstdout:\n{}\nstderr:\n{stderr}",
        stdout.join("\n")
    );
    assert_eq!(status.code(), Some(2), "{context}");
    assert_eq!(stdout.len(), 1, "{context}");
    let error = schema::loopbpf_line(&stdout[0])
        .unwrap_or_else(|e| panic!("{e}\n{context}"))
        .unwrap_or_else(|| panic!("not a JSON line\n{context}"));
    assert_eq!(
        (&error["type"], &error["exit_code"]),
        (&"error".into(), &2.into()),
        "{context}"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("--threshold")),
        "{context}"
    );
}

#[test]
fn non_node_process_is_reported() {
    let mut sleep =
        Process::spawn("sleep", Command::new("sleep").arg("30")).unwrap_or_else(|e| panic!("{e}"));
    let pid = sleep.pid().to_string();
    let output_dir = tempfile::tempdir().expect("temp dir");
    let output = output_dir.path().to_str().expect("UTF-8 temp dir");
    let args = [
        "--pid",
        &pid,
        "--json",
        "--threshold",
        "50ms",
        "--duration",
        "2s",
        "--output",
        output,
    ];
    let (status, stdout, stderr) = run_loopbpf(&args, Duration::from_secs(30));
    sleep.kill();
    let context = format!(
        "exit: {status}\nstdout:\n{}\nstderr:\n{}",
        stdout.join("\n"),
        tail(&stderr, 50)
    );

    // Refusing the target or profiling it with a warning are both fine; what
    // matters is that the operator learns why there will be no episodes.
    let explains = |text: &str| {
        let text = text.to_lowercase();
        ["perf map", "poll", "not a node"]
            .iter()
            .any(|m| text.contains(m))
    };
    let lines = schema::loopbpf_lines(stdout.iter().map(String::as_str))
        .unwrap_or_else(|e| panic!("{e}\n{context}"));
    let warned = lines
        .iter()
        .filter(|w| w["type"] == "warning")
        .any(|w| w["message"].as_str().is_some_and(explains));
    let refused = !status.success() && explains(&stderr);
    assert!(
        warned || refused,
        "sleep (pid {pid}) is not Node: want a warning, or a non-zero exit, mentioning \"perf map\", \"poll\" or \"not a Node\"\n{context}"
    );
}
