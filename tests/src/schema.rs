//! loopbpf's JSON contract, checked on every line the kernel tests read:
//! `docs/schema/loopbpf.schema.json` (JSON Schema 2020-12) through the
//! `jsonschema` crate. A line that breaks it fails the test that read it.

use serde_json::Value;
use std::sync::OnceLock;

const SCHEMA: &str = include_str!("../../docs/schema/loopbpf.schema.json");

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA)
            .unwrap_or_else(|e| panic!("docs/schema/loopbpf.schema.json is not JSON: {e}"));
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("docs/schema/loopbpf.schema.json does not compile: {e}"))
    })
}

/// Whether `v` keeps the contract; the error names every broken rule.
pub fn validate(v: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator()
        .iter_errors(v)
        .map(|e| format!("{e} (at `{}`)", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "line breaks docs/schema/loopbpf.schema.json: {}\n  line: {v}",
            errors.join("; ")
        ))
    }
}

/// One line loopbpf wrote, parsed and validated. `Ok(None)`: not JSON at
/// all (a torn last line of a file being appended, or a log line).
pub fn loopbpf_line(line: &str) -> Result<Option<Value>, String> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Ok(None);
    };
    validate(&v).map(|()| Some(v))
}

/// Every JSON line of `lines`, validated; the first broken one is the error.
pub fn loopbpf_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for line in lines {
        if let Some(v) = loopbpf_line(line)? {
            out.push(v);
        }
    }
    Ok(out)
}

impl crate::run::Run {
    /// Every JSON line loopbpf printed and indexed keeps the contract
    /// (`docs/schema/loopbpf.schema.json`), whatever the test goes on to read.
    pub(crate) fn check_contract(&self) {
        let stdout = loopbpf_lines(self.loopbpf_stdout.iter().map(String::as_str));
        if let Err(e) = stdout {
            self.fail(&format!("loopbpf's stdout: {e}"));
        }
        let index_path = self.output.path().join("index.jsonl");
        let index = std::fs::read_to_string(&index_path).unwrap_or_default();
        let mut indexed = Vec::new();
        for line in index.lines() {
            match loopbpf_line(line) {
                Ok(Some(v)) => indexed.push(v),
                Ok(None) => self.fail(&format!("{}: not JSON: {line}", index_path.display())),
                Err(e) => self.fail(&format!("{}: {e}", index_path.display())),
            }
        }
        // The index holds what stdout reported, line for line.
        let reported: Vec<Value> = ["episode", "threadpool_saturation"]
            .iter()
            .flat_map(|kind| self.events(kind))
            .collect();
        if indexed.len() != reported.len() {
            self.fail(&format!(
                "{} has {} records, stdout {} episode and saturation lines",
                index_path.display(),
                indexed.len(),
                reported.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_the_contract_passes_and_a_broken_one_is_named() {
        let good = r#"{"type":"warning","schema_version":1,"time":"2026-11-29T17:06:21.123456Z","pid":null,"message":"disk full"}"#;
        assert!(loopbpf_line(good).unwrap().is_some());
        let old = r#"{"type":"warning","pid":null,"message":"disk full"}"#;
        let err = loopbpf_line(old).unwrap_err();
        assert!(err.contains("schema_version"), "{err}");
        assert_eq!(loopbpf_line("loading probes...").unwrap(), None);
    }
}
