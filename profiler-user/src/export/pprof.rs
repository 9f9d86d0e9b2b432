//! A pprof profile of an episode (`.pb.gz`: gzipped protobuf, the format of
//! Go's pprof, Parca and Pyroscope). Three values per sample: `samples`
//! (on-CPU stack samples), `cpu` (their time, at the episode's measured
//! on-CPU time per sample) and `wall` (on-CPU plus time asleep or waiting
//! for a CPU); `cpu` is the default, so `go tool pprof -top` ranks the code
//! that ran, and `-sample_index=wall` adds the time off the CPU under
//! `[off-cpu]`/`[runqueue]` leaves. JavaScript frames are functions with
//! their file and line. Labels: thread, thread_name, verdict, episode, state
//! (on-cpu, off-cpu, runqueue), and pid/tid as numbers.
use std::{collections::HashMap, io::Write};

use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::common::{source_frame, ExportError, Format, Profile, State};

pub struct Pprof;

impl Format for Pprof {
    const NAME: &'static str = "pprof";
    const EXT: &'static str = "pb.gz";
    fn render(p: &Profile) -> Result<Vec<u8>, ExportError> {
        let bytes = build(p).encode_to_vec();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&bytes)
            .and_then(|()| gz.finish())
            .map_err(|source| ExportError::Render {
                format: "pprof",
                source,
            })
    }
}

/// The messages of pprof's `profile.proto` that loopbpf writes, derived by
/// hand (tags as in github.com/google/pprof/proto/profile.proto).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

#[derive(Default)]
struct Builder {
    out: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    /// A location per (function, line, column).
    locations: HashMap<(u64, i64, i64), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.out.string_table.len() as i64;
        self.out.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn location(
        &mut self,
        name: &str,
        file: Option<&str>,
        line: Option<u32>,
        col: Option<u32>,
    ) -> u64 {
        let name = self.string(name);
        let filename = file.map(|f| self.string(f)).unwrap_or(0);
        let next_fn = self.out.function.len() as u64 + 1;
        let function_id = *self.functions.entry((name, filename)).or_insert(next_fn);
        if function_id == next_fn {
            self.out.function.push(proto::Function {
                id: function_id,
                name,
                system_name: name,
                filename,
                start_line: 0,
            });
        }
        let (line, col) = (i64::from(line.unwrap_or(0)), i64::from(col.unwrap_or(0)));
        let next_loc = self.out.location.len() as u64 + 1;
        let id = *self
            .locations
            .entry((function_id, line, col))
            .or_insert(next_loc);
        if id == next_loc {
            self.out.location.push(proto::Location {
                id,
                line: vec![proto::Line {
                    function_id,
                    line,
                    column: col,
                }],
            });
        }
        id
    }

    fn label_str(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.string(key),
            str: self.string(value),
            ..Default::default()
        }
    }

    fn label_num(&mut self, key: &str, num: i64) -> proto::Label {
        proto::Label {
            key: self.string(key),
            num,
            ..Default::default()
        }
    }
}

pub fn build(p: &Profile) -> proto::Profile {
    let mut b = Builder::default();
    b.string("");
    let types = [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
        ("wall", "nanoseconds"),
    ];
    for (t, unit) in types {
        let vt = proto::ValueType {
            r#type: b.string(t),
            unit: b.string(unit),
        };
        b.out.sample_type.push(vt);
    }
    b.out.default_sample_type = b.string("cpu");
    b.out.period_type = Some(proto::ValueType {
        r#type: b.string("cpu"),
        unit: b.string("nanoseconds"),
    });
    b.out.period = p.period_ns as i64;
    b.out.time_nanos = p.start_unix_ns;
    b.out.duration_nanos = p.duration_ns as i64;
    let comments = [p.headline.clone(), p.detail.clone()];
    b.out.comment = comments.iter().map(|c| b.string(c)).collect();

    let mut common = vec![
        b.label_str("episode", &p.id),
        b.label_str("thread", &p.thread),
        b.label_num("pid", i64::from(p.pid)),
    ];
    if let Some(tid) = p.tid {
        common.push(b.label_num("tid", i64::from(tid)));
    }
    if let Some(name) = &p.thread_name {
        common.push(b.label_str("thread_name", name));
    }
    if let Some(v) = &p.verdict {
        common.push(b.label_str("verdict", v));
    }
    for s in &p.stacks {
        let mut ids: Vec<u64> = Vec::with_capacity(s.frames.len() + 2);
        if let Some(marker) = s.state.marker() {
            ids.push(b.location(marker, None, None, None));
        }
        let frames: Vec<_> = p.frames(s).collect();
        for f in frames.iter().rev() {
            let sf = source_frame(f);
            ids.push(b.location(sf.function, sf.file, sf.line, sf.column));
        }
        if ids.is_empty() {
            ids.push(b.location("[no stack]", None, None, None));
        }
        let cpu = if s.state == State::OnCpu || s.state == State::NotKept {
            s.ns
        } else {
            0
        };
        let mut label = common.clone();
        label.push(b.label_str("state", s.state.as_str()));
        b.out.sample.push(proto::Sample {
            location_id: ids,
            value: vec![s.samples as i64, cpu as i64, s.ns as i64],
            label,
        });
    }
    b.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_decodes_with_functions_files_lines_and_labels() {
        let gz = Pprof::render(&super::super::svg::tests::profile()).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        let p = proto::Profile::decode(&raw[..]).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<_> = p.sample_type.iter().map(|t| s(t.r#type)).collect();
        assert_eq!(types, ["samples", "cpu", "wall"]);
        assert_eq!(s(p.default_sample_type), "cpu");
        // The on-CPU sample: leaf first, the JS function with file and line.
        let first = &p.sample[0];
        assert_eq!(first.value, [20, 210_000_000, 210_000_000]);
        let leaf = &p.location[(first.location_id[0] - 1) as usize];
        let f = &p.function[(leaf.line[0].function_id - 1) as usize];
        assert_eq!(
            (s(f.name), s(f.filename), leaf.line[0].line),
            ("blockSpin", "/a.js", 3)
        );
        let labels: Vec<(&str, &str)> = first
            .label
            .iter()
            .filter(|l| l.str != 0)
            .map(|l| (s(l.key), s(l.str)))
            .collect();
        for want in [
            ("episode", "7-7-100"),
            ("thread", "main"),
            ("verdict", "javascript"),
            ("state", "on-cpu"),
        ] {
            assert!(labels.contains(&want), "{want:?} not in {labels:?}");
        }
        // Off-CPU time: no cpu value, wall time under an [off-cpu] leaf.
        let off = &p.sample[1];
        assert_eq!(off.value, [0, 0, 90_000_000]);
        let leaf = &p.location[(off.location_id[0] - 1) as usize];
        assert_eq!(
            s(p.function[(leaf.line[0].function_id - 1) as usize].name),
            "[off-cpu]"
        );
        // `main /a.js:1:1` is one function in both stacks.
        let mains = p.function.iter().filter(|f| s(f.name) == "main").count();
        assert_eq!(mains, 1);
    }
}
