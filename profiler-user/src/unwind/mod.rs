//! User-stack unwinding from the copy of the stack the kernel takes with each
//! sample and off-CPU stack: unwind tables (`.eh_frame`, `.debug_frame`) for
//! native code, frame pointers for JIT code (anonymous executable memory has
//! no tables, and V8 keeps frame pointers), with samply's `framehop`.
//!
//! The copy only reaches so far up the stack. Where it ends, the kernel's own
//! frame-pointer walk of the same stack takes over, from the frame both walks
//! agree on (the same return address); without such a frame the stack ends
//! in a `[truncated]` frame. Every return address must lie in an executable
//! mapping of the process, or the walk stops there, also as `[truncated]`:
//! no made-up address reaches a report.
mod cfa_deref;
mod modules;
mod snapshot;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use profiler_common::UserRegs;

use crate::{kernel::collect::OffCpu, kernel::collect::Sample};

pub use modules::{parse_exec_mappings, ExecMapping, ModuleError, TableCache};
pub use snapshot::{StackSnapshot, UnwoundFrame, UnwoundStack};

/// Stands for the `[truncated]` frame in a leaf-first address list: not a
/// canonical user address, so never a real one.
pub const TRUNCATED: u64 = u64::MAX;
/// Most frames one unwind yields (the kernel's `perf_event_max_stack`).
const MAX_FRAMES: usize = profiler_common::MAX_USER_FRAMES;
/// A process's mappings are re-read at most this often, when an address
/// falls in no known executable mapping (a late `dlopen`, new JIT code).
const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// What unwinding did, for the exit summary and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Stacks unwound from a copy.
    pub unwound: u64,
    /// Of those, continued by the kernel's frame-pointer walk past the copy.
    pub spliced: u64,
    /// Ended in `[truncated]`.
    pub truncated: u64,
    /// Frames whose CFA came from an expression evaluated here (realigning
    /// assembly such as OpenSSL's AVX2 SHA-512), not from framehop.
    pub cfa_derefs: u64,
    /// No copy came with the stack: the kernel's frame-pointer walk as is.
    pub no_copy: u64,
    /// Executable files whose tables could not be read (frame pointers there).
    pub table_errors: u64,
}

/// Unwinders of every watched process, and the tables of their files.
#[derive(Default)]
pub struct Unwinder {
    tables: TableCache,
    processes: HashMap<u32, ProcessUnwinder>,
    evaluator: cfa_deref::Evaluator,
    pub stats: UnwindStats,
}

/// One process's unwinder, built by [`Unwinder::prepare`] or, off the
/// caller's thread, by [`Unwinder::prepare_off_thread`].
pub struct ProcessUnwinder {
    mappings: Vec<ExecMapping>,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    cache: CacheX86_64,
    /// Starts of mappings already given to `unwinder` (or that failed).
    added: HashSet<u64>,
    /// Mappings whose tables have CFA rules framehop cannot follow, sorted.
    expr_modules: Vec<ExprModule>,
    /// The tables this process uses: while any process holds a file's
    /// tables they stay cached; once none does, they are dropped.
    used: Vec<Arc<modules::Tables>>,
    loaded_at: Instant,
    /// Files whose tables could not be read.
    table_errors: u64,
}

impl ProcessUnwinder {
    fn new() -> Self {
        ProcessUnwinder {
            mappings: Vec::new(),
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            added: HashSet::new(),
            expr_modules: Vec::new(),
            used: Vec::new(),
            loaded_at: Instant::now(),
            table_errors: 0,
        }
    }
}

impl Unwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `pid`'s mappings and the tables of its executable files now, so
    /// the first samples do not pay for it. Safe to call again.
    pub fn prepare(&mut self, pid: u32) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.processes.entry(pid) {
            e.insert(ProcessUnwinder::new());
            self.reload(pid);
        }
    }

    /// What [`Self::prepare`] does, as a job for another thread (the
    /// daemon's discovery must not wait for a binary's tables): run the
    /// returned closure there and give its result to [`Self::add_prepared`].
    /// Files already cached are not read again.
    pub fn prepare_off_thread(&self, pid: u32) -> impl FnOnce() -> ProcessUnwinder + Send {
        let mut cache = self.tables.clone();
        move || {
            let mut p = ProcessUnwinder::new();
            load_process(&mut cache, pid, &mut p);
            p
        }
    }

    /// A process unwinder built by [`Self::prepare_off_thread`]; its tables
    /// join the cache. Kept only if `pid` has none yet (a sample that came
    /// first built one).
    pub fn add_prepared(&mut self, pid: u32, p: ProcessUnwinder) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.processes.entry(pid) {
            self.stats.table_errors += p.table_errors;
            self.tables.adopt(&p.used);
            e.insert(p);
        }
    }

    /// Whether `pid` has an unwinder (prepared or built by a sample).
    pub fn is_prepared(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Files whose tables are cached (for tests and the bench).
    pub fn cached_files(&self) -> usize {
        self.tables.len()
    }

    /// Replaces a sample's user stack by the one unwound from its copy.
    pub fn unwind_sample(&mut self, s: &mut Sample) {
        let unwound = self.unwind(s.pid, &s.regs, std::mem::take(&mut s.stack), &s.user);
        s.v8 = v8_slots_of(&unwound, &s.user, &s.v8);
        s.user = addresses(&unwound);
    }

    /// [`Self::unwind_sample`] for an off-CPU stack.
    pub fn unwind_off_cpu(&mut self, o: &mut OffCpu) {
        let unwound = self.unwind(o.pid, &o.regs, std::mem::take(&mut o.stack), &o.user);
        o.v8 = v8_slots_of(&unwound, &o.user, &o.v8);
        o.user = addresses(&unwound);
    }

    /// Drops `pid`'s state once it has exited, and the tables of files no
    /// other process uses.
    pub fn forget(&mut self, pid: u32) {
        if self.processes.remove(&pid).is_some() {
            self.tables.drop_unused();
        }
    }

    /// Unwinds one captured user stack of `pid`. `fp_walk` is the kernel's
    /// frame-pointer walk of the same stack (leaf first), `regs` and `stack`
    /// the registers and copy taken with it.
    pub fn unwind(
        &mut self,
        pid: u32,
        regs: &UserRegs,
        stack: Vec<u8>,
        fp_walk: &[u64],
    ) -> UnwoundStack {
        if regs.stack_bytes == 0 || stack.is_empty() || regs.ip == 0 {
            self.stats.no_copy += 1;
            return UnwoundStack {
                frames: fp_walk
                    .iter()
                    .map(|&pc| UnwoundFrame { pc, fp: None })
                    .collect(),
                truncated: false,
                snapshot: StackSnapshot::default(),
            };
        }
        self.prepare(pid);
        let Some(snapshot) = StackSnapshot::with_below(regs.sp, regs.below_sp.into(), stack) else {
            self.stats.truncated += 1;
            return UnwoundStack {
                frames: Vec::new(),
                truncated: true,
                snapshot: StackSnapshot::default(),
            };
        };
        let walk = self.walk(pid, regs, &snapshot);
        self.stats.unwound += 1;
        let mut frames = walk.frames;
        let mut truncated = walk.truncated;
        // Not past a frame whose rule failed here: such a function may use
        // %rbp as data, so the kernel's walk from it is made up.
        if (walk.copy_ended || walk.truncated) && !walk.untrusted {
            // Continue with the kernel's walk from the last frame both saw:
            // past the copy, and where tables were missing or wrong (V8's
            // embedded builtins sit in node's text with no FDE, yet keep
            // frame pointers).
            let last = frames.last().map(|f| f.pc);
            let from = last.and_then(|pc| fp_walk.iter().rposition(|&a| a == pc));
            match from {
                Some(i) => {
                    truncated = false;
                    if i + 1 < fp_walk.len() {
                        self.stats.spliced += 1;
                        let room = MAX_FRAMES.saturating_sub(frames.len());
                        // The kernel's walk is checked like our own: it ends
                        // at the first address that is not code.
                        for &pc in fp_walk[i + 1..].iter().take(room) {
                            if !self.is_code(pid, pc) {
                                truncated = true;
                                break;
                            }
                            frames.push(UnwoundFrame { pc, fp: None });
                        }
                    }
                }
                None => truncated = true,
            }
        }
        if truncated {
            self.stats.truncated += 1;
        }
        UnwoundStack {
            frames,
            truncated,
            snapshot,
        }
    }

    fn walk(&mut self, pid: u32, regs: &UserRegs, snapshot: &StackSnapshot) -> Walk {
        let mut out = Walk::default();
        // Mappings are checked (and re-read once if need be) before the walk.
        let mut regs_now = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut address = FrameAddress::from_instruction_pointer(regs.ip);
        if !self.is_code(pid, regs.ip) {
            out.truncated = true;
            return out;
        }
        out.frames.push(UnwoundFrame {
            pc: regs.ip,
            fp: Some(regs.bp),
        });
        let Some(p) = self.processes.get_mut(&pid) else {
            return out;
        };
        let copy_ended = Cell::new(false);
        let mut read_stack =
            |addr: u64| snapshot.read_u64(addr).ok_or_else(|| copy_ended.set(true));
        let mut pending = Vec::new();
        while out.frames.len() + pending.len() < MAX_FRAMES {
            let sp_before = regs_now.sp();
            let lookup = address.address_for_lookup();
            let step = match find_expr_fde(&p.expr_modules, lookup) {
                Some((m, fde)) => {
                    let regs = cfa_deref::Regs {
                        ip: regs_now.ip(),
                        sp: regs_now.sp(),
                        bp: regs_now.bp(),
                    };
                    let t = &m.tables;
                    let svma = lookup - m.bias;
                    let bases = t.bases();
                    let table = cfa_deref::Table {
                        data: t.cfa_data(),
                        section: t.cfa_section,
                        bases: &bases,
                    };
                    match self
                        .evaluator
                        .step(table, fde, svma, regs, |a| snapshot.read_u64(a))
                    {
                        Ok(r) => {
                            self.stats.cfa_derefs += 1;
                            regs_now = UnwindRegsX86_64::new(r.ip, r.sp, r.bp);
                            Ok(Some(r.ip))
                        }
                        Err(_) => {
                            out.untrusted = true;
                            Err(())
                        }
                    }
                }
                None => p
                    .unwinder
                    .unwind_frame(address, &mut regs_now, &mut p.cache, &mut read_stack)
                    .map_err(|_| ()),
            };
            match step {
                Ok(Some(ret)) => {
                    // The stack grows down: a caller's frame is above ours.
                    if regs_now.sp() <= sp_before {
                        out.truncated = true;
                        break;
                    }
                    let Some(next) = FrameAddress::from_return_address(ret) else {
                        break;
                    };
                    pending.push(UnwoundFrame {
                        pc: ret,
                        fp: Some(regs_now.bp()),
                    });
                    address = next;
                }
                // The root: framehop found the end of the stack.
                Ok(None) => break,
                Err(()) => {
                    if out.untrusted || !copy_ended.get() {
                        out.truncated = true;
                    }
                    break;
                }
            }
        }
        out.copy_ended = copy_ended.get() && !out.untrusted;
        // Every return address must be code; stop at the first that is not.
        for f in pending {
            if !self.is_code(pid, f.pc) {
                out.truncated = true;
                out.copy_ended = false;
                break;
            }
            out.frames.push(f);
        }
        out
    }

    /// Whether `addr` lies in an executable mapping of `pid` (re-reading the
    /// mappings, rate-limited, when it is in none).
    fn is_code(&mut self, pid: u32, addr: u64) -> bool {
        let known = |p: &ProcessUnwinder| find(&p.mappings, addr).is_some();
        let Some(p) = self.processes.get(&pid) else {
            return false;
        };
        if known(p) {
            return true;
        }
        if p.loaded_at.elapsed() < RELOAD_EVERY {
            return false;
        }
        self.reload(pid);
        self.processes.get(&pid).is_some_and(known)
    }

    /// Re-reads `pid`'s mappings and adds the tables of files not seen yet.
    fn reload(&mut self, pid: u32) {
        let Some(p) = self.processes.get_mut(&pid) else {
            return;
        };
        let errors = p.table_errors;
        load_process(&mut self.tables, pid, p);
        self.stats.table_errors += p.table_errors - errors;
    }
}

/// Reads `pid`'s mappings into `p` and adds the tables of files not seen yet.
fn load_process(tables: &mut TableCache, pid: u32, p: &mut ProcessUnwinder) {
    p.loaded_at = Instant::now();
    let text = match read_maps(pid) {
        Ok(text) => text,
        Err(err) => {
            log::debug!("failed to read /proc/{pid}/maps: {err}");
            return;
        }
    };
    p.mappings = parse_exec_mappings(&text);
    for m in &p.mappings {
        if !m.path.starts_with('/') || !p.added.insert(m.range.start) {
            continue;
        }
        match tables.tables(pid, m) {
            Ok(t) if t.has_tables() => {
                let Some(bias) = t.load_bias(m) else {
                    continue;
                };
                let info = ExplicitModuleSectionInfo {
                    base_svma: 0,
                    text_svma: t.text_svma.clone(),
                    got_svma: t.got_svma.clone(),
                    eh_frame_svma: t.eh_frame_svma.clone(),
                    eh_frame: t.eh_frame.clone(),
                    eh_frame_hdr_svma: t.eh_frame_hdr_svma.clone(),
                    eh_frame_hdr: t.eh_frame_hdr.clone(),
                    debug_frame: t.debug_frame.clone(),
                    ..Default::default()
                };
                p.unwinder
                    .add_module(Module::new(m.path.clone(), m.range.clone(), bias, info));
                if !t.cfa_exprs.is_empty() {
                    let at = p
                        .expr_modules
                        .partition_point(|e| e.range.start < m.range.start);
                    p.expr_modules.insert(
                        at,
                        ExprModule {
                            range: m.range.clone(),
                            bias,
                            tables: t.clone(),
                        },
                    );
                }
                if !p.used.iter().any(|u| Arc::ptr_eq(u, &t)) {
                    p.used.push(t);
                }
            }
            Ok(_) => {}
            Err(err) => {
                p.table_errors += 1;
                log::debug!("no unwind tables for pid {pid}: {err}");
            }
        }
    }
}

#[derive(Default)]
struct Walk {
    frames: Vec<UnwoundFrame>,
    truncated: bool,
    /// The walk needed a word past the copy.
    copy_ended: bool,
    /// The walk stopped at a frame whose unwind rule could not be evaluated
    /// here: nothing may be spliced after it.
    untrusted: bool,
}

/// An executable mapping whose file has FDEs that [`cfa_deref`] unwinds.
struct ExprModule {
    range: std::ops::Range<u64>,
    /// Process address minus stated address.
    bias: u64,
    tables: Arc<modules::Tables>,
}

/// The mapping and FDE that cover `addr`, if [`cfa_deref`] must unwind it.
fn find_expr_fde(modules: &[ExprModule], addr: u64) -> Option<(&ExprModule, &cfa_deref::ExprFde)> {
    let i = modules.partition_point(|m| m.range.start <= addr);
    let m = modules.get(i.checked_sub(1)?)?;
    if !m.range.contains(&addr) {
        return None;
    }
    Some((
        m,
        cfa_deref::find(&m.tables.cfa_exprs, addr.checked_sub(m.bias)?)?,
    ))
}

fn find(mappings: &[ExecMapping], addr: u64) -> Option<&ExecMapping> {
    let i = mappings.partition_point(|m| m.range.start <= addr);
    let m = mappings.get(i.checked_sub(1)?)?;
    m.range.contains(&addr).then_some(m)
}

/// `/proc/PID/maps`, bounded (a process can have ~65k mappings, ~100 B each).
fn read_maps(pid: u32) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(format!("/proc/{pid}/maps"))?;
    let mut text = String::new();
    file.take(16 << 20).read_to_string(&mut text)?;
    Ok(text)
}

/// V8's frame slots (the words at fp-16 and fp-8) for each unwound frame, so
/// that slot `i` still belongs to frame `i` once unwinding has added frames
/// the kernel's walk missed: read from the stack copy where it holds them,
/// else taken from the kernel's slots of the same frame of its walk (matched
/// by return address, in order), else none ([0, 0], which names nothing).
fn v8_slots_of(unwound: &UnwoundStack, fp_walk: &[u64], slots: &[[u64; 2]]) -> Vec<[u64; 2]> {
    let mut next = 0;
    unwound
        .frames
        .iter()
        .map(|f| {
            let walked = fp_walk[next..].iter().position(|&pc| pc == f.pc).map(|j| {
                next += j + 1;
                slots.get(next - 1).copied()
            });
            let copied = f.fp.and_then(|fp| {
                let read = |off: u64| unwound.snapshot.read_u64(fp.checked_sub(off)?);
                Some([read(16)?, read(8)?])
            });
            copied.or(walked.flatten()).unwrap_or([0, 0])
        })
        .collect()
}

/// Leaf-first addresses for the symbolizer: the frames, then [`TRUNCATED`]
/// if the unwinder stopped at a frame it could not trust.
pub fn addresses(stack: &UnwoundStack) -> Vec<u64> {
    let mut out: Vec<u64> = stack.frames.iter().map(|f| f.pc).collect();
    if stack.truncated {
        out.push(TRUNCATED);
    }
    out
}

#[cfg(test)]
mod tests;
