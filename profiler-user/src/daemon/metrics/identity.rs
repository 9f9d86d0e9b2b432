//! Who a process is for its metric labels, in terms that survive a restart:
//! the container id found in its cgroup path and, where Kubernetes is visible,
//! its pod, namespace and container name. The kubelet names each container's
//! log link `/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log`, so one
//! directory listing maps a container id to the names kube-state-metrics uses.
use std::{fs, path::Path};

/// Where the kubelet links container logs (mounted read-only by the DaemonSet).
pub const KUBERNETES_LOG_LINKS: &str = "/var/log/containers";

/// Entries read from that directory at most: a node runs a few hundred
/// containers; a bigger directory is not read to its end.
const MAX_LINKS: usize = 16_384;
/// Longest name kept from a link (Kubernetes names are at most 253 bytes).
const MAX_NAME: usize = 253;

/// The container-related part of a process's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerIdentity {
    /// Full 64-hex container id (docker, containerd, CRI-O, podman), if any.
    pub id: Option<String>,
    /// The cgroup path is under `kubepods`.
    pub kubernetes: bool,
    pub pod: String,
    pub namespace: String,
    /// Kubernetes container name, when the kubelet's log link was found.
    pub name: String,
}

impl ContainerIdentity {
    /// From the cgroup path, then `log_links` for Kubernetes names.
    pub fn of_cgroup(cgroup: &str, log_links: &Path) -> ContainerIdentity {
        let id = container_id(cgroup);
        let kubernetes = cgroup.contains("kubepods");
        let mut c = ContainerIdentity {
            id,
            kubernetes,
            ..Default::default()
        };
        if let (true, Some(id)) = (kubernetes, c.id.as_deref()) {
            if let Some((pod, namespace, name)) = kubernetes_names(log_links, id) {
                (c.pod, c.namespace, c.name) = (pod, namespace, name);
            }
        }
        c
    }

    /// The `container` label: the Kubernetes container name (stable across
    /// container restarts), else the short id, else the cgroup path (a
    /// systemd unit, a session), which still says whose the process is.
    pub fn label(&self, cgroup: &str) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        match &self.id {
            Some(id) => id[..12].to_string(),
            None => cgroup.to_string(),
        }
    }
}

/// The last run of exactly 64 lowercase hex digits in the path: how docker
/// (`docker-ID.scope`, `/docker/ID`), containerd (`cri-containerd-ID.scope`),
/// CRI-O (`crio-ID`) and podman (`libpod-ID.scope`) name a container's cgroup.
pub fn container_id(cgroup: &str) -> Option<String> {
    let bytes = cgroup.as_bytes();
    let mut found = None;
    let mut run = 0;
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_hexdigit() && !b.is_ascii_uppercase() {
            run += 1;
            let ends = bytes.get(i + 1).is_none_or(|n| !n.is_ascii_hexdigit());
            if run == 64 && ends {
                found = Some(cgroup[i + 1 - 64..i + 1].to_string());
            }
        } else {
            run = 0;
        }
    }
    found
}

/// `(pod, namespace, container)` from the link named
/// `POD_NAMESPACE_CONTAINER-ID.log` (pod and namespace names hold no `_`).
fn kubernetes_names(dir: &Path, id: &str) -> Option<(String, String, String)> {
    let suffix = format!("-{id}.log");
    let entries = fs::read_dir(dir).ok()?;
    entries.take(MAX_LINKS).flatten().find_map(|e| {
        let name = e.file_name();
        let stem = name.to_str()?.strip_suffix(&suffix)?;
        let mut parts = stem.splitn(3, '_');
        let (pod, ns, container) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME;
        (ok(pod) && ok(ns) && ok(container))
            .then(|| (pod.to_string(), ns.to_string(), container.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c2b1a00112233445566778899aabbccddeeff00112233445566778899aabb";

    #[test]
    fn container_ids_from_common_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods/burstable/pod1234/cri-containerd-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
    }

    #[test]
    fn kubernetes_names_come_from_the_kubelet_log_links() {
        let dir = tempfile::tempdir().unwrap();
        let other = ID.replace('4', "5");
        for n in [
            format!("api-7d9f_shop_server-{ID}.log"),
            format!("db-0_shop_postgres-{other}.log"),
        ] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        let cgroup = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c.slice/cri-containerd-{ID}.scope"
        );
        let c = ContainerIdentity::of_cgroup(&cgroup, dir.path());
        assert_eq!(
            (c.pod.as_str(), c.namespace.as_str(), c.name.as_str()),
            ("api-7d9f", "shop", "server")
        );
        assert_eq!(c.label(&cgroup), "server");
        assert_eq!(c.id.as_deref(), Some(ID));

        // Not under kubepods: no lookup, the short id is the label.
        let docker = format!("/system.slice/docker-{ID}.scope");
        let c = ContainerIdentity::of_cgroup(&docker, dir.path());
        assert_eq!((c.pod.as_str(), c.label(&docker)), ("", ID[..12].into()));
        // No container at all: the cgroup path.
        let unit = "/system.slice/api.service";
        assert_eq!(
            ContainerIdentity::of_cgroup(unit, dir.path()).label(unit),
            unit
        );
        // Kubernetes without the log links mounted: ids only.
        let c = ContainerIdentity::of_cgroup(&cgroup, Path::new("/nonexistent"));
        assert!(c.kubernetes && c.pod.is_empty());
    }
}
