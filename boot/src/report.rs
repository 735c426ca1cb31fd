//! The guest's report: the only thing a boot verdict may rest on.
//!
//! The init writes one line per event to the console, `STRATA ` followed by a
//! single-line JSON object tagged by `event`. The runner (`strata-qemu`) scans
//! the serial log for the prefix anywhere in a line (kernel messages may be
//! interleaved on the same console) and parses the JSON that follows it.
//!
//! Both sides use these types, so the format cannot drift between them.

use serde::{Deserialize, Serialize};

/// Marks a report line on the console.
pub const PREFIX: &str = "STRATA ";

/// What kind of image a layer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// A Talos extension (`manifest.yaml` + `rootfs/`), stacked over the root.
    Talos,
    /// A systemd system extension, merged on /usr and /opt.
    Sysext,
    /// A systemd configuration extension, merged on /etc.
    Confext,
}

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
        /// Position in `extensions.yaml` (0 = lowest).
        index: usize,
        /// The image file the layer came from, e.g. `00-hello.sqsh`.
        image: String,
        /// Talos extension, sysext or confext.
        kind: LayerKind,
        /// Extension name from its metadata.
        name: String,
        /// Extension version from its metadata.
        version: String,
        /// The layer is part of the root overlay, per /proc/self/mountinfo.
        mounted: bool,
        /// A file the layer ships is visible, with the same content, in the merged root.
        visible: bool,
        /// The path that was checked for `visible`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe: Option<String>,
        /// Why a check failed, when one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A step failed; the boot cannot be trusted past this point.
    Error {
        /// Which step, e.g. `mount-root`.
        stage: String,
        /// What went wrong.
        message: String,
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
            kind: LayerKind::Talos,
            name: "hello".into(),
            version: "1.0.0".into(),
            mounted: true,
            visible: true,
            probe: Some("/usr/local/bin/hello".into()),
            detail: None,
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
