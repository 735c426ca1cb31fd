//! Finds where a field sits in a YAML file, so errors found after parsing
//! (a missing kernel file, an extension without a manifest) can still name
//! the line a user has to fix.
//!
//! This is a small indentation-based locator for the block-style YAML our
//! profiles use, not a YAML parser: flow collections (`{a: 1}`) are located
//! by the key that holds them. When it cannot find a field it returns `None`
//! and the error simply carries no line.

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence position (0-based).
    Index(usize),
}

/// Parses a dotted path such as `extensions[1].dir` into segments.
pub fn path(p: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Seg::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &rest[close + 1..];
                if !rest.starts_with('[') {
                    break;
                }
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_string()));
        }
    }
    out
}

/// A line with its content's column, after any `- ` sequence markers.
struct Line<'a> {
    /// Column (0-based) where the content after dashes starts.
    indent: usize,
    /// Column (0-based) of the first non-blank character.
    raw_indent: usize,
    /// Number of `- ` markers before the content.
    dashes: usize,
    content: &'a str,
}

fn split_line(text: &str) -> Option<Line<'_>> {
    let raw_indent = text.len() - text.trim_start().len();
    let mut content = text.trim_start();
    if content.is_empty() || content.starts_with('#') || content.starts_with("---") {
        return None;
    }
    let mut indent = raw_indent;
    let mut dashes = 0;
    while let Some(rest) = content
        .strip_prefix("- ")
        .or_else(|| (content == "-").then_some(""))
    {
        let skipped = content.len() - rest.trim_start().len();
        indent += skipped;
        content = rest.trim_start();
        dashes += 1;
    }
    Some(Line {
        indent,
        raw_indent,
        dashes,
        content,
    })
}

/// Returns the 1-based (line, column) of the field at `segs`, if found.
pub fn locate(source: &str, segs: &[Seg]) -> Option<(usize, usize)> {
    let lines: Vec<Option<Line<'_>>> = source.lines().map(split_line).collect();
    // The scope is the lines after `start` whose content is indented deeper than `parent`.
    let mut start = 0usize;
    let mut parent: isize = -1;
    let mut found = None;
    for seg in segs {
        let (at, col) = match seg {
            Seg::Key(k) => find_key(&lines, start, parent, k)?,
            Seg::Index(i) => find_item(&lines, start, parent, *i)?,
        };
        found = Some((at + 1, col + 1));
        parent = col as isize;
        // A key on a dash line belongs to that item: search from the same line for the next key.
        start = if matches!(seg, Seg::Index(_)) {
            at
        } else {
            at + 1
        };
        if let Seg::Index(_) = seg {
            parent = col as isize - 1;
        }
    }
    found
}

fn find_key(
    lines: &[Option<Line<'_>>],
    start: usize,
    parent: isize,
    key: &str,
) -> Option<(usize, usize)> {
    let want = format!("{key}:");
    for (n, line) in lines.iter().enumerate().skip(start) {
        let Some(l) = line else { continue };
        let scope_col = if n == start { l.indent } else { l.raw_indent };
        if (scope_col as isize) <= parent && n != start {
            return None;
        }
        if (l.indent as isize) > parent && (l.content.starts_with(&want) || l.content == key) {
            return Some((n, l.indent));
        }
    }
    None
}

fn find_item(
    lines: &[Option<Line<'_>>],
    start: usize,
    parent: isize,
    index: usize,
) -> Option<(usize, usize)> {
    let mut seen = 0usize;
    let mut item_col: Option<usize> = None;
    for (n, line) in lines.iter().enumerate().skip(start) {
        let Some(l) = line else { continue };
        if (l.raw_indent as isize) < parent || ((l.raw_indent as isize) == parent && l.dashes == 0)
        {
            return None;
        }
        if l.dashes == 0 {
            continue;
        }
        let col = *item_col.get_or_insert(l.raw_indent);
        if l.raw_indent != col {
            continue;
        }
        if seen == index {
            return Some((n, l.indent));
        }
        seen += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: demo
kernel:
  deb: k.deb
  args: [quiet]
rootfs:
  dir: root
extensions:
  - dir: a
  - dir: b
    extra: 1
outputs: [raw]
";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(locate(DOC, &path("kernel.deb")), Some((3, 3)));
        assert_eq!(locate(DOC, &path("rootfs.dir")), Some((6, 3)));
        assert_eq!(locate(DOC, &path("outputs")), Some((11, 1)));
    }

    #[test]
    fn finds_sequence_items() {
        assert_eq!(locate(DOC, &path("extensions[0].dir")), Some((8, 5)));
        assert_eq!(locate(DOC, &path("extensions[1].dir")), Some((9, 5)));
        assert_eq!(locate(DOC, &path("extensions[1].extra")), Some((10, 5)));
    }

    #[test]
    fn keys_do_not_leak_out_of_their_scope() {
        assert_eq!(locate(DOC, &path("kernel.dir")), None);
        assert_eq!(locate(DOC, &path("extensions[2]")), None);
    }
}
