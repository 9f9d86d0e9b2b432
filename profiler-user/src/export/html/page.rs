//! The HTML page: `page.html` (styles and script, no network at view time)
//! with the episodes inlined as JSON. The script draws the timeline, the
//! histogram, the table and, when an episode is opened, its flamegraph.
use std::{collections::HashMap, time::SystemTime};

use serde::Serialize;

use super::{stacks, Episodes, Record};

const TEMPLATE: &str = include_str!("page.html");

/// Flamegraph nodes the page holds in all: past this, older episodes are
/// listed without their flamegraph (and their files are not read), so a
/// state directory of any size gives a page a browser opens.
pub const MAX_PAGE_NODES: usize = 1_000_000;

#[derive(Serialize)]
struct PageEpisode<'a> {
    #[serde(flatten)]
    record: &'a Record,
    /// The merged stacks as a tree, three numbers a node in parent-before-
    /// child order: frame (index into `frames`), parent (node number, 0 the
    /// root, nodes counted from 1) and weight (inclusive).
    tree: Vec<u64>,
    /// Stacks left out (beyond the heaviest `MAX_STACKS`).
    stacks_dropped: usize,
    /// The flamegraph was left out to keep the page small.
    over_budget: bool,
    start_utc: String,
}

#[derive(Serialize)]
struct PageData<'a> {
    dir: String,
    generated_utc: String,
    malformed_lines: u64,
    stacks_missing: u64,
    over_budget: usize,
    /// Every distinct frame name once.
    frames: Vec<String>,
    episodes: Vec<PageEpisode<'a>>,
}

#[derive(Default)]
pub(super) struct Frames {
    pub(super) names: Vec<String>,
    index: HashMap<String, u64>,
}

impl Frames {
    fn id(&mut self, name: &str) -> u64 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u64;
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), i);
        i
    }
}

/// Folded stacks merged into a tree (shared prefixes once).
pub(super) fn tree(stacks: &[(String, u64)], frames: &mut Frames) -> Vec<u64> {
    let mut out = Vec::new();
    let mut children: HashMap<(u64, u64), u64> = HashMap::new();
    for (stack, n) in stacks {
        let mut parent = 0;
        for f in stack.split(';') {
            let frame = frames.id(f);
            let next = (out.len() / 3) as u64 + 1;
            let node = *children.entry((parent, frame)).or_insert(next);
            if node == next {
                out.extend([frame, parent, 0]);
            }
            out[(node as usize - 1) * 3 + 2] += n;
            parent = node;
        }
    }
    out
}

/// The whole page. Counts the episodes whose stacks could not be read.
pub fn render_html(e: &mut Episodes, now: SystemTime) -> String {
    let mut missing = 0;
    let mut frames = Frames::default();
    let mut nodes = 0;
    let mut over_budget = 0;
    // Newest first for the budget: they are what a reader opens the page for.
    let mut episodes: Vec<PageEpisode<'_>> = e
        .episodes
        .iter()
        .rev()
        .map(|r| {
            let mut page = PageEpisode {
                record: r,
                tree: Vec::new(),
                stacks_dropped: 0,
                over_budget: false,
                start_utc: super::utc(r.start_unix_ms),
            };
            if nodes >= MAX_PAGE_NODES {
                page.over_budget = r.samples > 0;
                over_budget += usize::from(page.over_budget);
                return page;
            }
            match stacks(&e.dir, &r.id) {
                Some((stacks, dropped)) => {
                    page.tree = tree(&stacks, &mut frames);
                    page.stacks_dropped = dropped;
                    nodes += page.tree.len() / 3;
                }
                None if r.samples > 0 => missing += 1,
                None => {}
            }
            page
        })
        .collect();
    episodes.reverse();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let data = PageData {
        dir: e.dir.display().to_string(),
        generated_utc: super::utc(now_ms),
        malformed_lines: e.malformed_lines,
        stacks_missing: missing,
        over_budget,
        frames: frames.names,
        episodes,
    };
    let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
    drop(data);
    e.stacks_missing = missing;
    // Inside <script>, "</script" or "<!--" would end or confuse the element:
    // '<' only occurs inside JSON strings, where "\u003c" means the same.
    let json = json.replace('<', "\\u003c");
    TEMPLATE.replacen("__LOOPBPF_DATA__", &json, 1)
}
