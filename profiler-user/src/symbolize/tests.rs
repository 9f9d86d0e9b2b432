use std::path::Path;
use std::sync::Arc;

use super::*;

#[inline(never)]
fn symbolize_test_marker() -> u64 {
    std::hint::black_box(0x5eed)
}

pub(super) fn native_addr() -> u64 {
    symbolize_test_marker as *const () as usize as u64
}

/// A symbolizer whose perf map for every pid is `path`.
fn with_perf_map(path: &Path) -> Symbolizer {
    let path = path.to_path_buf();
    Symbolizer::start_with(
        Arc::new(move |_pid| PerfMap::new(path.clone())),
        Policy::DEFAULT,
    )
    .unwrap()
}

pub(super) fn user_stack(user: &[u64]) -> StackRequest {
    StackRequest {
        user: user.to_vec(),
        kernel: Vec::new(),
        v8: Vec::new(),
    }
}

fn names(frames: &[Frame]) -> Vec<&str> {
    frames.iter().map(|frame| frame.name.as_str()).collect()
}

#[test]
fn handle_is_clone_send_sync() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Symbolizer>();
}

#[test]
fn names_a_function_of_this_binary() {
    let symbolizer = Symbolizer::start().unwrap();
    let addr = native_addr();
    // As leaf the address is exact; one byte in, as a return address, it is
    // looked up one byte back, which is the function's first byte.
    let stacks = vec![user_stack(&[addr]), user_stack(&[addr, addr + 1])];
    let symbolized = symbolizer
        .symbolize_blocking(std::process::id(), stacks)
        .unwrap();

    assert_eq!(symbolized.stacks.len(), 2);
    for stack in &symbolized.stacks {
        for frame in stack {
            assert_eq!(frame.kind, FrameKind::Native, "{frame:?}");
            assert!(
                frame.name.ends_with("symbolize_test_marker"),
                "unexpected name {:?}",
                frame.name
            );
        }
    }
    let perf_map = perf_map_path(std::process::id());
    assert_eq!(
        symbolized.perf_map,
        PerfMapStatus::Missing { path: perf_map }
    );
}

#[test]
fn names_jit_frames_from_the_perf_map_root_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-1.map");
    std::fs::write(
        &path,
        "100000 40 JS:*fib /app/x.js:2:13\n100040 40 JS:~ /app/x.js:1:1\nbogus\n",
    )
    .unwrap();
    let symbolizer = with_perf_map(&path);
    // Leaf-first. 0x100040 starts the anonymous function, but as a return
    // address it is looked up at 0x10003f: a call ending fib.
    let stacks = vec![user_stack(&[0x100010, 0x100040, native_addr() + 1])];
    let symbolized = symbolizer
        .symbolize_blocking(std::process::id(), stacks.clone())
        .unwrap();

    let frames = &symbolized.stacks[0];
    assert!(
        frames[0].name.ends_with("symbolize_test_marker"),
        "{frames:?}"
    );
    assert_eq!(
        names(&frames[1..]),
        ["fib /app/x.js:2:13", "fib /app/x.js:2:13"]
    );
    assert!(frames[1..].iter().all(|frame| frame.kind == FrameKind::Js));
    assert_eq!(
        symbolized.perf_map,
        PerfMapStatus::Loaded {
            path: path.clone(),
            entries: 2,
            bad_lines: 1,
            dropped_lines: 0,
        }
    );

    // The map grew; only the new line is read, and it reuses an address.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, b"100000 20 JS:^newer /app/x.js:9:9\n")
        })
        .unwrap();
    let symbolized = symbolizer
        .symbolize_blocking(std::process::id(), vec![user_stack(&[0x100010, 0x100041])])
        .unwrap();
    assert_eq!(
        names(&symbolized.stacks[0]),
        ["(anonymous) /app/x.js:1:1", "newer /app/x.js:9:9"]
    );
}

#[test]
fn unnamed_addresses_are_kept_with_their_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let symbolizer = with_perf_map(&dir.path().join("none.map"));
    let pid = std::process::id();
    // Read /proc/PID/maps once before the anonymous mapping exists, so naming
    // it needs a re-read.
    let first = symbolizer
        .symbolize_blocking(pid, vec![user_stack(&[0x8])])
        .unwrap();
    assert_eq!(names(&first.stacks[0]), ["[unknown] 0x8"]);
    assert_eq!(first.stacks[0][0].kind, FrameKind::Unknown);

    let anon = AnonMapping::new(4096);
    let addr = anon.addr() + 0x10;
    let symbolized = symbolizer
        .symbolize_blocking(pid, vec![user_stack(&[addr])])
        .unwrap();
    let frame = &symbolized.stacks[0][0];
    assert_eq!(frame.kind, FrameKind::Unknown);
    assert_eq!(frame.name, format!("[unknown] [anon] {addr:#x}"));
}

#[test]
fn kernel_frames_follow_user_frames() {
    let Some(schedule) = kallsyms_addr("schedule") else {
        eprintln!("skipping: /proc/kallsyms hides addresses here");
        return;
    };
    let symbolizer = Symbolizer::start().unwrap();
    let stack = StackRequest {
        user: vec![native_addr()],
        kernel: vec![schedule, schedule + 1, 0x1],
        v8: Vec::new(),
    };
    let symbolized = symbolizer
        .symbolize_blocking(std::process::id(), vec![stack])
        .unwrap();
    let frames = &symbolized.stacks[0];
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].kind, FrameKind::Native);
    assert_eq!(frames[1].name, "[unknown] [kernel] 0x1");
    assert_eq!(frames[1].kind, FrameKind::Unknown);
    for frame in &frames[2..] {
        assert_eq!(
            frame,
            &Frame {
                name: "schedule".to_owned(),
                kind: FrameKind::Kernel
            }
        );
    }
}

#[test]
fn an_exited_process_yields_unknown_frames_and_cached_js() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf.map");
    std::fs::write(&path, "200000 10 JS:*stillKnown /app/y.js:1:1\n").unwrap();
    let symbolizer = with_perf_map(&path);
    symbolizer
        .symbolize_blocking(pid, vec![user_stack(&[0x200000])])
        .unwrap();

    child.wait().unwrap();
    std::fs::remove_file(&path).unwrap();
    let symbolized = symbolizer
        .symbolize_blocking(pid, vec![user_stack(&[0x7f00_0000_1234, 0x200005])])
        .unwrap();
    let frames = &symbolized.stacks[0];
    assert_eq!(frames[0].name, "stillKnown /app/y.js:1:1");
    assert_eq!(frames[1].kind, FrameKind::Unknown);
    assert!(matches!(
        symbolized.perf_map,
        PerfMapStatus::Loaded { entries: 1, .. }
    ));

    // Forgotten, the process has no perf map any more.
    symbolizer.forget(pid);
    let symbolized = symbolizer
        .symbolize_blocking(pid, vec![user_stack(&[0x200005])])
        .unwrap();
    assert_eq!(symbolized.perf_map, PerfMapStatus::Missing { path });
    assert_eq!(symbolized.stacks[0][0].kind, FrameKind::Unknown);
}

#[tokio::test(flavor = "current_thread")]
async fn async_callers_share_one_thread() {
    let symbolizer = Symbolizer::start().unwrap();
    let clone = symbolizer.clone();
    let stacks = vec![user_stack(&[native_addr()]), StackRequest::default()];
    let symbolized = clone.symbolize(std::process::id(), stacks).await.unwrap();
    assert_eq!(symbolized.stacks.len(), 2);
    assert_eq!(symbolized.stacks[0][0].kind, FrameKind::Native);
    assert!(symbolized.stacks[1].is_empty());
}

#[test]
fn a_fifo_perf_map_does_not_block_the_symbolizer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("perf-1.map");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c_fifo` is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let symbolizer = Symbolizer::start_with(
        Arc::new(move |_pid| PerfMap::new(fifo.clone())),
        Policy::DEFAULT,
    )
    .unwrap();
    let symbolized = symbolizer
        .symbolize_blocking(std::process::id(), vec![user_stack(&[native_addr()])])
        .expect("answered, not stuck on the fifo");
    assert_eq!(symbolized.stacks[0][0].kind, FrameKind::Native);
    match symbolized.perf_map {
        PerfMapStatus::Unreadable { reason, .. } => assert!(reason.contains("fifo"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Refused, counted once however often it is asked.
    let _ = symbolizer.symbolize_blocking(std::process::id(), Vec::new());
    assert_eq!(
        symbolizer.health(),
        SymbolizerHealth {
            perf_maps_refused: 1,
            ..SymbolizerHealth::default()
        }
    );
}

#[test]
fn a_panicking_request_is_answered_with_addresses_and_counted() {
    let symbolizer = Symbolizer::start_with(
        Arc::new(|pid| {
            assert_ne!(pid, 1, "simulated symbolizer bug");
            PerfMap::new("/nonexistent/perf.map")
        }),
        Policy::DEFAULT,
    )
    .unwrap();
    let symbolized = symbolizer
        .symbolize_blocking(1, vec![user_stack(&[0x1234])])
        .unwrap();
    assert_eq!(names(&symbolized.stacks[0]), ["[unknown] 0x1234"]);
    assert_eq!(symbolizer.health().panics, 1);
    // The worker goes on serving other processes.
    let symbolized = symbolizer
        .symbolize_blocking(std::process::id(), vec![user_stack(&[native_addr()])])
        .unwrap();
    assert_eq!(symbolized.stacks[0][0].kind, FrameKind::Native);
}

fn kallsyms_addr(symbol: &str) -> Option<u64> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let addr = kallsyms.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (addr, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
        let is_text = kind.eq_ignore_ascii_case("t");
        (is_text && name == symbol && fields.next().is_none()).then_some(addr)
    })?;
    u64::from_str_radix(addr, 16).ok().filter(|&addr| addr != 0)
}

/// Anonymous memory, like the code space V8 allocates for JIT code.
struct AnonMapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl AnonMapping {
    fn new(len: usize) -> Self {
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        Self { addr, len }
    }

    fn addr(&self) -> u64 {
        self.addr as u64
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped, which nothing borrows.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}
