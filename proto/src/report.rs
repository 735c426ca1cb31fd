//! The guest's report: the only thing a boot verdict may rest on.
//!
//! The init writes one line per event to the console, `STRATA ` followed by a
//! single-line JSON object tagged by `event`. The runner (`strata-qemu`) scans
//! the serial log for the prefix anywhere in a line (kernel messages may be
//! interleaved on the same console) and parses the JSON that follows it.
//!
//! Both sides use these types, so the format cannot drift between them.

use serde::{Deserialize, Serialize};

use crate::initramfs::{FileKind, StateMode};
use crate::kind::ExtensionKind;

/// Marks a report line on the console.
pub const PREFIX: &str = "STRATA ";

/// One report event, as the guest saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The init started: what kernel and command line it runs under.
    Start {
        /// `uname -r` of the running kernel.
        kernel: String,
        /// `uname -m` of the running kernel.
        machine: String,
        /// The kernel command line, as /proc/cmdline shows it.
        cmdline: String,
    },
    /// A kernel module the init loaded (or failed to).
    Module {
        /// Module name (underscores).
        name: String,
        /// True when the module is loaded or was already present.
        loaded: bool,
        /// The error, when it could not be loaded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// One extension layer and what the guest checked about it.
    Layer {
        /// Talos layers: position in `extensions.yaml` (0 = lowest). Sysext
        /// then confext images continue the numbering in merge order
        /// (sorted by name, lowest first), rejected images included.
        index: usize,
        /// The image file the layer came from, e.g. `00-hello.sqsh` or `tools.raw`.
        image: String,
        /// Talos extension, sysext or confext.
        kind: ExtensionKind,
        /// Talos: the name in its metadata. sysext/confext: the image name
        /// (file name without `.raw`).
        name: String,
        /// Talos: the version in its metadata. sysext/confext:
        /// `SYSEXT_VERSION_ID` (`CONFEXT_VERSION_ID`), else `VERSION_ID`,
        /// else empty.
        version: String,
        /// Talos: the layer is part of the root overlay; sysext/confext:
        /// of the overlay on every hierarchy it was merged into; both per
        /// /proc/self/mountinfo. Flattened: always false (no layer).
        /// Disabled: true when the shipped image is active anyway (a loop
        /// device backs onto it, or a layer of that kind and name is mounted).
        mounted: bool,
        /// A file the layer ships is visible, with the same content, in
        /// the merged root. Flattened: the probe file has the recorded
        /// sha256. Disabled: the image file is present in the merged root.
        visible: bool,
        /// The path that was checked for `visible`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe: Option<String>,
        /// Why a check failed, when one did (or a note).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// The extension was merged into the root squashfs at build time:
        /// no layer at boot, only its probe file to check.
        #[serde(default, skip_serializing_if = "is_false")]
        flattened: bool,
        /// The extension ships in the image without being activated: its
        /// image file must be present and not mounted.
        #[serde(default, skip_serializing_if = "is_false")]
        disabled: bool,
    },
    /// A block device the guest saw, and the drivers behind it: proof of
    /// the device model a boot really used.
    Disk {
        /// The kernel's name, e.g. `sda`, `vda`, `nvme0n1`, `sr0`.
        name: String,
        /// The `driver` of each device from the disk up its sysfs path,
        /// nearest first, e.g. `["sd", "vmw_pvscsi"]`,
        /// `["virtio_blk", "virtio-pci"]`, `["nvme"]`.
        #[serde(default)]
        drivers: Vec<String>,
        /// Size in bytes (`/sys/block/<name>/size` times 512).
        size_bytes: u64,
        /// The kernel flags the medium as removable (optical drives).
        #[serde(default)]
        removable: bool,
    },
    /// The UEFI `SecureBoot` variable, read through efivarfs: whether the
    /// firmware checked the signature of what it booted.
    SecureBoot {
        /// True when the variable reads 1.
        enabled: bool,
        /// Why the state is unknown or off, when it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The merged root's firmware directory, handed to the kernel's
    /// firmware loader (`firmware_class.path`) before extension modules load.
    Firmware {
        /// The directory as the init sees it (under the merged root's mount
        /// point); empty when the merged root has no firmware directory.
        path: String,
        /// True when the kernel parameter now holds `path`.
        set: bool,
        /// Why it was not set, when it was not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A kernel module an extension ships, loaded by name (from
    /// `/etc/strata/modules.check`) out of the merged root.
    ExtModule {
        /// The name or alias as listed.
        name: String,
        /// The module file, as the booted system sees it
        /// (`/usr/lib/modules/<release>/kernel/...`); absent when the
        /// name is built into the kernel or was never found.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// The other modules loaded for it, in load order: `pre:` soft
        /// dependencies, dependencies, further alias matches.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        deps: Vec<String>,
        /// True when the module (and every hard dependency) is in the kernel:
        /// loaded, and listed in `/proc/modules`.
        loaded: bool,
        /// Why not, when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The TPM the guest found, reported only when `/sys/class/tpm/tpm0`
    /// exists: what PCR 11 (SHA-256 bank) holds when the init reports, i.e.
    /// what the UKI's stub measured (strata's init extends no phase word).
    Tpm {
        /// PCR 11 in lowercase hex, from `/sys/class/tpm/tpm0/pcr-sha256/11`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pcr11: Option<String>,
        /// Why PCR 11 could not be read, when it could not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The merged root's writable layer.
    State {
        /// Where it lives.
        mode: StateMode,
        /// The block device holding persistent state (absent for tmpfs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// True when the init wrote a fresh file system on it this boot.
        #[serde(default, skip_serializing_if = "is_false")]
        formatted: bool,
        /// Persistent state: how many boots used it, this one included
        /// (`/var/lib/strata/boot-count` in the merged root, which the init
        /// reads and writes back through the overlay).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boots: Option<u64>,
    },
    /// One of the profile's `files:` as the merged root shows it.
    File {
        /// Absolute path in the booted system.
        path: String,
        /// What the profile asked for.
        kind: FileKind,
        /// True when type, content (sha256), mode and owner are the profile's.
        ok: bool,
        /// What differs, when something does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A file several Talos layers ship (from `guest.json`'s `shadowed`):
    /// whose copy the merged root shows. Layers must stack in profile
    /// order, the later one on top.
    Stack {
        /// Absolute path in the booted system.
        path: String,
        /// The layers that ship it, lowest first.
        layers: Vec<String>,
        /// The layer whose copy must show: the last of `layers`.
        expected: String,
        /// The layer whose copy the merged root shows; empty when the
        /// content matches none of them (or the file is missing).
        shown: String,
        /// True when the merged root shows the expected layer's copy.
        ok: bool,
        /// What differs, when something does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A Talos extension service, started once in its container root
    /// (`boot_test.services: true`; see the init's `services` module).
    Service {
        /// The spec's `name`.
        name: String,
        /// `container.entrypoint` as the spec gives it.
        entrypoint: String,
        /// `restart` as the spec gives it (`always`, `never`, `untilSuccess`).
        restart: String,
        /// The entrypoint was executed (exec succeeded).
        executed: bool,
        /// Its exit status (128 + signal when killed by one), when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_status: Option<i32>,
        /// Still running when the wait ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alive: Option<bool>,
        /// True when it ran as its restart policy expects.
        ok: bool,
        /// Why not (or a note).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The init is about to hand the machine to the root's init.
    Handover {
        /// The init program, as the kernel command line names it.
        init: String,
        /// It is systemd: a `system` event follows from inside the running
        /// system, and the boot is judged on it too.
        systemd: bool,
    },
    /// Reported from inside the running systemd, once it finished booting.
    System {
        /// `systemctl is-system-running` (`running`, `degraded`, ...).
        state: String,
        /// `multi-user.target` is active.
        multi_user: bool,
        /// The host name the running system has.
        #[serde(default)]
        hostname: String,
        /// Units in the failed state.
        #[serde(default)]
        failed: Vec<String>,
        /// Files the init checked before the handover (layer probes,
        /// profile files) found again, with the same digest, by the running system.
        #[serde(default)]
        seen: Vec<String>,
        /// Those that were not, each with why.
        #[serde(default)]
        missing: Vec<String>,
    },
    /// A step failed; the boot cannot be trusted past this point.
    Error {
        /// Which step, e.g. `mount-root`.
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// When the init reached each of its steps, by the guest's boot clock
    /// (`CLOCK_BOOTTIME`: seconds since the kernel started, the clock of the
    /// kernel's own `[   4.55]` log stamps). Sent just before `done`; the
    /// runner turns it into the boot's phases.
    Timing {
        /// Each step's end, in the order the init ran them.
        marks: Vec<Mark>,
    },
    /// The report is complete.
    Done {
        /// True when every step and every layer check succeeded.
        ok: bool,
        /// How many layers were reported.
        layers: usize,
        /// True when the init will power off (strata.smoke=1) instead of switching root.
        smoke: bool,
    },
}

/// One step of the init and when it ended (see [`Event::Timing`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// `init` (the init started), `modules` (the initramfs's modules loaded),
    /// `root` (the merged root assembled, extension images merged), `checks`
    /// (layers, files and extension modules checked), `services` (each
    /// extension service started and watched, with `boot_test.services`),
    /// `disks` (the disk scan settled and reported).
    pub step: String,
    /// Seconds since the kernel started, to the millisecond.
    pub at: f64,
}

/// For `skip_serializing_if`: a false flag is left out of the line.
fn is_false(flag: &bool) -> bool {
    !*flag
}

impl Event {
    /// Renders the event as one console line, prefix included, newline excluded.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"));
        format!("{PREFIX}{json}")
    }

    /// Finds a report in one console line. `None` when the line holds no
    /// report; `Some(Err)` when it holds a prefix followed by JSON we cannot read.
    pub fn parse_line(line: &str) -> Option<Result<Event, serde_json::Error>> {
        let at = line.find(PREFIX)?;
        let rest = line[at + PREFIX.len()..].trim_end_matches(['\r', '\n']);
        if !rest.starts_with('{') {
            return None;
        }
        // Trailing noise after the object (an interleaved kernel message) is ignored.
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Event>();
        stream.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_console_line() {
        let ev = Event::Layer {
            index: 1,
            image: "01-hello.sqsh".into(),
            kind: ExtensionKind::Talos,
            name: "hello".into(),
            version: "1.0.0".into(),
            mounted: true,
            visible: true,
            probe: Some("/usr/local/bin/hello".into()),
            detail: None,
            flattened: false,
            disabled: false,
        };
        let line = format!("[    3.1] noise {}\r\n", ev.to_line());
        assert_eq!(Event::parse_line(&line).unwrap().unwrap(), ev);
    }

    #[test]
    fn lines_without_a_report_are_skipped() {
        assert!(Event::parse_line("[    0.0] Linux version 6.1").is_none());
        assert!(Event::parse_line("STRATA said hello").is_none());
    }

    #[test]
    fn a_damaged_report_is_an_error() {
        assert!(Event::parse_line("STRATA {\"event\":\"done\",\"ok\":tr")
            .unwrap()
            .is_err());
    }

    #[test]
    fn new_events_have_a_stable_wire_form() {
        let ev = Event::ExtModule {
            name: "macvtap".into(),
            path: Some("/usr/lib/modules/6.1/kernel/drivers/net/macvtap.ko".into()),
            deps: vec!["tap".into(), "macvlan".into()],
            loaded: true,
            error: None,
        };
        assert_eq!(
            ev.to_line(),
            r#"STRATA {"event":"ext_module","name":"macvtap","path":"/usr/lib/modules/6.1/kernel/drivers/net/macvtap.ko","deps":["tap","macvlan"],"loaded":true}"#
        );
        let line = r#"STRATA {"event":"ext_module","name":"x","loaded":false,"error":"gone"}"#;
        assert_eq!(
            Event::parse_line(line).unwrap().unwrap(),
            Event::ExtModule {
                name: "x".into(),
                path: None,
                deps: Vec::new(),
                loaded: false,
                error: Some("gone".into())
            }
        );
        let ev = Event::Firmware {
            path: "/strata/root/usr/lib/firmware".into(),
            set: true,
            detail: None,
        };
        assert_eq!(
            ev.to_line(),
            r#"STRATA {"event":"firmware","path":"/strata/root/usr/lib/firmware","set":true}"#
        );
        let line = r#"STRATA {"event":"layer","index":2,"image":"a.raw","kind":"sysext","name":"a","version":"","mounted":true,"visible":true}"#;
        assert!(matches!(
            Event::parse_line(line).unwrap().unwrap(),
            Event::Layer {
                kind: ExtensionKind::Sysext,
                index: 2,
                ..
            }
        ));
    }

    #[test]
    fn flattened_and_disabled_layers_keep_old_lines_readable() {
        let old = r#"STRATA {"event":"layer","index":0,"image":"a.sqsh","kind":"talos","name":"a","version":"1","mounted":true,"visible":true}"#;
        let ev = Event::parse_line(old).unwrap().unwrap();
        assert!(matches!(
            ev,
            Event::Layer {
                flattened: false,
                disabled: false,
                ..
            }
        ));
        // False flags are left out, so an enabled layer's line is unchanged.
        assert_eq!(ev.to_line(), old);
        let ev = Event::Layer {
            index: 3,
            image: "tools.raw".into(),
            kind: ExtensionKind::Sysext,
            name: "tools".into(),
            version: "2.0".into(),
            mounted: false,
            visible: true,
            probe: Some("/usr/lib/strata/extensions-available/tools.raw".into()),
            detail: None,
            flattened: false,
            disabled: true,
        };
        let line = ev.to_line();
        assert!(line.ends_with(r#""mounted":false,"visible":true,"probe":"/usr/lib/strata/extensions-available/tools.raw","disabled":true}"#), "{line}");
        assert_eq!(Event::parse_line(&line).unwrap().unwrap(), ev);
    }

    #[test]
    fn disks_have_a_stable_wire_form() {
        let ev = Event::Disk {
            name: "sda".into(),
            drivers: vec!["sd".into(), "vmw_pvscsi".into()],
            size_bytes: 1 << 30,
            removable: false,
        };
        let line = ev.to_line();
        assert_eq!(
            line,
            r#"STRATA {"event":"disk","name":"sda","drivers":["sd","vmw_pvscsi"],"size_bytes":1073741824,"removable":false}"#
        );
        assert_eq!(Event::parse_line(&line).unwrap().unwrap(), ev);
    }

    #[test]
    fn timing_has_a_stable_wire_form() {
        let ev = Event::Timing {
            marks: vec![
                Mark {
                    step: "init".into(),
                    at: 4.552,
                },
                Mark {
                    step: "modules".into(),
                    at: 5.9,
                },
            ],
        };
        let line = ev.to_line();
        assert_eq!(
            line,
            r#"STRATA {"event":"timing","marks":[{"step":"init","at":4.552},{"step":"modules","at":5.9}]}"#
        );
        assert_eq!(Event::parse_line(&line).unwrap().unwrap(), ev);
    }

    #[test]
    fn done_has_a_stable_wire_form() {
        let line = Event::Done {
            ok: true,
            layers: 2,
            smoke: false,
        }
        .to_line();
        assert_eq!(
            line,
            r#"STRATA {"event":"done","ok":true,"layers":2,"smoke":false}"#
        );
    }
}
