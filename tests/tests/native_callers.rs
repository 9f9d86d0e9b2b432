//! Blocks spent in native code without frame pointers (OpenSSL, zlib,
//! glibc's futex and open wrappers, an addon built with
//! -fomit-frame-pointer) still name the JavaScript that called them: user
//! stacks are unwound from a copy of the stack with unwind tables, and JIT
//! code by frame pointer (issue 16).

use integration_tests::checks::folded_with_stacks;
use integration_tests::{node_tests, overlaps, Episode, FoldedStack, Run, Scenario};
use std::path::{Path, PathBuf};
use std::process::Command;

node_tests!(native_code_keeps_its_javascript_callers =>
    native_code_keeps_its_javascript_callers_node20 = 20,
    native_code_keeps_its_javascript_callers_node22 = 22,
    native_code_keeps_its_javascript_callers_node24 = 24,
    native_code_keeps_its_javascript_callers_node26 = 26,
);

const BLOCKS: [&str; 6] = [
    "blockPbkdf2",
    "blockScrypt",
    "blockGzip",
    "blockAtomicsWait",
    "blockReadSlowFile",
    "blockAddonFutex",
];
const MIN_SHARE: f64 = 0.9;

/// Builds tests/node/futex_addon.c into `dir` the way addons usually are:
/// optimised, without frame pointers.
fn build_addon(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/futex_addon.c");
    let out = dir.join("futex_addon.node");
    let status = Command::new("gcc")
        // N-API symbols stay undefined: node provides them at load time.
        .args(["-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running gcc: {e}"));
    assert!(status.success(), "gcc failed to build {}", src.display());
    out
}

fn native_code_keeps_its_javascript_callers(major: u32) {
    let dir = tempfile::Builder::new()
        .prefix("loopbpf-test-addon-")
        .tempdir()
        .unwrap();
    let addon = build_addon(dir.path());
    let run = Scenario::new(major, "native_callers.js")
        .node_env("LOOPBPF_TEST_ADDON", addon.to_str().unwrap())
        .run();
    let blocks = run.blocks();
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    if names != BLOCKS || blocks.iter().any(|b| b.ms < 150.0) {
        run.fail(&format!(
            "native_callers.js did not run its blocks for >= 150 ms each: {blocks:?}"
        ));
    }
    let episodes = run.episodes();
    let maps = run.script_result("maps");
    let code = CodeRegions::parse(maps["maps"].as_str().unwrap_or(""));
    if code.0.is_empty() {
        run.fail("native_callers.js printed no executable mappings");
    }
    let mut problems = Vec::new();
    for block in &blocks {
        let matching: Vec<&Episode> = episodes
            .iter()
            .filter(|e| overlaps(e.span(), block.span()))
            .collect();
        match matching[..] {
            [e] => problems.extend(check(&run, &block.name, e)),
            _ => problems.push(format!(
                "{}: {} overlapping episodes, want 1",
                block.name,
                matching.len()
            )),
        }
    }
    // Every sample of the run, in or out of the blocks: a frame nothing
    // could name is shown by where its address lies; that must be
    // executable memory (JIT code), an executable mapping of a file or the
    // kernel. Anything else was made up by a bad unwind.
    for e in &episodes {
        let Ok(stacks) = run.folded(e) else {
            continue;
        };
        for s in &stacks {
            if let Some(f) = s.frames.iter().find(|f| !code.admits(f)) {
                problems.push(format!("frame `{f}` is not code: {}", s.frames.join(";")));
            }
        }
    }
    run.check(problems);
}

/// The caller is in >= 90% of the samples (on-CPU, and off-CPU converted at
/// the sampling rate) and is `top_frame`. Time waiting for a CPU after a
/// preemption has no stack by design (`[runqueue]` alone) and is left out of
/// the share.
fn check(run: &Run, name: &str, e: &Episode) -> Vec<String> {
    let mut problems = Vec::new();
    let stacks: Vec<FoldedStack> = match folded_with_stacks(run, e) {
        Ok(s) => s,
        Err(err) => return vec![format!("{name}: {err}")],
    };
    let total: u64 = stacks.iter().map(|s| s.count).sum();
    let hits: u64 = stacks
        .iter()
        .filter(|s| s.frames.iter().any(|f| f.starts_with(name)))
        .map(|s| s.count)
        .sum();
    let shown = || {
        let mut heaviest = stacks.clone();
        heaviest.sort_by_key(|s| std::cmp::Reverse(s.count));
        heaviest
            .iter()
            .take(4)
            .map(|s| format!("{} {}", s.frames.join(";"), s.count))
            .collect::<Vec<_>>()
            .join("\n        ")
    };
    if total == 0 || (hits as f64) < MIN_SHARE * total as f64 {
        problems.push(format!(
            "{name}: {hits} of {total} samples name it, want >= {:.0}%; heaviest:\n        {}",
            MIN_SHARE * 100.0,
            shown()
        ));
    }
    if !e.top_frame.as_deref().is_some_and(|t| t.starts_with(name)) {
        problems.push(format!("{name}: top_frame {:?}, want {name}", e.top_frame));
    }
    problems
}

/// The executable mappings of the node process, as it printed them.
struct CodeRegions(Vec<Region>);

struct Region {
    start: u64,
    end: u64,
    offset: u64,
    /// Empty for anonymous memory.
    path: String,
}

impl CodeRegions {
    fn parse(maps: &str) -> Self {
        let regions = maps
            .lines()
            .filter_map(|line| {
                let mut f = line.splitn(6, ' ');
                let (start, end) = f.next()?.split_once('-')?;
                let perms = f.next()?;
                let offset = u64::from_str_radix(f.next()?, 16).ok()?;
                let path = f.nth(2).unwrap_or("").trim().to_owned();
                (perms.as_bytes().get(2) == Some(&b'x')).then_some(())?;
                Some(Region {
                    start: u64::from_str_radix(start, 16).ok()?,
                    end: u64::from_str_radix(end, 16).ok()?,
                    offset,
                    path,
                })
            })
            .collect();
        CodeRegions(regions)
    }

    /// Whether a frame is code: named frames come from the symbols of code
    /// (ELF symbols, the perf map, V8's heap), markers are loopbpf's own; an
    /// `[unknown]` frame is checked against the executable mappings.
    fn admits(&self, frame: &str) -> bool {
        let Some(rest) = frame.strip_prefix("[unknown] ") else {
            return true;
        };
        let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
        if rest.starts_with("[kernel] 0x") {
            return true;
        }
        if let Some(addr) = rest.strip_prefix("[anon] ").and_then(hex) {
            return self
                .0
                .iter()
                .any(|r| r.path.is_empty() && (r.start..r.end).contains(&addr));
        }
        // `/path+0xOFFSET`: a file offset inside an executable mapping of it.
        if let Some((path, off)) = rest.rsplit_once('+') {
            if path.starts_with('/') {
                return hex(off).is_some_and(|off| {
                    self.0.iter().any(|r| {
                        r.path == path && r.offset <= off && off - r.offset < r.end - r.start
                    })
                });
            }
        }
        // `[vdso] 0xADDR` and the like: the address must be executable.
        rest.rsplit_once(' ')
            .and_then(|(_, a)| hex(a))
            .is_some_and(|addr| self.0.iter().any(|r| (r.start..r.end).contains(&addr)))
    }
}
