//! Every line type against `docs/schema/loopbpf.schema.json`: it validates,
//! and its keys come in the documented order (`type`, `schema_version`,
//! `time`, then its type's `required` list, then the daemon's labels).
use std::{fmt, path::PathBuf};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::*;
use crate::{
    assembly::{episode::Episode as RawEpisode, threadpool::PoolEpisode, threads::ThreadInfo},
    export::{frames::HotFrame, report::LoopSummary},
};

const SCHEMA: &str = include_str!("../../../docs/schema/loopbpf.schema.json");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema compiles")
}

/// Why `line` does not validate (empty: it does).
fn errors(line: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(line).expect("a JSON line");
    validator()
        .iter_errors(&v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The top-level keys of a JSON object, in the order written (serde_json's
/// `Value` sorts them).
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// The documented key order of a line of type `kind`.
fn documented_order(kind: &str, labels: bool) -> Vec<String> {
    let schema = schema();
    let required = schema["$defs"][kind]["required"]
        .as_array()
        .unwrap_or_else(|| panic!("no required list for {kind}"));
    let mut keys: Vec<String> = ["type", "schema_version", "time"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    keys.extend(required.iter().map(|k| k.as_str().unwrap().to_owned()));
    if labels {
        let l = ["comm", "exe", "container", "pod", "namespace", "cgroup"];
        keys.extend(l.iter().map(|s| s.to_string()));
    }
    keys
}

/// Validates `line` and checks its key order.
fn check(line: &str, kind: &str, labels: bool) {
    let errors = errors(line);
    assert!(errors.is_empty(), "{line}\n{}", errors.join("\n"));
    let keys = serde_json::from_str::<Keys>(line).unwrap().0;
    assert_eq!(keys, documented_order(kind, labels), "{line}");
}

fn clock() -> WallClock {
    WallClock::with_offset(1_764_435_981_123_456_789)
}

fn raw_episode() -> RawEpisode {
    RawEpisode {
        pid: 1,
        tid: 2,
        seq: 3,
        start_ns: 1_000_000,
        end_ns: 213_400_000,
        busy_ns: 212_400_123,
        samples: 40,
        samples_without_stack: 0,
        stacks: vec![],
        blocked_ns: 200_000_000,
        runq_ns: 0,
        off_cpu_stacks: vec![],
        ongoing: false,
    }
}

fn episode_report() -> EpisodeReport {
    let mut r = EpisodeReport::new(
        raw_episode(),
        ThreadRole::Main,
        Some("node".into()),
        vec![],
        vec![],
    );
    r.top_frame = Some(HotFrame {
        name: "fib /srv/a.js:2:13".into(),
        kind: FrameKind::Js,
        samples: 30,
        share: 0.75,
    });
    r.files = vec![PathBuf::from("/o/1-2-1000000.folded")];
    r.folded_path = r.files.first().cloned();
    r
}

fn labels() -> ProcessLabels {
    ProcessLabels {
        comm: "node".into(),
        exe: "/usr/bin/node".into(),
        container: None,
        pod: None,
        namespace: None,
        cgroup: "0::/system.slice/app.service".into(),
    }
}

fn pool_report() -> PoolReport {
    PoolReport {
        episode: PoolEpisode {
            pid: 7,
            start_ns: 5_000_000,
            end_ns: 305_000_000,
            pool_size: 4,
            workers: vec![8, 9, 10, 11],
            items: 12,
            samples: 200,
            samples_without_stack: 0,
            stacks: vec![],
            ongoing: true,
        },
        stacks: vec![],
        top_frame: None,
        top_work: Some(HotFrame {
            name: "node::crypto::PBKDF2Traits::DeriveBits".into(),
            kind: FrameKind::Native,
            samples: 190,
            share: 0.95,
        }),
        folded_path: None,
        files: vec![],
        folded_error: Some("writing /o failed: no space left on device".into()),
    }
}

fn process_summary(threadpool: Option<PoolSummary>) -> ProcessSummary {
    let main = LoopFigures {
        iterations: 10,
        busy_ns: 80_000_000,
        idle_ns: 20_000_000,
        utilization: 0.8,
        p99_ns: 5_000_000,
        max_ns: 60_000_000,
        episodes: 1,
        ..Default::default()
    };
    ProcessSummary {
        pid: 9,
        comm: "node".into(),
        loops: vec![LoopSummary {
            tid: 9,
            role: ThreadRole::Main,
            figures: main,
        }],
        samples: 12,
        episodes_reported: 1,
        exited: true,
        kernel: Default::default(),
        threadpool,
        v8_names: None,
        symbolizer: Default::default(),
        threads: vec![ThreadInfo {
            tid: 9,
            name: "node".into(),
            role: ThreadRole::Main,
            evidence: Evidence::MainThread,
            stack_words: vec![],
        }],
    }
}

#[test]
fn ready_line() {
    let startup = StartupMs(vec![
        ("btf".into(), 41.2),
        ("load:sched_switch".into(), 177.0),
    ]);
    let line = ready(&[1, 2], 50_000_000, 199, SyscallProbes::Tracepoint, startup).to_json();
    check(&line, "ready", false);
    // The phases keep the order they ran in.
    assert!(line.find("\"btf\"").unwrap() < line.find("load:sched_switch").unwrap());
}

#[test]
fn warning_lines_with_and_without_a_pid() {
    check(
        &warning(Some(3), "pid 3: no perf map").to_json(),
        "warning",
        false,
    );
    check(&warning(None, "disk full").to_json(), "warning", false);
}

#[test]
fn error_line() {
    let line = error("pid 4: no such process", 1).to_json();
    check(&line, "error", false);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["exit_code"], 1);
}

#[test]
fn stall_line() {
    let line = stall(1, 2, ThreadRole::Worker, 1_000, 60_001_000, &clock()).to_json();
    check(&line, "stall", false);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["busy_so_far_ms"], 60.0);
    assert_eq!(v["start_time"], "2025-11-29T17:06:21.123457Z");
}

#[test]
fn episode_line_carries_the_documented_fields() {
    let line = episode(&episode_report(), &clock()).to_json();
    check(&line, "episode", false);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], "1-2-1000000");
    assert_eq!(v["verdict"], "blocked");
    assert_eq!(v["off_cpu_ms"], 200.0);
    // The text's precision: microseconds.
    assert_eq!(v["duration_ms"], 212.4);
    assert_eq!(v["on_cpu_ms"], 12.4);
    assert_eq!(v["thread"], "main");
    assert_eq!(v["start_ns"], 1_000_000);
    assert_eq!(v["top_frame_kind"], "js");
    assert_eq!(v["top_frame_share"], 0.75);
    assert_eq!(v["folded"], "/o/1-2-1000000.folded");
}

#[test]
fn episode_without_stacks_has_nulls_not_missing_keys() {
    let r = EpisodeReport::new(raw_episode(), ThreadRole::Main, None, vec![], vec![]);
    check(&episode(&r, &clock()).to_json(), "episode", false);
}

#[test]
fn daemon_episode_record_adds_the_process_labels_last() {
    let mut line = episode(&episode_report(), &clock());
    line.body.process = Some(labels());
    check(&line.to_json(), "episode", true);
}

#[test]
fn summary_line_puts_the_main_loop_first_and_top_level() {
    let line = summary(&process_summary(None)).to_json();
    check(&line, "summary", false);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["iterations"], 10);
    assert_eq!(v["busy_p99_ms"], 5.0);
    assert_eq!(v["loops"][0]["thread"], "main");
    assert_eq!(v["thread_roles"]["main"], 1);
    assert!(v["threadpool"].is_null());
}

#[test]
fn summary_line_with_a_threadpool() {
    let pool = PoolSummary {
        tracked: true,
        size: 4,
        size_source: "UV_THREADPOOL_SIZE",
        utilization: 0.123456,
        ..Default::default()
    };
    let line = summary(&process_summary(Some(pool))).to_json();
    check(&line, "summary", false);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["threadpool"]["utilization"], 0.1235);
}

#[test]
fn threadpool_saturation_line_and_record() {
    let line = pool_saturation(&pool_report(), &clock());
    check(&line.to_json(), "threadpool_saturation", false);
    let mut record = pool_saturation(&pool_report(), &clock());
    record.body.process = Some(labels());
    check(&record.to_json(), "threadpool_saturation", true);
}

#[test]
fn threadpool_saturated_line() {
    let line = pool_saturated(7, 4, 1_000, 90_000_000, &clock()).to_json();
    check(&line, "threadpool_saturated", false);
}

#[test]
fn threadpool_utilization_line_is_timed_at_its_window_end() {
    let p = UtilizationPoint {
        pid: 7,
        time_ns: 2_000_000_000,
        window_ns: 1_000_000_000,
        utilization: 1.0,
        busy_workers: 4,
        pool_size: 4,
        items_per_s: 12.345,
    };
    let line = pool_utilization(&p, &clock()).to_json();
    check(&line, "threadpool_utilization", false);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["time"], "2025-11-29T17:06:23.123456Z");
    assert_eq!(v["items_per_s"], 12.3);
}

#[test]
fn the_schema_refuses_what_the_contract_forbids() {
    let good = episode(&episode_report(), &clock()).to_json();
    let mut v: Value = serde_json::from_str(&good).unwrap();
    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut v = v.clone();
        edit(&mut v);
        !errors(&v.to_string()).is_empty()
    };
    assert!(bad(&|v| v["schema_version"] = 2.into()), "another version");
    assert!(bad(&|v| v["made_up"] = 1.into()), "an unknown key");
    assert!(
        bad(&|v| v["duration_ms"] = "12".into()),
        "a string duration"
    );
    assert!(
        bad(&|v| v["start_time"] = "2025-11-29 17:06:21".into()),
        "not RFC 3339"
    );
    assert!(bad(&|v| v["gc_share"] = 1.5.into()), "a share over 1");
    assert!(
        bad(&|v| v["comm"] = "node".into()),
        "half the daemon's labels"
    );
    assert!(bad(&|v| v["type"] = "episodes".into()), "an unknown type");
    v.as_object_mut().unwrap().remove("verdict");
    assert!(!errors(&v.to_string()).is_empty(), "a missing key");
}

#[test]
fn stored_records_read_back_as_the_same_lines() {
    let mut record = episode(&episode_report(), &clock());
    record.body.process = Some(labels());
    let record = record.to_json();
    assert_eq!(
        stored_record(record.as_bytes()).as_deref(),
        Some(record.as_str())
    );
    let pool = pool_saturation(&pool_report(), &clock()).to_json();
    assert_eq!(
        stored_record(pool.as_bytes()).as_deref(),
        Some(pool.as_str())
    );
    let older = record.replace(r#""schema_version":1"#, r#""schema_version":0"#);
    assert_eq!(stored_record(older.as_bytes()), None);
    let summary = summary(&process_summary(None)).to_json();
    assert_eq!(stored_record(summary.as_bytes()), None, "not a record type");
    assert_eq!(stored_record(b"{\"torn"), None);
}

#[test]
fn rounding_keeps_microseconds_and_never_writes_nan() {
    assert_eq!(ms(1_234_567), 1.235);
    assert_eq!(ms(999), 0.001);
    assert_eq!(share(f64::NAN), 0.0);
    assert_eq!(utilization(f64::INFINITY), 0.0);
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
}
