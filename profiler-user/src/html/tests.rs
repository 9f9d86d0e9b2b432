//! Reading directories for the report: filters, damage, hostile files.
use std::{os::unix::fs::symlink, time::UNIX_EPOCH};

use super::*;

const NOW_MS: u64 = 1_800_000_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS)
}

fn line(id: &str, pid: u32, ago_ms: u64, top: &str) -> String {
    format!(
        r#"{{"type":"episode","pid":{pid},"tid":{pid},"thread":"main","id":"{id}","start_unix_ms":{},"start_ns":1,"duration_ms":120.5,"verdict":"javascript","on_cpu_ms":100.0,"off_cpu_ms":20.5,"runqueue_ms":0.0,"samples":3,"top_frame":"{top}","top_frame_share":0.9}}"#,
        NOW_MS - ago_ms
    )
}

fn dir_with(lines: &[String]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("index.jsonl"), lines.join("\n") + "\n").unwrap();
    dir
}

#[test]
fn filters_by_pid_and_age_and_skips_damage() {
    let dir = dir_with(&[
        line("1-1-1", 1, 7_200_000, "old"),
        line("2-2-2", 2, 60_000, "recent"),
        line("1-1-3", 1, 30_000, "newest"),
        "{\"torn".into(),
        line("../../etc-x", 1, 1, "escape"),
    ]);
    let all = read(dir.path(), &Filter::default(), now()).unwrap();
    let ids: Vec<&str> = all.episodes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["1-1-1", "2-2-2", "1-1-3"]);
    assert_eq!(all.malformed_lines, 2);
    let filter = Filter {
        since: Some(Duration::from_secs(3600)),
        pids: vec![1],
        lines: false,
    };
    let some = read(dir.path(), &filter, now()).unwrap();
    let ids: Vec<&str> = some.episodes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["1-1-3"]);
    let table = table(&some);
    assert!(
        table.contains("newest") && table.contains("120.500"),
        "{table}"
    );
    assert!(table.contains("2027-01-15"), "{table}");
}

#[test]
fn a_directory_without_index_says_so_and_a_linked_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = read(dir.path(), &Filter::default(), now()).unwrap_err();
    assert!(err.to_string().contains("no index.jsonl"), "{err}");
    let other = dir_with(&[line("1-1-1", 1, 1, "x")]);
    symlink(
        other.path().join("index.jsonl"),
        dir.path().join("index.jsonl"),
    )
    .unwrap();
    let err = read(dir.path(), &Filter::default(), now()).unwrap_err();
    assert!(err.to_string().contains("index.jsonl"), "{err}");
}

#[test]
fn stacks_come_from_either_layout_heaviest_first_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("1-1-1.folded"), "a;b 1\na;c 5\nbad line\n").unwrap();
    let (stacks, dropped) = stacks(dir.path(), "1-1-1").unwrap();
    assert_eq!(stacks, [("a;c".to_string(), 5), ("a;b".to_string(), 1)]);
    assert_eq!(dropped, 0);
    fs::create_dir(dir.path().join("episodes")).unwrap();
    let many: String = (0..MAX_STACKS + 7)
        .map(|i| format!("f{i} {}\n", i + 1))
        .collect();
    fs::write(dir.path().join("episodes/1-1-2.folded"), many).unwrap();
    let (stacks, dropped) = super::stacks(dir.path(), "1-1-2").unwrap();
    assert_eq!((stacks.len(), dropped), (MAX_STACKS, 7));
    assert_eq!(stacks[0].1, MAX_STACKS as u64 + 7);
    assert!(super::stacks(dir.path(), "9-9-9").is_none());
}

#[test]
fn the_page_inlines_every_episode_and_cannot_be_broken_out_of() {
    let dir = dir_with(&[
        line("1-1-1", 1, 10, "blockSpin /a.js:1:1"),
        line("1-1-2", 1, 5, "</script><script>alert(1)</script>"),
    ]);
    fs::write(
        dir.path().join("1-1-1.folded"),
        "main;blockSpin /a.js:1:1 3\n",
    )
    .unwrap();
    let out = dir.path().join("report.html");
    let n = write_report(dir.path(), &Filter::default(), &out, now()).unwrap();
    assert_eq!(n, 2);
    let html = fs::read_to_string(&out).unwrap();
    assert!(!html.contains("__LOOPBPF_DATA__"));
    assert!(html.contains("\"blockSpin /a.js:1:1\""));
    // The hostile name is data, not markup: one closing tag per script element.
    assert_eq!(html.matches("</script>").count(), 2, "{html}");
    // Self-contained: nothing is fetched at view time.
    assert!(
        !html.contains(" src=") && !html.contains("href="),
        "external resource"
    );
    // 1 of 2 episodes has samples but no stacks file.
    assert!(html.contains("\"stacks_missing\":1"));
}

#[test]
fn stacks_merge_into_a_tree_with_shared_prefixes_once() {
    let mut frames = page::Frames::default();
    let t = page::tree(
        &[("a;b".into(), 3), ("a;c".into(), 2), ("d".into(), 1)],
        &mut frames,
    );
    // Nodes: 1 a (root child, 5), 2 b (under a, 3), 3 c (under a, 2), 4 d (root, 1).
    assert_eq!(t, [0, 0, 5, 1, 1, 3, 2, 1, 2, 3, 0, 1]);
    assert_eq!(frames.names, ["a", "b", "c", "d"]);
}

/// Lines of the JSON contract (schema_version 1) are read as written: the
/// start comes from `start_time` (RFC 3339), the rest by name.
#[test]
fn records_of_the_json_contract_are_read_with_their_start_time() {
    use crate::{
        episode::Episode,
        export::{json, text::WallClock},
        report::EpisodeReport,
        target::ThreadRole,
    };
    let e = Episode {
        pid: 4,
        tid: 5,
        seq: 1,
        start_ns: 1_000_000_000,
        end_ns: 1_200_000_000,
        busy_ns: 200_000_000,
        samples: 0,
        samples_without_stack: 0,
        stacks: vec![],
        blocked_ns: 0,
        runq_ns: 0,
        off_cpu_stacks: vec![],
        ongoing: false,
    };
    // CLOCK_MONOTONIC 1 s is a minute before `now()` on the wall.
    let clock = WallClock::with_offset(i128::from(NOW_MS - 60_000) * 1_000_000 - 1_000_000_000);
    let report = EpisodeReport::new(e, ThreadRole::Main, None, vec![], vec![]);
    let written = json::episode(&report, &clock).to_json();
    let old = line("1-1-1", 1, 30_000, "old");
    let dir = dir_with(&[written.clone(), old]);
    let filter = Filter {
        since: Some(Duration::from_secs(120)),
        pids: vec![],
        lines: true,
    };
    let read = read(dir.path(), &filter, now()).unwrap();
    assert_eq!(read.malformed_lines, 0);
    let r = &read.episodes[0];
    assert_eq!(
        (r.id.as_str(), r.pid, r.tid, r.start_unix_ms, r.duration_ms),
        ("4-5-1000000000", 4, Some(5), NOW_MS - 60_000, 200.0)
    );
    assert_eq!(r.kind, "episode");
    // `loopbpf episodes --json` gives the line back as written; a record
    // of before the contract has none.
    assert_eq!(r.line.as_deref(), Some(written.as_str()));
    assert_eq!(read.episodes[1].line, None);
}
