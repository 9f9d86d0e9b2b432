//! Harness for the kernel tests: runs a script from `node/` under loopbpf and
//! collects what both print. `node/protocol.js` is the script side of it.
//!
//! These tests need root, a built loopbpf and the Node versions under test;
//! `cargo xtask test` provides all three. Missing any of them fails the test:
//! a skipped kernel test would read as a pass.

pub mod checks;
pub mod container;
pub mod daemon;
mod parse;
mod process;
pub mod prometheus;
mod run;
pub mod schema;

pub use parse::*;
pub use process::{tail, Process};
pub use run::{Run, Scenario, Tracefs};

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// loopbpf's `--threshold` in every scenario.
pub const THRESHOLD_MS: f64 = 50.0;
pub const PERF_MAP_FLAG: &str = "--perf-basic-prof-only-functions";

const HOW_TO_RUN: &str = "run the kernel tests with `cargo xtask test`, which builds loopbpf, \
     runs as root and sets LOOPBPF_BIN, LOOPBPF_DIST and LOOPBPF_NODES";
const DEFAULT_NODES: &str = "20=/usr/bin/node";

fn why_not_skipped() -> &'static str {
    if env::var("LOOPBPF_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
        "LOOPBPF_REQUIRE_KERNEL=1"
    } else {
        "kernel tests fail rather than skip"
    }
}

/// The loopbpf binary, after checking it can be run as intended.
pub fn loopbpf_bin() -> PathBuf {
    let why = why_not_skipped();
    let bin = env::var_os("LOOPBPF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("LOOPBPF_BIN is not set ({why}); {HOW_TO_RUN}"));
    assert!(
        bin.is_file(),
        "LOOPBPF_BIN={} is not a file ({why}); {HOW_TO_RUN}",
        bin.display()
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "loopbpf needs root to load its probes, euid is {euid} ({why}); {HOW_TO_RUN}"
    );
    bin
}

/// `LOOPBPF_DIST`: target/dist of `cargo xtask dist` (static binary, .deb, kit).
pub fn dist_dir() -> PathBuf {
    let why = why_not_skipped();
    let dir = env::var_os("LOOPBPF_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("LOOPBPF_DIST is not set ({why}); {HOW_TO_RUN}"));
    assert!(
        dir.join("loopbpf").is_file(),
        "LOOPBPF_DIST={} has no loopbpf ({why}); {HOW_TO_RUN}",
        dir.display()
    );
    dir
}

/// The repository's dist/ (operators' kit, unit, config).
pub fn repo_dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

/// `LOOPBPF_NODES`: `MAJOR=PATH` entries separated by commas.
pub fn parse_nodes(spec: &str) -> Result<Vec<(u32, PathBuf)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (major, path) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not MAJOR=PATH"))?;
            let major = major
                .trim()
                .parse()
                .map_err(|_| format!("`{entry}`: `{major}` is not a major version"))?;
            Ok((major, PathBuf::from(path.trim())))
        })
        .collect()
}

/// The node binary of this major version, checked to be that version.
pub fn node_for(major: u32) -> PathBuf {
    let (spec, shown) = match env::var("LOOPBPF_NODES") {
        Ok(spec) => (spec.clone(), format!("LOOPBPF_NODES={spec}")),
        Err(_) => (
            DEFAULT_NODES.to_string(),
            format!("LOOPBPF_NODES (unset, so {DEFAULT_NODES})"),
        ),
    };
    let nodes = parse_nodes(&spec).unwrap_or_else(|e| panic!("{shown}: {e}"));
    let Some((_, node)) = nodes.into_iter().find(|(m, _)| *m == major) else {
        panic!(
            "Node {major} is not in {shown}, so this test cannot run ({}); {HOW_TO_RUN}",
            why_not_skipped()
        );
    };
    let out = Command::new(&node)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", node.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        version.starts_with(&format!("v{major}.")),
        "LOOPBPF_NODES says {} is Node {major}, but it reports `{version}`",
        node.display()
    );
    node
}

/// `LOOPBPF_TEST_TIME_SCALE`: how many times slower than a normal machine
/// this one runs, for the timeouts (an emulated guest of `cargo xtask
/// vm-test` sets it). Never for thresholds or block lengths: those scale by
/// the measured `speed_factor()`, in the tests that opt in.
pub fn time_scale() -> f64 {
    match env::var("LOOPBPF_TEST_TIME_SCALE") {
        Err(_) => 1.0,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 1.0 => s,
            _ => panic!("LOOPBPF_TEST_TIME_SCALE={v:?} is not a number >= 1"),
        },
    }
}

/// `LOOPBPF_TEST_SPEED_FACTOR`: how many times slower this machine ran a
/// fixed calibration loop (`tests/node/calibrate.js`) than the host the
/// bounds were set on; measured by the `vm-test` guest's init, unset (1)
/// elsewhere. Tests that opt in (`Scenario::speed_scaled`) scale their
/// thresholds and block lengths by it, so host speed never decides them; at
/// 1 every bound is today's exactly.
pub fn speed_factor() -> f64 {
    match env::var("LOOPBPF_TEST_SPEED_FACTOR") {
        Err(_) => 1.0,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 1.0 => s,
            _ => panic!("LOOPBPF_TEST_SPEED_FACTOR={v:?} is not a number >= 1"),
        },
    }
}

/// A timeout stretched by `time_scale()`.
pub fn timeout(d: std::time::Duration) -> std::time::Duration {
    d.mul_f64(time_scale())
}

/// The syscall probes loopbpf picks by default on this kernel:
/// `LOOPBPF_EXPECT_SYSCALL_PROBES` (`fentry` in the `vm-test` guests, whose
/// kernels allow ftrace hooks), else `tracepoint` (this host refuses fentry).
pub fn default_syscall_probes() -> &'static str {
    match env::var("LOOPBPF_EXPECT_SYSCALL_PROBES").as_deref() {
        Err(_) | Ok("tracepoint") => "tracepoint",
        Ok("fentry") => "fentry",
        Ok(other) => panic!("LOOPBPF_EXPECT_SYSCALL_PROBES={other:?}: want fentry or tracepoint"),
    }
}

/// One `#[test]` per Node major for a scenario function taking the major:
/// `node_tests!(scenario => scenario_node20 = 20, scenario_node22 = 22);`
#[macro_export]
macro_rules! node_tests {
    ($scenario:path => $($name:ident = $major:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $scenario($major)
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_spec_with_spaces_and_trailing_comma() {
        let nodes = parse_nodes(" 20=/usr/bin/node, 22=/c/22/bin/node ,").unwrap();
        assert_eq!(
            nodes,
            [
                (20, PathBuf::from("/usr/bin/node")),
                (22, PathBuf::from("/c/22/bin/node"))
            ]
        );
    }

    #[test]
    fn nodes_spec_errors_name_the_entry() {
        assert!(parse_nodes("20").unwrap_err().contains("`20`"));
        assert!(parse_nodes("x=/n").unwrap_err().contains("`x`"));
        assert_eq!(parse_nodes(""), Ok(vec![]));
    }
}
