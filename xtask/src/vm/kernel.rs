//! Debian kernel packages for the guests, fetched with `apt-get download` and
//! unpacked into the cache once.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel series the guests boot, and the Debian package family that has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Debian 12's kernel (also Amazon Linux 2023's series).
    V6_1,
    /// Debian 12 backports / Debian 13.
    V6_12,
}

impl Series {
    pub fn parse(s: &str) -> Result<Vec<Series>> {
        Ok(match s {
            "6.1" => vec![Series::V6_1],
            "6.12" => vec![Series::V6_12],
            "all" => vec![Series::V6_1, Series::V6_12],
            other => bail!("--kernel {other}: want 6.1, 6.12 or all"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// Does `package` belong to this series? The cloud flavour: smallest,
    /// with virtio and the serial console built in.
    fn matches(self, package: &str) -> bool {
        let Some(rest) = package.strip_prefix("linux-image-") else {
            return false;
        };
        let Some(version) = rest.strip_suffix("-cloud-amd64-unsigned") else {
            return false;
        };
        match self {
            // linux-image-6.1.0-57-cloud-amd64-unsigned
            Series::V6_1 => version.starts_with("6.1.0-"),
            // linux-image-6.12.117+deb12-cloud-amd64-unsigned
            Series::V6_12 => version.starts_with("6.12."),
        }
    }
}

/// A kernel image ready to boot.
pub struct Kernel {
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// The newest cached kernel of `series`, else the newest one apt knows of,
/// downloaded and unpacked under `cache/vm/kernel/`.
pub fn ensure(cache: &Path, series: Series) -> Result<Kernel> {
    let dir = cache.join("vm").join("kernel");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cached: Vec<String> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| series.matches(name))
        .collect();
    cached.sort_by(|a, b| version_cmp(a, b));
    if let Some(package) = cached.pop() {
        if let Ok(vmlinuz) = vmlinuz_in(&dir.join(&package)) {
            println!("kernel {}: cached {package}", series.name());
            return Ok(Kernel { package, vmlinuz });
        }
    }
    let package = newest_package(series)?;
    let unpacked = dir.join(&package);
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let result = (|| {
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q"])
                .arg(&package)
                .current_dir(&tmp),
        )?;
        let deb = fs::read_dir(&tmp)?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let root = tmp.join("root");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        // Only the image is needed; the modules are not (the guest loads none).
        let _ = fs::remove_dir_all(root.join("lib"));
        let _ = fs::remove_dir_all(root.join("usr"));
        fs::rename(&root, &unpacked).with_context(|| format!("moving into {}", unpacked.display()))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result?;
    let vmlinuz = vmlinuz_in(&unpacked)?;
    println!("kernel {}: downloaded {package}", series.name());
    Ok(Kernel { package, vmlinuz })
}

fn vmlinuz_in(root: &Path) -> Result<PathBuf> {
    let boot = root.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

/// The newest package of `series` in apt's lists (`apt-get update` first on a
/// new machine).
fn newest_package(series: Series) -> Result<String> {
    let listed = cmd::output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-.*-cloud-amd64-unsigned$",
    ]))?;
    let mut packages: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| series.matches(p))
        .map(String::from)
        .collect();
    packages.sort_by(|a, b| version_cmp(a, b));
    packages.pop().with_context(|| {
        format!(
            "apt knows no linux-image-{}*-cloud-amd64-unsigned package (run apt-get update)",
            series.name()
        )
    })
}

/// Orders package names by their numbers (6.1.0-9 before 6.1.0-10).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    nums(a).cmp(&nums(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_told_apart_and_ordered() {
        let p61 = "linux-image-6.1.0-57-cloud-amd64-unsigned";
        let p612 = "linux-image-6.12.117+deb12-cloud-amd64-unsigned";
        assert!(Series::V6_1.matches(p61) && !Series::V6_1.matches(p612));
        assert!(Series::V6_12.matches(p612) && !Series::V6_12.matches(p61));
        assert!(!Series::V6_12.matches("linux-image-6.12.117+deb12-cloud-amd64-dbg"));
        let mut v = [
            "linux-image-6.1.0-10-cloud-amd64-unsigned",
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[1], "linux-image-6.1.0-10-cloud-amd64-unsigned");
    }
}
