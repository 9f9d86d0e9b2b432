//! Harness for `loopbpf daemon` tests: the daemon with a config in a temp
//! dir, plain-HTTP reads of its /metrics and long-running Node targets.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{loopbpf_bin, node_for, Process, PERF_MAP_FLAG};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `GET path` over HTTP/1.1 with `Connection: close`: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect :{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read :{port}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    // Chunked bodies (hyper streams when it has no length) are de-chunked crudely.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One sample line of the exposition: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition (labels without escaped quotes, which ours never have).
pub fn parse_metrics(text: &str) -> Vec<MetricSample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(MetricSample {
                name: name.to_string(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of `name` whose labels include every pair in `want`.
pub fn metric(samples: &[MetricSample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
/// Waits until `process` answers 200 on `path`; otherwise kills it and
/// panics with what it printed.
pub fn wait_until_serving(process: &mut Process, port: u16, path: &str, timeout: Duration) {
    let ok = poll(timeout, || {
        http_get(port, path).ok().filter(|(s, _)| *s == 200)
    });
    if ok.is_none() {
        process.kill();
        panic!(
            "{path} on :{port} did not answer 200 within {} s:\n{}",
            timeout.as_secs(),
            process.describe()
        );
    }
}

pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Daemon {
    pub process: Process,
    pub port: u16,
    pub config: PathBuf,
    base_config: String,
    pub state_dir: PathBuf,
    pub _dir: tempfile::TempDir,
}

/// Tests tell their processes apart by pid.
const PID_LABELS: &str = "series_labels = [\"pid\", \"tid\"]\n";

impl Daemon {
    /// Starts `loopbpf daemon` with `extra` appended to a config that puts
    /// its state and metrics somewhere private and labels series with pid
    /// and tid (tests tell their processes apart by pid); waits for /metrics.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_limited(extra, None)
    }

    /// [`Daemon::start`] with the soft RLIMIT_NOFILE set to `nofile` (what a
    /// service gets from systemd unless its unit says otherwise: 1024).
    pub fn start_limited(extra: &str, nofile: Option<u64>) -> Daemon {
        Daemon::start_with(PID_LABELS, extra, nofile)
    }

    /// As `start`, with `labels` (a `series_labels` line, or "" for the
    /// default identity labels) in the base config.
    pub fn start_with_labels(labels: &str, extra: &str) -> Daemon {
        Daemon::start_with(labels, extra, None)
    }

    fn start_with(labels: &str, extra: &str, nofile: Option<u64>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let state_dir = dir.path().join("state");
        let config = dir.path().join("loopbpf.toml");
        let base_config = format!(
            "state_dir = {:?}\nmetrics_address = \"127.0.0.1:{port}\"\n{labels}",
            state_dir.display()
        );
        std::fs::write(&config, format!("{base_config}{extra}")).expect("write config");
        let mut cmd = Command::new(loopbpf_bin());
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info");
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = n.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        let mut process =
            Process::spawn("loopbpf daemon", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
        // The BPF verifier alone can take many seconds on a busy 2-CPU VM.
        wait_until_serving(&mut process, port, "/metrics", Duration::from_secs(90));
        Daemon {
            process,
            port,
            config,
            base_config,
            state_dir,
            _dir: dir,
        }
    }

    /// Whether `pid` has its `loopbpf_process_info` series now.
    pub fn watches(&self, pid: u32) -> bool {
        metric(
            &self.metrics(),
            "loopbpf_process_info",
            &[("pid", &pid.to_string())],
        ) == Some(1.0)
    }

    pub fn metrics(&self) -> Vec<MetricSample> {
        http_get(self.port, "/metrics")
            .map(|(_, b)| parse_metrics(&b))
            .unwrap_or_default()
    }

    /// The records of `index.jsonl`, each checked against the JSON contract
    /// (a torn last line, being appended, is skipped).
    pub fn index(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state_dir.join("index.jsonl")).unwrap_or_default();
        crate::schema::loopbpf_lines(text.lines()).unwrap_or_else(|e| panic!("index.jsonl: {e}"))
    }

    /// The stored record `episodes/ID.json`, checked against the contract.
    pub fn record(&self, id: &str) -> serde_json::Value {
        let path = self.state_dir.join(format!("episodes/{id}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match crate::schema::loopbpf_line(&text) {
            Ok(Some(v)) => v,
            Ok(None) => panic!("{}: not JSON: {text}", path.display()),
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }

    /// Rewrites the config (private state dir and port kept) and sends SIGHUP.
    pub fn reload(&self, extra: &str) {
        std::fs::write(&self.config, format!("{}{extra}", self.base_config)).expect("write config");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.process.pid() as i32, libc::SIGHUP) };
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.process.pid() as i32, libc::SIGTERM) };
        self.process.wait_exit(Instant::now() + timeout)
    }
}

/// A Node process running `node/daemon_target.js`, started and ready.
pub fn node_target(major: u32) -> Process {
    node_target_titled(major, None)
}

/// [`node_target`] that sets `process.title` (hence its `comm`) to `title` first.
pub fn node_target_titled(major: u32, title: Option<&str>) -> Process {
    spawn_target(major, title, true)
}

/// [`node_target`], writing its perf map or not.
pub fn node_target_with(major: u32, perf_map: bool) -> Process {
    spawn_target(major, None, perf_map)
}

fn spawn_target(major: u32, title: Option<&str>, perf_map: bool) -> Process {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/daemon_target.js");
    let mut cmd = Command::new(node_for(major));
    if let Some(t) = title {
        cmd.env("DAEMON_TARGET_TITLE", t);
    }
    if perf_map {
        cmd.arg(PERF_MAP_FLAG);
    }
    cmd.arg("--interpreted-frames-native-stack").arg(script);
    let mut p = Process::spawn("daemon_target.js", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
    p.wait_for_line(Instant::now() + Duration::from_secs(10), "ready", |l| {
        l.contains("\"ready\"")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_parse_with_labels() {
        let text =
            "# TYPE x histogram\nx_bucket{le=\"0.5\",pid=\"7\",comm=\"node\"} 3\nup 1\n# EOF\n";
        let m = parse_metrics(text);
        assert_eq!(
            metric(&m, "x_bucket", &[("pid", "7"), ("le", "0.5")]),
            Some(3.0)
        );
        assert_eq!(metric(&m, "up", &[]), Some(1.0));
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
