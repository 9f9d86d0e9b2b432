//! Exporters: the same reports as text for a terminal, as JSON lines for
//! machines, and each episode's stacks as files: folded stacks, an SVG
//! flamegraph and a pprof profile, all rendered from one [`common::Profile`].
pub mod breakdown;
pub mod common;
pub mod folded;
pub mod frames;
pub mod html;
pub mod json;
pub mod pool_report;
pub mod pprof;
pub mod report;
pub mod svg;
pub mod text;

use std::path::{Path, PathBuf};

use common::{ExportError, Format, Profile};

/// The files `--formats` chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FileFormat {
    /// `ID.folded`: flamegraph.pl, inferno, speedscope.
    Folded,
    /// `ID.svg`: an interactive flamegraph for a browser.
    Svg,
    /// `ID.pb.gz`: pprof (go tool pprof, Parca, Pyroscope).
    Pprof,
}

/// What `--formats` writes unless told otherwise.
pub const DEFAULT_FORMATS: &str = "folded,svg";

impl FileFormat {
    pub fn ext(self) -> &'static str {
        match self {
            FileFormat::Folded => folded::Folded::EXT,
            FileFormat::Svg => svg::Svg::EXT,
            FileFormat::Pprof => pprof::Pprof::EXT,
        }
    }

    pub fn render(self, p: &Profile) -> Result<Vec<u8>, ExportError> {
        match self {
            FileFormat::Folded => folded::Folded::render(p),
            FileFormat::Svg => svg::Svg::render(p),
            FileFormat::Pprof => pprof::Pprof::render(p),
        }
    }
}

/// Every chosen format of a profile, rendered: `(file name, bytes)`, and
/// the first error (a format that fails does not stop the others).
pub fn render_all(
    p: &Profile,
    formats: &[FileFormat],
) -> (Vec<(String, Vec<u8>)>, Option<ExportError>) {
    let mut files = Vec::new();
    let mut error = None;
    for f in formats {
        match f.render(p) {
            Ok(bytes) => files.push((format!("{}.{}", p.id, f.ext()), bytes)),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    (files, error)
}

/// What was written for an episode: the paths, and the first error.
#[derive(Debug, Default)]
pub struct Written {
    pub paths: Vec<PathBuf>,
    pub error: Option<ExportError>,
    /// The files, in place but not yet synced: see [`Written::sync`].
    unsynced: Vec<std::fs::File>,
}

impl Written {
    /// Syncs the files to disk; called once the episode has been reported,
    /// so its line does not wait for the disk.
    pub fn sync(self) {
        for f in self.unsynced {
            if let Err(e) = f.sync_data() {
                log::debug!("syncing an episode file failed: {e}");
            }
        }
    }

    pub fn folded(&self) -> Option<PathBuf> {
        self.paths
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "folded"))
            .cloned()
    }
}

/// Writes every chosen format of a profile into `dir`.
pub fn write_all(dir: &Path, p: &Profile, formats: &[FileFormat]) -> Written {
    let (files, mut error) = render_all(p, formats);
    let mut paths = Vec::new();
    let mut unsynced = Vec::new();
    for (name, bytes) in files {
        match common::write_file_sync_later(dir, &name, &bytes) {
            Ok((path, file)) => {
                paths.push(path);
                unsynced.push(file);
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    Written {
        paths,
        error,
        unsynced,
    }
}
