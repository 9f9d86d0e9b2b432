//! Folded stacks (`root;…;leaf COUNT` per line), the format flamegraph.pl,
//! inferno and speedscope read. One file per episode, written atomically
//! (temp file, then rename) so a reader or a crash never sees half a file.
//! The output directory is not followed through a symlink and must be root's
//! or the sudo user's (see `secure_fs`, used by `common::write_file`).
use std::path::{Path, PathBuf};

use super::common::{self, ExportError, Format, Profile};
use crate::{
    export::{pool_report::PoolReport, report::EpisodeReport},
    symbolize::Frame,
};

pub type FoldedError = ExportError;

pub struct Folded;

impl Format for Folded {
    const NAME: &'static str = "folded";
    const EXT: &'static str = "folded";
    fn render(p: &Profile) -> Result<Vec<u8>, ExportError> {
        Ok(render_profile(p).into_bytes())
    }
}

/// Folded text of a profile. On-CPU stacks count samples; off-CPU stacks are
/// converted to samples at the sampling frequency (time × Hz) so widths in a
/// flamegraph are proportional to time, and end in a marker leaf: `[off-cpu]`
/// for time asleep, `[runqueue]` for time waiting for a CPU (alone on its line
/// when the thread was preempted: no stack is taken then). Stacks with no
/// frames at all are kept as `[no stack]` so counts still add up.
pub fn render_profile(p: &Profile) -> String {
    let mut out = String::new();
    for s in &p.stacks {
        let frames: Vec<Frame> = p.frames(s).map(|f| f.into_owned()).collect();
        line(&mut out, &frames, s.state.marker(), s.weight);
    }
    out
}

/// An episode's folded text (with sampling off, off-CPU time is written in
/// milliseconds).
pub fn render(r: &EpisodeReport, frequency_hz: u64) -> String {
    render_profile(&Profile::of_episode(r, frequency_hz))
}

fn line(out: &mut String, frames: &[Frame], leaf: Option<&str>, n: u64) {
    // A preempted thread's runqueue time has no stack (the kernel side does
    // not walk one): the marker alone is its line.
    match (frames.is_empty(), leaf) {
        (true, Some(leaf)) => {
            out.push_str(&format!("{leaf} {n}\n"));
            return;
        }
        (true, None) => out.push_str("[no stack]"),
        _ => {}
    }
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        // Frame names are sanitised by the symbolizer; guard the format anyway.
        out.extend(
            f.name
                .chars()
                .map(|c| if c == ';' || c == '\n' { ':' } else { c }),
        );
    }
    if let Some(leaf) = leaf {
        out.push(';');
        out.push_str(leaf);
    }
    out.push_str(&format!(" {n}\n"));
}

pub fn file_name(r: &EpisodeReport) -> String {
    let e = &r.episode;
    format!("{}-{}-{}.folded", e.pid, e.tid, e.start_ns)
}

pub fn write(dir: &Path, r: &EpisodeReport, frequency_hz: u64) -> Result<PathBuf, FoldedError> {
    common::write_file(dir, &file_name(r), render(r, frequency_hz).as_bytes())
}

/// A threadpool saturation's worker stacks, under a `[threadpool]` root so
/// they never mix with a loop's in a merged flamegraph.
pub fn render_pool(r: &PoolReport) -> String {
    // The frequency only converts off-CPU time, which pool profiles lack.
    render_profile(&Profile::of_pool(r, 0))
}

pub fn pool_file_name(r: &PoolReport) -> String {
    format!("{}-threadpool-{}.folded", r.episode.pid, r.episode.start_ns)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{
        assembly::episode::Episode, export::breakdown::OffCpuStack, kernel::target::ThreadRole,
        symbolize::FrameKind,
    };

    fn report(stacks: Vec<(Vec<Frame>, u64)>, off_cpu: Vec<OffCpuStack>) -> EpisodeReport {
        let episode = Episode {
            pid: 7,
            tid: 8,
            seq: 1,
            start_ns: 100,
            end_ns: 200,
            busy_ns: 100,
            samples: stacks.iter().map(|s| s.1).sum(),
            samples_without_stack: 0,
            stacks: vec![],
            blocked_ns: 0,
            runq_ns: 0,
            off_cpu_stacks: vec![],
            ongoing: false,
        };
        EpisodeReport::new(episode, ThreadRole::Main, None, stacks, off_cpu)
    }

    fn f(name: &str) -> Frame {
        Frame::new(name, FrameKind::Js)
    }

    #[test]
    fn lines_are_root_first_with_count_last() {
        let mut r = report(
            vec![(vec![f("main"), f("spin /a.js:1:1")], 5), (vec![], 1)],
            vec![],
        );
        r.episode.samples_without_stack = 2;
        assert_eq!(
            render(&r, 199),
            "main;spin /a.js:1:1 5\n[no stack] 1\n[stack not kept] 2\n"
        );
    }

    #[test]
    fn off_cpu_time_becomes_samples_with_a_marker_leaf() {
        let off = OffCpuStack {
            frames: vec![f("main"), f("wait")],
            blocked_ns: 300_000_000,
            runq_ns: 10_000_000,
        };
        let r = report(vec![], vec![off]);
        // 300 ms at 100 Hz is 30 samples' worth; 10 ms is 1.
        assert_eq!(
            render(&r, 100),
            "main;wait;[off-cpu] 30\nmain;wait;[runqueue] 1\n"
        );
        // Without sampling, milliseconds.
        assert_eq!(
            render(&r, 0),
            "main;wait;[off-cpu] 300\nmain;wait;[runqueue] 10\n"
        );
    }

    #[test]
    fn preempted_runqueue_time_is_a_line_of_its_own() {
        let off = OffCpuStack {
            frames: vec![],
            blocked_ns: 0,
            runq_ns: 20_000_000,
        };
        assert_eq!(render(&report(vec![], vec![off]), 100), "[runqueue] 2\n");
    }

    #[test]
    fn separators_in_names_cannot_break_the_format() {
        assert_eq!(
            render(&report(vec![(vec![f("a;b\nc")], 1)], vec![]), 99),
            "a:b:c 1\n"
        );
    }

    #[test]
    fn episodes_get_distinct_files_and_no_temp_file_remains() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), &report(vec![(vec![f("x")], 1)], vec![]), 99).unwrap();
        let mut r = report(vec![(vec![f("y")], 2)], vec![]);
        r.episode.start_ns = 101;
        let b = write(dir.path(), &r, 99).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read_to_string(&b).unwrap(), "y 2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// `--output` planted as a symlink to a directory root must not write in.
    #[test]
    fn a_symlinked_output_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("etc");
        fs::create_dir(&target).unwrap();
        let out = dir.path().join("loopbpf-out");
        std::os::unix::fs::symlink(&target, &out).unwrap();
        let err = write(&out, &report(vec![(vec![f("x")], 1)], vec![]), 99).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let err = write(&blocker.join("sub"), &report(vec![], vec![]), 99).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
