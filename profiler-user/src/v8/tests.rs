//! Naming frames of real Node processes, without BPF: the main thread is
//! stopped with ptrace, its stack copied from the stack pointer up (what a
//! sample captures), walked by frame pointers, and named from its heap.
//!
//! Node binaries come from LOOPBPF_NODES (`20=/path,22=/path`, as `cargo
//! xtask test` sets it), else /usr/bin/node.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::walk::{name_stack, walk_frame_pointers, CodeMap};
use super::*;
use crate::unwind::{StackSnapshot, UnwoundStack};

const SCRIPT: &str = "'use strict';
function blockHere(n) {
  let x = 0;
  for (;;) { x = (x * 31 + n) % 1000003; if (x === -1) break; }
  return x;
}
function outerCaller() { return blockHere(7); }
process.stdout.write('ready\\n');
outerCaller();
";

/// Stack bytes copied per stop: V8 frames of a busy loop are near the top.
const STACK_COPY: usize = 256 * 1024;

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

struct Node {
    child: Child,
    script: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // --perf-basic-prof-only-functions leaves its map behind.
        let _ = std::fs::remove_file(crate::symbolize::perf_map_path(self.child.id()));
    }
}

fn start(node: &Path, flags: &[&str], source: &str) -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("block.js");
    std::fs::write(&script, source).expect("write script");
    let mut child = Command::new(node)
        .args(flags)
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("node says ready");
    assert_eq!(line.trim(), "ready", "node did not start the script");
    // Let the loop warm up into whichever tier the flags allow.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Node {
        child,
        script,
        _dir: dir,
    }
}

/// Stops `pid`'s main thread, returns (rip, rbp, copy of its stack from rsp).
fn stop_and_copy(pid: u32) -> (u64, u64, StackSnapshot) {
    let pid = pid as libc::pid_t;
    // SAFETY: plain ptrace requests on a child of this test; no pointers are
    // passed except `regs`, which outlives the call.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0),
            0,
            "seize: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(
            libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _),
            0
        );
        let mut bytes = vec![0u8; STACK_COPY];
        // The stack may end before STACK_COPY: copy what is mapped.
        let mem = ProcessMemory::new(pid as u32);
        let mut len = STACK_COPY;
        while len >= 4096 && mem.read(regs.rsp, &mut bytes[..len]).is_err() {
            len /= 2;
        }
        bytes.truncate(len);
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0);
        (regs.rip, regs.rbp, StackSnapshot::new(regs.rsp, bytes))
    }
}

/// Names `samples` stops of `node`; returns each stop's named V8 frames.
fn sample(node: &Node, layout: &Arc<Layout>, binary: &Path, samples: usize) -> Vec<Vec<V8Frame>> {
    let pid = node.child.id();
    let mut namer = Namer::new(Arc::clone(layout));
    let heap = ProcessMemory::new(pid);
    let shown = binary.canonicalize().expect("node path");
    (0..samples)
        .map(|_| {
            let (rip, rbp, snapshot) = stop_and_copy(pid);
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
            let code = CodeMap::parse(&maps, &shown.to_string_lossy(), Some(layout));
            let frames = walk_frame_pointers(&snapshot, rip, rbp, 128);
            let stack = UnwoundStack {
                frames,
                truncated: false,
                snapshot,
            };
            let named = name_stack(&mut namer, &heap, &code, &stack)
                .into_iter()
                .flatten()
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(7));
            named
        })
        .collect()
}

fn share_with(stacks: &[Vec<V8Frame>], prefix: &str) -> f64 {
    let hits = stacks
        .iter()
        .filter(|s| s.iter().any(|f| f.display_name().starts_with(prefix)))
        .count();
    hits as f64 / stacks.len() as f64
}

fn show(stacks: &[Vec<V8Frame>]) -> String {
    stacks
        .first()
        .map(|s| {
            s.iter()
                .map(V8Frame::display_name)
                .collect::<Vec<_>>()
                .join(" <- ")
        })
        .unwrap_or_default()
}

#[test]
fn names_busy_function_in_each_tier() {
    let tiers: [(&str, &[&str]); 3] = [
        ("interpreted", &["--jitless"]),
        (
            "baseline",
            &["--always-sparkplug", "--no-opt", "--no-maglev"],
        ),
        ("optimized", &[]),
    ];
    for (major, binary) in nodes() {
        let layout =
            Arc::new(Layout::from_binary(&binary).unwrap_or_else(|e| panic!("node {major}: {e}")));
        for (tier, flags) in tiers {
            let node = start(&binary, flags, SCRIPT);
            let stacks = sample(&node, &layout, &binary, 20);
            let script = node.script.display();
            let inner = share_with(&stacks, &format!("blockHere {script}:2:"));
            let outer = share_with(&stacks, &format!("outerCaller {script}:7:"));
            println!(
                "node {major} {tier}: blockHere in {:.0}%, outerCaller in {:.0}%: {}",
                inner * 100.0,
                outer * 100.0,
                show(&stacks)
            );
            assert!(
                inner >= 0.9,
                "node {major} {tier}: blockHere named in {:.0}% of stops: {}",
                inner * 100.0,
                show(&stacks)
            );
            assert!(
                outer >= 0.9,
                "node {major} {tier}: outerCaller named in {:.0}% of stops",
                outer * 100.0
            );
        }
    }
}

#[test]
fn a_binary_without_metadata_says_what_is_missing() {
    let error = Layout::from_binary(Path::new("/bin/true")).expect_err("no v8dbg symbols");
    assert!(
        error.to_string().contains("no V8 postmortem metadata"),
        "{error}"
    );
    let error = Layout::from_binary(Path::new("/proc/self/exe/nothing")).expect_err("not a file");
    assert!(error.to_string().starts_with("failed to read"), "{error}");
}

/// The value of `v8dbg_<name>` lives at this file offset of `data`.
fn symbol_file_offset(data: &[u8], name: &str) -> usize {
    use object::{Object, ObjectSection, ObjectSymbol};
    let elf = object::File::parse(data).expect("elf");
    let symbol = elf
        .symbols()
        .chain(elf.dynamic_symbols())
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} in binary"));
    let section = elf
        .sections()
        .find(|s| s.address() <= symbol.address() && symbol.address() < s.address() + s.size())
        .expect("section");
    let (offset, _) = section.file_range().expect("file-backed");
    (offset + symbol.address() - section.address()) as usize
}

#[test]
fn doctored_binaries_never_name_a_wrong_function() {
    for (major, binary) in nodes() {
        doctored_binary_never_names_a_wrong_function(major, &binary);
    }
}

fn doctored_binary_never_names_a_wrong_function(major: u32, binary: &Path) {
    let binary = binary.to_path_buf();
    let data = std::fs::read(&binary).expect("read node");

    // An out-of-range value in the file is refused, naming the symbol.
    let mut doctored = data.clone();
    let at = symbol_file_offset(&data, "v8dbg_off_fp_function");
    doctored[at..at + 4].copy_from_slice(&4096i32.to_le_bytes());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node");
    std::fs::write(&path, &doctored).expect("write doctored node");
    let error = Layout::from_binary(&path).expect_err("out-of-range offset");
    assert!(
        error
            .to_string()
            .contains("off_fp_function = 4096 is out of range"),
        "{error}"
    );

    // Plausible but wrong values: every frame is unknown, a marker, or a
    // name the true layout gives (perhaps without its file), never another.
    let node = start(&binary, &[], SCRIPT);
    let truth = Arc::new(Layout::from_binary(&binary).expect("layout"));
    let right: std::collections::HashSet<String> = sample(&node, &truth, &binary, 10)
        .iter()
        .flatten()
        .map(V8Frame::display_name)
        .collect();
    let allowed = |name: &str| {
        right.contains(name) || right.iter().any(|r| r.starts_with(&format!("{name} ")))
    };
    for (class, field, delta) in [
        ("JSFunction", "shared", 8i64),
        ("", "off_fp_function", -8),
        ("SharedFunctionInfo", "name_or_scope_info", 8),
        ("Map", "instance_type", 2),
        ("Script", "name", 8),
    ] {
        let mut symbols =
            Symbols::parse(&binary.display().to_string(), &data[..]).expect("symbols");
        let key = if class.is_empty() {
            field.to_owned()
        } else {
            symbols.field_key(class, field).expect("field in metadata")
        };
        let original = symbols.value(&key).expect("value");
        symbols.set(&key, original + delta);
        let layout = Arc::new(Layout::from_symbols(&symbols).expect("doctored layout"));
        let started = std::time::Instant::now();
        let stacks = sample(&node, &layout, &binary, 10);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "naming hung"
        );
        let wrong: Vec<String> = stacks
            .iter()
            .flatten()
            .filter(|f| matches!(f, V8Frame::Js(_)))
            .map(V8Frame::display_name)
            .filter(|n| !allowed(n))
            .collect();
        println!("node {major}, {key} off by {delta}: {}", show(&stacks));
        assert!(wrong.is_empty(), "{key} off by {delta} named {wrong:?}");
    }
}

#[test]
fn cache_is_bounded_and_counts_evictions() {
    let (_, binary) = nodes().into_iter().next().expect("a node");
    let layout = Arc::new(Layout::from_binary(&binary).expect("layout"));
    let mut namer = Namer::new(layout);
    for sfi in 0..(CACHE_CAPACITY as u64 + 10) {
        let f = Arc::new(JsFunction {
            name: format!("f{sfi}"),
            script: String::new(),
            position: None,
        });
        namer.insert(sfi * 64 + 1, 0, 0, f);
    }
    assert!(namer.cached() <= CACHE_CAPACITY);
    assert!(
        namer.stats.evicted >= CACHE_CAPACITY as u64 / 2,
        "{:?}",
        namer.stats
    );
}

const MANY: &str = "'use strict';
function leafA(n) { let s = 0; for (let i = 0; i < n; i++) s += i % 7; return s; }
function leafB(n) { let s = ''; for (let i = 0; i < n; i++) s = (s + i).slice(-8); return s.length; }
const arrow = (n) => leafA(n) + leafB(n >> 2);
class Box { work(n) { return arrow(n) + leafA(n >> 1); } }
function loop() { const b = new Box(); for (;;) b.work(2000); }
process.stdout.write('ready\\n');
loop();
";

/// `name file` of a frame name: the position is left out, since V8 and the
/// perf map may point at different characters of a function's header.
fn function_and_file(name: &str) -> &str {
    match name.rsplit_once(' ') {
        Some((function, location)) => {
            let file = location.split(':').next().unwrap_or("");
            &name[..function.len() + 1 + file.len()]
        }
        None => name,
    }
}

#[test]
fn names_agree_with_the_perf_map() {
    for (major, binary) in nodes() {
        let layout = Arc::new(Layout::from_binary(&binary).expect("layout"));
        let node = start(&binary, &["--perf-basic-prof-only-functions"], MANY);
        let pid = node.child.id();
        let mut perf_map = crate::symbolize::PerfMap::for_pid(pid);
        let mut namer = Namer::new(Arc::clone(&layout));
        let heap = ProcessMemory::new(pid);
        let shown = binary.canonicalize().expect("node path");
        let (mut both, mut same) = (0u32, 0u32);
        let mut differ = Vec::new();
        for _ in 0..150 {
            let (rip, rbp, snapshot) = stop_and_copy(pid);
            perf_map.refresh().expect("perf map");
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
            let code = CodeMap::parse(&maps, &shown.to_string_lossy(), Some(&layout));
            let frames = walk_frame_pointers(&snapshot, rip, rbp, 128);
            let stack = UnwoundStack {
                frames: frames.clone(),
                truncated: false,
                snapshot,
            };
            let named = name_stack(&mut namer, &heap, &code, &stack);
            for (frame, v8) in frames.iter().zip(named) {
                let (Some(V8Frame::Js(function)), Some(from_map)) = (v8, perf_map.lookup(frame.pc))
                else {
                    continue;
                };
                if code.kind(frame.pc) != walk::CodeKind::Jit {
                    continue;
                }
                both += 1;
                let ours = function.to_string();
                if function_and_file(&ours) == function_and_file(from_map) {
                    same += 1;
                } else if differ.len() < 5 {
                    differ.push(format!("{ours} vs {from_map}"));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let share = f64::from(same) / f64::from(both.max(1));
        println!("node {major}: V8 frames and perf map agree on {same} of {both} JIT frames ({:.1}%); differ: {differ:?}", share * 100.0);
        assert!(
            both >= 30,
            "node {major}: only {both} JIT frames named by both"
        );
        assert!(
            share >= 0.95,
            "node {major}: agreement {:.1}%: {differ:?}",
            share * 100.0
        );
    }
}
