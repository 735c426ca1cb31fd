//! Findings of extension validation and the table `strata ext validate` prints.
//!
//! A [`Finding`] names the file or path inside the extension it is about, a stable rule id
//! (`talos.allowed-path`, `sysext.architecture`, ...) that tests and users can grep for, a
//! message saying what is wrong (and what the runtime would do about it) and a hint saying how
//! to fix it. Validation never stops at the first problem: every check adds its findings to a
//! [`Report`], so one run shows everything that needs fixing.
//!
//! Severity is deliberately coarse: an [`Severity::Error`] means the extension would not work
//! as intended (the runtime skips it, a service never starts, a file lands where it is not
//! allowed); a [`Severity::Warning`] means it works but something is suspicious or silently
//! ignored by the runtime; [`Severity::Info`] is a note that needs no change (an ELF file for
//! another machine that is data, not a program); [`Severity::NotChecked`] names a check that
//! could not run and the option that enables it, so a report never claims more than was
//! checked.
//!
//! Paths and messages come from untrusted extensions: [`render_table`] escapes control
//! characters in every cell, so no file name can forge a row or reach the terminal as an
//! escape sequence.

use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The extension would not work as intended; composition should refuse it.
    Error,
    /// The extension works, but something is ignored, ambiguous or fragile.
    Warning,
    /// Worth knowing, nothing to fix.
    Info,
    /// A check that could not run for want of an option or input; the finding names it.
    NotChecked,
}

impl Severity {
    /// `error`, `warning`, `info` or `not checked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
            Severity::NotChecked => "not checked",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The file or path inside the extension it is about: `manifest.yaml`,
    /// `rootfs/etc/foo`, `/usr/lib/extension-release.d/extension-release.x`, ...
    pub path: String,
    /// Stable rule id, e.g. `talos.allowed-path`.
    pub rule: &'static str,
    /// What is wrong, and what the runtime does about it.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Finding {
    /// An error finding.
    pub fn error(
        path: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Error, path, rule, message, hint)
    }

    /// A warning finding.
    pub fn warning(
        path: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, path, rule, message, hint)
    }

    /// An informational finding.
    pub fn info(
        path: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Info, path, rule, message, hint)
    }

    /// A check that could not run: `message` says which, `hint` the option that enables it.
    pub fn not_checked(
        path: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self::new(Severity::NotChecked, path, rule, message, hint)
    }

    pub(crate) fn new(
        severity: Severity,
        path: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            path: path.into(),
            rule,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Everything found in one extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The extension's name, or its path when it has no readable name.
    pub extension: String,
    /// `talos`, `sysext` or `confext`.
    pub kind: &'static str,
    /// The findings, in the order the checks ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// A report without findings yet.
    pub fn new(extension: impl Into<String>, kind: &'static str) -> Self {
        Self {
            extension: extension.into(),
            kind,
            findings: Vec::new(),
        }
    }

    /// Whether any finding is an error (composition should stop).
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }

    /// Number of error findings.
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.is_error()).count()
    }

    /// Number of findings of `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// Number of warning findings.
    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    /// Whether nothing needs fixing: no error and no warning.
    pub fn is_clean(&self) -> bool {
        self.errors() == 0 && self.warnings() == 0
    }
}

/// Column headings of [`render_table`].
const HEADINGS: [&str; 5] = ["EXTENSION", "SEVERITY", "PATH", "RULE", "MESSAGE"];

/// Renders reports as a fixed-width table, errors first, followed by a summary line.
///
/// Each finding is one row; its hint goes on the next line, under the message column, so long
/// messages never break the alignment of the columns before them. An extension without errors
/// and warnings gets one `ok` row so the table lists every extension that was checked; it says
/// "every check" only when no check was left out. Every cell is escaped ([`escape`]).
pub fn render_table(reports: &[Report]) -> String {
    let rows = table_rows(reports);
    let mut widths = HEADINGS.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.cells.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let indent: usize = widths[..4].iter().map(|w| w + 2).sum();
    let mut out = String::new();
    push_row(&mut out, &HEADINGS.map(String::from), &widths);
    for row in &rows {
        push_row(&mut out, &row.cells, &widths);
        if !row.hint.is_empty() {
            out.push_str(&" ".repeat(indent));
            out.push_str("hint: ");
            out.push_str(&row.hint);
            out.push('\n');
        }
    }
    out.push_str(&summary(reports));
    out.push('\n');
    out
}

/// The summary line: `N extensions, E errors, W warnings`, then `, I notes` and
/// `, K not checked` when there are any.
pub fn summary(reports: &[Report]) -> String {
    let total = |s: Severity| -> usize { reports.iter().map(|r| r.count(s)).sum() };
    let (errors, warnings) = (total(Severity::Error), total(Severity::Warning));
    let mut out = format!(
        "{} {}, {} {}, {} {}",
        reports.len(),
        plural(reports.len(), "extension"),
        errors,
        plural(errors, "error"),
        warnings,
        plural(warnings, "warning"),
    );
    let notes = total(Severity::Info);
    if notes > 0 {
        out.push_str(&format!(", {notes} {}", plural(notes, "note")));
    }
    let unchecked = total(Severity::NotChecked);
    if unchecked > 0 {
        out.push_str(&format!(", {unchecked} not checked"));
    }
    out
}

/// `text` with every control character (C0, DEL, C1) and bidirectional override written as
/// a Rust-style escape (`\n`, `\u{1b}`), so text from an extension cannot start a new table
/// row, move the cursor or reorder what the terminal shows. Backslashes are doubled so an
/// escape seen in the output was made here.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// One table row: the five cells and the hint printed below them.
struct Row {
    cells: [String; 5],
    hint: String,
}

/// Rows in display order: all errors (in report order), then warnings, checks not run and
/// notes, then `ok` rows; every cell escaped.
fn table_rows(reports: &[Report]) -> Vec<Row> {
    let mut rows = Vec::new();
    let order = [
        Severity::Error,
        Severity::Warning,
        Severity::NotChecked,
        Severity::Info,
    ];
    for severity in order {
        for report in reports {
            for f in report.findings.iter().filter(|f| f.severity == severity) {
                rows.push(Row {
                    cells: [
                        escape(&report.extension),
                        f.severity.to_string(),
                        escape(&f.path),
                        f.rule.to_string(),
                        escape(&f.message),
                    ],
                    hint: escape(&f.hint),
                });
            }
        }
    }
    for report in reports.iter().filter(|r| r.is_clean()) {
        let passed = if report.count(Severity::NotChecked) == 0 {
            "passed every check"
        } else {
            "passed the checks that ran (see not checked)"
        };
        rows.push(Row {
            cells: [
                escape(&report.extension),
                "ok".into(),
                "-".into(),
                "-".into(),
                format!("{} extension {passed}", report.kind),
            ],
            hint: String::new(),
        });
    }
    rows
}

fn push_row(out: &mut String, cells: &[String; 5], widths: &[usize; 5]) {
    for (i, cell) in cells.iter().enumerate() {
        out.push_str(cell);
        if i + 1 < cells.len() {
            let pad = widths[i] - cell.chars().count() + 2;
            out.push_str(&" ".repeat(pad));
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Vec<Report> {
        let mut a = Report::new("alpha", "talos");
        a.findings.push(Finding::warning(
            "manifest.yaml",
            "talos.unknown-key",
            "unknown key `foo`",
            "remove it",
        ));
        a.findings.push(Finding::error(
            "rootfs/etc/x",
            "talos.allowed-path",
            "not allowed",
            "move it",
        ));
        let b = Report::new("beta-longer-name", "sysext");
        vec![a, b]
    }

    #[test]
    fn counts_errors_and_warnings() {
        let r = report();
        assert!(r[0].has_errors());
        assert!(!r[1].has_errors());
        assert_eq!((r[0].errors(), r[0].warnings()), (1, 1));
        assert_eq!(summary(&r), "2 extensions, 1 error, 1 warning");
    }

    #[test]
    fn untrusted_text_cannot_forge_rows_or_reach_the_terminal() {
        let mut r = Report::new("evil\nbeta  ok  -", "sysext");
        r.findings.push(Finding::info(
            "/usr/share/x\n\u{1b}[2Jok\u{202e}",
            "content.foreign-elf",
            "ELF file \u{9b}31m",
            "nothing\rto do",
        ));
        let table = render_table(&[r]);
        assert_eq!(table.lines().count(), 5, "{table}");
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert!(
            table.contains("/usr/share/x\\n\\u{1b}[2Jok\\u{202e}"),
            "{table}"
        );
        assert!(table.contains("evil\\nbeta"), "{table}");
        assert_eq!(
            escape("a\\nb"),
            "a\\\\nb",
            "a literal backslash-n stays distinguishable"
        );
    }

    #[test]
    fn notes_and_unchecked_rows_never_claim_every_check_passed() {
        let mut r = Report::new("hv", "sysext");
        r.findings.push(Finding::info(
            "/usr/share/qemu/x",
            "content.foreign-elf",
            "data",
            "",
        ));
        r.findings.push(Finding::not_checked(
            "/",
            "sysext.os-id",
            "ID and VERSION_ID not checked",
            "give --os-release",
        ));
        let table = render_table(std::slice::from_ref(&r));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].contains("not checked"), "{table}");
        assert!(lines[3].contains("info"), "{table}");
        assert!(lines[4].contains("passed the checks that ran"), "{table}");
        assert!(!table.contains("every check"), "{table}");
        assert_eq!(
            summary(&[r]),
            "1 extension, 0 errors, 0 warnings, 1 note, 1 not checked"
        );
    }

    #[test]
    fn table_puts_errors_first_aligns_columns_and_lists_clean_extensions() {
        let table = render_table(&report());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "EXTENSION         SEVERITY  PATH           RULE                MESSAGE",
                "alpha             error     rootfs/etc/x   talos.allowed-path  not allowed",
                "                                                               hint: move it",
                "alpha             warning   manifest.yaml  talos.unknown-key   unknown key `foo`",
                "                                                               hint: remove it",
                "beta-longer-name  ok        -              -                   sysext extension passed every check",
                "2 extensions, 1 error, 1 warning",
            ]
        );
    }
}
