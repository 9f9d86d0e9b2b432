//! The daemon's configuration: a TOML file (default /etc/loopbpf/loopbpf.toml),
//! every key optional with the defaults below; `dist/loopbpf.toml` documents
//! them. Unknown keys are errors, so a typo is not silently a default.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use regex::Regex;
use serde::Deserialize;

use crate::{
    cli::args::{check_frequency, in_range, parse_duration, THRESHOLD_RANGE},
    daemon::{metrics::SeriesLabels, store::Retention},
};

pub const DEFAULT_PATH: &str = "/etc/loopbpf/loopbpf.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path} failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatterns {
    #[serde(default)]
    executables: Vec<String>,
    #[serde(default)]
    cmdline: Vec<String>,
    #[serde(default)]
    containers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    threshold: Option<String>,
    frequency: Option<u64>,
    state_dir: Option<PathBuf>,
    metrics_address: Option<String>,
    retention_max_size_mb: Option<u64>,
    retention_max_age: Option<String>,
    /// Only processes that look like Node (node binary, libnode, libuv).
    node_only: Option<bool>,
    /// Attach the libuv threadpool uprobes to each watched process.
    threadpool: Option<bool>,
    /// Optional labels of loop and threadpool series: "pid", "tid".
    series_labels: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    include: RawPatterns,
    #[serde(default)]
    exclude: RawPatterns,
}

/// Regexes per attribute; a list matches when any of its patterns does.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    pub executables: Vec<Regex>,
    pub cmdline: Vec<Regex>,
    pub containers: Vec<Regex>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub threshold: Duration,
    pub frequency_hz: u64,
    pub state_dir: PathBuf,
    pub metrics_address: SocketAddr,
    pub retention: Retention,
    pub node_only: bool,
    /// Threadpool uprobes on newly watched processes (utilization, saturation,
    /// queue wait); off saves a few microseconds per work item.
    pub threadpool: bool,
    /// pid/tid labels on series (off: a restart continues the same series).
    pub series_labels: SeriesLabels,
    pub include: Patterns,
    pub exclude: Patterns,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            threshold: Duration::from_millis(50),
            frequency_hz: 199,
            state_dir: PathBuf::from("/var/lib/loopbpf"),
            metrics_address: SocketAddr::from(([127, 0, 0, 1], 9569)),
            retention: Retention {
                max_bytes: 512 << 20,
                max_age: Duration::from_secs(7 * 86_400),
            },
            node_only: true,
            threadpool: true,
            series_labels: SeriesLabels::default(),
            include: Patterns::default(),
            exclude: Patterns::default(),
        }
    }
}

/// Retention sizes beyond 1 TiB are refused: a value that large is a typo,
/// and the megabyte count must not overflow when turned into bytes.
pub const MAX_RETENTION_MB: u64 = 1 << 20;
/// Ages outside this range are refused: below a minute episodes would be
/// deleted before anyone looks at them.
pub const RETENTION_AGE_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(3650 * 86_400));

/// A duration in the CLI's grammar, within `range`; the message names the value.
fn duration(s: &str, range: (Duration, Duration)) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    in_range(d, range.0, range.1).map_err(|m| format!("'{s}': {m}"))
}

fn patterns(path: &Path, key: &'static str, raw: &[String]) -> Result<Vec<Regex>, ConfigError> {
    raw.iter()
        .map(|p| {
            Regex::new(p).map_err(|e| ConfigError::Invalid {
                path: path.into(),
                key,
                message: e.to_string(),
            })
        })
        .collect()
}

impl Config {
    /// Reads `path`; a missing file at the default path means all defaults,
    /// anywhere else it is an error (the operator named it).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.into(),
            key,
            message,
        };
        let mut c = Config::default();
        if let Some(t) = raw.threshold {
            c.threshold = duration(&t, THRESHOLD_RANGE).map_err(|m| invalid("threshold", m))?;
        }
        if let Some(f) = raw.frequency {
            c.frequency_hz = check_frequency(f).map_err(|m| invalid("frequency", m))?;
        }
        if let Some(d) = raw.state_dir {
            c.state_dir = d;
        }
        if let Some(a) = raw.metrics_address {
            c.metrics_address = a
                .parse()
                .map_err(|e| invalid("metrics_address", format!("'{a}': {e}")))?;
        }
        if let Some(mb) = raw.retention_max_size_mb {
            if !(1..=MAX_RETENTION_MB).contains(&mb) {
                return Err(invalid(
                    "retention_max_size_mb",
                    format!("{mb} is out of range (1 to {MAX_RETENTION_MB})"),
                ));
            }
            c.retention.max_bytes = mb << 20;
        }
        if let Some(a) = raw.retention_max_age {
            c.retention.max_age =
                duration(&a, RETENTION_AGE_RANGE).map_err(|m| invalid("retention_max_age", m))?;
        }
        c.node_only = raw.node_only.unwrap_or(true);
        c.threadpool = raw.threadpool.unwrap_or(true);
        if let Some(names) = raw.series_labels {
            c.series_labels =
                SeriesLabels::parse(&names).map_err(|m| invalid("series_labels", m))?;
        }
        c.include = Patterns {
            executables: patterns(path, "match.executables", &raw.include.executables)?,
            cmdline: patterns(path, "match.cmdline", &raw.include.cmdline)?,
            containers: patterns(path, "match.containers", &raw.include.containers)?,
        };
        c.exclude = Patterns {
            executables: patterns(path, "exclude.executables", &raw.exclude.executables)?,
            cmdline: patterns(path, "exclude.cmdline", &raw.exclude.cmdline)?,
            containers: patterns(path, "exclude.containers", &raw.exclude.containers)?,
        };
        let includes = &c.include;
        if !c.node_only
            && includes.executables.is_empty()
            && includes.cmdline.is_empty()
            && includes.containers.is_empty()
        {
            // Watching every process on the host is never what anyone wants.
            return Err(invalid(
                "node_only",
                "false needs at least one [match] pattern".into(),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse(Path::new("x.toml"), "").unwrap();
        assert_eq!(c.threshold, Duration::from_millis(50));
        assert_eq!(c.metrics_address.to_string(), "127.0.0.1:9569");
        assert_eq!(c.state_dir, Path::new("/var/lib/loopbpf"));
        assert!(c.node_only);
    }

    #[test]
    fn shipped_config_parses_to_the_defaults() {
        let text = include_str!("../../../dist/loopbpf.toml");
        let c = Config::parse(Path::new("dist/loopbpf.toml"), text).unwrap();
        let d = Config::default();
        assert_eq!(
            (c.threshold, c.frequency_hz, c.retention),
            (d.threshold, d.frequency_hz, d.retention)
        );
        assert_eq!(
            (c.metrics_address, &c.state_dir),
            (d.metrics_address, &d.state_dir)
        );
    }

    #[test]
    fn values_and_patterns_are_read() {
        let text = r#"
            threshold = "100ms"
            retention_max_age = "2d"
            metrics_address = "127.0.0.1:1234"
            [match]
            cmdline = ["server\\.js"]
            [exclude]
            containers = ["^abc"]
        "#;
        let c = Config::parse(Path::new("x"), text).unwrap();
        assert_eq!(c.threshold, Duration::from_millis(100));
        assert_eq!(c.retention.max_age, Duration::from_secs(2 * 86_400));
        assert!(c.include.cmdline[0].is_match("node server.js"));
        assert_eq!(c.exclude.containers.len(), 1);
    }

    #[test]
    fn typos_and_bad_values_are_errors_naming_the_key() {
        assert!(Config::parse(Path::new("x"), "treshold = \"1s\"").is_err());
        let e = Config::parse(Path::new("x"), "[match]\ncmdline = [\"(\"]").unwrap_err();
        assert!(e.to_string().contains("match.cmdline"), "{e}");
        let e = Config::parse(Path::new("x"), "series_labels = [\"uid\"]").unwrap_err();
        assert!(e.to_string().contains("series_labels"), "{e}");
        let c = Config::parse(Path::new("x"), "series_labels = [\"pid\"]").unwrap();
        assert!(c.series_labels.pid && !c.series_labels.tid);
        let e = Config::parse(Path::new("x"), "node_only = false").unwrap_err();
        assert!(e.to_string().contains("node_only"), "{e}");
    }

    /// Each of these panicked (`Duration::from_secs_f64`) or, for the size,
    /// wrapped to 0 bytes and deleted every episode (issue 11).
    #[test]
    fn hostile_values_are_errors_naming_key_and_value() {
        for (key, value) in [
            ("threshold", "\"-1d\""),
            ("threshold", "\"nand\""),
            ("threshold", "\"infd\""),
            ("threshold", "\"1e20d\""),
            ("threshold", "\"0ms\""),
            ("retention_max_age", "\"-1d\""),
            ("retention_max_age", "\"1e20d\""),
            ("retention_max_age", "\"1s\""),
            ("retention_max_size_mb", "17592186044416"),
            ("retention_max_size_mb", "0"),
            ("frequency", "1000000"),
        ] {
            let text = format!("{key} = {value}");
            let e = Config::parse(Path::new("x.toml"), &text).unwrap_err();
            let line = e.to_string();
            assert!(line.contains(key), "{text}: {line}");
            assert!(line.contains(value.trim_matches('"')), "{text}: {line}");
            assert!(!line.contains('\n'), "{text}: {line}");
        }
    }

    #[test]
    fn one_grammar_for_file_and_flags() {
        let c = Config::parse(
            Path::new("x"),
            "threshold = \"1s500ms\"\nretention_max_age = \"1h30m\"",
        )
        .unwrap();
        assert_eq!(c.threshold, Duration::from_millis(1500));
        assert_eq!(c.retention.max_age, Duration::from_secs(5400));
        let c = Config::parse(Path::new("x"), "retention_max_size_mb = 1048576").unwrap();
        assert_eq!(c.retention.max_bytes, 1 << 40);
    }
}
