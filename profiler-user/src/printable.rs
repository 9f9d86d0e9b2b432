//! Text from watched processes (`comm`, executable and perf-map paths, V8
//! function names) is chosen by whoever runs them. Before it reaches a
//! terminal or the journal, control characters are escaped: an escape
//! sequence could rewrite the screen, a newline forge a log line, a
//! bidirectional override reorder what the operator reads. JSON output needs
//! none of this (serde escapes control characters).
use std::{borrow::Cow, fmt};

/// Characters shown as `\u{…}`: C0/C1 controls and DEL, plus the invisible
/// format characters that reorder or hide text (bidi overrides and isolates,
/// zero-width marks, the BOM).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Writes `s` with every such character escaped; a backslash is doubled so
/// an escaped sequence cannot be forged by typing one.
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(|c: char| c == '\\' || needs_escape(c)) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// `s` escaped, without copying when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.contains(|c: char| c == '\\' || needs_escape(c)) {
        Cow::Owned(Printable(s).to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// A path, lossily as UTF-8, escaped.
pub fn path(p: &std::path::Path) -> String {
    escape(&p.to_string_lossy()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(escape("node /srv/app.js"), Cow::Borrowed(_)));
        assert_eq!(escape("ünïcode 函数"), "ünïcode 函数");
    }

    #[test]
    fn escapes_newlines_terminal_sequences_and_bidi() {
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(
            escape("\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(escape("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        // A typed backslash-n is not mistaken for an escaped newline.
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        for s in ["\u{1b}", "\r", "\u{0}", "\u{7f}", "\u{2028}", "\u{85}"] {
            let out = escape(s);
            assert!(out.starts_with('\\'), "{s:?} -> {out:?}");
            assert!(!out.chars().any(needs_escape), "{s:?} -> {out:?}");
        }
    }
}
