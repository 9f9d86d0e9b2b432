//! Node.js binaries for the integration tests, one per major version.
//!
//! The machine's Node is used when it has the wanted major; the others come from the npm
//! registry's `node-linux-<arch>` packages (npm is the only registry reachable that ships
//! official Node builds) and are kept in the cache.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SYSTEM_NODE: &str = "/usr/bin/node";

struct Node {
    major: u32,
    path: PathBuf,
}

pub struct Nodes(Vec<Node>);

impl Nodes {
    /// `20=/usr/bin/node,22=/…/bin/node`: the LOOPBPF_NODES format the integration tests parse.
    pub fn env_value(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|n| format!("{}={}", n.major, n.path.display()))
            .collect();
        pairs.join(",")
    }
}

pub fn ensure(cache: &Path, majors: &[u32]) -> Result<Nodes> {
    majors
        .iter()
        .map(|&m| ensure_one(cache, m))
        .collect::<Result<_>>()
        .map(Nodes)
}

fn ensure_one(cache: &Path, major: u32) -> Result<Node> {
    let system = PathBuf::from(SYSTEM_NODE);
    if let Some(v) = version_of(&system, major) {
        println!("node {major}: {v} at {SYSTEM_NODE}");
        return Ok(Node {
            major,
            path: system,
        });
    }
    let dir = cache.join("node").join(major.to_string());
    let bin = dir.join("bin").join("node");
    if let Some(v) = version_of(&bin, major) {
        println!("node {major}: cached {v} at {}", bin.display());
        return Ok(Node { major, path: bin });
    }
    install(&dir, major)?;
    let v = version_of(&bin, major)
        .with_context(|| format!("{} does not run as Node {major}", bin.display()))?;
    println!("node {major}: installed {v} at {}", bin.display());
    Ok(Node { major, path: bin })
}

/// `Some("v22.x.y")` when `node` runs and has the wanted major.
fn version_of(node: &Path, major: u32) -> Option<String> {
    if !node.is_file() {
        return None;
    }
    let v = cmd::probe(Command::new(node).arg("--version"))?;
    v.starts_with(&format!("v{major}.")).then_some(v)
}

fn install(dir: &Path, major: u32) -> Result<()> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => bail!("no node-linux package for architecture {other}"),
    };
    let parent = dir.parent().context("node cache dir")?;
    // Unpack beside the destination, then rename: an interrupted install never looks complete.
    let tmp = parent.join(format!(".tmp-{major}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| {
        cmd::run(
            Command::new("npm")
                .args(["pack", "--loglevel=warn"])
                .arg(format!("node-linux-{arch}@{major}"))
                .current_dir(&tmp),
        )?;
        let tarball = fs::read_dir(&tmp)?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack left no .tgz")?;
        cmd::run(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&tmp),
        )?;
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::rename(tmp.join("package"), dir)
            .with_context(|| format!("moving into {}", dir.display()))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}
