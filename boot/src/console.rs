//! The console: where report lines and the init's own messages go.
//!
//! Each line is handed to the kernel in ONE `write()` call, so a report line
//! is never split by our own doing (kernel messages may still interleave; the
//! runner copes with that). After each line the init waits for the tty to
//! drain (`tcdrain`), so a line is on the wire before a power-off can cut it.
//!
//! Supported: `/dev/console` (the initramfs node or, once mounted, the
//! devtmpfs one), falling back to standard error when it cannot be opened.
//! Not supported: colours, log levels, buffering.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use strata_proto::report::Event;

/// Where the kernel's console device lives.
pub const CONSOLE_PATH: &str = "/dev/console";

/// Prefix of the init's human-readable messages.
const SAY_PREFIX: &str = "strata-init: ";

/// The console the init writes to.
#[derive(Debug)]
pub struct Console {
    file: Option<File>,
}

impl Console {
    /// Opens `/dev/console`; if it is absent (no node in the initramfs yet),
    /// lines go to standard error until [`Console::reopen_if_closed`] succeeds.
    pub fn open() -> Self {
        Console {
            file: open_console(Path::new(CONSOLE_PATH)).ok(),
        }
    }

    /// Retries opening the console, e.g. after devtmpfs is mounted on /dev.
    pub fn reopen_if_closed(&mut self) {
        if self.file.is_none() {
            self.file = open_console(Path::new(CONSOLE_PATH)).ok();
        }
    }

    /// Writes one report event as one line.
    pub fn emit(&mut self, event: &Event) {
        self.write_line(&frame(&event.to_line()));
    }

    /// Writes a human-readable message (not part of the report).
    pub fn say(&mut self, message: &str) {
        self.write_line(&frame(&format!("{SAY_PREFIX}{message}")));
    }

    fn write_line(&mut self, bytes: &[u8]) {
        let fd = self
            .file
            .as_ref()
            .map_or(libc::STDERR_FILENO, |file| file.as_raw_fd());
        // Nothing useful can be done when the console itself fails: there is
        // no other place to report it.
        let _ = write_frame(fd, bytes);
        // SAFETY: tcdrain only reads the fd number; an fd that is not a tty
        // makes it fail with ENOTTY, which is harmless here.
        unsafe {
            libc::tcdrain(fd);
        }
    }
}

/// Gives the process a console on fds 0, 1 and 2 where the kernel could not
/// (no /dev/console in the initramfs), so the next init inherits one.
/// Call it once devtmpfs is mounted on /dev, before [`Console::reopen_if_closed`].
pub fn ensure_stdio() {
    let standard = [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO];
    // SAFETY: F_GETFD only inspects the descriptor table.
    let closed = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0;
    if !standard.iter().any(|&fd| closed(fd)) {
        return;
    }
    let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE_PATH)
    else {
        return;
    };
    // The open itself may have landed on one of the closed standard fds;
    // that one must stay open, so the handle is released, not dropped.
    let raw = console.into_raw_fd();
    for fd in standard {
        if fd != raw && closed(fd) {
            // SAFETY: dup2 onto a closed standard descriptor; `raw` is open.
            unsafe { libc::dup2(raw, fd) };
        }
    }
    if !standard.contains(&raw) {
        // SAFETY: `raw` came from into_raw_fd above and nothing else owns it.
        unsafe { libc::close(raw) };
    }
}

fn open_console(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// One console line: the text and its newline, as one buffer.
pub fn frame(line: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    bytes
}

/// Writes `bytes` with one `write()` call. A tty accepts the whole buffer at
/// once; should a device ever take less, the rest follows in further calls
/// rather than being lost.
pub fn write_frame(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a live slice; write() reads at most `rest.len()`
        // bytes from it and does not keep the pointer.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        rest = &rest[n.min(rest.len())..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        let ret = unsafe { libc::pipe(fds.as_mut_ptr()) };
        assert_eq!(ret, 0);
        // SAFETY: pipe() just returned these two fds and nothing else owns them.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_report_line_reaches_the_reader_whole() {
        let (mut reader, writer) = pipe();
        let event = Event::Done {
            ok: true,
            layers: 0,
            smoke: true,
        };
        write_frame(writer.as_raw_fd(), &frame(&event.to_line())).unwrap();
        drop(writer);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1);
        assert_eq!(Event::parse_line(&text).unwrap().unwrap(), event);
    }

    #[test]
    fn writing_to_a_closed_reader_fails() {
        let (reader, writer) = pipe();
        drop(reader);
        // The Rust runtime ignores SIGPIPE, so this is EPIPE, not a signal.
        assert!(write_frame(writer.as_raw_fd(), b"x\n").is_err());
    }
}
