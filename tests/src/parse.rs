//! The records both sides print, read from their JSON lines.

use serde_json::Value;
use std::path::PathBuf;

/// One loopbpf `episode` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub pid: u32,
    pub tid: u32,
    pub thread: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ms: f64,
    pub samples: u64,
    pub folded: Option<PathBuf>,
    pub top_frame: Option<String>,
    /// `javascript`, `native`, `blocked`, …: the breakdown's one word.
    pub verdict: Option<String>,
    /// Of `duration_ms`: on a CPU, and runnable waiting for one.
    pub on_cpu_ms: Option<f64>,
    pub runqueue_ms: Option<f64>,
}

impl Episode {
    pub fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Episode {
            pid: u64_field(v, "pid")? as u32,
            tid: u64_field(v, "tid")? as u32,
            thread: str_field(v, "thread")?.to_string(),
            start_ns: u64_field(v, "start_ns")?,
            end_ns: u64_field(v, "end_ns")?,
            duration_ms: f64_field(v, "duration_ms")?,
            samples: u64_field(v, "samples")?,
            folded: opt_str_field(v, "folded")?.map(PathBuf::from),
            top_frame: opt_str_field(v, "top_frame")?.map(str::to_string),
            verdict: opt_str_field(v, "verdict")?.map(str::to_string),
            on_cpu_ms: v.get("on_cpu_ms").and_then(Value::as_f64),
            runqueue_ms: v.get("runqueue_ms").and_then(Value::as_f64),
        })
    }

    pub fn span(&self) -> (u64, u64) {
        (self.start_ns, self.end_ns)
    }
}

/// One `{"block":…}` line of a test script: its own measurement of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub ms: f64,
}

impl Block {
    pub fn from_json(v: &Value) -> Result<Self, String> {
        Ok(Block {
            name: str_field(v, "block")?.to_string(),
            start_ns: u64_field(v, "start_ns")?,
            end_ns: u64_field(v, "end_ns")?,
            ms: f64_field(v, "ms")?,
        })
    }

    pub fn span(&self) -> (u64, u64) {
        (self.start_ns, self.end_ns)
    }
}

/// Whether two half-open `[start, end)` intervals share any instant.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether `outer` contains `inner`, allowing `slack_ns` at either end.
pub fn contains(outer: (u64, u64), inner: (u64, u64), slack_ns: u64) -> bool {
    outer.0 <= inner.0 + slack_ns && inner.1 <= outer.1 + slack_ns
}

/// One line of a folded-stacks file: `root;…;leaf COUNT`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedStack {
    pub frames: Vec<String>,
    pub count: u64,
}

/// Frames may contain spaces (`fib /abs/x.js:2:13`), so the count is what
/// follows the last space.
pub fn parse_folded(text: &str) -> Result<Vec<FoldedStack>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let (stack, count) = line
                .trim_end()
                .rsplit_once(' ')
                .ok_or_else(|| format!("line {}: no count in `{line}`", i + 1))?;
            let count = count
                .parse()
                .map_err(|_| format!("line {}: `{count}` is not a count in `{line}`", i + 1))?;
            Ok(FoldedStack {
                frames: stack.split(';').map(str::to_string).collect(),
                count,
            })
        })
        .collect()
}

/// Samples (by count) with at least one frame containing `name`.
pub fn samples_with_frame(stacks: &[FoldedStack], name: &str) -> u64 {
    stacks
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.contains(name)))
        .map(|s| s.count)
        .sum()
}

pub fn total_samples(stacks: &[FoldedStack]) -> u64 {
    stacks.iter().map(|s| s.count).sum()
}

/// `"type"` of a JSON line, if it is a JSON object with one.
pub fn line_type(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v.get("type")?.as_str().map(str::to_string)
}

/// Nanosecond stamps come as numbers or, from JavaScript BigInts, as strings.
pub fn u64_field(v: &Value, key: &str) -> Result<u64, String> {
    let field = v.get(key).ok_or_else(|| format!("no `{key}` in {v}"))?;
    let parsed = match field {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("`{key}` is not an unsigned integer in {v}"))
}

pub fn f64_field(v: &Value, key: &str) -> Result<f64, String> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("`{key}` is missing or not a number in {v}"))
}

pub fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{key}` is missing or not a string in {v}"))
}

fn opt_str_field<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{key}` is neither a string nor null in {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn episode_reads_the_documented_line() {
        let line = r#"{"type":"episode","pid":10,"tid":10,"thread":"main","start_ns":5,"end_ns":9,
            "duration_ms":201.5,"samples":40,"folded":"/o/e1.folded","top_frame":"fib /x.js:2:13"}"#;
        let e = Episode::from_json(&serde_json::from_str(line).unwrap()).unwrap();
        assert_eq!(e.span(), (5, 9));
        assert_eq!(e.duration_ms, 201.5);
        assert_eq!(e.folded, Some(PathBuf::from("/o/e1.folded")));
        assert_eq!(e.top_frame.as_deref(), Some("fib /x.js:2:13"));
    }

    #[test]
    fn episode_accepts_null_folded_and_top_frame() {
        let v = json!({"pid":1,"tid":2,"thread":"main","start_ns":1,"end_ns":2,
            "duration_ms":60,"samples":0,"folded":null,"top_frame":null});
        let e = Episode::from_json(&v).unwrap();
        assert_eq!((e.folded, e.top_frame), (None, None));
    }

    #[test]
    fn episode_without_a_field_is_an_error_naming_it() {
        let v = json!({"pid":1,"tid":2,"thread":"main","start_ns":1,"end_ns":2,"samples":0});
        assert!(Episode::from_json(&v).unwrap_err().contains("duration_ms"));
    }

    #[test]
    fn block_stamps_may_be_strings() {
        let v =
            json!({"block":"blockRegex","start_ns":"18446744073709551615","end_ns":"2","ms":1.5});
        let b = Block::from_json(&v).unwrap();
        assert_eq!(
            (b.name.as_str(), b.start_ns, b.ms),
            ("blockRegex", u64::MAX, 1.5)
        );
    }

    #[test]
    fn u64_field_rejects_negative_fractional_and_text() {
        for bad in [
            json!({"x":-1}),
            json!({"x":1.5}),
            json!({"x":"12a"}),
            json!({"x":true}),
        ] {
            assert!(u64_field(&bad, "x").is_err(), "{bad}");
        }
        assert_eq!(u64_field(&json!({"x":3.0}), "x"), Ok(3));
    }

    #[test]
    fn overlap_and_containment() {
        assert!(overlaps((0, 10), (9, 20)));
        assert!(!overlaps((0, 10), (10, 20)), "touching is not overlapping");
        assert!(overlaps((5, 6), (0, 100)));
        assert!(contains((10, 20), (10, 20), 0));
        assert!(!contains((10, 20), (9, 20), 0));
        assert!(contains((10, 20), (9, 21), 1));
    }

    #[test]
    fn folded_frames_keep_their_spaces() {
        let text = "node::Start;processTimers node:internal/timers:504:25;fib /abs/x.js:2:13 7\n\
                    \n\
                    node::Start;[unknown] 3\n";
        let stacks = parse_folded(text).unwrap();
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].frames[2], "fib /abs/x.js:2:13");
        assert_eq!(stacks[0].count, 7);
        assert_eq!(total_samples(&stacks), 10);
        assert_eq!(samples_with_frame(&stacks, "fib"), 7);
        assert_eq!(samples_with_frame(&stacks, "node::Start"), 10);
    }

    #[test]
    fn folded_line_without_count_is_an_error_with_its_line_number() {
        let err = parse_folded("a;b 1\na;b\n").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
    }

    #[test]
    fn line_type_of_json_and_other_text() {
        assert_eq!(
            line_type(r#"{"type":"ready","pids":[1]}"#).as_deref(),
            Some("ready")
        );
        assert_eq!(line_type("loading probes..."), None);
        assert_eq!(line_type(r#"{"script":"ready"}"#), None);
    }
}
