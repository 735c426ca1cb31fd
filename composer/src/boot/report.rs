//! The report of booting many artefacts: a table for people, JUnit XML for CI servers, JSON
//! for scripts. All three say the same: one suite per build (`<profile>/<arch>/<platform>`),
//! one case per artefact, in the order the artefacts were named.
//!
//! The JUnit XML follows the Jenkins/Ant layout that Jenkins, GitLab and the GitHub Actions
//! test reporters read (`tests/junit.xsd` is the schema the tests check it against): a failed
//! case has a `<failure>` (the guest's verdict, or an artefact that could not be booted) or an
//! `<error>` (the machine could not run QEMU) whose text is the reason and the tail of the
//! serial log; its log files are attached by path as `[[ATTACHMENT|path]]` lines in
//! `<system-out>`, the convention of Jenkins' attachments plugin and of GitLab.

use super::many::{Case, Outcome};
use crate::error::ErrorKind;
use serde_json::json;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Serial-log lines a failure carries.
const TAIL_LINES: usize = 40;
/// How much of the serial log's end is read for them (the log is never read whole).
const TAIL_BYTES: u64 = 16 << 10;

/// The cases of one `strata boot` run, in the order the artefacts were named.
pub struct Report {
    /// Every case.
    pub cases: Vec<Case>,
    /// When the run started (seconds since the epoch).
    pub started: u64,
    /// The machine it ran on.
    pub hostname: String,
}

/// The cases of one build.
struct Suite<'a> {
    name: &'a str,
    cases: Vec<&'a Case>,
}

impl Report {
    /// True when every case passed (and there was at least one).
    pub fn pass(&self) -> bool {
        !self.cases.is_empty() && self.cases.iter().all(Case::pass)
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.pass()).count()
    }

    /// The cases grouped by build, builds in order of first appearance.
    fn suites(&self) -> Vec<Suite<'_>> {
        let mut suites: Vec<(&Path, &str, &str, Suite)> = Vec::new();
        for c in &self.cases {
            let t = &c.target;
            let key = (t.dir.as_path(), t.arch.as_str(), t.platform.as_str());
            match suites.iter_mut().find(|s| (s.0, s.1, s.2) == key) {
                Some(s) => s.3.cases.push(c),
                None => suites.push((
                    key.0,
                    key.1,
                    key.2,
                    Suite {
                        name: &t.suite,
                        cases: vec![c],
                    },
                )),
            }
        }
        suites.into_iter().map(|s| s.3).collect()
    }

    /// One line per artefact under a header, then the count.
    pub fn table(&self) -> String {
        let head = [
            "ARTEFACT", "ARCH", "PLATFORM", "MEDIA", "VERDICT", "TIME", "REASON",
        ];
        let rows: Vec<[String; 7]> = self
            .cases
            .iter()
            .map(|c| {
                let t = &c.target;
                [
                    t.artefact.display().to_string(),
                    t.arch.clone(),
                    t.platform.clone(),
                    t.media.clone(),
                    verdict(c).to_string(),
                    format!("{:.1} s", c.seconds),
                    c.reason().to_string(),
                ]
            })
            .collect();
        let mut widths = head.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let _ = write!(l, "{cell:<0$}  ", widths[i]);
                }
            }
            l.trim_end().to_string() + "\n"
        };
        let mut out = line(&head);
        for r in &rows {
            out.push_str(&line(&r.each_ref().map(String::as_str)));
        }
        let _ = writeln!(
            out,
            "{} of {} artefact(s) passed",
            self.cases.len() - self.failed(),
            self.cases.len()
        );
        out
    }

    /// The JUnit XML document.
    pub fn junit(&self) -> String {
        let suites = self.suites();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"strata boot\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">",
            self.cases.len(),
            self.cases.iter().filter(|c| failure_kind(c) == Some("failure")).count(),
            self.cases.iter().filter(|c| failure_kind(c) == Some("error")).count(),
            self.cases.iter().map(|c| c.seconds).sum::<f64>(),
        );
        for (id, s) in suites.iter().enumerate() {
            self.junit_suite(&mut x, id, s);
        }
        x.push_str("</testsuites>\n");
        x
    }

    fn junit_suite(&self, x: &mut String, id: usize, s: &Suite) {
        let count = |k| {
            s.cases
                .iter()
                .filter(|c| failure_kind(c) == Some(k))
                .count()
        };
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" package=\"strata\" id=\"{id}\" timestamp=\"{}\" hostname=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{:.3}\">",
            escape(s.name),
            crate::date::rfc3339(self.started).trim_end_matches('Z'),
            escape(&self.hostname),
            s.cases.len(),
            count("failure"),
            count("error"),
            s.cases.iter().map(|c| c.seconds).sum::<f64>(),
        );
        let t = &s.cases[0].target;
        x.push_str("    <properties>\n");
        for (k, v) in [("arch", &t.arch), ("platform", &t.platform)] {
            let _ = writeln!(x, "      <property name=\"{k}\" value=\"{}\"/>", escape(v));
        }
        x.push_str("    </properties>\n");
        for c in &s.cases {
            junit_case(x, c);
        }
        x.push_str("    <system-out></system-out>\n    <system-err></system-err>\n");
        x.push_str("  </testsuite>\n");
    }

    /// The same as JSON: the counts, and each case with its boot result when the guest ran.
    pub fn json(&self) -> serde_json::Value {
        let suites: Vec<_> = self
            .suites()
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "tests": s.cases.len(),
                    "failed": s.cases.iter().filter(|c| !c.pass()).count(),
                    "cases": s.cases.iter().map(|c| case_json(c)).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "pass": self.pass(),
            "tests": self.cases.len(),
            "failed": self.failed(),
            "started": crate::date::rfc3339(self.started),
            "hostname": self.hostname,
            "suites": suites,
        })
    }
}

fn case_json(c: &Case) -> serde_json::Value {
    let t = &c.target;
    let (result, error) = match &c.outcome {
        Outcome::Booted(r) => (serde_json::to_value(r).unwrap_or_default(), None),
        Outcome::Refused { kind, .. } => (serde_json::Value::Null, Some(kind_name(*kind))),
    };
    json!({
        "artefact": t.artefact,
        "arch": t.arch,
        "platform": t.platform,
        "media": t.media,
        "memory_mib": t.memory_mib,
        "pass": c.pass(),
        "verdict": verdict(c),
        "seconds": c.seconds,
        "reason": c.reason(),
        "error": error,
        "logs": logs(c),
        "result": result,
    })
}

/// `PASS`, `FAIL` (the guest's verdict, or a bad artefact) or `ERROR` (QEMU could not run).
fn verdict(c: &Case) -> &'static str {
    match failure_kind(c) {
        None => "PASS",
        Some("error") => "ERROR",
        Some(_) => "FAIL",
    }
}

/// The JUnit element of a failed case: `failure` when the artefact or its guest is at fault,
/// `error` when the machine is (QEMU or firmware missing, I/O).
fn failure_kind(c: &Case) -> Option<&'static str> {
    match &c.outcome {
        Outcome::Booted(r) if r.pass => None,
        Outcome::Booted(_) => Some("failure"),
        Outcome::Refused {
            kind: ErrorKind::Environment | ErrorKind::Io | ErrorKind::Source,
            ..
        } => Some("error"),
        Outcome::Refused { .. } => Some("failure"),
    }
}

fn kind_name(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::InvalidInput => "invalid-input",
        ErrorKind::Source => "source",
        ErrorKind::Environment => "environment",
        ErrorKind::Io => "io",
        ErrorKind::Format => "format",
        ErrorKind::BootFailed => "boot-failed",
    }
}

/// The run's log files that exist: serial log, QEMU's log, result.json.
fn logs(c: &Case) -> Vec<PathBuf> {
    let dir = c.work_dir();
    ["serial.log", "qemu.log", "result.json"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

fn junit_case(x: &mut String, c: &Case) {
    let t = &c.target;
    let name = t.artefact.file_name().map_or_else(
        || t.artefact.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let _ = writeln!(
        x,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">",
        escape(&name),
        escape(&format!("strata.{}", t.suite.replace(['/', '.'], "_"))),
        c.seconds
    );
    if let Some(kind) = failure_kind(c) {
        let mut body = c.reason().to_string();
        let serial = c.work_dir().join("serial.log");
        if let Some(tail) = tail(&serial) {
            let _ = write!(body, "\n\nlast lines of {}:\n{tail}", serial.display());
        }
        let _ = writeln!(
            x,
            "      <{kind} message=\"{}\" type=\"{}\">{}</{kind}>",
            escape(c.reason()),
            failure_type(c),
            escape(&body)
        );
    }
    let mut out = format!("artefact: {}\n", t.artefact.display());
    let _ = writeln!(
        out,
        "device model: {}, memory: {} MiB",
        t.media, t.memory_mib
    );
    for log in logs(c) {
        let _ = writeln!(out, "[[ATTACHMENT|{}]]", log.display());
    }
    let _ = writeln!(x, "      <system-out>{}</system-out>", escape(&out));
    x.push_str("    </testcase>\n");
}

/// The `type` of a failure: what kind of problem it was.
fn failure_type(c: &Case) -> &'static str {
    match &c.outcome {
        Outcome::Booted(_) => "verdict",
        Outcome::Refused { kind, .. } => kind_name(*kind),
    }
}

/// The last [`TAIL_LINES`] lines of a log, read from its last [`TAIL_BYTES`]; `None` when
/// it is missing or empty.
pub fn tail(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

/// `s` as XML 1.0 text or attribute value: markup characters become references, and the
/// characters XML 1.0 cannot carry at all (control characters a serial console is full of,
/// such as ESC of colour codes) become `\xNN` text, so the document always parses.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(ch),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// This machine's host name, for the report (`localhost` when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::many::Target;

    #[test]
    fn escaping_keeps_markup_and_control_characters_out() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1b}[0m\r\n\t"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\\x1b[0m&#13;\n\t"
        );
        assert_eq!(escape("]]> \u{0} é"), "]]&gt; \\x00 é");
    }

    #[test]
    fn the_tail_is_the_last_lines_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = tail(&log).unwrap();
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("line 4999"), "{tail}");
        assert!(tail.starts_with(&format!("line {}", 5000 - TAIL_LINES)));
        std::fs::write(&log, "").unwrap();
        assert_eq!(super::tail(&log), None);
        assert_eq!(super::tail(&dir.path().join("none")), None);
    }

    fn case(dir: &Path, file: &str, platform: &str, outcome: Outcome) -> Case {
        Case {
            target: Target {
                artefact: dir.join(file),
                suite: format!("p/amd64/{platform}"),
                dir: dir.to_path_buf(),
                arch: "amd64".into(),
                platform: platform.into(),
                media: "virtio-blk".into(),
                memory_mib: 1024,
            },
            outcome,
            seconds: 1.25,
        }
    }

    fn refused(kind: ErrorKind, message: &str) -> Outcome {
        Outcome::Refused {
            kind,
            message: message.into(),
        }
    }

    #[test]
    fn cases_group_into_one_suite_per_build_and_failures_carry_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("b.iso.boot")).unwrap();
        std::fs::write(
            d.join("b.iso.boot/serial.log"),
            "boot\n\u{1b}[1mpanic <x>\n",
        )
        .unwrap();
        let r = Report {
            cases: vec![
                case(
                    d,
                    "a.raw",
                    "metal",
                    refused(ErrorKind::InvalidInput, "sum & size"),
                ),
                case(
                    d,
                    "c.raw",
                    "aws",
                    refused(ErrorKind::Environment, "no qemu"),
                ),
                case(d, "b.iso", "metal", refused(ErrorKind::Format, "bad iso")),
            ],
            started: 1_700_000_000,
            hostname: "h".into(),
        };
        assert!(!r.pass());
        let x = r.junit();
        assert_eq!(x.matches("<testsuite ").count(), 2, "{x}");
        assert!(x.contains("<testsuite name=\"p/amd64/metal\" package=\"strata\" id=\"0\" timestamp=\"2023-11-14T22:13:20\" hostname=\"h\" tests=\"2\" failures=\"2\" errors=\"0\""), "{x}");
        assert!(x.contains("tests=\"3\" failures=\"2\" errors=\"1\""), "{x}");
        assert!(
            x.contains("<failure message=\"sum &amp; size\" type=\"invalid-input\">"),
            "{x}"
        );
        assert!(
            x.contains("<error message=\"no qemu\" type=\"environment\">"),
            "{x}"
        );
        assert!(x.contains("\\x1b[1mpanic &lt;x&gt;</failure>"), "{x}");
        let serial = d.join("b.iso.boot/serial.log");
        assert!(
            x.contains(&format!("[[ATTACHMENT|{}]]", serial.display())),
            "{x}"
        );
        let j = r.json();
        assert_eq!(j["tests"], 3);
        assert_eq!(j["failed"], 3);
        assert_eq!(
            j["suites"][0]["cases"][1]["artefact"],
            d.join("b.iso").display().to_string()
        );
        assert_eq!(j["suites"][1]["cases"][0]["verdict"], "ERROR");
        assert_eq!(j["suites"][0]["cases"][0]["error"], "invalid-input");
        let table = r.table();
        assert!(table.starts_with("ARTEFACT"), "{table}");
        assert!(table.contains("FAIL") && table.contains("ERROR"), "{table}");
        assert!(table.ends_with("0 of 3 artefact(s) passed\n"), "{table}");
    }

    /// A report with a pass, a failed verdict, a refused artefact and a machine error, each
    /// with awkward text, is valid by the JUnit schema; and the schema does reject a document
    /// that breaks it, so the check means something.
    #[test]
    fn junit_is_valid_by_the_schema() {
        if !crate::test_support::require_tool("xmllint") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("v.raw.boot")).unwrap();
        std::fs::write(d.join("v.raw.boot/serial.log"), "\u{1b}[0m]]> & \u{7}\r\n").unwrap();
        let booted = |pass: bool| {
            Outcome::Booted(Box::new(strata_qemu::BootResult {
                pass,
                reason: if pass {
                    "all <2> layers".into()
                } else {
                    "extension \"m\" not reported".into()
                },
                events: vec![],
                layers: vec![],
                accel: "tcg".into(),
                firmware: "/fw".into(),
                duration_secs: 17.5,
                ended_by: "guest-poweroff".into(),
                phases: vec![],
                shutdown_reason: None,
                unreadable_lines: vec![],
                qemu_killed: false,
                guest_resets: 0,
                serial_log: d.join("v.raw.boot/serial.log"),
                qemu_log: d.join("v.raw.boot/qemu.log"),
                qemu_command: vec![],
            }))
        };
        let r = Report {
            cases: vec![
                case(d, "p.raw", "metal", booted(true)),
                case(d, "v.raw", "metal", booted(false)),
                case(
                    d,
                    "a.qcow2",
                    "nocloud",
                    refused(ErrorKind::InvalidInput, "sha256 'x' <> 'y'"),
                ),
                case(
                    d,
                    "e.vhd",
                    "azure",
                    refused(ErrorKind::Environment, "no qemu"),
                ),
            ],
            started: 1_700_000_000,
            hostname: "ci-1".into(),
        };
        let xsd = crate::test_support::workspace_root().join("tests/junit.xsd");
        let lint = |xml: &str| {
            let file = d.join("junit.xml");
            std::fs::write(&file, xml).unwrap();
            std::process::Command::new("xmllint")
                .args(["--noout", "--schema"])
                .arg(&xsd)
                .arg(&file)
                .output()
                .unwrap()
        };
        let x = r.junit();
        let o = lint(&x);
        assert!(
            o.status.success(),
            "{}\n{x}",
            String::from_utf8_lossy(&o.stderr)
        );
        let broken = x.replacen(" hostname=\"ci-1\"", "", 1);
        assert!(
            !lint(&broken).status.success(),
            "the schema accepts a suite without hostname"
        );
    }
}
