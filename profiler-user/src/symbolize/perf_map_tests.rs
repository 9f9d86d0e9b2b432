use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::*;

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn loaded(text: &str) -> (tempfile::TempDir, PerfMap) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-1.map");
    fs::write(&path, text).unwrap();
    let mut map = PerfMap::new(&path);
    map.refresh().unwrap();
    (dir, map)
}

#[test]
fn normalizes_current_js_names() {
    let cases = [
        ("JS:*fib /app/x.js:2:13", "fib /app/x.js:2:13"),
        (
            "JS:~handler node:internal/timers:500:30",
            "handler node:internal/timers:500:30",
        ),
        ("JS:^foo file:///a.mjs:1:1", "foo file:///a.mjs:1:1"),
        ("JS:+bar /x.js:3:4", "bar /x.js:3:4"),
        ("JS:+'baz /x.js:5:6", "baz /x.js:5:6"),
        ("JS:*'baz /x.js:5:6", "baz /x.js:5:6"),
        ("JS:o*loop /x.js:6:14", "loop /x.js:6:14"),
        ("JS:o+leafA /x.js:2:15", "leafA /x.js:2:15"),
        ("JS:~once /x.js:1:1", "once /x.js:1:1"),
        ("JS:~ /app/x.js:1:1", "(anonymous) /app/x.js:1:1"),
        ("JS: /app/x.js:1:1", "(anonymous) /app/x.js:1:1"),
        ("JS:get size /app/x.js:9:9", "get size /app/x.js:9:9"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_v8_name(raw), want, "for {raw:?}");
    }
}

#[test]
fn normalizes_older_node_names() {
    let cases = [
        ("LazyCompile:*fib /app/x.js:2", "fib /app/x.js:2"),
        ("LazyCompile:~fib /app/x.js:2", "fib /app/x.js:2"),
        ("Function:~ /app/x.js:1:1", "(anonymous) /app/x.js:1:1"),
        ("Script:~ /app/x.js", "(anonymous) /app/x.js"),
        ("Function:~", "(anonymous)"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_v8_name(raw), want, "for {raw:?}");
    }
}

#[test]
fn normalizes_non_function_entries() {
    let cases = [
        ("Builtin:JsonParse", "[builtin] JsonParse"),
        ("BytecodeHandler:Star0", "[bytecode] Star0"),
        ("Stub:CEntry_Return1", "[stub] CEntry_Return1"),
        ("RegExp:^(a+)+$", "[regexp] ^(a+)+$"),
        ("Handler:length", "[handler] length"),
        ("Callback:getter", "[callback] getter"),
        ("plain_symbol", "plain_symbol"),
        ("lower:case stays", "lower:case stays"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_v8_name(raw), want, "for {raw:?}");
    }
}

#[test]
fn normalized_names_are_folded_stack_safe() {
    assert_eq!(
        normalize_v8_name("  RegExp:a;b\rc  "),
        "[regexp] a:b c",
        "';' and control characters must not reach a folded stack"
    );
    assert_eq!(normalize_v8_name("JS:*f;g /x.js:1:1\t"), "f:g /x.js:1:1");
}

#[test]
fn parses_lines_and_skips_garbage() {
    let text = "\
1000 10 JS:*fib /app/x.js:2:13
0x2000 0x20 Builtin:JsonParse
not-hex 10 JS:*bad /x.js:1:1
3000 zz JS:*bad /x.js:1:1
4000 10
+5000 10 JS:*plus /x.js:1:1
6000

7000 8 LazyCompile:~old /app/y.js:7
";
    let (_dir, map) = loaded(text);
    assert_eq!(map.len(), 3);
    assert_eq!(map.bad_lines(), 5);
    assert_eq!(map.lookup(0x1000), Some("fib /app/x.js:2:13"));
    assert_eq!(map.lookup(0x100f), Some("fib /app/x.js:2:13"));
    assert_eq!(map.lookup(0x1010), None, "end is exclusive");
    assert_eq!(map.lookup(0xfff), None);
    assert_eq!(map.lookup(0x201f), Some("[builtin] JsonParse"));
    assert_eq!(map.lookup(0x7004), Some("old /app/y.js:7"));
    assert_eq!(map.lookup(0x5000), None);
}

#[test]
fn newest_overlapping_entry_wins() {
    let text = "\
1000 100 JS:*old /a.js:1:1
1200 100 JS:*kept /a.js:2:2
1080 100 JS:*new /a.js:3:3
1200 10 JS:*replaced /a.js:4:4
";
    let (_dir, map) = loaded(text);
    assert_eq!(map.lookup(0x1000), None, "old was overlapped and dropped");
    assert_eq!(map.lookup(0x1080), Some("new /a.js:3:3"));
    assert_eq!(map.lookup(0x117f), Some("new /a.js:3:3"));
    assert_eq!(map.lookup(0x1205), Some("replaced /a.js:4:4"));
    assert_eq!(map.lookup(0x1250), None, "kept was replaced at its start");
    assert_eq!(map.len(), 2);
}

#[test]
fn shares_names_across_tiers() {
    let (_dir, map) = loaded("1000 10 JS:~f /a.js:1:1\n2000 10 JS:*f /a.js:1:1\n");
    assert_eq!(map.lookup(0x1000), map.lookup(0x2000));
    assert_eq!(map.names.len(), 1);
}

#[test]
fn refresh_reads_only_appended_lines_and_waits_for_partial_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-7.map");
    append(&path, "1000 10 JS:*a /x.js:1:1\n2000 10 JS:*b /x");
    let mut map = PerfMap::new(&path);
    map.refresh().unwrap();
    assert_eq!(map.lookup(0x1000), Some("a /x.js:1:1"));
    assert_eq!(map.lookup(0x2000), None, "line still being written");
    assert_eq!(map.bad_lines(), 0);

    map.refresh().unwrap();
    assert_eq!(map.lookup(0x2000), None);

    append(&path, "y.js:2:2\n3000 10 JS:*c /z.js:3:3\n");
    map.refresh().unwrap();
    assert_eq!(map.lookup(0x2000), Some("b /xy.js:2:2"));
    assert_eq!(map.lookup(0x3000), Some("c /z.js:3:3"));
    assert_eq!(map.lookup(0x1000), Some("a /x.js:1:1"));
    assert_eq!(map.len(), 3);
    assert_eq!(map.bad_lines(), 0);
}

#[test]
fn shrunk_file_is_reloaded_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-8.map");
    append(&path, "1000 10 JS:*a /x.js:1:1\n2000 10 JS:*b /x.js:2:2\n");
    let mut map = PerfMap::new(&path);
    map.refresh().unwrap();
    assert_eq!(map.len(), 2);

    // Truncate in place so the inode stays: only the size tells.
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(b"5000 10 JS:*c /y.js:1:1\n").unwrap();
    drop(file);
    map.refresh().unwrap();
    assert_eq!(map.lookup(0x1000), None);
    assert_eq!(map.lookup(0x5000), Some("c /y.js:1:1"));
    assert_eq!(map.len(), 1);
}

#[test]
fn replaced_file_is_reloaded_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-9.map");
    append(&path, "1000 10 JS:*a /x.js:1:1\n");
    let mut map = PerfMap::new(&path);
    map.refresh().unwrap();

    // Same length, different inode: a restarted process in a fresh container.
    let replacement = dir.path().join("next.map");
    append(&replacement, "4000 10 JS:*d /x.js:1:1\n");
    fs::rename(&replacement, &path).unwrap();
    map.refresh().unwrap();
    assert_eq!(map.lookup(0x1000), None);
    assert_eq!(map.lookup(0x4000), Some("d /x.js:1:1"));
}

#[test]
fn missing_file_is_reported_and_keeps_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-10.map");
    let mut map = PerfMap::new(&path);
    assert!(matches!(map.refresh(), Err(PerfMapError::Missing { .. })));
    assert!(!map.ever_read());

    append(&path, "1000 10 JS:*a /x.js:1:1\n");
    map.refresh().unwrap();
    fs::remove_file(&path).unwrap();
    assert!(matches!(map.refresh(), Err(PerfMapError::Missing { .. })));
    assert!(map.ever_read());
    assert_eq!(map.lookup(0x1000), Some("a /x.js:1:1"));
}

#[test]
fn ns_pid_is_the_innermost_pid() {
    let status = "Name:\tnode\nTgid:\t4242\nNSpid:\t4242\t1\nPPid:\t1\n";
    assert_eq!(ns_pid_from_status(status), Some(1));
    assert_eq!(ns_pid_from_status("NSpid:\t4242\n"), Some(4242));
    assert_eq!(ns_pid_from_status("Name:\tnode\n"), None);

    // Our own mount namespace: /tmp directly, which outlives the process.
    let pid = std::process::id();
    let want = format!("/tmp/perf-{pid}.map");
    assert_eq!(perf_map_path(pid), PathBuf::from(want));
}

#[test]
fn other_mount_namespaces_are_reached_through_their_root() {
    // pid 2 is kthreadd, a kernel thread in the initial namespaces; whether
    // that is ours depends on where the tests run, so use a process we put in
    // a new mount namespace ourselves.
    let mut child = match std::process::Command::new("unshare")
        .args(["--mount", "sleep", "5"])
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("unshare (util-linux) is needed for this test: {e}"),
    };
    // `unshare` execs sleep once the namespace exists; wait for the exec.
    let pid = child.id();
    for _ in 0..100 {
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let path = perf_map_path(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        path,
        PathBuf::from(format!("/proc/{pid}/root/tmp/perf-{pid}.map"))
    );
}

/// Not a timing assertion: run with `--release -- --ignored --nocapture` to
/// see how long a long-running process's map takes to load.
#[test]
#[ignore]
fn loads_a_million_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-big.map");
    let mut text = String::new();
    // Each function appears once per tier, as V8 tiers it up.
    for i in 0..1_000_000u64 {
        let tier = ["~", "^", "+", "*"][(i % 4) as usize];
        let function = i / 4;
        text.push_str(&format!(
            "{:x} c0 JS:{tier}fn{function} /app/src/module{}.js:{}:{}\n",
            0x7f00_0000_0000u64 + i * 0x100,
            function % 100,
            function % 1000,
            function % 80
        ));
    }
    fs::write(&path, text).unwrap();
    let mut map = PerfMap::new(&path);
    let started = std::time::Instant::now();
    map.refresh().unwrap();
    eprintln!("loaded {} symbols in {:?}", map.len(), started.elapsed());
    assert_eq!(map.len(), 1_000_000);
    assert_eq!(map.names.len(), 250_000);
}

const SMALL: Limits = Limits {
    line_bytes: 64,
    read_per_refresh: 256,
    read_total: 4096,
    entries: 4,
    name_bytes: 200,
};

#[test]
fn overlong_lines_are_dropped_and_counted() {
    let mut map = PerfMap::new("/nonexistent").with_limits(SMALL);
    map.feed(b"1000 10 JS:*a /x.js:1:1\n2000 10 JS:*");
    // The second line goes on without a newline, fed in pieces.
    for _ in 0..100 {
        map.feed(&[b'b'; 50]);
    }
    assert!(map.partial_line.capacity() <= 2 * SMALL.line_bytes);
    map.feed(b" /y.js:1:1\n3000 10 JS:*c /z.js:1:1\n");
    assert_eq!(map.lookup(0x1000), Some("a /x.js:1:1"));
    assert_eq!(map.lookup(0x2000), None);
    assert_eq!(map.lookup(0x3000), Some("c /z.js:1:1"));
    assert_eq!(map.dropped_lines(), 1);
    assert_eq!(map.bad_lines(), 0);
}

#[test]
fn entries_are_capped() {
    let mut map = PerfMap::new("/nonexistent").with_limits(SMALL);
    for i in 0..10u64 {
        map.feed(format!("{:x} 10 JS:*f{i} /x.js:1:1\n", 0x1000 * (i + 1)).as_bytes());
    }
    assert_eq!(map.len(), SMALL.entries);
    assert_eq!(map.dropped_lines(), 10 - SMALL.entries);
}

#[test]
fn many_names_at_one_address_stay_bounded() {
    let mut map = PerfMap::new("/nonexistent").with_limits(SMALL);
    for i in 0..10_000u64 {
        map.feed(format!("1000 10 JS:*name{i} /x.js:1:1\n").as_bytes());
    }
    assert_eq!(map.len(), 1);
    assert!(
        map.names.bytes() <= SMALL.name_bytes,
        "{}",
        map.names.bytes()
    );
    assert_eq!(map.lookup(0x1000), Some("name9999 /x.js:1:1"));
    assert_eq!(map.dropped_lines(), 0);
}

#[test]
fn reads_are_bounded_per_refresh_and_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("perf-1.map");
    let text: String = (0..200u64)
        .map(|i| format!("{:x} 10 JS:*f /x.js:1:1\n", 0x100 * (i + 1)))
        .collect();
    fs::write(&path, &text).unwrap();
    let limits = Limits {
        entries: 1000,
        name_bytes: 1 << 20,
        ..SMALL
    };
    let mut map = PerfMap::new(&path).with_limits(limits);
    map.refresh().unwrap();
    assert_eq!(map.read_offset, limits.read_per_refresh);
    while map.read_offset < limits.read_total && map.read_offset < text.len() as u64 {
        map.refresh().unwrap();
    }
    assert!(map.read_limit_reached());
    map.refresh().unwrap();
    assert_eq!(map.read_offset, limits.read_total);
    // The unread rest is reported, once.
    map.refresh().unwrap();
    assert_eq!(map.dropped_lines(), 1);
}

/// Peak RSS a child test process may reach reading the hostile maps below
/// (its baseline is the test binary, ~10 MiB).
const RSS_CAP_KIB: i64 = 100 * 1024;

/// Reads the map named by LOOPBPF_HOSTILE_MAP under the default limits, as
/// loopbpf would, refresh after refresh; run by `huge_maps_stay_under_the_rss_cap`.
#[test]
#[ignore]
fn hostile_map_reader() {
    let Ok(path) = std::env::var("LOOPBPF_HOSTILE_MAP") else {
        return;
    };
    let mut map = PerfMap::new(&path);
    while !map.read_limit_reached() && map.read_offset < fs::metadata(&path).unwrap().len() {
        map.refresh().unwrap();
    }
    // One more, as loopbpf keeps refreshing: reads nothing past the limit.
    map.refresh().unwrap();
    println!(
        "entries {} dropped {} read {}",
        map.len(),
        map.dropped_lines(),
        map.read_offset
    );
    // This process's own peak, from its own address space: the child's
    // rusage would also count the parent's peak, whose address space a
    // vfork-style spawn borrows until exec (the parent runs other tests).
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .unwrap();
    println!("peak_rss_kib {hwm}");
}

/// A 1 TiB sparse map without a newline, and a 1 GiB line followed by a good
/// one: each read in a child process whose peak RSS is then checked.
#[test]
fn huge_maps_stay_under_the_rss_cap() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("perf-sparse.map");
    fs::File::create(&sparse).unwrap().set_len(1 << 40).unwrap();
    let long_line = dir.path().join("perf-line.map");
    {
        let mut file = fs::File::create(&long_line).unwrap();
        file.write_all(b"1000 10 JS:*").unwrap();
        // A hole: a gigabyte (less 4 KiB, to end within the read limit) of
        // NULs, no newline, costing no disk.
        file.set_len((1 << 30) - 4096 + 12).unwrap();
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).unwrap();
        file.write_all(b"\n2000 10 JS:*after /x.js:1:1\n").unwrap();
    }
    for (path, want) in [
        // The open line, and the rest past the 1 GiB read limit.
        (&sparse, "entries 0 dropped 2 read 1073741824"),
        (&long_line, "entries 1 dropped 1 read 1073737769"),
    ] {
        let (stdout, max_rss_kib) = run_reader(path);
        eprintln!(
            "{}: peak RSS {max_rss_kib} KiB: {}",
            path.display(),
            stdout.trim()
        );
        assert!(stdout.contains(want), "{}: {stdout}", path.display());
        assert!(
            max_rss_kib < RSS_CAP_KIB,
            "{}: peak RSS {max_rss_kib} KiB over {RSS_CAP_KIB} KiB",
            path.display()
        );
    }
}

fn run_reader(map: &Path) -> (String, i64) {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "symbolize::perf_map::tests::hostile_map_reader"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("LOOPBPF_HOSTILE_MAP", map)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    let peak = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the reader printed no peak_rss_kib: {stdout}"));
    (stdout, peak)
}
