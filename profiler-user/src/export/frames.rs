//! Named frames of sampled stacks: the one most samples were in, and the
//! addresses shown when naming failed outright. Shared by episodes, threadpool
//! saturations and the breakdown.
use std::collections::HashMap;

use crate::symbolize::{Frame, FrameKind};

/// The frame most samples were in.
#[derive(Clone, Debug)]
pub struct HotFrame {
    pub name: String,
    pub kind: FrameKind,
    /// Samples (or, with off-CPU time, nanoseconds) whose stack has this frame
    /// as its leaf-most JS frame.
    pub samples: u64,
    pub share: f64,
}

/// Frames for when symbolization failed outright: addresses, root first.
pub(crate) fn unnamed(user: &[u64], kernel: &[u64]) -> Vec<Frame> {
    let user = user.iter().rev().map(|&a| Frame {
        name: if a == crate::unwind::TRUNCATED {
            "[truncated]".to_owned()
        } else {
            format!("[unknown] {a:#x}")
        },
        kind: FrameKind::Unknown,
    });
    let kernel = kernel.iter().rev().map(|a| Frame {
        name: format!("[unknown] [kernel] {a:#x}"),
        kind: FrameKind::Kernel,
    });
    user.chain(kernel).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hottest_frame_is_the_leaf_most_js_frame() {
        let main = Frame::new("main /a.js:1:1", FrameKind::Js);
        let spin = Frame::new("spin /a.js:5:3", FrameKind::Js);
        let stacks = vec![
            (
                vec![
                    Frame::new("uv_run", FrameKind::Native),
                    main.clone(),
                    spin.clone(),
                    Frame::new("memcpy", FrameKind::Native),
                ],
                8,
            ),
            (
                vec![Frame::new("uv_run", FrameKind::Native), main.clone()],
                2,
            ),
        ];
        let hot = hottest_frame(&stacks).unwrap();
        assert_eq!(hot.name, "spin /a.js:5:3");
        assert_eq!(hot.samples, 8);
        assert!((hot.share - 0.8).abs() < 1e-9);
    }

    #[test]
    fn application_code_wins_over_node_internals_and_builtins() {
        let spin = Frame::new("spin /a.js:5:3", FrameKind::Js);
        let stacks = vec![(
            vec![
                spin.clone(),
                Frame::new("get node:internal/bootstrap/node:437:8", FrameKind::Js),
                Frame::new("[builtin] LoadIC", FrameKind::Js),
            ],
            4,
        )];
        assert_eq!(hottest_frame(&stacks).unwrap().name, "spin /a.js:5:3");
        let internal_only = vec![(
            vec![Frame::new(
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
                Frame::new("uv_run", FrameKind::Native),
                Frame::new("do_sys_poll", FrameKind::Kernel),
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
