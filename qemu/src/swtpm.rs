//! A software TPM 2.0 (`swtpm`) for one boot test, started before QEMU and
//! stopped with it.
//!
//! QEMU's `tpm-emulator` backend speaks swtpm's control protocol over one
//! unix socket (`--ctrl type=unixio`) and passes the data channel through
//! it, so a QEMU run needs only that socket; a TSS client on the host (the
//! tests' `systemd-measure sign`) needs the data socket too
//! ([`Swtpm::start_server`]). The TPM state lives in a fresh directory that
//! is removed with the process, so every boot starts from a cleared TPM
//! (all PCRs zero) and leaves nothing behind but `swtpm.log`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Arch;

/// The program.
pub const SWTPM: &str = "swtpm";
/// How long swtpm may take to create its socket.
const START_WAIT: Duration = Duration::from_secs(10);

/// Why swtpm could not be run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// swtpm is not installed.
    #[error(
        "cannot run {SWTPM}: install swtpm (apt-get install swtpm swtpm-tools, or scripts/deps.sh)"
    )]
    Missing(#[source] io::Error),
    /// It started but made no socket in time.
    #[error("{SWTPM} made no socket {} within {}s; its log: {}", socket.display(), START_WAIT.as_secs(), log.display())]
    NoSocket {
        /// The socket it should have made.
        socket: PathBuf,
        /// Its log file.
        log: PathBuf,
    },
    /// The state directory could not be made.
    #[error("cannot prepare the TPM state directory {}", path.display())]
    State {
        /// The directory.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// A running swtpm; killed, and its state and sockets removed, on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    state: PathBuf,
    ctrl: PathBuf,
    server: Option<PathBuf>,
}

impl Swtpm {
    /// Starts a TPM for QEMU: control socket `<dir>/swtpm.ctrl`, state in
    /// `<dir>/swtpm-state`, log `<dir>/swtpm.log`. swtpm exits by itself
    /// when QEMU closes the connection (`--terminate`).
    pub fn start(dir: &Path) -> Result<Swtpm, Error> {
        Self::spawn(dir, false)
    }

    /// Starts a TPM for a TSS client on the host: data socket
    /// `<dir>/swtpm.sock`, control socket `<dir>/swtpm.sock.ctrl` (the
    /// name libtss2's swtpm TCTI derives), already powered on and started.
    pub fn start_server(dir: &Path) -> Result<Swtpm, Error> {
        Self::spawn(dir, true)
    }

    fn spawn(dir: &Path, server: bool) -> Result<Swtpm, Error> {
        let state = dir.join("swtpm-state");
        let state_err = |source| Error::State {
            path: state.clone(),
            source,
        };
        match fs::remove_dir_all(&state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(state_err(e)),
            _ => {}
        }
        fs::create_dir_all(&state).map_err(state_err)?;
        let log = dir.join("swtpm.log");
        let data = dir.join("swtpm.sock");
        let ctrl = if server {
            dir.join("swtpm.sock.ctrl")
        } else {
            dir.join("swtpm.ctrl")
        };
        for stale in [&data, &ctrl] {
            let _ = fs::remove_file(stale);
        }
        let mut cmd = Command::new(SWTPM);
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .arg("--log")
            .arg(format!("file={},level=1", log.display()));
        if server {
            cmd.arg("--server")
                .arg(format!("type=unixio,path={}", data.display()))
                .arg("--flags")
                .arg("not-need-init,startup-clear");
        } else {
            cmd.arg("--terminate");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::Missing)?;
        let tpm = Swtpm {
            child,
            state,
            ctrl: ctrl.clone(),
            server: server.then_some(data),
        };
        let socket = tpm.server.clone().unwrap_or(ctrl);
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > START_WAIT {
                return Err(Error::NoSocket { socket, log });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    /// The data socket of a [`Swtpm::start_server`] TPM.
    pub fn server_socket(&self) -> Option<&Path> {
        self.server.as_deref()
    }

    /// The QEMU options attaching this TPM as a TIS device: `tpm-tis` on
    /// amd64's q35, the MMIO `tpm-tis-device` on arm64's virt.
    pub fn qemu_args(&self, arch: Arch) -> Vec<String> {
        let device = match arch {
            Arch::Amd64 => "tpm-tis,tpmdev=tpm0",
            Arch::Arm64 => "tpm-tis-device,tpmdev=tpm0",
        };
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", self.ctrl.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            device.into(),
        ]
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // It may have exited already (--terminate); either way reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.state);
        let _ = fs::remove_file(&self.ctrl);
        if let Some(s) = &self.server {
            let _ = fs::remove_file(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// swtpm starts, answers on its sockets, and leaves nothing but its log.
    #[test]
    fn starts_and_cleans_up() {
        if Command::new(SWTPM).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("STRATA_E2E").is_none(),
                "swtpm missing: run scripts/deps.sh"
            );
            eprintln!("skipped: swtpm missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for server in [false, true] {
            let tpm = Swtpm::spawn(dir.path(), server).unwrap();
            let pid = tpm.child.id();
            assert!(Path::new(&format!("/proc/{pid}")).exists());
            assert_eq!(tpm.server_socket().is_some(), server);
            let args = tpm.qemu_args(Arch::Arm64).join(" ");
            assert!(args.contains("tpm-tis-device"), "{args}");
            drop(tpm);
            let left: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(left, vec!["swtpm.log".to_string()]);
        }
    }
}
