//! Where a boot's time went, phase by phase. Pure: no I/O, no clock.
//!
//! Two clocks meet here. The runner's: when a console line arrived, in
//! seconds after QEMU started ([`Arrivals`], as exact as the runner's poll
//! interval, 0.1 s). The guest's: the init's `timing` marks, in seconds since
//! the kernel started (exact to the millisecond). The `start` event ties them
//! together: it arrived when the guest's clock read the `init` mark, so the
//! kernel started at `arrival(start) - mark(init)` on the runner's clock.
//!
//! | phase      | from                               | to                          |
//! |------------|------------------------------------|-----------------------------|
//! | `firmware` | QEMU started                       | EDK II started a boot entry |
//! | `loader`   | the boot entry started             | the EFI stub spoke: systemd-boot reads the kernel and initramfs |
//! | `stub`     | the EFI stub spoke                 | the kernel started: the stub, kernel decompression |
//! | `kernel`   | the kernel started                 | the init started            |
//! | `modules`  | the init started                   | the initramfs's modules loaded |
//! | `root`     | modules loaded                     | the merged root assembled   |
//! | `checks`   | root assembled                     | layers, files, extension modules checked |
//! | `services` | checks done                        | each extension service started and watched (`boot_test.services` only) |
//! | `disks`    | checks (or services) done          | the disk scan settled (waiting, beyond the steps above) |
//! | `report`   | the init's last step               | the `done` event arrived    |
//! | `system`   | `done`                             | the running systemd's `system` event (systemd roots) |
//! | `runner`   | the last report event              | the verdict (the runner's grace and QEMU's exit) |
//!
//! Without a boot entry line (a firmware that does not print one),
//! `firmware` covers the loader too and `loader` is left out; without the
//! stub's line (`quiet` silences it), `loader` covers the stub too. A phase whose
//! ends were never seen is left out; the phases then add up to less than
//! the total.

use serde::Serialize;
use strata_proto::report::{Event, Mark};

use crate::serial::Arrivals;

/// One phase of a boot and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// The phase's name (see the module's table; the init's steps are
    /// named by the init).
    pub name: String,
    /// Its length in seconds, to the millisecond (never negative).
    pub secs: f64,
}

/// The boot's phases, in boot order, from what arrived when and the
/// guest's own marks; `total` is the whole run in seconds.
pub fn phases(arrivals: &Arrivals, events: &[Event], total: f64) -> Vec<Phase> {
    let marks = marks(events);
    let mark = |step: &str| marks.iter().find(|m| m.step == step).map(|m| m.at);
    let kernel_start = arrivals.start.zip(mark("init")).map(|(a, m)| a - m);
    let mut out = Vec::new();
    let mut push = |name: String, from: Option<f64>, to: Option<f64>| {
        if let (Some(from), Some(to)) = (from, to) {
            out.push(Phase {
                name,
                secs: round_ms((to - from).max(0.0)),
            });
        }
    };
    let loader_end = arrivals.stub.or(kernel_start);
    match arrivals.boot_entry {
        Some(entry) => {
            push("firmware".into(), Some(0.0), Some(entry));
            push("loader".into(), Some(entry), loader_end);
        }
        None => push("firmware".into(), Some(0.0), loader_end),
    }
    if arrivals.stub.is_some() {
        push("stub".into(), arrivals.stub, kernel_start);
    }
    push("kernel".into(), Some(0.0), mark("init"));
    for pair in marks.windows(2) {
        push(pair[1].step.clone(), Some(pair[0].at), Some(pair[1].at));
    }
    let done_on_guest_clock = arrivals.done.zip(kernel_start).map(|(d, k)| d - k);
    push(
        "report".into(),
        marks.last().map(|m| m.at),
        done_on_guest_clock,
    );
    push("system".into(), arrivals.done, arrivals.system);
    push(
        "runner".into(),
        arrivals.system.or(arrivals.done),
        Some(total),
    );
    out
}

/// One line for people: `firmware 2.1 s, loader 0.8 s, ...`.
pub fn describe(phases: &[Phase]) -> String {
    let parts: Vec<String> = phases
        .iter()
        .map(|p| format!("{} {:.1} s", p.name, p.secs))
        .collect();
    parts.join(", ")
}

/// The marks of the first `timing` event (none without one).
fn marks(events: &[Event]) -> &[Mark] {
    events
        .iter()
        .find_map(|e| match e {
            Event::Timing { marks } => Some(marks.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(marks: &[(&str, f64)]) -> Event {
        Event::Timing {
            marks: marks
                .iter()
                .map(|(step, at)| Mark {
                    step: (*step).into(),
                    at: *at,
                })
                .collect(),
        }
    }

    fn names_and_secs(phases: &[Phase]) -> Vec<(&str, f64)> {
        phases.iter().map(|p| (p.name.as_str(), p.secs)).collect()
    }

    #[test]
    fn a_full_boot_splits_into_every_phase() {
        let arrivals = Arrivals {
            boot_entry: Some(2.0),
            stub: Some(3.0),
            start: Some(8.5),
            done: Some(11.0),
            system: None,
        };
        let events = [timing(&[
            ("init", 4.5),
            ("modules", 5.75),
            ("root", 6.25),
            ("checks", 6.5),
            ("disks", 6.75),
        ])];
        let p = phases(&arrivals, &events, 12.0);
        // The kernel started at 8.5 - 4.5 = 4.0 on the runner's clock.
        assert_eq!(
            names_and_secs(&p),
            [
                ("firmware", 2.0),
                ("loader", 1.0),
                ("stub", 1.0),
                ("kernel", 4.5),
                ("modules", 1.25),
                ("root", 0.5),
                ("checks", 0.25),
                ("disks", 0.25),
                ("report", 0.25),
                ("runner", 1.0),
            ]
        );
        assert_eq!(
            describe(&p[..3]),
            "firmware 2.0 s, loader 1.0 s, stub 1.0 s"
        );
    }

    #[test]
    fn missing_landmarks_leave_their_phases_out() {
        // No boot entry line: the firmware phase runs to the kernel's start.
        let arrivals = Arrivals {
            boot_entry: None,
            stub: None,
            start: Some(6.0),
            done: Some(9.0),
            system: Some(30.0),
        };
        let events = [timing(&[("init", 2.0), ("modules", 3.0)])];
        let p = phases(&arrivals, &events, 31.0);
        assert_eq!(
            names_and_secs(&p),
            [
                ("firmware", 4.0),
                ("kernel", 2.0),
                ("modules", 1.0),
                ("report", 2.0),
                ("system", 21.0),
                ("runner", 1.0),
            ]
        );
        // A guest that never reported: only what the runner saw.
        let p = phases(&Arrivals::default(), &[], 180.0);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn clock_skew_never_gives_a_negative_phase() {
        let arrivals = Arrivals {
            boot_entry: Some(5.0),
            stub: None,
            start: Some(5.05),
            done: None,
            system: None,
        };
        let p = phases(&arrivals, &[timing(&[("init", 0.2)])], 6.0);
        assert_eq!(names_and_secs(&p)[1], ("loader", 0.0));
    }
}
