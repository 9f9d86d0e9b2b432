//! Names JavaScript frames from V8's own memory, with no node flags: the
//! JSFunction a frame holds at `fp + off_fp_function`, its SharedFunctionInfo
//! (name, start position) and Script (file, line ends), laid out as the
//! binary's `v8dbg_*` postmortem symbols say.
//!
//! Everything the target controls is hostile: a read that fails or an object
//! whose map says it is not what was expected names the frame `[js unknown]`,
//! never another function.

pub mod heap;
pub mod layout;
pub mod memory;
pub mod walk;

use std::collections::HashMap;
use std::sync::Arc;

pub use layout::{Layout, LayoutError, Symbols};
pub use memory::{Memory, MemoryError, ProcessMemory};

use heap::{smi, Heap, HeapError};
use memory::Budgeted;

/// Bytes one frame's function, name and script may read.
pub const FRAME_BUDGET: usize = 4096;
/// Bytes a line computation may read (once per function: it is cached).
pub const LINE_BUDGET: usize = heap::MAX_SOURCE_SCAN_BYTES as usize + 4096;
/// Functions whose names are kept; beyond this the oldest half is dropped.
pub const CACHE_CAPACITY: usize = 8192;
/// ScopeInfo words inspected for the function name and position.
const SCOPE_INFO_SLOTS: u64 = 24;

/// One JavaScript function, as its SharedFunctionInfo describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsFunction {
    /// `(anonymous)` when V8 has no name for it.
    pub name: String,
    /// File path or URL; empty for code without a script name (eval).
    pub script: String,
    /// 1-based line and column of the function's start, when readable.
    pub position: Option<(u32, u32)>,
}

impl std::fmt::Display for JsFunction {
    /// `name file:line:column`, the shape of a perf-map entry after
    /// `normalize_v8_name`, so both sources give the same frame.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if !self.script.is_empty() {
            write!(f, " {}", self.script)?;
            if let Some((line, column)) = self.position {
                write!(f, ":{line}:{column}")?;
            }
        }
        Ok(())
    }
}

/// What a V8 frame turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum V8Frame {
    Js(Arc<JsFunction>),
    /// A frame carrying a type marker instead of a function: exit, entry,
    /// stub, builtin and regexp frames, named by V8's frame type.
    Marker(String),
    /// JIT code whose function could not be read or did not validate.
    Unknown,
}

impl V8Frame {
    pub fn display_name(&self) -> String {
        match self {
            V8Frame::Js(function) => function.to_string(),
            V8Frame::Marker(kind) => format!("[v8] {kind}"),
            V8Frame::Unknown => "[js unknown]".to_owned(),
        }
    }
}

/// Counts shown to the user: how much of what was asked could be named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamerStats {
    pub named: u64,
    pub markers: u64,
    pub unknown: u64,
    pub cache_hits: u64,
    pub evicted: u64,
}

struct Cached {
    /// The SFI's words this entry was read from: if a GC moved the SFI and
    /// something else now lives at its address, they differ.
    name_word: u64,
    script_word: u64,
    function: Arc<JsFunction>,
    generation: u64,
}

/// Names frames of one process; keeps a bounded cache keyed by SFI address.
pub struct Namer {
    layout: Arc<Layout>,
    cache: HashMap<u64, Cached>,
    generation: u64,
    pub stats: NamerStats,
}

impl Namer {
    pub fn new(layout: Arc<Layout>) -> Self {
        Self {
            layout,
            cache: HashMap::new(),
            generation: 0,
            stats: NamerStats::default(),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Names the frame whose slots (captured at sample time) are
    /// `context_or_marker` (at fp + off_fp_context_or_frame_type) and
    /// `function` (at fp + off_fp_function). Heap objects are read from `mem`.
    pub fn name(
        &mut self,
        mem: &(impl Memory + ?Sized),
        context_or_marker: u64,
        function: u64,
    ) -> V8Frame {
        // A frame-type marker is a small integer shifted by the Smi tag size;
        // a context is a tagged heap pointer.
        if context_or_marker & 1 == 0 {
            let kind = self.layout.frame_type_name(context_or_marker >> 1);
            let frame = kind.map_or(V8Frame::Unknown, |k| V8Frame::Marker(k.to_owned()));
            match frame {
                V8Frame::Marker(_) => self.stats.markers += 1,
                _ => self.stats.unknown += 1,
            }
            return frame;
        }
        match self.function(mem, function) {
            Ok(f) => {
                self.stats.named += 1;
                V8Frame::Js(f)
            }
            Err(error) => {
                log::trace!("v8 frame unnamed: {error}");
                self.stats.unknown += 1;
                V8Frame::Unknown
            }
        }
    }

    fn function(
        &mut self,
        mem: &(impl Memory + ?Sized),
        function: u64,
    ) -> Result<Arc<JsFunction>, HeapError> {
        let l = Arc::clone(&self.layout);
        let budgeted = Budgeted::new(mem, FRAME_BUDGET);
        let heap = Heap {
            layout: &l,
            mem: &budgeted,
        };
        let js_function = heap.typed("function", function, l.js_function_types)?;
        let sfi_tagged = heap.word(js_function + l.js_function_shared)?;
        let sfi = heap.typed("shared function info", sfi_tagged, (l.sfi_type, l.sfi_type))?;
        let name_word = heap.word(sfi + l.sfi_name_or_scope_info)?;
        let script_word = heap.word(sfi + l.sfi_script_or_debug_info)?;
        self.generation += 1;
        if let Some(hit) = self.cache.get_mut(&sfi) {
            if hit.name_word == name_word && hit.script_word == script_word {
                hit.generation = self.generation;
                self.stats.cache_hits += 1;
                return Ok(Arc::clone(&hit.function));
            }
        }
        let (name, start) = self.read_name(&heap, name_word)?;
        let (script, position) =
            match heap.typed("script", script_word, (l.script_type, l.script_type)) {
                Ok(script) => {
                    let file = heap
                        .word(script + l.script_name)
                        .and_then(|w| heap.string(w))
                        .unwrap_or_default();
                    let lines = Budgeted::new(mem, LINE_BUDGET);
                    let line_heap = Heap {
                        layout: &l,
                        mem: &lines,
                    };
                    let position =
                        start.and_then(|pos| line_heap.line_column(script, pos).ok().flatten());
                    (file, position)
                }
                // Builtins and API functions have no script.
                Err(_) => (String::new(), None),
            };
        let function = Arc::new(JsFunction {
            name: sanitize(&name),
            script: sanitize(&script),
            position,
        });
        self.insert(sfi, name_word, script_word, Arc::clone(&function));
        Ok(function)
    }

    /// The function's name and start position, from a name string or a ScopeInfo.
    fn read_name<M: Memory + ?Sized>(
        &self,
        heap: &Heap<'_, M>,
        word: u64,
    ) -> Result<(String, Option<u64>), HeapError> {
        let l = &self.layout;
        let (addr, ty) = heap.object("function name", word)?;
        if heap.is_string_type(ty) {
            let name = heap.string(word)?;
            return Ok((anonymous_if_empty(name), None));
        }
        if ty != l.scope_info_type {
            return Err(HeapError::WrongType {
                what: "function name",
                addr,
                found: ty,
            });
        }
        // ScopeInfo's fields after the map, as words; its variable-length
        // layout has no metadata beyond the first indexes.
        let data = addr + l.heap_object_map + 8;
        let mut raw = vec![0u8; (SCOPE_INFO_SLOTS * 8) as usize];
        heap.mem.read(data, &mut raw)?;
        let slot = |i: u64| -> u64 {
            let at = (i * 8) as usize;
            u64::from_le_bytes(raw[at..at + 8].try_into().unwrap_or([0; 8]))
        };
        let locals = smi(slot(l.scope_info_ncontextlocals)).unwrap_or(-1);
        if !(0..=64).contains(&locals) {
            return Err(HeapError::Length {
                what: "scope info locals",
                len: locals as u64,
            });
        }
        // Since V8 12.8 the position sits at fixed slots 3 and 4.
        let fixed_position = l.version >= (12, 8);
        let mut position = None;
        if fixed_position {
            if let (Some(start), Some(end)) = (smi(slot(3)), smi(slot(4))) {
                if 0 <= start && start <= end {
                    position = Some(start as u64);
                }
            }
        }
        let mut name = None;
        let mut previous = None;
        for i in (l.scope_info_first_vars + 2 * locals as u64)..SCOPE_INFO_SLOTS {
            let word = slot(i);
            if name.is_none() && heap::is_heap_object(word) {
                if let Ok((_, ty)) = heap.object("scope name", word) {
                    if heap.is_string_type(ty) {
                        name = Some(heap.string(word)?);
                    }
                }
            }
            if !fixed_position && name.is_some() {
                // Before 12.8: the position pair follows the name as two Smis.
                if let (Some(start), Some(end)) = (previous.and_then(smi), smi(word)) {
                    if 0 <= start && start < end {
                        position = Some(start as u64);
                        break;
                    }
                }
            }
            if fixed_position && name.is_some() {
                break;
            }
            previous = Some(word);
        }
        Ok((anonymous_if_empty(name.unwrap_or_default()), position))
    }

    fn insert(&mut self, sfi: u64, name_word: u64, script_word: u64, function: Arc<JsFunction>) {
        if self.cache.len() >= CACHE_CAPACITY {
            // Drop the least recently used half: one sort per
            // CACHE_CAPACITY/2 misses keeps the cost per miss constant.
            let mut ages: Vec<u64> = self.cache.values().map(|c| c.generation).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            let before = self.cache.len();
            self.cache.retain(|_, c| c.generation > cutoff);
            self.stats.evicted += (before - self.cache.len()) as u64;
        }
        self.cache.insert(
            sfi,
            Cached {
                name_word,
                script_word,
                function,
                generation: self.generation,
            },
        );
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

fn anonymous_if_empty(name: String) -> String {
    if name.is_empty() {
        "(anonymous)".to_owned()
    } else {
        name
    }
}

/// Frame names go into folded-stack lines: no `;`, no control characters.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c == ';' || c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
