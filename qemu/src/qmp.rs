//! The QEMU Machine Protocol connection: learning that the guest stopped, and
//! ending QEMU.
//!
//! Supported: QEMU's QMP server on a unix socket (`-qmp unix:…,server=on,
//! wait=off`), the sync client of the `qapi` crate. Events are collected by
//! polling: each [`Monitor::poll`] runs `query-version`, and the client queues
//! every event that arrives before the answer. Events the crate's schema does
//! not know (it follows QEMU 9.1; Debian has 7.2) are skipped. Not
//! supported: out-of-band commands, anything but `SHUTDOWN`, `RESET` and
//! `quit`.

use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qapi::qmp::{quit, Event};
use qapi::{Qmp, Stream};

/// How long one QMP read may block before the monitor is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the monitor could not be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket did not appear or refused connections.
    #[error("cannot connect to the qemu monitor at {path} within {secs} s")]
    Connect {
        /// The QMP socket.
        path: PathBuf,
        /// How long we tried.
        secs: u64,
        /// The last failure.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the socket, or answered something that is not QMP.
    #[error("qmp handshake with {path} failed: {message}")]
    Handshake {
        /// The QMP socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Talking to an established monitor failed.
    #[error("qmp connection lost: {message}")]
    Lost {
        /// What went wrong.
        message: String,
    },
}

/// A guest stop (or, without `-no-reboot`, restart) that QEMU reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// True when the guest itself asked for it (power-off, reset, panic).
    pub guest: bool,
    /// QEMU's cause, e.g. `guest-shutdown`, `guest-reset`, `guest-panic`.
    pub reason: String,
    /// QEMU restarted the guest (a `RESET` event) instead of stopping it.
    pub reset: bool,
}

type Client = Qmp<Stream<BufReader<UnixStream>, UnixStream>>;

/// An established QMP session.
pub struct Monitor {
    qmp: Client,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Monitor")
    }
}

/// Connects to the QMP socket at `path` and negotiates capabilities. QEMU
/// creates the socket only after it started, so connecting is retried until
/// `within` has passed or `alive` says QEMU is gone.
pub fn connect(
    path: &Path,
    within: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<Monitor, Error> {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(source) if start.elapsed() >= within || !alive() => {
                return Err(Error::Connect {
                    path: path.to_owned(),
                    secs: within.as_secs(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    handshake(stream).map_err(|message| Error::Handshake {
        path: path.to_owned(),
        message,
    })
}

fn handshake(stream: UnixStream) -> Result<Monitor, String> {
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let mut qmp = Qmp::new(Stream::new(BufReader::new(reader), stream));
    // The crate panics on EOF before the greeting; check for it first.
    let greeting = qmp.inner_mut().fill_buf().map_err(|e| e.to_string())?;
    if greeting.is_empty() {
        return Err("qemu closed the socket before greeting".into());
    }
    qmp.handshake().map_err(|e| e.to_string())?;
    Ok(Monitor { qmp })
}

impl Monitor {
    /// Exchanges one command with QEMU and returns the stops it reported
    /// meanwhile. `Err` means the monitor is gone (QEMU exited or hangs).
    pub fn poll(&mut self) -> Result<Vec<Shutdown>, Error> {
        match self.qmp.nop() {
            Ok(()) => {}
            // An event outside the crate's schema: the line is consumed and
            // the answer stays queued for the next poll, which is harmless
            // since every poll sends the same query.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            Err(e) => {
                return Err(Error::Lost {
                    message: e.to_string(),
                })
            }
        }
        Ok(self.qmp.events().filter_map(shutdown).collect())
    }

    /// Asks QEMU to exit. The answer is not awaited: QEMU may close the
    /// socket first, and the caller waits for the process anyway. Keep the
    /// monitor open until QEMU has exited: closing a unix socket that still
    /// holds unread input (a late event) resets the connection, and QEMU may
    /// then never read the `quit`.
    pub fn quit(&mut self) -> Result<(), Error> {
        self.qmp.write_command(&quit {}).map_err(|e| Error::Lost {
            message: e.to_string(),
        })
    }
}

fn shutdown(event: Event) -> Option<Shutdown> {
    let (guest, reason, reset) = match event {
        Event::SHUTDOWN { data, .. } => (data.guest, data.reason, false),
        Event::RESET { data, .. } => (data.guest, data.reason, true),
        _ => return None,
    };
    Some(Shutdown {
        guest,
        reason: serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into()),
        reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A scripted QMP server: sends the greeting, then answers every command
    /// line with the next reply batch (events followed by a return).
    fn fake_qemu(path: &Path, replies: Vec<&'static str>) -> thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut w = sock.try_clone().unwrap();
            let mut r = std::io::BufReader::new(sock);
            writeln!(w, r#"{{"QMP": {{"version": {{"qemu": {{"micro": 0, "minor": 2, "major": 7}}, "package": ""}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                seen.push(line.trim().to_owned());
                if w.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
            // Returning closes the socket, as an exiting QEMU does.
            seen
        })
    }

    const EMPTY: &str = "{\"return\": {}}\n";
    const VERSION: &str = r#"{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}}
"#;

    #[test]
    fn reports_guest_shutdown_and_skips_unknown_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let script = vec![
            EMPTY,
            VERSION,
            concat!(
                r#"{"event": "NO_SUCH_EVENT_IN_SCHEMA", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}}"#,
                "\n",
                r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}"#,
                "\n",
                r#"{"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}, "timestamp": {"seconds": 1, "microseconds": 1}}"#,
                "\n",
                r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                "\n",
                r#"{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}}"#,
                "\n",
            ),
            VERSION,
            VERSION,
        ];
        let server = fake_qemu(&sock, script);
        let mut m = connect(&sock, Duration::from_secs(5), || true).unwrap();
        assert_eq!(m.poll().unwrap(), []);
        // The unknown event is skipped; the answer to this poll stays queued.
        assert_eq!(m.poll().unwrap(), []);
        let stops = m.poll().unwrap();
        assert_eq!(
            stops,
            [
                Shutdown {
                    guest: true,
                    reason: "guest-reset".into(),
                    reset: true,
                },
                Shutdown {
                    guest: true,
                    reason: "guest-shutdown".into(),
                    reset: false,
                }
            ]
        );
        m.quit().unwrap();
        // The monitor stays open until the server has read `quit`: closing a
        // unix socket with unread input resets the peer's side.
        let seen = server.join().unwrap();
        drop(m);
        assert!(seen[0].contains("qmp_capabilities"), "{seen:?}");
        assert!(seen[1].contains("query-version"), "{seen:?}");
        assert!(seen.last().unwrap().contains("\"quit\""), "{seen:?}");
    }

    #[test]
    fn lost_connection_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qemu(&sock, vec![EMPTY]);
        let mut m = connect(&sock, Duration::from_secs(5), || true).unwrap();
        server.join().unwrap();
        assert!(matches!(m.poll(), Err(Error::Lost { .. })));
    }

    #[test]
    fn connect_gives_up_when_qemu_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("absent.sock");
        let err = connect(&sock, Duration::from_secs(30), || false).unwrap_err();
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }

    #[test]
    fn eof_before_greeting_is_a_handshake_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let t = thread::spawn(move || drop(listener.accept().unwrap()));
        let err = connect(&sock, Duration::from_secs(5), || true).unwrap_err();
        t.join().unwrap();
        assert!(matches!(err, Error::Handshake { .. }), "{err}");
    }
}
