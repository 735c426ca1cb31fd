//! A cheap lexical scan that runs before any YAML strata reads from a user
//! or an untrusted source is handed to the YAML parser.
//!
//! The parser's cost grows with the square of the nesting depth (200 KB of
//! `[` took 34 s), and an alias (`*name`) lets a small file expand without
//! bound ("billion laughs"). Neither is needed by a profile or a Talos
//! extension's YAML, so the scan refuses them, in one pass over the text and
//! with the line and column of the first offence, before the parser starts:
//!
//! - more bytes than the caller's limit;
//! - nesting (block indentation levels, sequence dashes and flow brackets
//!   together) deeper than the caller's limit;
//! - aliases (`*name`, including merge keys `<<: *name`).
//!
//! It understands just enough YAML to skip quoted scalars, plain scalars,
//! comments and block scalars (`|`, `>`), so `[` or `*` inside a string is
//! not mistaken for syntax. It accepts a superset of valid YAML; whatever it
//! lets through is still parsed, and judged, by the real parser.

/// How much of a file the scan accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of collections.
    pub max_depth: usize,
}

/// Profiles, Talos `manifest.yaml` and service files are a few KiB; these
/// limits are far above any real one and far below where parsing gets slow.
pub const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_depth: 64,
};

/// Why a YAML text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The text is larger than the limit.
    #[error(
        "the file has {size} bytes, more than the {limit} bytes strata reads from a YAML file"
    )]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// Collections nest deeper than the limit.
    #[error("collections nest deeper than {limit} levels")]
    TooDeep {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The limit.
        limit: usize,
    },
    /// An alias.
    #[error("YAML alias `*{name}`: aliases are not accepted, because they let a small file expand without bound")]
    Alias {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The anchor name.
        name: String,
    },
}

impl GuardError {
    /// The 1-based (line, column) of the offence, when it has one.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            GuardError::TooLarge { .. } => None,
            GuardError::TooDeep { line, column, .. } | GuardError::Alias { line, column, .. } => {
                Some((*line, *column))
            }
        }
    }

    /// The message with its position in front, for callers that report
    /// errors as text (the Talos rules show it as a YAML syntax error).
    pub fn located(&self) -> String {
        match self.position() {
            Some((line, column)) => format!("line {line} column {column}: {self}"),
            None => self.to_string(),
        }
    }

    /// What the writer of the file should do.
    pub fn hint(&self) -> &'static str {
        match self {
            GuardError::TooLarge { .. } => {
                "a real file is a few KiB: check that this is the right file"
            }
            GuardError::TooDeep { .. } => {
                "flatten the structure; no file strata reads nests this deep"
            }
            GuardError::Alias { .. } => "write the value out instead of referring to an anchor",
        }
    }
}

/// Refuses `text` if it breaks `limits` (see the module documentation).
pub fn check(text: &str, limits: Limits) -> Result<(), GuardError> {
    if text.len() > limits.max_bytes {
        return Err(GuardError::TooLarge {
            size: text.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let mut scan = Scan {
        limits,
        indents: Vec::new(),
        flow: 0,
        quote: None,
        block_scalar: None,
    };
    for (n, line) in text.split('\n').enumerate() {
        scan.line(n + 1, line.strip_suffix('\r').unwrap_or(line))?;
    }
    Ok(())
}

/// State carried from one line to the next.
struct Scan {
    limits: Limits,
    /// Columns of the open block collections.
    indents: Vec<usize>,
    /// Open flow brackets.
    flow: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<char>,
    /// Inside a block scalar whose parent line had this indentation.
    block_scalar: Option<usize>,
}

/// Where the character scan of a line stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// Where a node may start.
    TokenStart,
    /// After a node, before an indicator.
    AfterNode,
    /// Inside a plain (unquoted) scalar.
    Plain,
}

impl Scan {
    fn line(&mut self, n: usize, line: &str) -> Result<(), GuardError> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = &line[indent..];
        if let Some(parent) = self.block_scalar {
            if content.trim().is_empty() || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_none() && self.flow == 0 {
            if content.is_empty() || content.starts_with('#') || line.starts_with('%') {
                return Ok(());
            }
            if line.starts_with("---") || line.starts_with("...") {
                self.indents.clear();
                return self.chars(n, line, 3, indent);
            }
            while self.indents.last().is_some_and(|&c| c > indent) {
                self.indents.pop();
            }
            if self.indents.last() != Some(&indent) {
                self.indents.push(indent);
                self.depth(n, indent)?;
            }
        }
        self.chars(n, line, indent, indent)
    }

    /// Fails when the open collections are more than the limit.
    fn depth(&self, line: usize, col: usize) -> Result<(), GuardError> {
        if self.indents.len() + self.flow > self.limits.max_depth {
            return Err(GuardError::TooDeep {
                line,
                column: col + 1,
                limit: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// Scans `line` from byte `from`; `indent` is the line's indentation.
    fn chars(
        &mut self,
        n: usize,
        line: &str,
        from: usize,
        indent: usize,
    ) -> Result<(), GuardError> {
        let bytes = line.as_bytes();
        let blank_at = |i: usize| i >= bytes.len() || bytes[i] == b' ' || bytes[i] == b'\t';
        let mut at = At::TokenStart;
        let mut i = from;
        while i < bytes.len() {
            let c = bytes[i];
            if let Some(q) = self.quote {
                i = self.in_quote(bytes, i, q);
                if self.quote.is_none() {
                    at = At::AfterNode;
                }
                continue;
            }
            let flow_end = self.flow > 0 && matches!(c, b',' | b']' | b'}');
            if at == At::Plain && !flow_end {
                if c == b':' && (blank_at(i + 1) || self.flow > 0) {
                    at = At::TokenStart;
                } else if c == b'#' && i > 0 && blank_at(i - 1) {
                    return Ok(());
                }
                i += 1;
                continue;
            }
            match c {
                b' ' | b'\t' => {}
                b'#' if i == 0 || blank_at(i - 1) => return Ok(()),
                b'\'' | b'"' if at == At::TokenStart => self.quote = Some(c as char),
                b'[' | b'{' => {
                    self.flow += 1;
                    self.depth(n, i)?;
                    at = At::TokenStart;
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    at = At::AfterNode;
                }
                b',' => at = At::TokenStart,
                b'&' | b'!' if at == At::TokenStart => i = name_end(bytes, i + 1) - 1,
                b'*' if at == At::TokenStart => {
                    let end = name_end(bytes, i + 1);
                    return Err(GuardError::Alias {
                        line: n,
                        column: i + 1,
                        name: line[i + 1..end].to_string(),
                    });
                }
                b'|' | b'>' if at == At::TokenStart && self.flow == 0 => {
                    self.block_scalar = Some(indent);
                    return Ok(());
                }
                b'-' | b'?' | b':' if blank_at(i + 1) => {
                    if c == b'-' && self.flow == 0 {
                        self.indents.push(i + 2);
                        self.depth(n, i)?;
                    }
                    at = At::TokenStart;
                }
                _ if at == At::TokenStart => at = At::Plain,
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    /// Advances inside a quoted scalar from `i`; returns the next position
    /// and clears `quote` at the closing quote.
    fn in_quote(&mut self, bytes: &[u8], i: usize, q: char) -> usize {
        let c = bytes[i];
        if q == '"' && c == b'\\' {
            return i + 2;
        }
        if c == q as u8 {
            if q == '\'' && bytes.get(i + 1) == Some(&b'\'') {
                return i + 2;
            }
            self.quote = None;
        }
        i + 1
    }
}

/// The end of an anchor, alias or tag name starting at `i`.
fn name_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b',' | b'[' | b']' | b'{' | b'}') {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn ok(text: &str) {
        check(text, LIMITS).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }

    #[test]
    fn ordinary_yaml_passes() {
        ok("name: a\nos: {id: strata, version: 1.0.0}\nkernel:\n  args: [quiet, 'x=*y', \"[\"]\n");
        ok("a:\n  - b: 1\n    c: [1, [2, {d: e}]]\n  - - x\n    - y\n");
        ok("title: a *star and & and [ inside a plain scalar # comment *x\n");
        ok("s: |\n  [[[[ *x\n  more\nt: >-\n  {{{\nu: 'it''s *'\nv: \"a\\\"*\"\n");
        ok("---\na: 1\n---\nb: &anchor 2\n");
        ok("key: \"multi\n  line [ *\"\nnext: 1\n");
    }

    #[test]
    fn aliases_are_refused_with_their_position() {
        let e = check("a: &x [1, 2]\nb: *x\n", LIMITS).unwrap_err();
        assert_eq!(e.position(), Some((2, 4)));
        assert!(e.to_string().contains("alias `*x`"), "{e}");
        let e = check("a: &x {k: 1}\nb:\n  <<: *x\n", LIMITS).unwrap_err();
        assert_eq!(e.position(), Some((3, 7)));
        assert!(check("l: [a, *x]\n", LIMITS).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let t = Instant::now();
        let flow = format!("a: {}", "[".repeat(200_000));
        let e = check(&flow, LIMITS).unwrap_err();
        assert_eq!(e.position(), Some((1, 3 + 64)));
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let e = check(&block, LIMITS).unwrap_err();
        assert_eq!(e.position(), Some((65, 65)));
        let dashes = format!("{}x\n", "- ".repeat(100));
        assert!(matches!(
            check(&dashes, LIMITS),
            Err(GuardError::TooDeep { .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(1));
        let fine: String = (0..60)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        ok(&fine);
    }

    #[test]
    fn large_files_are_refused() {
        let big = format!("a: {}\n", "x".repeat(LIMITS.max_bytes));
        assert!(matches!(
            check(&big, LIMITS),
            Err(GuardError::TooLarge { .. })
        ));
    }
}
