//! Folded stacks (`root;…;leaf COUNT` per line), the format flamegraph.pl,
//! inferno and speedscope read. One file per episode, written atomically
//! (temp file, then rename) so a reader or a crash never sees half a file.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use crate::{report::EpisodeReport, symbolize::Frame};

#[derive(Debug, thiserror::Error)]
pub enum FoldedError {
    #[error("creating output directory {path} failed: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing folded stacks to {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Folded text of root-first stacks; stacks with no frames at all are kept as
/// `[no stack]` so counts still add up to the episode's samples.
pub fn render(stacks: &[(Vec<Frame>, u64)], samples_without_stack: u64) -> String {
    let mut out = String::new();
    for (frames, n) in stacks {
        if frames.is_empty() {
            out.push_str("[no stack]");
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
        out.push_str(&format!(" {n}\n"));
    }
    if samples_without_stack > 0 {
        out.push_str(&format!("[stack not kept] {samples_without_stack}\n"));
    }
    out
}

pub fn file_name(r: &EpisodeReport) -> String {
    let e = &r.episode;
    format!("{}-{}-{}.folded", e.pid, e.tid, e.start_ns)
}

pub fn write(dir: &Path, r: &EpisodeReport) -> Result<PathBuf, FoldedError> {
    fs::create_dir_all(dir).map_err(|source| FoldedError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(file_name(r));
    let tmp = dir.join(format!(".{}.tmp", file_name(r)));
    let text = render(&r.stacks, r.episode.samples_without_stack);
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_data()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(FoldedError::Write { path, source });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{episode::Episode, symbolize::FrameKind, target::ThreadRole};

    fn report(stacks: Vec<(Vec<Frame>, u64)>) -> EpisodeReport {
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
            ongoing: false,
        };
        EpisodeReport::new(episode, ThreadRole::Main, None, stacks)
    }

    fn f(name: &str) -> Frame {
        Frame {
            name: name.into(),
            kind: FrameKind::Js,
        }
    }

    #[test]
    fn lines_are_root_first_with_count_last() {
        let text = render(&[(vec![f("main"), f("spin /a.js:1:1")], 5), (vec![], 1)], 2);
        assert_eq!(
            text,
            "main;spin /a.js:1:1 5\n[no stack] 1\n[stack not kept] 2\n"
        );
    }

    #[test]
    fn separators_in_names_cannot_break_the_format() {
        assert_eq!(render(&[(vec![f("a;b\nc")], 1)], 0), "a:b:c 1\n");
    }

    #[test]
    fn episodes_get_distinct_files_and_no_temp_file_remains() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), &report(vec![(vec![f("x")], 1)])).unwrap();
        let mut r = report(vec![(vec![f("y")], 2)]);
        r.episode.start_ns = 101;
        let b = write(dir.path(), &r).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read_to_string(&b).unwrap(), "y 2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let err = write(&blocker.join("sub"), &report(vec![])).unwrap_err();
        assert!(err.to_string().contains("file/sub"), "{err}");
    }
}
