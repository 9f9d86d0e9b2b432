//! On node's own unwind tables: OpenSSL's `sha512_block_data_order_avx2`
//! (what `crypto.pbkdf2Sync(..., 'sha512')` spends its time in) is found and
//! unwound, on a doctored stack and on a live node stopped with ptrace.
//!
//! Node binaries come from LOOPBPF_NODES (`20=/path,22=/path`, as `cargo
//! xtask test` sets it), else /usr/bin/node.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gimli::UnwindSection as _;
use object::{Object, ObjectSymbol};

use super::*;
use crate::unwind::modules::{parse_exec_mappings, read_tables, Tables};
use crate::unwind::{StackSnapshot, Unwinder};
use profiler_common::UserRegs;

const FUNCTION: &str = "sha512_block_data_order_avx2";

fn nodes() -> Vec<(u32, PathBuf)> {
    match std::env::var("LOOPBPF_NODES") {
        Ok(spec) if !spec.is_empty() => spec
            .split(',')
            .filter_map(|e| {
                let (m, p) = e.split_once('=')?;
                Some((m.trim().parse().ok()?, PathBuf::from(p.trim())))
            })
            .collect(),
        _ => vec![(20, PathBuf::from("/usr/bin/node"))],
    }
}

/// The stated address range of `name` in `binary`'s symbol table.
fn symbol(binary: &Path, name: &str) -> Range<u64> {
    let data = std::fs::read(binary).expect("read node");
    let elf = object::File::parse(&*data).expect("parse node");
    let s = elf
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{} has no symbol {name}", binary.display()));
    s.address()..s.address() + s.size()
}

fn tables(binary: &Path) -> Tables {
    let file = std::fs::File::open(binary).expect("open node");
    read_tables(&file, &binary.to_string_lossy()).expect("node's tables")
}

/// Start addresses of the rows of `fde` whose CFA is an expression, and of
/// those whose CFA is a register other than %rsp/%rbp.
fn expression_rows(t: &Tables, fde: &ExprFde) -> (Vec<u64>, Vec<u64>) {
    let eh = eh_frame(t.cfa_data());
    let bases = t.bases().gimli();
    let fde = eh
        .fde_from_offset(&bases, fde.offset.into(), |s, b, o| s.cie_from_offset(b, o))
        .expect("fde");
    let mut ctx = Box::new(UnwindContext::new());
    let mut rows = fde.rows(&eh, &bases, &mut ctx).expect("rows");
    let (mut exprs, mut others) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next_row().expect("row") {
        match row.cfa() {
            CfaRule::Expression(_) => exprs.push(row.start_address()),
            CfaRule::RegisterAndOffset { register, .. }
                if *register != X86_64::RSP && *register != X86_64::RBP =>
            {
                others.push(row.start_address())
            }
            _ => {}
        }
    }
    (exprs, others)
}

#[test]
fn finds_and_unwinds_openssl_sha512_avx2_in_node() {
    for (major, binary) in nodes() {
        let t = tables(&binary);
        let f = symbol(&binary, FUNCTION);
        assert_eq!(t.cfa_section, Section::EhFrame);
        let fde = find(&t.cfa_exprs, f.start + 0x40).unwrap_or_else(|| {
            panic!(
                "node {major}: {FUNCTION} not among {} FDEs",
                t.cfa_exprs.len()
            )
        });
        assert!(
            fde.svma.start >= f.start && fde.svma.end <= f.end,
            "node {major}: {fde:?} {f:?}"
        );
        let (exprs, others) = expression_rows(&t, fde);
        assert!(!exprs.is_empty() && !others.is_empty(), "node {major}");
        println!(
            "node {major}: {} FDEs with CFA expressions or odd registers; {FUNCTION}: {} expression rows, {} register rows",
            t.cfa_exprs.len(),
            exprs.len(),
            others.len()
        );

        // A stack whose first 1 KiB holds, in every slot, the %rsp saved at
        // entry: whatever slot the rule reads, the caller's frame is there.
        let sp = 0x7ffd_0000_0000u64;
        let saved = sp + 2048;
        let mut bytes = vec![0u8; 4096];
        for slot in bytes[..1024].chunks_mut(8) {
            slot.copy_from_slice(&saved.to_le_bytes());
        }
        // The return address was pushed at `saved`; the caller's %rbp, as
        // the tables say (CFA-24), right below the other saved registers.
        bytes[2048..2056].copy_from_slice(&0x5555_1234u64.to_le_bytes());
        bytes[2032..2040].copy_from_slice(&0xb0b0u64.to_le_bytes());
        let copy = StackSnapshot::new(sp, bytes);
        let regs = Regs {
            ip: 0,
            sp,
            bp: 0xdead_beef,
        };
        let mut ev = Evaluator::default();
        let bases = t.bases();
        let table = Table {
            data: t.cfa_data(),
            section: t.cfa_section,
            bases: &bases,
        };
        let mut step =
            |svma, copy: &StackSnapshot| ev.step(table, fde, svma, regs, |a| copy.read_u64(a));
        let mut unwound = 0;
        for &row in &exprs {
            // Rows that read below %rsp (a red-zone slot) are out of this
            // doctored stack; the others must unwind to the caller.
            match step(row, &copy) {
                Ok(r) => {
                    assert_eq!(
                        r,
                        Regs {
                            ip: 0x5555_1234,
                            sp: saved + 8,
                            bp: 0xb0b0
                        },
                        "node {major} row {row:#x}"
                    );
                    unwound += 1;
                }
                Err(e) => assert_eq!(e, StepError::OutsideCopy, "node {major} row {row:#x}"),
            }
        }
        assert!(unwound > 0, "node {major}: no expression row unwound");
        // The slot the rule reads is past a short copy: say so, guess nothing.
        let short = StackSnapshot::new(sp, vec![0u8; 64]);
        let deep = exprs
            .iter()
            .find(|&&r| step(r, &copy).is_ok())
            .copied()
            .unwrap();
        assert_eq!(step(deep, &short), Err(StepError::OutsideCopy));
        // The prologue's CFA is %rax + 8: not a register the sample has.
        assert_eq!(step(others[0], &copy), Err(StepError::Unsupported));
    }
}

#[test]
fn parses_only_the_deref_form() {
    let parse = |bytes: &[u8]| DerefCfa::parse(Expression(EndianSlice::new(bytes, LittleEndian)));
    // DW_OP_breg7 152; DW_OP_deref; DW_OP_plus_uconst 8
    assert_eq!(
        parse(&[0x77, 0x98, 0x01, 0x06, 0x23, 0x08]),
        Ok(DerefCfa {
            register: X86_64::RSP,
            pre: 152,
            post: 8
        })
    );
    // DW_OP_breg6 -40; DW_OP_deref (GCC's realigned frames)
    assert_eq!(
        parse(&[0x76, 0x58, 0x06]),
        Ok(DerefCfa {
            register: X86_64::RBP,
            pre: -40,
            post: 0
        })
    );
    let refused: [&[u8]; 5] = [
        // DW_OP_breg0 (rax) 8; DW_OP_deref
        &[0x70, 0x08, 0x06],
        // no dereference
        &[0x77, 0x08],
        // one operation too many: DW_OP_deref again
        &[0x77, 0x08, 0x06, 0x23, 0x08, 0x06],
        // DW_OP_deref_size 4
        &[0x77, 0x08, 0x94, 0x04],
        // truncated operand
        &[0x77],
    ];
    for bytes in refused {
        assert_eq!(parse(bytes), Err(StepError::Unsupported), "{bytes:x?}");
    }
}

const SCRIPT: &str = "'use strict';
const crypto = require('crypto');
function blockPbkdf2() { return crypto.pbkdf2Sync('password', 'salt', 100000, 64, 'sha512'); }
process.stdout.write('ready\\n');
for (;;) blockPbkdf2();
";

/// `(start, end, name)` of each perf map line.
fn perf_map(pid: u32) -> Vec<(u64, u64, String)> {
    let text = std::fs::read_to_string(format!("/tmp/perf-{pid}.map")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let start = u64::from_str_radix(f.next()?, 16).ok()?;
            let size = u64::from_str_radix(f.next()?, 16).ok()?;
            Some((start, start + size, f.next()?.to_owned()))
        })
        .collect()
}

/// Registers and the copy a sample would take, at one ptrace stop.
fn stop_and_copy(pid: u32) -> (UserRegs, Vec<u8>) {
    let tid = pid as libc::pid_t;
    // SAFETY: plain ptrace requests on a child of this test; the only pointer
    // passed is `regs`, which outlives the call.
    let regs = unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "seize");
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(
            libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _),
            0
        );
        regs
    };
    // As the kernel side copies: the red zone, then from %rsp up.
    let red = profiler_common::STACK_RED_ZONE;
    let mem = crate::v8::ProcessMemory::new(pid);
    let mut len = profiler_common::STACK_COPY_BYTES;
    let mut bytes = vec![0u8; len];
    let base = regs.rsp - red as u64;
    while len >= 512 && crate::v8::Memory::read(&mem, base, &mut bytes[..len]).is_err() {
        len /= 2;
    }
    bytes.truncate(len);
    // SAFETY: as above; detaching resumes the thread.
    unsafe { assert_eq!(libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0), 0) };
    let user = UserRegs {
        ip: regs.rip,
        sp: regs.rsp,
        bp: regs.rbp,
        stack_bytes: (bytes.len() - red) as u32,
        below_sp: red as u32,
    };
    (user, bytes)
}

#[test]
fn live_pbkdf2_in_sha512_avx2_unwinds_to_its_javascript_caller() {
    for (major, binary) in nodes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("pbkdf2.js");
        std::fs::write(&script, SCRIPT).expect("write script");
        let mut child = Command::new(&binary)
            .args([
                "--perf-basic-prof-only-functions",
                "--interpreted-frames-native-stack",
            ])
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let pid = child.id();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("node says ready");
        std::thread::sleep(std::time::Duration::from_millis(300));

        let t = tables(&binary);
        let f = symbol(&binary, FUNCTION);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
        let shown = binary.canonicalize().expect("node path");
        let bias = parse_exec_mappings(&maps)
            .iter()
            .filter(|m| Path::new(&m.path) == shown)
            .find_map(|m| t.load_bias(m))
            .expect("node's text mapped");
        let inside = (f.start + bias)..(f.end + bias);

        let mut unwinder = Unwinder::new();
        let (mut stops, mut named) = (0, 0);
        let mut last = String::new();
        for _ in 0..4000 {
            if stops == 20 {
                break;
            }
            let (regs, stack) = stop_and_copy(pid);
            if !inside.contains(&regs.ip) {
                std::thread::sleep(std::time::Duration::from_micros(500));
                continue;
            }
            stops += 1;
            let unwound = unwinder.unwind(pid, &regs, stack, &[]);
            let names = perf_map(pid);
            let js: Vec<&str> = unwound
                .frames
                .iter()
                .filter_map(|fr| {
                    let pc = fr.pc.saturating_sub(1);
                    names
                        .iter()
                        .find(|(s, e, _)| (*s..*e).contains(&pc))
                        .map(|n| n.2.as_str())
                })
                .collect();
            if js.iter().any(|n| n.contains("blockPbkdf2")) {
                named += 1;
            } else {
                last = format!(
                    "{} frames, truncated {}, JS {js:?}",
                    unwound.frames.len(),
                    unwound.truncated
                );
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
        println!(
            "node {major}: {named} of {stops} stops in {FUNCTION} reach blockPbkdf2; {:?}",
            unwinder.stats
        );
        assert!(
            stops >= 10,
            "node {major}: only {stops} stops landed in {FUNCTION}"
        );
        assert!(
            named * 10 >= stops * 9,
            "node {major}: {named} of {stops} stops in {FUNCTION} reach blockPbkdf2; last miss: {last}"
        );
        assert!(
            unwinder.stats.cfa_derefs > 0,
            "node {major}: no CFA expression evaluated"
        );
    }
}
