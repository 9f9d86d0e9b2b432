//! JavaScript frames named from V8's own memory (crate::v8), with no node
//! flags: the slots each sample carries (the words at fp-16 and fp-8, taken
//! when it was taken) point at the frame's function, whose name, script and
//! line are read from the live process and cached.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use crate::v8::walk::{CodeKind, CodeMap};
use crate::v8::{Layout, Namer, ProcessMemory, Symbols, V8Frame};

use super::{Frame, FrameKind, StackRequest};

/// The slots samples carry, relative to the frame pointer.
const CAPTURED_FUNCTION: i64 = -16;
const CAPTURED_CONTEXT: i64 = -8;
/// `LOOPBPF_V8_FRAMES=off` names JavaScript frames from perf maps only (for
/// `cargo xtask bench`'s with/without, and as an escape hatch).
pub const V8_FRAMES_ENV: &str = "LOOPBPF_V8_FRAMES";

/// V8's frame type of native regular-expression code (`v8dbg_frametype_*`).
const IRREGEXP_FRAME: &str = "IrregexpFrame";

/// Layouts per node binary, keyed by (device, inode): read once, however
/// many processes run it. A binary that cannot be read is remembered too,
/// so its one warning is not repeated.
#[derive(Default)]
pub(super) struct V8Binaries {
    by_file: HashMap<(u64, u64), Option<Arc<Layout>>>,
}

/// V8 state of one process: `None` when its binary gives no usable layout.
pub(super) struct ProcessV8 {
    namer: Option<Namer>,
    code: CodeMap,
    exe: String,
}

impl V8Binaries {
    pub(super) fn process(&mut self, pid: u32) -> ProcessV8 {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let off = std::env::var_os(V8_FRAMES_ENV).is_some_and(|v| v == "off");
        let layout = if off { None } else { self.layout(pid, &exe) };
        ProcessV8 {
            namer: layout.map(Namer::new),
            code: CodeMap::default(),
            exe,
        }
    }

    fn layout(&mut self, pid: u32, exe: &str) -> Option<Arc<Layout>> {
        let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        self.by_file
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| match read_layout(pid) {
                Ok(layout) => Some(Arc::new(layout)),
                Err(reason) => {
                    log::warn!(
                        "JavaScript frames of {exe} (pid {pid}) are named from perf maps only: {reason}"
                    );
                    None
                }
            })
            .clone()
    }
}

fn read_layout(pid: u32) -> Result<Layout, String> {
    let symbols = Symbols::read_process(pid).map_err(|e| e.to_string())?;
    let layout = Layout::from_symbols(&symbols).map_err(|e| e.to_string())?;
    if layout.fp_function != CAPTURED_FUNCTION
        || layout.fp_context_or_frame_type != CAPTURED_CONTEXT
    {
        return Err(format!(
            "its V8 keeps a frame's function at fp{:+} and context at fp{:+}, samples carry fp-16 and fp-8",
            layout.fp_function, layout.fp_context_or_frame_type
        ));
    }
    Ok(layout)
}

impl ProcessV8 {
    /// What the namer did so far and how many functions it caches.
    pub(super) fn namer_stats(&self) -> Option<(crate::v8::NamerStats, usize)> {
        self.namer.as_ref().map(|n| (n.stats, n.cached()))
    }

    /// Re-reads the process's executable mappings (new JIT code pages);
    /// keeps the last ones if the process is gone.
    pub(super) fn refresh(&mut self, pid: u32) {
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            let layout = self.namer.as_ref().map(Namer::layout);
            self.code = CodeMap::parse(&maps, &self.exe, layout);
        }
    }

    /// Renames the V8 frames of `frames` (root first, user frames first) of
    /// `stack`. A frame the perf map named keeps that name unless V8 names
    /// its function; JIT code nobody can name becomes `[js unknown]`.
    pub(super) fn name(&mut self, pid: u32, stack: &StackRequest, frames: &mut [Frame]) {
        let Some(namer) = self.namer.as_mut() else {
            return;
        };
        let memory = ProcessMemory::new(pid);
        let user = stack.user.len().min(frames.len());
        for (depth, &[function, context]) in stack.v8.iter().enumerate().take(user) {
            let pc = stack.user[depth];
            let lookup = if depth == 0 { pc } else { pc.saturating_sub(1) };
            let kind = self.code.kind(lookup);
            if kind == CodeKind::Other {
                continue;
            }
            let frame = &mut frames[user - 1 - depth];
            let from_perf_map = frame.kind == FrameKind::Js && !frame.name.starts_with("[unknown]");
            match (namer.name(&memory, context, function), kind) {
                // A function with no script is one of V8's own (RegExp's
                // `test`, Array's `map`): shown as the perf map shows builtins,
                // so the JavaScript that called it stays the top frame. Code
                // of `eval` or `new Function` has a script with no name, and
                // a position in it.
                (V8Frame::Js(f), _) if f.script.is_empty() && f.position.is_none() => {
                    *frame = Frame::new(format!("[builtin] {}", f.name), FrameKind::Js);
                }
                (V8Frame::Js(f), _) => *frame = Frame::new(f.to_string(), FrameKind::Js),
                // Native code of a regular expression: its frame holds the
                // subject string, not the regexp, so the pattern is not told (a perf
                // map names it with its pattern).
                (V8Frame::Marker(m), CodeKind::Jit) if m == IRREGEXP_FRAME && !from_perf_map => {
                    *frame = Frame::new("[regexp]", FrameKind::Js);
                }
                (V8Frame::Marker(m), CodeKind::Jit) if !from_perf_map => {
                    *frame = Frame::new(format!("[v8] {m}"), FrameKind::Js);
                }
                (V8Frame::Unknown, CodeKind::Jit) if !from_perf_map => {
                    *frame = Frame::new("[js unknown]", FrameKind::Js);
                }
                // Builtins keep their own symbol (Builtins_JsonParse, …).
                _ => {}
            }
        }
    }
}
