//! A real Prometheus server (Debian package `prometheus`, installed by
//! `cargo xtask test`) scraping the daemon, queried over its HTTP API.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::daemon::{free_port, http_get, wait_until_serving};
use crate::Process;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server scraping `targets` every second, on a free port.
pub struct Prometheus {
    pub process: Process,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target_port: u16) -> Prometheus {
        Prometheus::start_with_rules(target_port, &[])
    }

    /// Also loads `rules` (rule files), evaluated every second.
    pub fn start_with_rules(target_port: u16, rules: &[&Path]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} missing: `cargo xtask test` installs the Debian package prometheus"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n  - job_name: loopbpf\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                rules
                    .iter()
                    .map(|r| format!("{:?}", r.display().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut process = Process::spawn("prometheus", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
        wait_until_serving(&mut process, port, "/-/ready", Duration::from_secs(30));
        Prometheus {
            process,
            port,
            _dir: dir,
        }
    }

    /// The `data.result` array of an instant PromQL query.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("query `{promql}`: HTTP {status}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of a query returning one series, if it does.
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql).ok()?;
        match &r[..] {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn promql_is_url_encoded() {
        assert_eq!(super::url_encode("a{b=\"c\"}"), "a%7Bb%3D%22c%22%7D");
    }
}
