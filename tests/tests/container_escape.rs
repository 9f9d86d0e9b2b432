//! A container's owner controls everything under its root, loopbpf runs as
//! the host's root: a perf map inside the container that is a symlink to a
//! host path, or a container /tmp that is a symlink to a host directory, must
//! not make loopbpf read the host's file. Node runs chrooted in its own pid
//! and mount namespaces (pid 1 inside, so its map is /tmp/perf-1.map of the
//! container); the host file names every user address with a marker, so any
//! frame named from it shows. A real map inside the container is still used.

use std::path::{Path, PathBuf};

use integration_tests::container::CONTAINED_NODE_PID;
use integration_tests::{overlaps, Run, Scenario};

/// Named on every user frame if the host file were ever read.
const MARKER: &str = "HOST_FILE_READ_THROUGH_CONTAINER";

/// A host file and a host directory of this test process, outside any root.
fn host_map() -> PathBuf {
    PathBuf::from(format!("/tmp/loopbpf-host-{}.map", std::process::id()))
}

fn host_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/loopbpf-host-{}.d", std::process::id()))
}

/// A valid perf map, root's and fresh, that covers the 47-bit user address
/// space in 4 GiB ranges: whatever JIT or native address a stack holds, a
/// lookup in it answers MARKER.
fn write_host_map(path: &Path) {
    let mut text = String::with_capacity(32768 * 48);
    for i in 0u64..32768 {
        text.push_str(&format!("{:x} ffffffff {MARKER}\n", i << 32));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// /tmp/perf-1.map in the container -> the host's file (absolute: the
/// kernel resolves it against the opener's root, the host's).
fn plant_map_symlink(root: &Path) {
    write_host_map(&host_map());
    let map = root.join(format!("tmp/perf-{CONTAINED_NODE_PID}.map"));
    std::os::unix::fs::symlink(host_map(), map).expect("symlink the map");
}

/// The container's /tmp -> a host directory holding a regular perf-1.map: the
/// map itself is no symlink, so only resolving inside the root stops it.
fn plant_tmp_symlink(root: &Path) {
    let _ = std::fs::create_dir(host_dir());
    write_host_map(&host_dir().join(format!("perf-{CONTAINED_NODE_PID}.map")));
    std::fs::remove_dir(root.join("tmp")).expect("rmdir the container's /tmp");
    std::os::unix::fs::symlink(host_dir(), root.join("tmp")).expect("symlink /tmp");
}

/// /tmp/perf-<host pid>.map on the host for the node chrooted in `root`
/// (the harness removes it after the run).
fn plant_bait_at_host_pid(root: &Path) {
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root))
        .expect("a process chrooted in the container root");
    write_host_map(Path::new(&format!("/tmp/perf-{pid}.map")));
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(host_map());
        let _ = std::fs::remove_dir_all(host_dir());
    }
}

/// Every place loopbpf wrote what it named: stdout, stderr, output files.
fn marker_seen(run: &Run) -> Vec<String> {
    let mut seen = Vec::new();
    if run.loopbpf_stdout.iter().any(|l| l.contains(MARKER)) {
        seen.push("loopbpf's stdout".to_owned());
    }
    if run.loopbpf_stderr.contains(MARKER) {
        seen.push("loopbpf's stderr".to_owned());
    }
    for entry in walk(run.output.path()) {
        if std::fs::read(&entry)
            .is_ok_and(|bytes| bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()))
        {
            seen.push(entry.display().to_string());
        }
    }
    seen
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Each of blocks.js's three blocks is reported as an episode.
fn blocks_measured(run: &Run) -> Vec<String> {
    let episodes = run.episodes();
    let blocks = run.blocks();
    if blocks.len() != 3 {
        run.fail("blocks.js did not report its three blocks");
    }
    blocks
        .iter()
        .filter(|b| !episodes.iter().any(|e| overlaps(e.span(), b.span())))
        .map(|b| format!("no episode for {}", b.name))
        .collect()
}

fn escape_refused(plant: fn(&Path), why: &str) {
    let _cleanup = Cleanup;
    let run = Scenario::new(22, "blocks.js")
        .without_perf_map()
        .chrooted(Some(plant))
        .run();
    let mut problems = blocks_measured(&run);
    // The bait works: the host file is there and names every address.
    if !host_map().is_file() && !host_dir().is_dir() {
        problems.push("the host file was not planted".into());
    }
    let seen = marker_seen(&run);
    if !seen.is_empty() {
        problems.push(format!("frames named from the host's file in {seen:?}"));
    }
    let warnings = run.warnings();
    if !warnings
        .iter()
        .any(|w| w.contains("perf map") && w.contains(why))
    {
        problems.push(format!(
            "no warning says the perf map was refused ({why}): {warnings:?}"
        ));
    }
    let refused = run.summary()["symbolizer"]["perf_maps_refused"].as_u64();
    if refused != Some(1) {
        problems.push(format!(
            "summary's symbolizer.perf_maps_refused is {refused:?}, want 1: {}",
            run.summary()
        ));
    }
    run.check(problems);
}

#[test]
fn container_map_symlinked_to_a_host_file_is_not_read() {
    // O_NOFOLLOW refuses the symlink (ELOOP).
    escape_refused(plant_map_symlink, "symbolic link");
}

#[test]
fn container_tmp_symlinked_to_a_host_directory_is_not_read() {
    // RESOLVE_IN_ROOT resolves the link inside the container, where it loops.
    escape_refused(plant_tmp_symlink, "symbolic link");
}

#[test]
fn container_map_inside_its_root_is_used() {
    let _cleanup = Cleanup;
    // The host's /tmp holds a bait at node's host pid: it must not be read.
    let run = Scenario::new(22, "blocks.js")
        .chrooted(Some(plant_bait_at_host_pid))
        .run();
    let mut problems = blocks_measured(&run);
    for block in run.blocks() {
        let named = run.episodes().into_iter().any(|e| {
            overlaps(e.span(), block.span())
                && e.top_frame
                    .as_deref()
                    .is_some_and(|f| f.starts_with(&block.name))
        });
        if !named {
            problems.push(format!("no episode of {} names it on top", block.name));
        }
    }
    let seen = marker_seen(&run);
    if !seen.is_empty() {
        problems.push(format!("frames named from a host file in {seen:?}"));
    }
    if run.summary()["symbolizer"]["perf_maps_refused"].as_u64() != Some(0) {
        problems.push(format!("a perf map was refused: {}", run.summary()));
    }
    run.check(problems);
}
