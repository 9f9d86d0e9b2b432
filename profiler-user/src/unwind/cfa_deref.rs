//! Frames whose canonical frame address (CFA) framehop cannot compute.
//!
//! Hand-written assembly that realigns the stack (OpenSSL's perlasm for
//! SHA-1/256/512 AVX2, AES-GCM, ChaCha20, and GCC's vectorised code) saves
//! the caller's %rsp in a stack slot, and may use %rbp as a data register. Its
//! unwind tables describe the CFA with an expression that reads that slot,
//! `DW_OP_breg7 (rsp) K; DW_OP_deref; DW_OP_plus_uconst C`, or give a
//! register other than %rsp/%rbp (%rax, %rdi) for a few instructions of the
//! prologue and epilogue. framehop evaluates neither: it falls back to the
//! frame pointer, which in such a function is data, and a sample there loses
//! every caller.
//!
//! Each file's tables are scanned once for the FDEs that have such a rule;
//! a frame in one of them is unwound here instead, from its FDE's row for
//! the address. Only the one bounded form the OpenTelemetry eBPF profiler
//! also accepts is evaluated: `*(rsp|rbp + K) + C`, with the word read from
//! the stack copy taken with the sample, nowhere else. Any other rule ends
//! the stack in `[truncated]`.
use std::ops::Range;

use gimli::{
    BaseAddresses, CallFrameInstruction, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice,
    Expression, LittleEndian, Operation, Register, RegisterRule, UnwindContext, UnwindSection,
    X86_64,
};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Unwind info the tables may hold for one address, as an x86_64 CFA is read
/// from its expression: DWARF 4 operations on 64-bit addresses.
const ENCODING: gimli::Encoding = gimli::Encoding {
    format: gimli::Format::Dwarf32,
    version: 4,
    address_size: 8,
};

/// An FDE with at least one CFA rule framehop cannot follow, in stated
/// addresses of its file, and where it starts in its section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprFde {
    pub svma: Range<u64>,
    pub offset: usize,
}

/// Which section of the file the FDEs came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    EhFrame,
    DebugFrame,
}

/// Stated addresses that `.eh_frame` pointer encodings are relative to.
#[derive(Clone, Debug, Default)]
pub struct Bases {
    pub eh_frame: u64,
    pub text: u64,
    pub got: u64,
}

impl Bases {
    fn gimli(&self) -> BaseAddresses {
        BaseAddresses::default()
            .set_eh_frame(self.eh_frame)
            .set_text(self.text)
            .set_got(self.got)
    }
}

/// The unwind section the FDEs are in, and how to read it.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    pub data: &'a [u8],
    pub section: Section,
    pub bases: &'a Bases,
}

/// Registers of one frame: where it is, and the two the caller's frame is
/// found from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Why a frame could not be unwound here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The rule needs a word the stack copy does not hold.
    #[error("the stack copy ends before a word the unwind rule reads")]
    OutsideCopy,
    /// The rule is not one evaluated here, or the tables do not parse.
    #[error("unsupported or unreadable unwind rule")]
    Unsupported,
}

/// The FDEs of `data` (a `.eh_frame` or `.debug_frame`) whose instructions
/// set the CFA to an expression, or to a register other than %rsp and %rbp,
/// sorted by address. Entries that do not parse are skipped: framehop
/// handles them as it can.
pub fn scan(data: &[u8], section: Section, bases: &Bases) -> Vec<ExprFde> {
    let bases = bases.gimli();
    let mut out = match section {
        Section::EhFrame => scan_section(&eh_frame(data), &bases),
        Section::DebugFrame => scan_section(&debug_frame(data), &bases),
    };
    out.sort_by_key(|f| f.svma.start);
    out
}

fn eh_frame(data: &[u8]) -> EhFrame<Slice<'_>> {
    let mut s = EhFrame::new(data, LittleEndian);
    s.set_address_size(8);
    s
}

fn debug_frame(data: &[u8]) -> DebugFrame<Slice<'_>> {
    let mut s = DebugFrame::new(data, LittleEndian);
    s.set_address_size(8);
    s
}

fn scan_section<'a, S: UnwindSection<Slice<'a>>>(section: &S, bases: &BaseAddresses) -> Vec<ExprFde>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut out = Vec::new();
    let mut entries = section.entries(bases);
    // A parse error ends the iteration: the section's length fields cannot be
    // trusted past it.
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let cie_insns = fde.cie().instructions(section, bases);
        let fde_insns = fde.instructions(section, bases);
        if needs_eval(cie_insns) || needs_eval(fde_insns) {
            let start = fde.initial_address();
            out.push(ExprFde {
                svma: start..start.saturating_add(fde.len()),
                offset: fde.offset(),
            });
        }
    }
    out
}

/// Whether an instruction stream sets a CFA rule framehop cannot follow.
fn needs_eval(mut insns: gimli::CallFrameInstructionIter<'_, Slice<'_>>) -> bool {
    let plain = |r: Register| r == X86_64::RSP || r == X86_64::RBP;
    while let Ok(Some(insn)) = insns.next() {
        match insn {
            CallFrameInstruction::DefCfaExpression { .. } => return true,
            CallFrameInstruction::DefCfa { register, .. }
            | CallFrameInstruction::DefCfaSf { register, .. }
            | CallFrameInstruction::DefCfaRegister { register }
                if !plain(register) =>
            {
                return true
            }
            _ => {}
        }
    }
    false
}

/// The FDE of `fdes` (sorted) that covers `svma`.
pub fn find(fdes: &[ExprFde], svma: u64) -> Option<&ExprFde> {
    let i = fdes.partition_point(|f| f.svma.start <= svma);
    let f = fdes.get(i.checked_sub(1)?)?;
    f.svma.contains(&svma).then_some(f)
}

/// Reused between frames: gimli's row evaluation state.
pub struct Evaluator {
    ctx: Box<UnwindContext<usize>>,
}

impl Default for Evaluator {
    fn default() -> Self {
        Evaluator {
            ctx: Box::new(UnwindContext::new()),
        }
    }
}

impl Evaluator {
    /// Unwinds one frame at stated address `svma` (the address to look up:
    /// a return address minus one for a caller) of the FDE `fde`: the
    /// caller's registers, with `ip` its return address. `read` reads a word
    /// of the stack copy.
    pub fn step(
        &mut self,
        table: Table<'_>,
        fde: &ExprFde,
        svma: u64,
        regs: Regs,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Result<Regs, StepError> {
        let bases = table.bases.gimli();
        let data = table.data;
        match table.section {
            Section::EhFrame => self.step_in(&eh_frame(data), &bases, fde, svma, regs, read),
            Section::DebugFrame => self.step_in(&debug_frame(data), &bases, fde, svma, regs, read),
        }
    }

    fn step_in<'a, S: UnwindSection<Slice<'a>>>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
        fde: &ExprFde,
        svma: u64,
        regs: Regs,
        read: impl Fn(u64) -> Option<u64>,
    ) -> Result<Regs, StepError>
    where
        S::Offset: gimli::UnwindOffset<usize>,
    {
        let unsupported = |_| StepError::Unsupported;
        let offset = S::Offset::from(fde.offset);
        let fde = section
            .fde_from_offset(bases, offset, |s, b, o| s.cie_from_offset(b, o))
            .map_err(unsupported)?;
        let row = fde
            .unwind_info_for_address(section, bases, &mut self.ctx, svma)
            .map_err(unsupported)?;
        let read = |addr: u64| read(addr).ok_or(StepError::OutsideCopy);
        let base = |r: Register| match r {
            X86_64::RSP => Ok(regs.sp),
            X86_64::RBP => Ok(regs.bp),
            _ => Err(StepError::Unsupported),
        };
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                base(*register)?.checked_add_signed(*offset)
            }
            CfaRule::Expression(e) => {
                let e = e.get(section).map_err(unsupported)?;
                let deref = DerefCfa::parse(e)?;
                read(
                    base(deref.register)?
                        .checked_add_signed(deref.pre)
                        .ok_or(StepError::Unsupported)?,
                )?
                .checked_add(deref.post)
            }
        }
        .ok_or(StepError::Unsupported)?;
        let at = |offset: i64| cfa.checked_add_signed(offset).ok_or(StepError::Unsupported);
        let ip = match row.register(X86_64::RA) {
            Some(RegisterRule::Offset(o)) => read(at(o)?)?,
            _ => return Err(StepError::Unsupported),
        };
        let bp = match row.register(X86_64::RBP) {
            // No rule: the function leaves %rbp alone.
            None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => regs.bp,
            Some(RegisterRule::Offset(o)) => read(at(o)?)?,
            Some(RegisterRule::ValOffset(o)) => at(o)?,
            _ => return Err(StepError::Unsupported),
        };
        // The caller's frame is above this one: anything else is a bad rule.
        if cfa <= regs.sp {
            return Err(StepError::Unsupported);
        }
        Ok(Regs { ip, sp: cfa, bp })
    }
}

/// `*(register + pre) + post`, the one CFA expression evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DerefCfa {
    register: Register,
    pre: i64,
    post: u64,
}

impl DerefCfa {
    /// `DW_OP_bregN K; DW_OP_deref [; DW_OP_plus_uconst C]`, N being %rsp or
    /// %rbp, and nothing else.
    fn parse(e: Expression<Slice<'_>>) -> Result<DerefCfa, StepError> {
        let mut ops = e.operations(ENCODING);
        let mut next = || ops.next().map_err(|_| StepError::Unsupported);
        let (register, pre) = match next()? {
            Some(Operation::RegisterOffset {
                register, offset, ..
            }) if register == X86_64::RSP || register == X86_64::RBP => (register, offset),
            _ => return Err(StepError::Unsupported),
        };
        match next()? {
            Some(Operation::Deref {
                size: 8,
                space: false,
                ..
            }) => {}
            _ => return Err(StepError::Unsupported),
        }
        let post = match next()? {
            None => {
                return Ok(DerefCfa {
                    register,
                    pre,
                    post: 0,
                })
            }
            Some(Operation::PlusConstant { value }) => value,
            _ => return Err(StepError::Unsupported),
        };
        match next()? {
            None => Ok(DerefCfa {
                register,
                pre,
                post,
            }),
            Some(_) => Err(StepError::Unsupported),
        }
    }
}

#[cfg(test)]
#[path = "cfa_deref_tests.rs"]
mod tests;
