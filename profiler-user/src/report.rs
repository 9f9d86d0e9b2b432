//! A symbolized episode, ready for the exporters: frames named, the hottest
//! JavaScript frame found, the thread's role known.
use std::{collections::HashMap, path::PathBuf};

use crate::{
    episode::Episode,
    loop_stats::LoopFigures,
    probes::KernelCounters,
    symbolize::{Frame, FrameKind},
    target::ThreadRole,
};

#[derive(Clone, Debug)]
pub struct HotFrame {
    pub name: String,
    pub kind: FrameKind,
    /// Samples whose stack contains this frame as its leaf-most JS frame.
    pub samples: u64,
    pub share: f64,
}

#[derive(Clone, Debug)]
pub struct EpisodeReport {
    pub episode: Episode,
    pub role: ThreadRole,
    pub thread_name: Option<String>,
    /// Root first, with the number of samples that had this stack.
    pub stacks: Vec<(Vec<Frame>, u64)>,
    pub top_frame: Option<HotFrame>,
    pub folded_path: Option<PathBuf>,
    pub folded_error: Option<String>,
}

impl EpisodeReport {
    pub fn new(
        episode: Episode,
        role: ThreadRole,
        thread_name: Option<String>,
        stacks: Vec<(Vec<Frame>, u64)>,
    ) -> Self {
        let top_frame = hottest_frame(&stacks);
        EpisodeReport {
            episode,
            role,
            thread_name,
            stacks,
            top_frame,
            folded_path: None,
            folded_error: None,
        }
    }
}

/// The frame most samples were "in": per stack the leaf-most frame of the
/// application's own JavaScript, falling back to Node's internal JavaScript
/// (`node:…`), then to the leaf when no JS function is on the stack (native
/// code, GC, syscalls). V8 builtins and stubs (`[builtin] …`) are skipped: the
/// JS function that called them is what a developer can change.
pub fn hottest_frame(stacks: &[(Vec<Frame>, u64)]) -> Option<HotFrame> {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let mut by_frame: HashMap<&Frame, u64> = HashMap::new();
    let mut any_js = false;
    let js_function = |f: &&Frame| f.kind == FrameKind::Js && !f.name.starts_with('[');
    for (frames, n) in stacks {
        let app = frames
            .iter()
            .rev()
            .filter(js_function)
            .find(|f| !f.name.contains(" node:"));
        if let Some(js) = app.or_else(|| frames.iter().rev().find(js_function)) {
            any_js = true;
            *by_frame.entry(js).or_default() += n;
        }
    }
    if !any_js {
        for (frames, n) in stacks {
            if let Some(leaf) = frames.last() {
                *by_frame.entry(leaf).or_default() += n;
            }
        }
    }
    let (frame, samples) = by_frame
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.name.cmp(&a.0.name)))?;
    Some(HotFrame {
        name: frame.name.clone(),
        kind: frame.kind,
        samples,
        share: if total == 0 {
            0.0
        } else {
            samples as f64 / total as f64
        },
    })
}

/// Figures of one loop thread at the end of a run.
#[derive(Clone, Debug)]
pub struct LoopSummary {
    pub tid: u32,
    pub role: ThreadRole,
    pub figures: LoopFigures,
}

/// Everything loopbpf measured of one process, at exit.
#[derive(Clone, Debug)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    /// Main loop first.
    pub loops: Vec<LoopSummary>,
    pub samples: u64,
    pub episodes_reported: u64,
    pub exited: bool,
    pub kernel: KernelCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, kind: FrameKind) -> Frame {
        Frame {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn hottest_frame_is_the_leaf_most_js_frame() {
        let main = f("main /a.js:1:1", FrameKind::Js);
        let spin = f("spin /a.js:5:3", FrameKind::Js);
        let stacks = vec![
            (
                vec![
                    f("uv_run", FrameKind::Native),
                    main.clone(),
                    spin.clone(),
                    f("memcpy", FrameKind::Native),
                ],
                8,
            ),
            (vec![f("uv_run", FrameKind::Native), main.clone()], 2),
        ];
        let hot = hottest_frame(&stacks).unwrap();
        assert_eq!(hot.name, "spin /a.js:5:3");
        assert_eq!(hot.samples, 8);
        assert!((hot.share - 0.8).abs() < 1e-9);
    }

    #[test]
    fn application_code_wins_over_node_internals_and_builtins() {
        let spin = f("spin /a.js:5:3", FrameKind::Js);
        let stacks = vec![(
            vec![
                spin.clone(),
                f("get node:internal/bootstrap/node:437:8", FrameKind::Js),
                f("[builtin] LoadIC", FrameKind::Js),
            ],
            4,
        )];
        assert_eq!(hottest_frame(&stacks).unwrap().name, "spin /a.js:5:3");
        let internal_only = vec![(
            vec![f(
                "processTimers node:internal/timers:504:25",
                FrameKind::Js,
            )],
            1,
        )];
        assert_eq!(
            hottest_frame(&internal_only).unwrap().name,
            "processTimers node:internal/timers:504:25"
        );
    }

    #[test]
    fn without_js_frames_the_leaf_is_hottest() {
        let stacks = vec![(
            vec![
                f("uv_run", FrameKind::Native),
                f("do_sys_poll", FrameKind::Kernel),
            ],
            3,
        )];
        let hot = hottest_frame(&stacks).unwrap();
        assert_eq!(
            (hot.name.as_str(), hot.kind),
            ("do_sys_poll", FrameKind::Kernel)
        );
    }

    #[test]
    fn no_samples_no_hottest_frame() {
        assert!(hottest_frame(&[]).is_none());
    }
}
