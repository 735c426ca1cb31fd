//! Judging a boot from the guest's own report. Pure: no I/O, no clock.
//!
//! A boot passes only when all of these hold:
//! - the guest printed a `done` event with `ok: true`;
//! - every expected extension has a `layer` event with its name (its kind,
//!   when the expectation names one, and its version, unless the expected
//!   version is empty) that is, for an extension stacked at boot, mounted
//!   and visible; for one flattened into the root, reported `flattened`
//!   and visible (its probe has the recorded digest); for one shipped
//!   disabled, reported `disabled`, visible (its image file is there) and
//!   not mounted;
//! - the guest printed no `error` event;
//! - no report line was damaged (it could have been an error we cannot see);
//! - (checked by [`judge_disks`]) some `disk` event lists the driver of
//!   the platform's device model;
//! - (checked by [`judge_checks`]) every expected extension module loaded,
//!   every expected profile file reported as shipped, every file several
//!   Talos layers ship showing the upper layer's copy (`stack`), every
//!   extension service the guest started running as expected (`service`),
//!   a `stack` event for each expected shadowed path and a `service` event
//!   for each expected service (silence is not a pass), the expected state
//!   mode reported, and, when the init handed over to systemd, a `system`
//!   event from inside the running system: `running`, `multi-user.target`
//!   active, no failed unit, every probe found again.
//!
//! A `detail` on a passing layer is only a note.
//! How the VM ended only shapes the message; a clean power-off without a
//! report still fails. `reason` lists every problem found, `; `-separated.

use serde::Serialize;
use strata_proto::initramfs::StateMode;
use strata_proto::report::Event;
use strata_proto::ExtensionKind;

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
    /// The firmware found nothing to boot and started its UEFI shell.
    FirmwareShell,
    /// The guest kernel panicked; `line` is its panic message.
    KernelPanic {
        /// The console line with the panic message.
        line: String,
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
            Ending::FirmwareShell => "firmware-shell",
            Ending::KernelPanic { .. } => "kernel-panic",
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
    /// The kind the guest reported (or the expected one, when not reported).
    pub kind: Option<ExtensionKind>,
    /// The guest reported it flattened into the root.
    pub flattened: bool,
    /// The guest reported it shipped disabled.
    pub disabled: bool,
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
        success(expected)
    } else {
        problems.join("; ")
    };
    Verdict {
        pass,
        reason,
        layers,
    }
}

/// The reason of a pass: how many extensions were found in which state.
fn success(expected: &[Expected]) -> String {
    let flattened = expected.iter().filter(|e| e.flattened).count();
    let disabled = expected
        .iter()
        .filter(|e| e.disabled && !e.flattened)
        .count();
    let layered = expected.len() - flattened - disabled;
    let mut text =
        format!("guest reported done ok; {layered} expected extension(s) mounted and visible");
    if flattened > 0 {
        text.push_str(&format!(", {flattened} flattened into the root"));
    }
    if disabled > 0 {
        text.push_str(&format!(", {disabled} shipped disabled"));
    }
    text
}

/// The problem with the disks the guest reported, if any: none of them
/// lists `driver`, the platform's device-model driver (see
/// [`crate::Media::guest_driver`]). A guest that reported nothing at all
/// gets no disk problem: the missing report already says everything.
pub fn judge_disks(events: &[Event], driver: &str) -> Option<String> {
    if events.is_empty() {
        return None;
    }
    let disks: Vec<(&str, &[String])> = events
        .iter()
        .filter_map(|e| match e {
            Event::Disk { name, drivers, .. } => Some((name.as_str(), drivers.as_slice())),
            _ => None,
        })
        .collect();
    if disks
        .iter()
        .any(|(_, drivers)| drivers.iter().any(|d| d == driver))
    {
        return None;
    }
    let seen = if disks.is_empty() {
        "the guest reported no disks".to_string()
    } else {
        let list: Vec<String> = disks
            .iter()
            .map(|(name, drivers)| format!("{name} [{}]", drivers.join(", ")))
            .collect();
        format!("disks seen: {}", list.join(", "))
    };
    Some(format!(
        "no disk reported through the {driver} driver; {seen}"
    ))
}

/// Problems with what the guest reported beyond its layers: every module
/// in `checks.modules` reported loaded by name, and the firmware search path
/// set whenever the root has a firmware directory.
pub fn judge_checks(events: &[Event], checks: &crate::GuestChecks) -> Vec<String> {
    let mut problems = Vec::new();
    for want in &checks.modules {
        let got = events.iter().find_map(|e| match e {
            Event::ExtModule {
                name,
                loaded,
                error,
                ..
            } if name == want => Some((*loaded, error.clone())),
            _ => None,
        });
        match got {
            Some((true, _)) => {}
            Some((false, err)) => problems.push(format!(
                "extension module \"{want}\" did not load: {}",
                err.unwrap_or_else(|| "no reason given".into())
            )),
            None => problems.push(format!("extension module \"{want}\" not reported")),
        }
    }
    for e in events {
        if let Event::Firmware {
            path, set: false, ..
        } = e
        {
            if !path.is_empty() {
                problems.push(format!("firmware search path {path} was not set"));
            }
        }
    }
    problems.extend(stack_problems(events, &checks.shadowed));
    problems.extend(service_problems(events, &checks.services));
    problems.extend(file_problems(events, &checks.files));
    problems.extend(state_problem(events, checks.state));
    problems.extend(system_problems(events));
    problems.extend(checks.tpm.as_ref().and_then(|t| tpm_problem(events, t)));
    problems
}

/// The guest reported PCR 11, and (when the build predicted values) one of
/// the predicted ones: a UKI whose measured sections differ from the built
/// ones (tampered, or another image) reads another value.
pub fn tpm_problem(events: &[Event], check: &crate::TpmCheck) -> Option<String> {
    let reported = events.iter().find_map(|e| match e {
        Event::Tpm { pcr11, detail } => Some((pcr11.clone(), detail.clone())),
        _ => None,
    });
    let got = match reported {
        None => return Some(
            "the guest reported no TPM (is swtpm attached and the kernel's TPM driver built in?)"
                .into(),
        ),
        Some((None, detail)) => {
            return Some(format!(
                "the guest could not read PCR 11: {}",
                detail.unwrap_or_else(|| "no reason given".into())
            ))
        }
        Some((Some(v), _)) => v,
    };
    if check.pcr11.is_empty()
        || check
            .pcr11
            .iter()
            .any(|(_, want)| want.eq_ignore_ascii_case(&got))
    {
        return None;
    }
    let wanted: Vec<String> = check
        .pcr11
        .iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    Some(format!(
        "PCR 11 is {got}, none of the predicted values ({})",
        wanted.join(", ")
    ))
}

/// Every file several Talos layers ship shows the upper layer's copy, and
/// every one in `want` was reported: a guest that skipped the check (an old
/// init, a `guest.json` that lost its list) must not pass.
fn stack_problems(events: &[Event], want: &[String]) -> Vec<String> {
    let mut problems: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Stack {
                path,
                ok: false,
                detail,
                ..
            } => Some(format!(
                "layer order: {path}: {}",
                detail.as_deref().unwrap_or("no reason given")
            )),
            _ => None,
        })
        .collect();
    for path in want {
        let reported = events
            .iter()
            .any(|e| matches!(e, Event::Stack { path: p, .. } if p == path));
        if !reported {
            problems.push(format!("the guest did not report layer order for {path}"));
        }
    }
    problems
}

/// Every extension service the guest started ran as its restart policy
/// expects, and every one in `want` was started and reported.
fn service_problems(events: &[Event], want: &[String]) -> Vec<String> {
    let mut problems: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Service {
                name,
                ok: false,
                detail,
                ..
            } => Some(format!(
                "extension service \"{name}\": {}",
                detail.as_deref().unwrap_or("no reason given")
            )),
            _ => None,
        })
        .collect();
    for name in want {
        let reported = events
            .iter()
            .any(|e| matches!(e, Event::Service { name: n, .. } if n == name));
        if !reported {
            problems.push(format!(
                "the guest did not report extension service \"{name}\""
            ));
        }
    }
    problems
}

/// Secure Boot reported on, for a boot under Secure Boot firmware: that the
/// guest runs at all could also mean the firmware did not check.
pub fn secure_boot_problem(events: &[Event]) -> Option<String> {
    let reported = events.iter().find_map(|e| match e {
        Event::SecureBoot { enabled, detail } => Some((*enabled, detail.clone())),
        _ => None,
    });
    match reported {
        Some((true, _)) => None,
        Some((false, detail)) => Some(format!(
            "the guest reports Secure Boot off: {}",
            detail.unwrap_or_else(|| "no reason given".into())
        )),
        None => Some("the guest did not report the Secure Boot state".into()),
    }
}

/// Every profile file reported, and as shipped.
fn file_problems(events: &[Event], want: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for e in events {
        if let Event::File {
            path,
            ok: false,
            detail,
            ..
        } = e
        {
            problems.push(format!(
                "profile file {path} is not as shipped: {}",
                detail.as_deref().unwrap_or("no reason given")
            ));
        }
    }
    for path in want {
        let reported = events
            .iter()
            .any(|e| matches!(e, Event::File { path: p, .. } if p == path));
        if !reported {
            problems.push(format!("profile file {path} not reported"));
        }
    }
    problems
}

/// The state mode the guest used, against the expected one.
fn state_problem(events: &[Event], want: Option<StateMode>) -> Option<String> {
    let want = want?;
    let got = events.iter().find_map(|e| match e {
        Event::State { mode, .. } => Some(*mode),
        _ => None,
    });
    match got {
        Some(mode) if mode == want => None,
        Some(mode) => Some(format!(
            "guest used {} state, expected {}",
            mode.as_str(),
            want.as_str()
        )),
        None => Some(format!(
            "guest did not report its state mode (expected {})",
            want.as_str()
        )),
    }
}

/// After a hand-over to systemd: what the running system reported.
fn system_problems(events: &[Event]) -> Vec<String> {
    let handed_to_systemd = events
        .iter()
        .any(|e| matches!(e, Event::Handover { systemd: true, .. }));
    if !handed_to_systemd {
        return Vec::new();
    }
    let Some(Event::System {
        state,
        multi_user,
        failed,
        missing,
        ..
    }) = events.iter().find(|e| matches!(e, Event::System { .. }))
    else {
        return vec![
            "the init handed over to systemd, but the running system never reported".into(),
        ];
    };
    let mut problems = Vec::new();
    if state != "running" {
        problems.push(format!(
            "systemd reports the system {state:?}, not \"running\""
        ));
    }
    if !multi_user {
        problems.push("multi-user.target is not active".into());
    }
    if !failed.is_empty() {
        problems.push(format!("failed units: {}", failed.join(", ")));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "the running system does not show: {}",
            missing.join("; ")
        ));
    }
    problems
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
        // The last line is the shell's prompt, which says nothing more.
        Ending::FirmwareShell => {
            return "the firmware found nothing to boot and started its UEFI shell \
                    (no firmware driver for the disk's device model, or no EFI loader on it)"
                .into()
        }
        Ending::KernelPanic { line } => {
            return format!("the guest kernel panicked {own}: {}", quoted(line))
        }
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
    kind: ExtensionKind,
    name: &'a str,
    version: &'a str,
    mounted: bool,
    visible: bool,
    probe: Option<&'a str>,
    detail: Option<&'a str>,
    flattened: bool,
    disabled: bool,
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
            kind: Some(self.kind),
            flattened: self.flattened,
            disabled: self.disabled,
        }
    }

    /// How the guest shipped it, in words.
    fn state(&self) -> &'static str {
        match (self.flattened, self.disabled) {
            (true, _) => "flattened into the root",
            (_, true) => "shipped disabled",
            _ => "a layer",
        }
    }
}

fn reported_layers(events: &[Event]) -> Vec<Reported<'_>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Layer {
                kind,
                name,
                version,
                mounted,
                visible,
                probe,
                detail,
                flattened,
                disabled,
                ..
            } => Some(Reported {
                kind: *kind,
                name,
                version,
                mounted: *mounted,
                visible: *visible,
                probe: probe.as_deref(),
                detail: detail.as_deref(),
                flattened: *flattened,
                disabled: *disabled,
            }),
            _ => None,
        })
        .collect()
}

/// True when the report `l` is about `want`: same name, and same kind
/// when `want` names one (a Talos layer and a sysext may share a name).
fn is_about(l: &Reported<'_>, want: &Expected) -> bool {
    l.name == want.name && want.kind.is_none_or(|kind| kind == l.kind)
}

/// The report of `want`: among the layers it is about, the first with its
/// version and state (layer, flattened, disabled), else the first with its
/// version, else the first.
fn pick<'a>(layers: &[Reported<'a>], want: &Expected) -> Option<Reported<'a>> {
    let about = || layers.iter().filter(|l| is_about(l, want));
    let same_state =
        |l: &&Reported<'_>| l.flattened == want.flattened && l.disabled == want.disabled;
    about()
        .find(|l| version_matches(want, l.version) && same_state(l))
        .or_else(|| about().find(|l| version_matches(want, l.version)))
        .or_else(|| about().next())
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
                kind: want.kind,
                flattened: false,
                disabled: false,
            },
        })
        .collect();
    let unexpected = layers
        .iter()
        .filter(|l| !expected.iter().any(|w| is_about(l, w)));
    out.extend(unexpected.map(|l| l.verdict(false)));
    out
}

/// `extension "name"`, with the kind when the expectation names one.
fn label(want: &Expected) -> String {
    match want.kind {
        Some(kind) => format!("{} extension {:?}", kind.as_str(), want.name),
        None => format!("extension {:?}", want.name),
    }
}

fn layer_problem(want: &Expected, got: Option<Reported<'_>>) -> Option<String> {
    let name = label(want);
    let Some(got) = got else {
        return Some(format!("{name} not reported"));
    };
    if !version_matches(want, got.version) {
        return Some(format!(
            "{name} reported version {:?}, expected {:?}",
            got.version, want.version
        ));
    }
    let detail = got.detail.map(|d| format!(": {d}")).unwrap_or_default();
    let probe = got.probe.unwrap_or("none");
    if want.flattened {
        return if !got.flattened {
            Some(format!(
                "{name} should be flattened into the root but the guest reported it as {}",
                got.state()
            ))
        } else if !got.visible {
            Some(format!(
                "flattened {name} is not in the merged root with its recorded content (probe {probe}){detail}"
            ))
        } else {
            None
        };
    }
    if want.disabled {
        return if !got.disabled {
            Some(format!(
                "{name} should be shipped disabled but the guest reported it as {}",
                got.state()
            ))
        } else if got.mounted {
            Some(format!("disabled {name} is mounted{detail}"))
        } else if !got.visible {
            Some(format!(
                "disabled {name} is not shipped: {probe} is not in the merged root{detail}"
            ))
        } else {
            None
        };
    }
    if got.flattened || got.disabled {
        return Some(format!(
            "{name} should be a layer but the guest reported it as {}",
            got.state()
        ));
    }
    if !got.mounted {
        return Some(format!("{name} is not mounted in the root overlay{detail}"));
    }
    if !got.visible {
        return Some(format!(
            "{name} is not visible in the merged root (probe {probe}){detail}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_must_be_reported_on() {
        let on = Event::SecureBoot {
            enabled: true,
            detail: None,
        };
        let off = Event::SecureBoot {
            enabled: false,
            detail: Some("the SecureBoot variable is 0".into()),
        };
        assert_eq!(secure_boot_problem(&[on]), None);
        let p = secure_boot_problem(&[off]).unwrap();
        assert!(
            p.contains("Secure Boot off: the SecureBoot variable is 0"),
            "{p}"
        );
        assert!(secure_boot_problem(&[]).unwrap().contains("did not report"));
    }
    use strata_proto::ExtensionKind;

    fn layer(name: &str, version: &str, mounted: bool, visible: bool) -> Event {
        Event::Layer {
            index: 0,
            image: format!("00-{name}.sqsh"),
            kind: ExtensionKind::Talos,
            name: name.into(),
            version: version.into(),
            mounted,
            visible,
            probe: Some(format!("/usr/local/bin/{name}")),
            detail: (!mounted || !visible).then(|| "overlay lowerdir missing".into()),
            flattened: false,
            disabled: false,
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
                ..Expected::default()
            })
            .collect()
    }

    /// A `layer` event of any kind and state.
    #[allow(clippy::too_many_arguments)]
    fn shipped(
        kind: ExtensionKind,
        name: &str,
        flattened: bool,
        disabled: bool,
        mounted: bool,
        visible: bool,
        detail: Option<&str>,
    ) -> Event {
        Event::Layer {
            index: 0,
            image: if flattened {
                String::new()
            } else {
                format!("{name}.raw")
            },
            kind,
            name: name.into(),
            version: "1".into(),
            mounted,
            visible,
            probe: Some(format!("/p/{name}")),
            detail: detail.map(str::to_owned),
            flattened,
            disabled,
        }
    }

    fn expect(
        name: &str,
        kind: Option<ExtensionKind>,
        flattened: bool,
        disabled: bool,
    ) -> Expected {
        Expected {
            name: name.into(),
            version: "1".into(),
            kind,
            flattened,
            disabled,
        }
    }

    #[test]
    fn flattened_disabled_and_kinds_are_judged_by_their_own_rules() {
        use ExtensionKind::{Sysext, Talos};
        let flat = |visible, detail| shipped(Talos, "hello", true, false, false, visible, detail);
        let off = |mounted, visible, detail| {
            shipped(Sysext, "tools", false, true, mounted, visible, detail)
        };
        let on =
            |kind, mounted, visible| shipped(kind, "tools", false, false, mounted, visible, None);
        let want_flat = expect("hello", Some(Talos), true, false);
        let want_off = expect("tools", Some(Sysext), false, true);
        let want_on = expect("tools", Some(Talos), false, false);
        /// Name, events before `done`, expected extensions, pass or fail reason.
        type Row = (
            &'static str,
            Vec<Event>,
            Vec<Expected>,
            Result<&'static str, &'static str>,
        );
        let table: Vec<Row> = vec![
            (
                "flattened and disabled fine; a note on a passing layer",
                vec![flat(true, None), off(false, true, Some("just a note"))],
                vec![want_flat.clone(), want_off.clone()],
                Ok("guest reported done ok; 0 expected extension(s) mounted and visible, 1 flattened into the root, 1 shipped disabled"),
            ),
            (
                "flattened probe with the wrong digest",
                vec![flat(false, Some("sha256 of /p/hello is 00, expected 11"))],
                vec![want_flat.clone()],
                Err("flattened talos extension \"hello\" is not in the merged root with its recorded content (probe /p/hello): sha256 of /p/hello is 00, expected 11"),
            ),
            (
                "flattened expected, a layer reported",
                vec![shipped(Talos, "hello", false, false, true, true, None)],
                vec![want_flat.clone()],
                Err("talos extension \"hello\" should be flattened into the root but the guest reported it as a layer"),
            ),
            (
                "disabled but mounted",
                vec![off(true, true, Some("a sysext layer named \"tools\" is mounted in this boot"))],
                vec![want_off.clone()],
                Err("disabled sysext extension \"tools\" is mounted: a sysext layer named \"tools\" is mounted in this boot"),
            ),
            (
                "disabled file missing",
                vec![off(false, false, Some("/p/tools is missing from the merged root"))],
                vec![want_off.clone()],
                Err("disabled sysext extension \"tools\" is not shipped: /p/tools is not in the merged root: /p/tools is missing from the merged root"),
            ),
            (
                "disabled expected, enabled reported",
                vec![on(Sysext, true, true)],
                vec![want_off.clone()],
                Err("sysext extension \"tools\" should be shipped disabled but the guest reported it as a layer"),
            ),
            (
                "a layer expected, disabled reported",
                vec![shipped(Talos, "tools", false, true, false, true, None)],
                vec![want_on.clone()],
                Err("talos extension \"tools\" should be a layer but the guest reported it as shipped disabled"),
            ),
            (
                "kinds are not confused: a sysext does not stand in for a Talos layer",
                vec![on(Sysext, true, true)],
                vec![want_on.clone()],
                Err("talos extension \"tools\" not reported"),
            ),
            (
                "same name, two kinds: each expectation finds its own",
                vec![on(Sysext, false, false), on(Talos, true, true)],
                vec![want_on.clone()],
                Ok("guest reported done ok; 1 expected extension(s) mounted and visible"),
            ),
            (
                "no kind expected: any kind will do",
                vec![on(Sysext, true, true)],
                vec![expect("tools", None, false, false)],
                Ok("guest reported done ok; 1 expected extension(s) mounted and visible"),
            ),
            (
                "enabled and disabled copies of one name: the disabled one is picked",
                vec![on(Sysext, true, true), off(false, true, None)],
                vec![want_off.clone()],
                Ok("guest reported done ok; 0 expected extension(s) mounted and visible, 1 shipped disabled"),
            ),
        ];
        for (name, mut events, expected, outcome) in table {
            events.push(done(outcome.is_ok()));
            let v = judge(&console(events), &expected, &OFF());
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
    fn layer_verdicts_carry_kind_and_state() {
        let events = vec![
            shipped(
                ExtensionKind::Talos,
                "hello",
                true,
                false,
                false,
                true,
                None,
            ),
            shipped(
                ExtensionKind::Sysext,
                "hello",
                false,
                false,
                true,
                true,
                None,
            ),
            done(true),
        ];
        let v = judge(
            &console(events),
            &[expect("hello", Some(ExtensionKind::Talos), true, false)],
            &OFF(),
        );
        assert!(v.pass, "{}", v.reason);
        let summary: Vec<_> = v
            .layers
            .iter()
            .map(|l| (l.kind, l.flattened, l.disabled, l.expected))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(ExtensionKind::Talos), true, false, true),
                // Same name, other kind: not what was expected.
                (Some(ExtensionKind::Sysext), false, false, false),
            ]
        );
    }

    fn disk(name: &str, drivers: &[&str]) -> Event {
        Event::Disk {
            name: name.into(),
            drivers: drivers.iter().map(|d| d.to_string()).collect(),
            size_bytes: 1 << 30,
            removable: false,
        }
    }

    #[test]
    fn disks_must_show_the_platform_driver() {
        let start = Event::Start {
            kernel: "6.1".into(),
            machine: "x86_64".into(),
            cmdline: String::new(),
        };
        let table: Vec<(&str, Vec<Event>, &str, Option<&str>)> = vec![
            (
                "pvscsi disk beside the firmware's virtio view",
                vec![disk("vda", &["virtio_blk", "virtio-pci"]), disk("sda", &["sd", "vmw_pvscsi"])],
                "vmw_pvscsi",
                None,
            ),
            (
                "only the firmware's view",
                vec![disk("vda", &["virtio_blk", "virtio-pci"])],
                "vmw_pvscsi",
                Some("no disk reported through the vmw_pvscsi driver; disks seen: vda [virtio_blk, virtio-pci]"),
            ),
            ("nvme", vec![disk("nvme0n1", &["nvme"])], "nvme", None),
            ("cd-rom on ahci", vec![disk("sr0", &["sr", "ahci"])], "ahci", None),
            (
                "a driver name must match whole",
                vec![disk("sda", &["sd", "virtio_scsi_x"])],
                "virtio_scsi",
                Some("no disk reported through the virtio_scsi driver; disks seen: sda [sd, virtio_scsi_x]"),
            ),
            (
                "no disk events at all",
                vec![],
                "virtio_blk",
                Some("no disk reported through the virtio_blk driver; the guest reported no disks"),
            ),
            (
                "a disk without drivers",
                vec![disk("md0", &[])],
                "nvme",
                Some("no disk reported through the nvme driver; disks seen: md0 []"),
            ),
        ];
        for (name, disks, driver, want) in table {
            let mut events = vec![start.clone()];
            events.extend(disks);
            events.push(done(true));
            assert_eq!(judge_disks(&events, driver).as_deref(), want, "{name}");
        }
        assert_eq!(
            judge_disks(&[], "nvme"),
            None,
            "nothing reported: nothing to add"
        );
    }

    fn console(events: Vec<Event>) -> Console {
        let last_line = (!events.is_empty()).then(|| "[    2.1] random: crng init done".to_owned());
        Console {
            events,
            last_line,
            ..Console::default()
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
                "firmware gave up",
                vec![],
                want(&[("hello", "1.0")]),
                Ending::FirmwareShell,
                Err(concat!(
                    "the firmware found nothing to boot and started its UEFI shell ",
                    "(no firmware driver for the disk's device model, or no EFI loader on it); ",
                    r#"extension "hello" not reported"#
                )),
            ),
            (
                "kernel panic",
                vec![],
                vec![],
                Ending::KernelPanic {
                    line: "[    0.03] Kernel panic - not syncing: IO-APIC + timer doesn't work!"
                        .into(),
                },
                Err(concat!(
                    "the guest kernel panicked before reporting: ",
                    r#""[    0.03] Kernel panic - not syncing: IO-APIC + timer doesn't work!""#
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

    fn system(state: &str, failed: &[&str], missing: &[&str]) -> Event {
        Event::System {
            state: state.into(),
            multi_user: state == "running",
            hostname: "box".into(),
            failed: failed.iter().map(|f| f.to_string()).collect(),
            seen: vec!["/etc/hostname".into()],
            missing: missing.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn handover(systemd: bool) -> Event {
        Event::Handover {
            init: "/sbin/init".into(),
            systemd,
        }
    }

    #[test]
    fn a_hand_over_to_systemd_needs_a_clean_running_system() {
        let none = crate::GuestChecks::default();
        assert!(judge_checks(&[handover(false)], &none).is_empty());
        assert_eq!(
            judge_checks(&[handover(true)], &none),
            ["the init handed over to systemd, but the running system never reported"]
        );
        assert!(judge_checks(&[handover(true), system("running", &[], &[])], &none).is_empty());
        assert_eq!(
            judge_checks(
                &[
                    handover(true),
                    system(
                        "degraded",
                        &["systemd-logind.service"],
                        &["/usr/bin/x: gone"]
                    )
                ],
                &none
            ),
            [
                "systemd reports the system \"degraded\", not \"running\"",
                "multi-user.target is not active",
                "failed units: systemd-logind.service",
                "the running system does not show: /usr/bin/x: gone"
            ]
        );
    }

    #[test]
    fn a_shadowed_file_showing_a_lower_layer_fails_the_boot() {
        let stack = |ok: bool, shown: &str, detail: Option<&str>| Event::Stack {
            path: "/usr/local/share/order/who".into(),
            layers: vec!["lower".into(), "upper".into()],
            expected: "upper".into(),
            shown: shown.into(),
            ok,
            detail: detail.map(String::from),
        };
        let none = crate::GuestChecks::default();
        assert!(judge_checks(&[stack(true, "upper", None)], &none).is_empty());
        assert_eq!(
            judge_checks(
                &[stack(
                    false,
                    "lower",
                    Some("the merged root shows lower's copy")
                )],
                &none
            ),
            ["layer order: /usr/local/share/order/who: the merged root shows lower's copy"]
        );
    }

    #[test]
    fn a_service_that_did_not_run_fails_the_boot() {
        let service = |ok: bool, detail: Option<&str>| Event::Service {
            name: "hello-service".into(),
            entrypoint: "./hello".into(),
            restart: "always".into(),
            executed: ok,
            exit_status: None,
            alive: Some(ok),
            ok,
            detail: detail.map(String::from),
        };
        let none = crate::GuestChecks::default();
        assert!(judge_checks(&[service(true, None)], &none).is_empty());
        assert_eq!(
            judge_checks(
                &[service(false, Some("its interpreter /bin/sh is missing"))],
                &none
            ),
            ["extension service \"hello-service\": its interpreter /bin/sh is missing"]
        );
    }

    #[test]
    fn expected_layer_orders_must_each_be_reported() {
        let stack = |path: &str, ok: bool| Event::Stack {
            path: path.into(),
            layers: vec!["lower".into(), "upper".into()],
            expected: "upper".into(),
            shown: if ok { "upper" } else { "lower" }.into(),
            ok,
            detail: (!ok).then(|| "the merged root shows lower's copy".into()),
        };
        let checks = crate::GuestChecks {
            shadowed: vec!["/usr/local/a".into(), "/usr/local/b".into()],
            ..Default::default()
        };
        let both = [stack("/usr/local/a", true), stack("/usr/local/b", true)];
        assert!(judge_checks(&both, &checks).is_empty());
        assert_eq!(
            judge_checks(&[stack("/usr/local/a", true)], &checks),
            ["the guest did not report layer order for /usr/local/b"]
        );
        assert_eq!(
            judge_checks(&[], &checks),
            [
                "the guest did not report layer order for /usr/local/a",
                "the guest did not report layer order for /usr/local/b"
            ]
        );
        // Reported but wrong: the failure is the reason, not a missing report.
        assert_eq!(
            judge_checks(
                &[stack("/usr/local/a", true), stack("/usr/local/b", false)],
                &checks
            ),
            ["layer order: /usr/local/b: the merged root shows lower's copy"]
        );
    }

    #[test]
    fn expected_services_must_each_be_reported() {
        let service = |name: &str, ok: bool| Event::Service {
            name: name.into(),
            entrypoint: "./run".into(),
            restart: "never".into(),
            executed: true,
            exit_status: Some(if ok { 0 } else { 1 }),
            alive: None,
            ok,
            detail: (!ok).then(|| "exited with status 1".into()),
        };
        let checks = crate::GuestChecks {
            services: vec!["hello".into(), "oneshot".into()],
            ..Default::default()
        };
        let both = [service("hello", true), service("oneshot", true)];
        assert!(judge_checks(&both, &checks).is_empty());
        assert_eq!(
            judge_checks(&[service("oneshot", true)], &checks),
            ["the guest did not report extension service \"hello\""]
        );
        assert_eq!(
            judge_checks(
                &[service("hello", true), service("oneshot", false)],
                &checks
            ),
            ["extension service \"oneshot\": exited with status 1"]
        );
        // A recorded guest line counts as the report it is.
        let line = r#"{"event":"service","name":"hello","entrypoint":"./run","restart":"never","executed":true,"exit_status":0,"ok":true}"#;
        let ev: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            judge_checks(&[ev], &checks),
            ["the guest did not report extension service \"oneshot\""]
        );
    }

    #[test]
    fn profile_files_and_the_state_mode_are_required_when_expected() {
        let checks = crate::GuestChecks {
            files: vec!["/etc/hostname".into(), "/etc/motd".into()],
            state: Some(StateMode::Persistent),
            ..Default::default()
        };
        let events = [
            Event::State {
                mode: StateMode::Tmpfs,
                device: None,
                formatted: false,
                boots: None,
            },
            Event::File {
                path: "/etc/hostname".into(),
                kind: strata_proto::initramfs::FileKind::File,
                ok: false,
                detail: Some("mode 0600, not 0644".into()),
            },
        ];
        assert_eq!(
            judge_checks(&events, &checks),
            [
                "profile file /etc/hostname is not as shipped: mode 0600, not 0644",
                "profile file /etc/motd not reported",
                "guest used tmpfs state, expected persistent"
            ]
        );
        let ok = [
            Event::State {
                mode: StateMode::Persistent,
                device: Some("/dev/vda2".into()),
                formatted: true,
                boots: Some(1),
            },
            Event::File {
                path: "/etc/hostname".into(),
                kind: strata_proto::initramfs::FileKind::File,
                ok: true,
                detail: None,
            },
            Event::File {
                path: "/etc/motd".into(),
                kind: strata_proto::initramfs::FileKind::File,
                ok: true,
                detail: None,
            },
        ];
        assert!(judge_checks(&ok, &checks).is_empty());
    }

    #[test]
    fn the_report_waits_for_the_running_system_after_a_hand_over_to_systemd() {
        let done = Event::Done {
            ok: true,
            layers: 0,
            smoke: false,
        };
        let mut c = Console::default();
        c.feed([handover(false).to_line(), done.to_line()]);
        assert!(c.done());
        let mut c = Console::default();
        c.feed([handover(true).to_line(), done.to_line()]);
        assert!(!c.done());
        c.feed([system("running", &[], &[]).to_line()]);
        assert!(c.done());
    }

    #[test]
    fn pcr11_must_be_one_of_the_predicted_values() {
        let check = crate::TpmCheck {
            pcr11: vec![
                ("stub".into(), "aa".repeat(32)),
                ("enter-initrd".into(), "bb".repeat(32)),
            ],
        };
        let tpm = |v: &str| Event::Tpm {
            pcr11: Some(v.into()),
            detail: None,
        };
        assert_eq!(tpm_problem(&[tpm(&"aa".repeat(32))], &check), None);
        assert_eq!(tpm_problem(&[tpm(&"BB".repeat(32))], &check), None);
        let wrong = tpm_problem(&[tpm(&"cc".repeat(32))], &check).unwrap();
        assert!(wrong.contains("none of the predicted values"), "{wrong}");
        assert!(tpm_problem(&[], &check).unwrap().contains("no TPM"));
        let unread = Event::Tpm {
            pcr11: None,
            detail: Some("cannot read".into()),
        };
        assert!(tpm_problem(&[unread], &check)
            .unwrap()
            .contains("could not read PCR 11"));
        // No prediction (no UKI): any value read from the TPM passes.
        let any = crate::TpmCheck::default();
        assert_eq!(tpm_problem(&[tpm(&"cc".repeat(32))], &any), None);
        // A recorded guest line, as the init prints it.
        let line = r#"{"event":"tpm","pcr11":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let ev: Event = serde_json::from_str(line).unwrap();
        assert_eq!(tpm_problem(&[ev], &check), None);
        let checks = crate::GuestChecks {
            tpm: Some(check),
            ..Default::default()
        };
        assert!(judge_checks(&[], &checks)
            .iter()
            .any(|p| p.contains("no TPM")));
    }
}
