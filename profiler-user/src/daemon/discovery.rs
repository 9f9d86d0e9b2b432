//! Which processes the daemon watches. One /proc scan at start; afterwards the
//! kernel's exec events name each new program, so nothing polls /proc.
//! A process is watched when it looks like Node (unless `node_only = false`),
//! every non-empty `[match]` list has a pattern matching it, and no
//! `[exclude]` pattern does.
use std::{fs, path::Path};

use super::config::{Config, Patterns};
use crate::{
    daemon::metrics::{
        identity::{ContainerIdentity, KUBERNETES_LOG_LINKS},
        ProcessLabels,
    },
    kernel::target::Target,
};

/// What /proc says about a process, read once when it is considered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// The cgroup v2 path (`0::…` line), or the first hierarchy's on v1.
    pub cgroup: String,
    /// Container id found in the cgroup path; Kubernetes pod, namespace and
    /// container name where the kubelet's log links are visible.
    pub container: ContainerIdentity,
}

impl Identity {
    pub fn read(pid: u32) -> Option<Identity> {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| cgroup_path(&t))
            .unwrap_or_default();
        Some(Identity {
            pid,
            comm: comm.trim().to_string(),
            exe,
            cmdline,
            container: ContainerIdentity::of_cgroup(&cgroup, Path::new(KUBERNETES_LOG_LINKS)),
            cgroup,
        })
    }

    /// The `container` label (see `ContainerIdentity::label`).
    pub fn container_label(&self) -> String {
        self.container.label(&self.cgroup)
    }

    pub fn labels(&self) -> ProcessLabels {
        ProcessLabels {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            container: self.container_label(),
            container_id: self.container.id.clone().unwrap_or_default(),
            pod: self.container.pod.clone(),
            namespace: self.container.namespace.clone(),
        }
    }
}

fn cgroup_path(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let v2 = lines.iter().find_map(|l| l.strip_prefix("0::"));
    v2.or_else(|| lines.first().and_then(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or("")
        .to_string()
}

fn any(patterns: &[regex::Regex], value: &str) -> bool {
    patterns.iter().any(|p| p.is_match(value))
}

fn matches(p: &Patterns, id: &Identity, empty_means: bool) -> [bool; 3] {
    let container = |v: &[regex::Regex]| {
        any(v, &id.cgroup)
            || id.container.id.as_deref().is_some_and(|c| any(v, c))
            || (!id.container.name.is_empty() && any(v, &id.container.name))
    };
    let one = |v: &[regex::Regex], hit: bool| if v.is_empty() { empty_means } else { hit };
    [
        one(&p.executables, any(&p.executables, &id.exe)),
        one(&p.cmdline, any(&p.cmdline, &id.cmdline)),
        one(&p.containers, container(&p.containers)),
    ]
}

/// The configuration's patterns alone (no /proc/PID/maps look).
pub fn selected(config: &Config, id: &Identity) -> bool {
    matches(&config.include, id, true).iter().all(|&m| m)
        && !matches(&config.exclude, id, false).iter().any(|&m| m)
}

/// Should `pid` be watched? `None` when it is gone or not selected.
pub fn consider(config: &Config, pid: u32) -> Option<Identity> {
    if pid == std::process::id() {
        return None;
    }
    let id = Identity::read(pid)?;
    // Another loopbpf (a --pid session, a second daemon) is never a target.
    if id
        .exe
        .rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with("loopbpf"))
        || !selected(config, &id)
    {
        return None;
    }
    // Kernel threads and zombies have no exe; Target checks Node-ness via maps.
    if id.exe.is_empty() || Target::inspect(pid, !config.node_only).is_err() {
        return None;
    }
    Some(id)
}

/// Every pid in /proc, for the scan at start and after a reload.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c2b1a00112233445566778899aabbccddeeff00112233445566778899aabb";

    #[test]
    fn cgroup_v2_path() {
        assert_eq!(
            cgroup_path("0::/system.slice/app.service\n"),
            "/system.slice/app.service"
        );
    }

    #[test]
    fn include_lists_and_exclusions() {
        let id = Identity {
            pid: 7,
            exe: "/usr/bin/node".into(),
            cmdline: "node /srv/api/server.js".into(),
            cgroup: format!("/system.slice/docker-{ID}.scope"),
            container: ContainerIdentity {
                id: Some(ID.into()),
                ..Default::default()
            },
            ..Identity::default()
        };
        let parse = |t: &str| Config::parse(Path::new("x"), t).unwrap();
        assert!(selected(&parse(""), &id));
        assert!(selected(&parse("[match]\ncmdline = ['server\\.js']"), &id));
        assert!(!selected(&parse("[match]\ncmdline = ['worker\\.js']"), &id));
        assert!(selected(
            &parse(&format!("[match]\ncontainers = ['^{}']", &ID[..6])),
            &id
        ));
        assert!(!selected(
            &parse("[exclude]\nexecutables = ['/usr/bin/']"),
            &id
        ));
    }

    #[test]
    fn this_test_process_is_not_selected_under_node_only() {
        assert!(consider(&Config::default(), std::process::id()).is_none());
        let me = Identity::read(std::process::id()).unwrap();
        assert!(!me.exe.is_empty());
        assert!(all_pids().contains(&std::process::id()));
    }
}
