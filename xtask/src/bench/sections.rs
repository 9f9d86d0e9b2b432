//! BENCHMARKS.md is written by more than one command: `cargo xtask bench`
//! writes the machine, results, method, time and commands sections, and
//! `vm-test --bench` writes the emulated section; figures pasted from a
//! `--only X --no-write` run get sections of their own. A rewrite replaces
//! only the sections it writes and keeps every other one, in its old order.

/// The `## ` sections of a markdown text: (heading line, whole section
/// including the heading). Text before the first heading is not a section.
fn sections(text: &str) -> Vec<(&str, &str)> {
    let mut starts: Vec<usize> = Vec::new();
    if text.starts_with("## ") {
        starts.push(0);
    }
    starts.extend(text.match_indices("\n## ").map(|(i, _)| i + 1));
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(text.len());
            let section = &text[start..end];
            let heading = section.lines().next().unwrap_or_default();
            (heading, section)
        })
        .collect()
}

/// `new` followed by each section of `old` whose heading `new` lacks.
pub fn keep_other_sections(new: &str, old: &str) -> String {
    let written: Vec<&str> = sections(new).into_iter().map(|(h, _)| h).collect();
    let mut out = new.trim_end().to_string();
    for (heading, section) in sections(old) {
        if !written.contains(&heading) {
            out.push_str("\n\n");
            out.push_str(section.trim_end());
        }
    }
    out.push('\n');
    out
}

/// `old` with the section headed `heading` replaced by `section` (appended
/// when `old` has none).
pub fn replace_section(old: &str, heading: &str, section: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    if let Some(i) = old.find("\n## ") {
        out.push_str(old[..i].trim_end());
    } else if !old.starts_with("## ") {
        out.push_str(old.trim_end());
    }
    for (h, s) in sections(old) {
        out.push_str("\n\n");
        if h == heading {
            out.push_str(section.trim_end());
            replaced = true;
        } else {
            out.push_str(s.trim_end());
        }
    }
    if !replaced {
        out.push_str("\n\n");
        out.push_str(section.trim_end());
    }
    out.trim_start().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "# title\n\nintro\n\n## Results\n\nold rows\n\n## emulated\n\nguest table\n\n## Unwind cost\n\npasted\n";

    #[test]
    fn a_rewrite_keeps_the_sections_it_does_not_write() {
        let new = "# title\n\nintro 2\n\n## Results\n\nnew rows\n";
        assert_eq!(
            keep_other_sections(new, OLD),
            "# title\n\nintro 2\n\n## Results\n\nnew rows\n\n## emulated\n\nguest table\n\n## Unwind cost\n\npasted\n"
        );
    }

    #[test]
    fn a_section_is_replaced_in_place_and_the_rest_kept() {
        assert_eq!(
            replace_section(OLD, "## emulated", "## emulated\n\nnew guest table\n"),
            "# title\n\nintro\n\n## Results\n\nold rows\n\n## emulated\n\nnew guest table\n\n## Unwind cost\n\npasted\n"
        );
        assert_eq!(
            replace_section("# title\n", "## emulated", "## emulated\n\nt\n"),
            "# title\n\n## emulated\n\nt\n"
        );
    }
}
