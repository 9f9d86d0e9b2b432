//! Which frames of an unwound stack are V8's, and their names: the frame
//! slots come from the stack copied at sample time, the heap objects they
//! point to from the live process.

use crate::unwind::{StackSnapshot, UnwoundFrame, UnwoundStack};

use super::{Layout, Memory, Namer, V8Frame};

/// Where a pc lies, as far as V8 is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeKind {
    /// Anonymous executable memory: V8's JIT code (Sparkplug, Maglev,
    /// TurboFan, regexp) — JavaScript even when it cannot be named.
    Jit,
    /// The node binary's embedded builtins, the interpreter among them.
    Builtin,
    Other,
}

#[derive(Clone, Debug)]
struct Region {
    start: u64,
    end: u64,
    kind: RegionKind,
}

#[derive(Clone, Debug)]
enum RegionKind {
    Anonymous,
    Binary { offset: u64 },
}

/// Executable mappings of one process, from `/proc/PID/maps`.
#[derive(Clone, Debug, Default)]
pub struct CodeMap {
    regions: Vec<Region>,
    builtins: Option<(u64, u64)>,
}

/// `/proc/PID/maps` is text the kernel writes; still, bound what is parsed.
const MAX_MAPS_LINES: usize = 1 << 16;

impl CodeMap {
    /// `binary` is the path the node binary shows in the maps (its builtins
    /// are in the layout as file offsets).
    pub fn parse(maps: &str, binary: &str, layout: Option<&Layout>) -> Self {
        let mut regions = Vec::new();
        for line in maps.lines().take(MAX_MAPS_LINES) {
            let mut fields = line.splitn(6, ' ');
            let (Some(range), Some(perms), Some(offset)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if perms.as_bytes().get(2) != Some(&b'x') {
                continue;
            }
            let path = fields.nth(2).unwrap_or("").trim_start();
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(offset)) = (
                u64::from_str_radix(start, 16),
                u64::from_str_radix(end, 16),
                u64::from_str_radix(offset, 16),
            ) else {
                continue;
            };
            let kind = if path.is_empty() {
                RegionKind::Anonymous
            } else if path == binary {
                RegionKind::Binary { offset }
            } else {
                continue;
            };
            regions.push(Region { start, end, kind });
        }
        regions.sort_by_key(|r| r.start);
        Self {
            regions,
            builtins: layout.and_then(|l| l.builtins),
        }
    }

    pub fn kind(&self, pc: u64) -> CodeKind {
        let index = self.regions.partition_point(|r| r.start <= pc);
        let Some(region) = index.checked_sub(1).and_then(|i| self.regions.get(i)) else {
            return CodeKind::Other;
        };
        if pc >= region.end {
            return CodeKind::Other;
        }
        match region.kind {
            RegionKind::Anonymous => CodeKind::Jit,
            RegionKind::Binary { offset } => {
                let file_offset = pc - region.start + offset;
                match self.builtins {
                    Some((lo, hi)) if (lo..hi).contains(&file_offset) => CodeKind::Builtin,
                    _ => CodeKind::Other,
                }
            }
        }
    }
}

/// Follows saved frame pointers through the copy: each frame's return
/// address at fp + 8 and its caller's fp at fp. Stops where the copy ends,
/// the chain does not move up the stack, or after `max_frames`.
pub fn walk_frame_pointers(
    snapshot: &StackSnapshot,
    pc: u64,
    fp: u64,
    max_frames: usize,
) -> Vec<UnwoundFrame> {
    let mut frames = vec![UnwoundFrame { pc, fp: Some(fp) }];
    let mut fp = fp;
    while frames.len() < max_frames {
        let (Some(caller_fp), Some(ret)) =
            (snapshot.read_u64(fp), snapshot.read_u64(fp.wrapping_add(8)))
        else {
            break;
        };
        if ret == 0 {
            break;
        }
        frames.push(UnwoundFrame {
            pc: ret - 1,
            fp: Some(caller_fp),
        });
        if caller_fp <= fp {
            break;
        }
        fp = caller_fp;
    }
    frames
}

/// The slots of the frame at `fp`, as captured: (context or marker, function).
fn slots(layout: &Layout, snapshot: &StackSnapshot, fp: u64) -> Option<(u64, u64)> {
    let at = |offset: i64| fp.checked_add_signed(offset);
    let marker = snapshot.read_u64(at(layout.fp_context_or_frame_type)?)?;
    let function = snapshot.read_u64(at(layout.fp_function)?)?;
    Some((marker, function))
}

/// Names the V8 frames of `stack` (leaf first), `None` for frames that are
/// not V8's. A JIT frame whose slots were not captured is `[js unknown]`.
pub fn name_stack(
    namer: &mut Namer,
    heap: &(impl Memory + ?Sized),
    code: &CodeMap,
    stack: &UnwoundStack,
) -> Vec<Option<V8Frame>> {
    stack
        .frames
        .iter()
        .map(|frame| {
            let kind = code.kind(frame.pc);
            if kind == CodeKind::Other {
                return None;
            }
            let slots = frame
                .fp
                .and_then(|fp| slots(namer.layout(), &stack.snapshot, fp));
            match (kind, slots) {
                (_, Some((marker, function))) => Some(namer.name(heap, marker, function)),
                (CodeKind::Jit, None) => Some(V8Frame::Unknown),
                _ => None,
            }
        })
        .collect()
}
