//! Small text helpers shared by the parsers: quoting untrusted values in error messages and
//! turning byte offsets into line/column positions. Owns no format of its own.

use std::fmt;

/// How much of an untrusted value an error message shows. Values come from files, URLs and
/// argument vectors an attacker may control; a megabyte-long value must not become a
/// megabyte-long log line.
const SHOWN_CHARS: usize = 80;

/// Displays an untrusted value quoted, with control characters escaped and long values cut.
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(SHOWN_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        f.write_str("\"")
    }
}

/// A 1-based line and column (in characters) in a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// The position of byte `offset` in `text` (clamped to the text; a split character counts
/// as the start of that character).
pub(crate) fn position_of(text: &str, offset: usize) -> Position {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Position { line, column }
}

/// Whether `s` has characters that must never reach a name, a log line or a file as they are.
pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Levenshtein distance, for "did you mean" hints; inputs are short key names.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_quotes_escapes_and_cuts() {
        assert_eq!(Shown("a\nb").to_string(), "\"a\\nb\"");
        let long = "x".repeat(200);
        let shown = Shown(&long).to_string();
        assert_eq!(shown.chars().count(), SHOWN_CHARS + 3);
        assert!(shown.ends_with("…\""));
        assert_eq!(
            Shown(&"y".repeat(SHOWN_CHARS)).to_string().chars().count(),
            SHOWN_CHARS + 2
        );
    }

    #[test]
    fn positions_are_one_based_in_characters() {
        let text = "ab\nçd\nef";
        assert_eq!(position_of(text, 0), Position { line: 1, column: 1 });
        assert_eq!(position_of(text, 3), Position { line: 2, column: 1 });
        // 'd' sits after the two-byte 'ç'.
        assert_eq!(position_of(text, 5), Position { line: 2, column: 2 });
        assert_eq!(position_of(text, 999), Position { line: 3, column: 3 });
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("MTU", "MTU"), 0);
        assert_eq!(edit_distance("MTUs", "MTU"), 1);
        assert_eq!(edit_distance("AtpProbeCont", "AtpProbeCount"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
