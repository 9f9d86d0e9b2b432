//! `cargo xtask lint`'s layout checks: no import cycle among profiler-user's
//! modules, and no source file over `MAX_LINES` lines.
//!
//! A module is a file (`a/b.rs` and `a/b/mod.rs` are `a::b`). It depends on
//! every module a `crate::`, `super::` or `self::` path in it names (use trees
//! expanded); a module and its ancestors may name each other (that is what
//! `mod` and `super::` are for). Cycles are the strongly connected
//! components of what is left.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

pub const MAX_LINES: usize = 600;

type Module = Vec<String>;

pub fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for dir in [
        "profiler-common",
        "profiler-user",
        "profiler-ebpf",
        "xtask",
        "tests",
        "bench",
    ] {
        for file in rust_files(&root.join(dir))? {
            let lines = fs::read_to_string(&file)?.lines().count();
            if lines > MAX_LINES {
                problems.push(format!(
                    "{}: {lines} lines, over {MAX_LINES}",
                    file.strip_prefix(root).unwrap_or(&file).display()
                ));
            }
        }
    }
    for cycle in cycles(&root.join("profiler-user/src"))? {
        problems.push(format!(
            "import cycle in profiler-user: {}",
            cycle.join(" <-> ")
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let path = e?.path();
        if path.is_dir() && !path.ends_with("target") {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}

/// The import cycles among the modules under `src`, each as its module names.
pub fn cycles(src: &Path) -> Result<Vec<Vec<String>>> {
    let mut modules = BTreeMap::new();
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src)?.with_extension("");
        let mut m: Module = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            m.pop();
        }
        let text = fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        modules.insert(m, strip(&text));
    }
    let known: BTreeSet<Module> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, text) in &modules {
        let targets = edges.entry(m.clone()).or_default();
        for path in paths(m, text) {
            if let Some(t) = resolve(&known, &path) {
                let related = t.starts_with(m) || m.starts_with(&t);
                if !related {
                    targets.insert(t);
                }
            }
        }
    }
    Ok(strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.iter().map(|m| m.join("::")).collect())
        .collect())
}

/// `text` without comments and string contents.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every module path `text` (in module `m`) names through `crate::`,
/// `super::` or `self::`, use trees expanded.
fn paths(m: &Module, text: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for root in ["crate", "super", "self"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(root).map(|i| i + from) {
            from = i + root.len();
            let before = i.checked_sub(1).map(|j| bytes[j]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let rest = text[from..].trim_start();
            let Some(rest) = rest.strip_prefix("::") else {
                continue;
            };
            let mut base: Module = match root {
                "crate" => Vec::new(),
                "self" => m.clone(),
                _ => m[..m.len().saturating_sub(1)].to_vec(),
            };
            let mut rest = rest;
            // super::super::…
            while let Some(r) = rest.trim_start().strip_prefix("super") {
                match r.trim_start().strip_prefix("::") {
                    Some(r) if root == "super" => {
                        base.pop();
                        rest = r;
                    }
                    _ => break,
                }
            }
            expand(&base, rest, &mut out);
        }
    }
    out
}

/// The paths of a use tree (or a plain path) starting at `tree`.
fn expand(prefix: &Module, tree: &str, out: &mut Vec<Module>) {
    let tree = tree.trim_start();
    if let Some(inner) = tree.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let end = tree
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(tree.len());
    if end == 0 {
        out.push(prefix.clone());
        return;
    }
    let mut path = prefix.clone();
    path.push(tree[..end].to_string());
    match tree[end..].trim_start().strip_prefix("::") {
        Some(rest) => expand(&path, rest, out),
        None => out.push(path),
    }
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeSet<Module>, path: &Module) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, (usize, usize)>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, (n, n));
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let Some((w, _)) = s.edges.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.index[w].1.min(s.index[v].1);
                s.index.get_mut(v).expect("visited").1 = low;
            } else if s.on_stack.contains(w) {
                let low = s.index[w].0.min(s.index[v].1);
                s.index.get_mut(v).expect("visited").1 = low;
            }
        }
        if s.index[v].0 == s.index[v].1 {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn a_cycle_through_a_use_tree_is_found_and_parents_are_not_one() {
        let dir = std::env::temp_dir().join(format!("layout-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write(
            &dir,
            &[
                ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
                ("a/mod.rs", "pub mod x; use crate::{b::{self, B}, c::C};"),
                // A child naming its parent is no cycle.
                ("a/x.rs", "use super::A;"),
                ("b.rs", "fn f() { crate::a::x::g(); let _ = crate::a::A; }"),
                // Neither a comment nor a string is a dependency.
                (
                    "c.rs",
                    "// crate::a\nconst S: &str = \"crate::a\"; use crate::a::x::Y;",
                ),
            ],
        );
        let found = cycles(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let mut c = found[0].clone();
        c.sort();
        assert_eq!(c, ["a", "b"]);
    }
}
