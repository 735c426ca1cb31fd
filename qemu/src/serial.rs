//! Following the serial console log while QEMU writes it, and picking the
//! guest's report out of it.
//!
//! Supported: a plain file that only grows (QEMU's `file` chardev), lines
//! ending in `\n` or `\r\n`, any bytes (invalid UTF-8 is replaced). The file
//! may not exist yet when tailing starts. Not supported: a log that is
//! truncated or rotated while it is followed.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use strata_proto::report::Event;

/// Reads complete lines appended to a file since the last call.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: Option<File>,
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
}

/// Why the console log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the log failed.
    #[error("cannot read serial log {path}")]
    Read {
        /// The log file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

impl Tail {
    /// Follows `path`, which need not exist yet.
    pub fn new(path: &Path) -> Self {
        Tail {
            path: path.to_owned(),
            file: None,
            partial: Vec::new(),
        }
    }

    /// The complete lines appended since the last call, without line ends.
    pub fn poll(&mut self) -> Result<Vec<String>, Error> {
        let fail = |source| Error::Read {
            path: self.path.clone(),
            source,
        };
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(fail(e)),
            }
        }
        if let Some(file) = self.file.as_mut() {
            file.read_to_end(&mut self.partial).map_err(fail)?;
        }
        Ok(self.take_lines())
    }

    /// Like [`Tail::poll`], then also returns an unterminated last line: for
    /// when the writer has exited and no newline will come.
    pub fn finish(&mut self) -> Result<Vec<String>, Error> {
        let mut lines = self.poll()?;
        if !self.partial.is_empty() {
            lines.push(decode(&std::mem::take(&mut self.partial)));
        }
        Ok(lines)
    }

    fn take_lines(&mut self) -> Vec<String> {
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        done[..end].split(|&b| b == b'\n').map(decode).collect()
    }
}

fn decode(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// When the runner saw the landmarks of a boot arrive on the console, in
/// seconds after QEMU started (to the runner's poll interval); `None` when a
/// landmark never came (or lines were fed without a time).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Arrivals {
    /// The firmware started a boot entry (EDK II's `BdsDxe: starting`).
    pub boot_entry: Option<f64>,
    /// Linux's EFI stub spoke (`EFI stub: `): the loader handed over the
    /// kernel and initramfs, and the stub decompresses and starts the kernel.
    pub stub: Option<f64>,
    /// The init's `start` event.
    pub start: Option<f64>,
    /// The init's `done` event.
    pub done: Option<f64>,
    /// The running system's `system` event.
    pub system: Option<f64>,
}

/// The line EDK II's boot manager prints as it starts a boot option.
const BOOT_ENTRY: &str = "BdsDxe: starting ";
/// The prefix of the EFI stub's messages (absent with `quiet`).
const STUB: &str = "EFI stub: ";

/// What the console has shown so far: the report events, the report lines
/// that could not be read, and the last line for error messages.
#[derive(Debug, Default, Clone)]
pub struct Console {
    /// Report events in the order the guest printed them.
    pub events: Vec<Event>,
    /// Lines that carried the report prefix and a `{` but no readable event.
    pub unreadable: Vec<String>,
    /// The last non-blank console line, report or not.
    pub last_line: Option<String>,
    /// The firmware started its UEFI shell before any report: it found
    /// nothing it could boot (no driver for the disk, or no loader on it).
    pub firmware_shell: bool,
    /// When the boot's landmarks arrived.
    pub arrivals: Arrivals,
    /// The guest kernel's panic line: the kernel stops there (Debian's waits forever), so
    /// nothing more will come and the run can end at once instead of at its timeout.
    pub kernel_panic: Option<String>,
}

/// What Linux prints when it panics.
const PANIC_BANNER: &str = "Kernel panic - not syncing";

/// The banner of the EDK II shell that OVMF and AAVMF fall back to.
const SHELL_BANNER: &str = "UEFI Interactive Shell";

impl Console {
    /// Takes in console lines.
    pub fn feed(&mut self, lines: impl IntoIterator<Item = String>) {
        self.feed_at(lines, None);
    }

    /// Takes in console lines that arrived `at` seconds after QEMU started.
    pub fn feed_at(&mut self, lines: impl IntoIterator<Item = String>, at: Option<f64>) {
        for line in lines {
            match Event::parse_line(&line) {
                Some(Ok(event)) => {
                    self.note_arrival(&event, at);
                    self.events.push(event);
                }
                Some(Err(_)) => self.unreadable.push(line.clone()),
                None if line.contains(BOOT_ENTRY) => {
                    self.arrivals.boot_entry = self.arrivals.boot_entry.or(at);
                }
                None if line.contains(STUB) => self.arrivals.stub = self.arrivals.stub.or(at),
                None => {}
            }
            if self.events.is_empty() && line.contains(SHELL_BANNER) {
                self.firmware_shell = true;
            }
            if self.kernel_panic.is_none() && line.contains(PANIC_BANNER) {
                self.kernel_panic = Some(line.trim().to_owned());
            }
            if !line.trim().is_empty() {
                self.last_line = Some(line);
            }
        }
    }

    /// Keeps the first arrival of each landmark event.
    fn note_arrival(&mut self, event: &Event, at: Option<f64>) {
        let slot = match event {
            Event::Start { .. } => &mut self.arrivals.start,
            Event::Done { .. } => &mut self.arrivals.done,
            Event::System { .. } => &mut self.arrivals.system,
            _ => return,
        };
        *slot = slot.or(at);
    }

    /// True once the guest said its report is complete: the init's `done`
    /// and, when it handed over to systemd, the `system` event from inside.
    pub fn done(&self) -> bool {
        let has = |f: fn(&Event) -> bool| self.events.iter().any(f);
        has(|e| matches!(e, Event::Done { .. }))
            && (!has(|e| matches!(e, Event::Handover { systemd: true, .. }))
                || has(|e| matches!(e, Event::System { .. })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn follows_a_growing_file_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut tail = Tail::new(&path);
        assert!(tail.poll().unwrap().is_empty(), "file does not exist yet");
        append(&path, b"BdsDxe: loading\r\nEFI stub: ");
        assert_eq!(tail.poll().unwrap(), ["BdsDxe: loading"]);
        assert!(tail.poll().unwrap().is_empty(), "nothing new");
        append(&path, b"decompressing\n\nSTRATA {\"event\":");
        assert_eq!(tail.poll().unwrap(), ["EFI stub: decompressing", ""]);
        append(
            &path,
            b"\"done\",\"ok\":true,\"layers\":0,\"smoke\":true}\r\n",
        );
        let lines = tail.poll().unwrap();
        assert_eq!(
            lines,
            [r#"STRATA {"event":"done","ok":true,"layers":0,"smoke":true}"#]
        );
    }

    #[test]
    fn finish_returns_the_unterminated_tail_and_invalid_utf8_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        append(&path, b"a\xffb\npowering o");
        let mut tail = Tail::new(&path);
        assert_eq!(tail.poll().unwrap(), ["a\u{fffd}b"]);
        assert_eq!(tail.finish().unwrap(), ["powering o"]);
        assert!(tail.finish().unwrap().is_empty());
    }

    #[test]
    fn unreadable_log_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory opens but cannot be read.
        let mut tail = Tail::new(dir.path());
        let err = tail.poll().unwrap_err();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn the_first_kernel_panic_line_is_kept() {
        let mut c = Console::default();
        c.feed(["[    0.1] ok".to_owned()]);
        assert_eq!(c.kernel_panic, None);
        c.feed([
            "[    0.036000] Kernel panic - not syncing: IO-APIC + timer doesn't work!  ".to_owned(),
            "[    0.036000] ---[ end Kernel panic - not syncing: IO-APIC ]---".to_owned(),
        ]);
        assert_eq!(
            c.kernel_panic.as_deref(),
            Some("[    0.036000] Kernel panic - not syncing: IO-APIC + timer doesn't work!")
        );
    }

    #[test]
    fn firmware_shell_counts_only_before_the_report() {
        let mut c = Console::default();
        c.feed(["\u{1b}[0mUEFI Interactive Shell v2.2".to_owned()]);
        assert!(c.firmware_shell);
        let mut c = Console::default();
        let start = Event::Start {
            kernel: "6.1".into(),
            machine: "x86_64".into(),
            cmdline: String::new(),
        };
        c.feed([start.to_line(), "echo UEFI Interactive Shell".to_owned()]);
        assert!(!c.firmware_shell);
    }

    #[test]
    fn landmarks_keep_their_first_arrival() {
        let mut c = Console::default();
        let start = Event::Start {
            kernel: "6.1".into(),
            machine: "x86_64".into(),
            cmdline: String::new(),
        };
        c.feed_at(
            ["BdsDxe: loading Boot0001".to_owned(), String::new()],
            Some(1.0),
        );
        c.feed_at(
            ["BdsDxe: starting Boot0001 \"UEFI Misc Device\"".to_owned()],
            Some(2.5),
        );
        c.feed_at(["EFI stub: Loaded initrd".to_owned()], Some(4.0));
        c.feed_at(
            [start.to_line(), "BdsDxe: starting Boot0002".to_owned()],
            Some(7.0),
        );
        c.feed_at([start.to_line()], Some(9.0));
        assert_eq!(
            c.arrivals,
            Arrivals {
                boot_entry: Some(2.5),
                stub: Some(4.0),
                start: Some(7.0),
                done: None,
                system: None
            }
        );
    }

    #[test]
    fn console_collects_events_damage_and_last_line() {
        let mut c = Console::default();
        let done = Event::Done {
            ok: true,
            layers: 0,
            smoke: true,
        };
        c.feed([
            "[    1.0] Run /init as init process".to_owned(),
            format!("[    1.2] {}", done.to_line()),
            "STRATA {\"event\":\"layer\",\"index\":".to_owned(),
            "   ".to_owned(),
        ]);
        assert_eq!(c.events, [done]);
        assert!(c.done());
        assert_eq!(c.unreadable.len(), 1);
        assert_eq!(
            c.last_line.as_deref(),
            Some("STRATA {\"event\":\"layer\",\"index\":")
        );
    }
}
