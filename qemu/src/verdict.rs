//! Judging a boot from the guest's own report. Pure: no I/O, no clock.
//!
//! A boot passes only when all of these hold:
//! - the guest printed a `done` event with `ok: true`;
//! - every expected extension has a `layer` event with its name (and its
//!   version, unless the expected version is empty) that is both mounted and
//!   visible;
//! - the guest printed no `error` event;
//! - no report line was damaged (it could have been an error we cannot see).
//!
//! How the VM ended only shapes the message; a clean power-off without a
//! report still fails. `reason` lists every problem found, `; `-separated.

use serde::Serialize;
use strata_boot::report::Event;

use crate::serial::Console;
use crate::Expected;

/// How the VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest stopped itself; `reason` is QEMU's cause (`guest-shutdown`,
    /// `guest-reset`, `guest-panic`).
    GuestStopped {
        /// QEMU's shutdown cause.
        reason: String,
    },
    /// The report was complete and the runner ended QEMU.
    RunnerQuit,
    /// The time limit passed.
    Timeout {
        /// The limit, in whole seconds.
        secs: u64,
    },
    /// QEMU exited on its own (crash, or killed from outside).
    QemuExit {
        /// The exit status as text.
        status: String,
    },
}

impl Ending {
    /// The `ended_by` value of the result.
    pub fn ended_by(&self) -> &'static str {
        match self {
            Ending::GuestStopped { .. } => "guest-poweroff",
            Ending::RunnerQuit => "runner-quit-after-report",
            Ending::Timeout { .. } => "timeout",
            Ending::QemuExit { .. } => "qemu-exit",
        }
    }
}

/// What the report says about one extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerVerdict {
    /// Extension name.
    pub name: String,
    /// The version the guest reported, if it reported the extension.
    pub version: Option<String>,
    /// True when the caller expected this extension.
    pub expected: bool,
    /// The guest reported a layer of this name.
    pub reported: bool,
    /// The layer is part of the root overlay.
    pub mounted: bool,
    /// A file it ships is visible in the merged root.
    pub visible: bool,
    /// The path the guest checked for `visible`.
    pub probe: Option<String>,
}

/// The judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// True when the boot passed.
    pub pass: bool,
    /// Why it passed, or every reason it failed.
    pub reason: String,
    /// Expected extensions first (in the caller's order), then unexpected ones.
    pub layers: Vec<LayerVerdict>,
}

/// Judges what the console showed, given how the run ended.
pub fn judge(console: &Console, expected: &[Expected], ending: &Ending) -> Verdict {
    let mut problems = errors(&console.events);
    let reported = reported_layers(&console.events);
    for want in expected {
        problems.extend(layer_problem(want, pick(&reported, want)));
    }
    let layers = layer_verdicts(&reported, expected);
    if let Some(p) = unreadable(&console.unreadable) {
        problems.push(p);
    }
    match done(&console.events) {
        None => problems.insert(0, missing_done(console, ending)),
        Some(false) if problems.is_empty() => {
            problems.push("guest reported done with ok=false".into());
        }
        Some(_) => {}
    }
    let pass = problems.is_empty();
    let reason = if pass {
        format!(
            "guest reported done ok; {} expected extension(s) mounted and visible",
            expected.len()
        )
    } else {
        problems.join("; ")
    };
    Verdict {
        pass,
        reason,
        layers,
    }
}

/// `ok` of the first `done` event.
fn done(events: &[Event]) -> Option<bool> {
    events.iter().find_map(|e| match e {
        Event::Done { ok, .. } => Some(*ok),
        _ => None,
    })
}

fn errors(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error { stage, message } => {
                Some(format!("guest reported error at {stage}: {message}"))
            }
            _ => None,
        })
        .collect()
}

fn unreadable(lines: &[String]) -> Option<String> {
    let first = lines.first()?;
    Some(format!(
        "{} report line(s) could not be read, first: {}",
        lines.len(),
        quoted(first)
    ))
}

/// Why there is no `done`, told by how the run ended.
fn missing_done(console: &Console, ending: &Ending) -> String {
    let what = if console.events.is_empty() {
        "before the guest reported"
    } else {
        "before the guest finished its report"
    };
    let own = if console.events.is_empty() {
        "before reporting"
    } else {
        "before finishing its report"
    };
    let head = match ending {
        Ending::GuestStopped { reason } => format!("guest stopped ({reason}) {own}"),
        Ending::Timeout { secs } => format!("timeout after {secs} s {what}"),
        Ending::QemuExit { status } => format!("qemu exited ({status}) {what}"),
        Ending::RunnerQuit => format!("the runner ended qemu {what}"),
    };
    match &console.last_line {
        Some(line) => format!("{head} (last console line: {})", quoted(line)),
        None => format!("{head} (the console stayed empty)"),
    }
}

/// A console line for a message: quoted, control characters escaped, and
/// cut to a readable length.
fn quoted(line: &str) -> String {
    const MAX: usize = 160;
    let cut: String = line.chars().take(MAX).collect();
    let more = if line.chars().count() > MAX {
        "…"
    } else {
        ""
    };
    format!("{cut:?}{more}")
}

/// The fields of one `layer` event that judging needs.
#[derive(Debug, Clone, Copy)]
struct Reported<'a> {
    name: &'a str,
    version: &'a str,
    mounted: bool,
    visible: bool,
    probe: Option<&'a str>,
    detail: Option<&'a str>,
}

impl Reported<'_> {
    fn verdict(&self, expected: bool) -> LayerVerdict {
        LayerVerdict {
            name: self.name.to_owned(),
            version: Some(self.version.to_owned()),
            expected,
            reported: true,
            mounted: self.mounted,
            visible: self.visible,
            probe: self.probe.map(str::to_owned),
        }
    }
}

fn reported_layers(events: &[Event]) -> Vec<Reported<'_>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Layer {
                name,
                version,
                mounted,
                visible,
                probe,
                detail,
                ..
            } => Some(Reported {
                name,
                version,
                mounted: *mounted,
                visible: *visible,
                probe: probe.as_deref(),
                detail: detail.as_deref(),
            }),
            _ => None,
        })
        .collect()
}

/// The report of `want`: the first layer with its name and version, else the
/// first with its name.
fn pick<'a>(layers: &[Reported<'a>], want: &Expected) -> Option<Reported<'a>> {
    let named = || layers.iter().filter(|l| l.name == want.name);
    named()
        .find(|l| version_matches(want, l.version))
        .or_else(|| named().next())
        .copied()
}

/// An empty expected version accepts any reported one.
fn version_matches(want: &Expected, version: &str) -> bool {
    want.version.is_empty() || want.version == version
}

fn layer_verdicts(layers: &[Reported<'_>], expected: &[Expected]) -> Vec<LayerVerdict> {
    let mut out: Vec<LayerVerdict> = expected
        .iter()
        .map(|want| match pick(layers, want) {
            Some(l) => l.verdict(true),
            None => LayerVerdict {
                name: want.name.clone(),
                version: None,
                expected: true,
                reported: false,
                mounted: false,
                visible: false,
                probe: None,
            },
        })
        .collect();
    let unexpected = layers
        .iter()
        .filter(|l| !expected.iter().any(|w| w.name == l.name));
    out.extend(unexpected.map(|l| l.verdict(false)));
    out
}

fn layer_problem(want: &Expected, got: Option<Reported<'_>>) -> Option<String> {
    let name = &want.name;
    let Some(got) = got else {
        return Some(format!("extension {name:?} not reported"));
    };
    if !version_matches(want, got.version) {
        return Some(format!(
            "extension {name:?} reported version {:?}, expected {:?}",
            got.version, want.version
        ));
    }
    let detail = got.detail.map(|d| format!(": {d}")).unwrap_or_default();
    if !got.mounted {
        return Some(format!(
            "extension {name:?} is not mounted in the root overlay{detail}"
        ));
    }
    if !got.visible {
        let probe = got.probe.unwrap_or("none");
        return Some(format!(
            "extension {name:?} is not visible in the merged root (probe {probe}){detail}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_boot::report::LayerKind;

    fn layer(name: &str, version: &str, mounted: bool, visible: bool) -> Event {
        Event::Layer {
            index: 0,
            image: format!("00-{name}.sqsh"),
            kind: LayerKind::Talos,
            name: name.into(),
            version: version.into(),
            mounted,
            visible,
            probe: Some(format!("/usr/local/bin/{name}")),
            detail: (!mounted || !visible).then(|| "overlay lowerdir missing".into()),
        }
    }

    fn done(ok: bool) -> Event {
        Event::Done {
            ok,
            layers: 2,
            smoke: true,
        }
    }

    fn error(stage: &str, message: &str) -> Event {
        Event::Error {
            stage: stage.into(),
            message: message.into(),
        }
    }

    fn want(pairs: &[(&str, &str)]) -> Vec<Expected> {
        pairs
            .iter()
            .map(|(n, v)| Expected {
                name: (*n).into(),
                version: (*v).into(),
            })
            .collect()
    }

    fn console(events: Vec<Event>) -> Console {
        let last_line = (!events.is_empty()).then(|| "[    2.1] random: crng init done".to_owned());
        Console {
            events,
            unreadable: Vec::new(),
            last_line,
        }
    }

    const OFF: fn() -> Ending = || Ending::GuestStopped {
        reason: "guest-shutdown".into(),
    };

    #[test]
    fn table_of_event_sequences() {
        let two = want(&[("hello", "1.0"), ("tools", "2.1")]);
        /// Name, events, expected extensions, ending, pass or fail reason.
        type Row = (
            &'static str,
            Vec<Event>,
            Vec<Expected>,
            Ending,
            Result<&'static str, &'static str>,
        );
        let table: Vec<Row> = vec![
            (
                "all good",
                vec![
                    layer("hello", "1.0", true, true),
                    layer("tools", "2.1", true, true),
                    done(true),
                ],
                two.clone(),
                OFF(),
                Ok("guest reported done ok; 2 expected extension(s) mounted and visible"),
            ),
            (
                "good report, runner quit",
                vec![
                    layer("hello", "1.0", true, true),
                    layer("tools", "2.1", true, true),
                    done(true),
                ],
                two.clone(),
                Ending::RunnerQuit,
                Ok("guest reported done ok; 2 expected extension(s) mounted and visible"),
            ),
            (
                "nothing expected, nothing reported",
                vec![done(true)],
                vec![],
                OFF(),
                Ok("guest reported done ok; 0 expected extension(s) mounted and visible"),
            ),
            (
                "empty expected version accepts any",
                vec![layer("hello", "9.9", true, true), done(true)],
                want(&[("hello", "")]),
                OFF(),
                Ok("guest reported done ok; 1 expected extension(s) mounted and visible"),
            ),
            (
                "one missing",
                vec![layer("hello", "1.0", true, true), done(true)],
                two.clone(),
                OFF(),
                Err(r#"extension "tools" not reported"#),
            ),
            (
                "wrong version",
                vec![
                    layer("hello", "1.0", true, true),
                    layer("tools", "2.0", true, true),
                    done(true),
                ],
                two.clone(),
                OFF(),
                Err(r#"extension "tools" reported version "2.0", expected "2.1""#),
            ),
            (
                "not mounted",
                vec![
                    layer("hello", "1.0", false, true),
                    layer("tools", "2.1", true, true),
                    done(false),
                ],
                two.clone(),
                OFF(),
                Err(
                    r#"extension "hello" is not mounted in the root overlay: overlay lowerdir missing"#,
                ),
            ),
            (
                "not visible",
                vec![
                    layer("hello", "1.0", true, true),
                    layer("tools", "2.1", true, false),
                    done(false),
                ],
                two.clone(),
                OFF(),
                Err(
                    r#"extension "tools" is not visible in the merged root (probe /usr/local/bin/tools): overlay lowerdir missing"#,
                ),
            ),
            (
                "guest error beats a good done",
                vec![
                    error("mount-root", "squashfs: bad magic"),
                    layer("hello", "1.0", true, true),
                    layer("tools", "2.1", true, true),
                    done(true),
                ],
                two.clone(),
                OFF(),
                Err("guest reported error at mount-root: squashfs: bad magic"),
            ),
            (
                "done not ok, no other clue",
                vec![done(false)],
                vec![],
                OFF(),
                Err("guest reported done with ok=false"),
            ),
            (
                "timeout with an empty console",
                vec![],
                vec![],
                Ending::Timeout { secs: 120 },
                Err("timeout after 120 s before the guest reported (the console stayed empty)"),
            ),
            (
                "power-off mid-report, all problems listed",
                vec![layer("hello", "1.0", true, true)],
                two.clone(),
                OFF(),
                Err(concat!(
                    r#"guest stopped (guest-shutdown) before finishing its report (last console line: "[    2.1] random: crng init done"); "#,
                    r#"extension "tools" not reported"#
                )),
            ),
            (
                "qemu crash",
                vec![],
                vec![],
                Ending::QemuExit {
                    status: "signal 11".into(),
                },
                Err("qemu exited (signal 11) before the guest reported (the console stayed empty)"),
            ),
        ];
        for (name, events, expected, ending, outcome) in table {
            let v = judge(&console(events), &expected, &ending);
            match outcome {
                Ok(reason) => {
                    assert!(v.pass, "{name}: {}", v.reason);
                    assert_eq!(v.reason, reason, "{name}");
                }
                Err(reason) => {
                    assert!(!v.pass, "{name}");
                    assert_eq!(v.reason, reason, "{name}");
                }
            }
        }
    }

    #[test]
    fn damaged_report_line_fails_an_otherwise_good_boot() {
        let mut c = console(vec![done(true)]);
        c.unreadable
            .push("STRATA {\"event\":\"error\",\"sta".into());
        let v = judge(&c, &[], &OFF());
        assert!(!v.pass);
        assert_eq!(
            v.reason,
            r#"1 report line(s) could not be read, first: "STRATA {\"event\":\"error\",\"sta""#
        );
    }

    #[test]
    fn layers_list_expected_then_unexpected() {
        let events = vec![
            layer("extra", "0.1", true, true),
            layer("hello", "0.9", true, true),
            layer("hello", "1.0", true, true),
            done(true),
        ];
        let v = judge(
            &console(events),
            &want(&[("hello", "1.0"), ("gone", "1")]),
            &OFF(),
        );
        let summary: Vec<_> = v
            .layers
            .iter()
            .map(|l| {
                (
                    l.name.as_str(),
                    l.version.as_deref(),
                    l.expected,
                    l.reported,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("hello", Some("1.0"), true, true),
                ("gone", None, true, false),
                ("extra", Some("0.1"), false, true),
            ]
        );
        assert_eq!(v.reason, r#"extension "gone" not reported"#);
    }

    #[test]
    fn long_console_lines_are_cut() {
        let c = Console {
            last_line: Some("x".repeat(500)),
            ..Console::default()
        };
        let v = judge(&c, &[], &Ending::Timeout { secs: 5 });
        assert!(v.reason.ends_with("\"…)"), "{}", v.reason);
        assert!(v.reason.len() < 250);
    }

    #[test]
    fn ended_by_names() {
        assert_eq!(OFF().ended_by(), "guest-poweroff");
        assert_eq!(Ending::RunnerQuit.ended_by(), "runner-quit-after-report");
        assert_eq!(Ending::Timeout { secs: 1 }.ended_by(), "timeout");
        assert_eq!(
            Ending::QemuExit { status: "0".into() }.ended_by(),
            "qemu-exit"
        );
    }
}
