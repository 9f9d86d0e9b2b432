//! What loopbpf writes per episode, opened by the tools people use: `go tool
//! pprof` ranks the blocking JavaScript function first in the pprof profile,
//! the SVG flamegraph is well-formed XML naming it, and the HTML report of
//! the run, loaded in headless Chromium, shows every episode with its
//! function and logs no console error.

use std::{path::Path, process::Command};

use integration_tests::{contains, node_tests, tail, Run, Scenario};

node_tests!(episode_files_open_in_pprof_a_browser_and_the_report =>
    episode_files_open_in_pprof_a_browser_and_the_report_node22 = 22,
    episode_files_open_in_pprof_a_browser_and_the_report_node24 = 24,
);

const GO: &str = "/usr/bin/go";
const CHROMIUM: &str = "/usr/bin/chromium";
const FUNCTION: &str = "blockSpin";

fn episode_files_open_in_pprof_a_browser_and_the_report(major: u32) {
    let run = Scenario::new(major, "exports.js")
        .loopbpf_arg("--formats")
        .loopbpf_arg("folded,svg,pprof")
        .run();
    let block = match &run.blocks()[..] {
        [b] if b.name == FUNCTION => b.clone(),
        other => run.fail(&format!("want one {FUNCTION} block, got {other:?}")),
    };
    let Some(episode) = run
        .episodes()
        .into_iter()
        .find(|e| contains(e.span(), block.span(), 1_000_000))
    else {
        run.fail(&format!("no episode contains the {FUNCTION} block"));
    };
    let mut problems = Vec::new();
    let id = format!("{}-{}-{}", episode.pid, episode.tid, episode.start_ns);
    let file = |ext: &str| run.output.path().join(format!("{id}.{ext}"));
    for ext in ["folded", "svg", "pb.gz"] {
        if !file(ext).is_file() {
            problems.push(format!("{} was not written", file(ext).display()));
        }
    }
    if problems.is_empty() {
        problems.extend(check_pprof(&file("pb.gz")));
        problems.extend(check_svg(&file("svg")));
        problems.extend(check_report(&run));
    }
    run.check(problems);
}

/// `go tool pprof -top`: the first function listed is the blocking one.
fn check_pprof(path: &Path) -> Vec<String> {
    let home = tempfile::tempdir().expect("temp dir");
    let out = Command::new(GO)
        .args(["tool", "pprof", "-top"])
        .arg(path)
        // pprof keeps state under $HOME; go's build cache is not needed.
        .env("HOME", home.path())
        .output()
        .unwrap_or_else(|e| panic!("{GO} tool pprof (the golang-go package): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return vec![format!(
            "go tool pprof -top {} failed: {}\n{}",
            path.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        )];
    }
    // Rows follow the header `flat  flat%   sum%        cum   cum%`; the
    // function name is what follows the five figures.
    let first = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .map(|row| row.split_whitespace().skip(5).collect::<Vec<_>>().join(" "));
    match first {
        Some(f) if f == FUNCTION => vec![],
        other => vec![format!(
            "go tool pprof -top lists {other:?} first, want {FUNCTION}:\n{stdout}"
        )],
    }
}

/// inferno writes a DOCTYPE, which roxmltree refuses unless allowed.
const XML: roxmltree::ParsingOptions = roxmltree::ParsingOptions {
    allow_dtd: true,
    nodes_limit: u32::MAX,
};

fn check_svg(path: &Path) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot read {}: {e}", path.display())],
    };
    let doc = match roxmltree::Document::parse_with_options(&text, XML) {
        Ok(d) => d,
        Err(e) => return vec![format!("{} is not well-formed XML: {e}", path.display())],
    };
    let named = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .any(|t| t.starts_with(&format!("{FUNCTION} ")));
    if named {
        vec![]
    } else {
        vec![format!("{} has no frame of {FUNCTION}", path.display())]
    }
}

/// `loopbpf report` on the run's output directory, loaded in Chromium.
fn check_report(run: &Run) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let html = dir.path().join("report.html");
    let out = Command::new(integration_tests::loopbpf_bin())
        .arg("report")
        .arg(run.output.path())
        .arg("-o")
        .arg(&html)
        .output()
        .expect("running loopbpf report");
    if !out.status.success() {
        return vec![format!(
            "loopbpf report failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )];
    }
    let profile = dir.path().join("chromium-profile");
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap_or_else(|e| panic!("{CHROMIUM} (the chromium package): {e}"));
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    // The page logs nothing itself: any console line is an error or warning.
    for l in log.lines().filter(|l| l.contains(":CONSOLE(")) {
        problems.push(format!("console message in the report: {l}"));
    }
    let episodes = run.episodes();
    let saturations = run.events("threadpool_saturation").len();
    let rows = dom.matches("<tr class=\"ep\"").count();
    if rows != episodes.len() + saturations {
        problems.push(format!(
            "the report shows {rows} rows, the run had {} episodes and {saturations} saturations",
            episodes.len()
        ));
    }
    for e in &episodes {
        let id = format!("ep-{}-{}-{}", e.pid, e.tid, e.start_ns);
        let Some(at) = dom.find(&format!("id=\"{id}\"")) else {
            problems.push(format!("the report has no row {id}"));
            continue;
        };
        let row = &dom[at..dom[at..].find("</tr>").map_or(dom.len(), |end| at + end)];
        let top = e.top_frame.as_deref().unwrap_or("-");
        if !row.contains(&html_escape(top)) {
            problems.push(format!("row {id} lacks its function {top}: {row}"));
        }
    }
    if !dom.contains(FUNCTION) {
        problems.push(format!("the report never names {FUNCTION}"));
    }
    if !problems.is_empty() {
        problems.push(format!("chromium's log:\n{}", tail(&log, 30)));
    }
    problems
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
