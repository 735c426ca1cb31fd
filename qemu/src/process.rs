//! The QEMU child process, which must never outlive the runner.
//!
//! Three layers make sure no QEMU is left behind: the normal path asks QEMU
//! to quit and waits; [`Vm`]'s `Drop` kills and reaps it (also on errors and
//! panics, which unwind through it); and the kernel sends it SIGKILL if the
//! spawning thread dies without unwinding (`PR_SET_PDEATHSIG`). The last one
//! is Linux-only and tied to the thread that spawned QEMU, so a `Vm` must be
//! waited for on the thread that created it (as [`crate::boot`] does).

use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why QEMU could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The argv was empty.
    #[error("the qemu command line is empty")]
    EmptyCommand,
    /// QEMU's output log could not be created.
    #[error("cannot create qemu log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The process could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The binary.
        program: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Waiting for the process failed.
    #[error("cannot wait for qemu (pid {pid})")]
    Wait {
        /// Its process id.
        pid: u32,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// A running QEMU, killed and reaped when dropped.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    status: Option<ExitStatus>,
}

/// Starts `argv` with stdin closed and stdout+stderr going to `log`.
pub fn spawn(argv: &[String], log: &Path) -> Result<Vm, Error> {
    let (program, args) = argv.split_first().ok_or(Error::EmptyCommand)?;
    let out = File::create(log).map_err(|source| Error::Log {
        path: log.to_owned(),
        source,
    })?;
    let err = out.try_clone().map_err(|source| Error::Log {
        path: log.to_owned(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (prctl, getppid); it allocates
    // nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    Ok(Vm {
        child,
        status: None,
    })
}

/// In the child: ask for SIGKILL when the spawning thread dies, and fail if
/// the parent already died between fork and this call.
fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and has no memory
    // arguments; getppid cannot fail.
    let (rc, ppid) = unsafe {
        (
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
            libc::getppid(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if u32::try_from(ppid).ok() != Some(parent) {
        // The parent died before prctl took effect; ESRCH ("no such
        // process") says so without allocating, which is unsafe here.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

impl Vm {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if QEMU has exited (reaping it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| Error::Wait {
                pid: self.child.id(),
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Waits up to `grace` for QEMU to exit by itself, then kills it.
    pub fn wait_or_kill(&mut self, grace: Duration) -> Result<ExitStatus, Error> {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// Kills QEMU (if still running) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = self.child.id();
        let wait = |source| Error::Wait { pid, source };
        // ESRCH cannot happen: the child is not reaped yet.
        self.child.kill().map_err(wait)?;
        let status = self.child.wait().map_err(wait)?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Nothing useful can be done with a failure here.
        let _ = self.kill();
    }
}

/// An exit status in words: `exit code 1` or `signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // /proc/PID disappears once the process is reaped.
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn sh(script: &str) -> Vec<String> {
        ["/bin/sh", "-c", script].map(String::from).to_vec()
    }

    #[test]
    fn drop_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let vm = spawn(&sh("sleep 60"), &dir.path().join("log")).unwrap();
        let pid = vm.pid();
        assert!(alive(pid));
        drop(vm);
        assert!(!alive(pid), "pid {pid} survived drop");
    }

    #[test]
    fn output_goes_to_the_log_and_status_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut vm = spawn(&sh("echo out; echo err >&2; exit 3"), &log).unwrap();
        let status = vm.wait_or_kill(Duration::from_secs(10)).unwrap();
        assert_eq!(describe(status), "exit code 3");
        assert_eq!(vm.try_wait().unwrap(), Some(status));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
    }

    #[test]
    fn wait_or_kill_kills_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = spawn(&sh("sleep 60"), &dir.path().join("log")).unwrap();
        let status = vm.wait_or_kill(Duration::from_millis(100)).unwrap();
        assert_eq!(describe(status), "signal 9");
    }

    #[test]
    fn missing_program_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec!["/nonexistent/qemu".to_owned()];
        let err = spawn(&argv, &dir.path().join("log")).unwrap_err();
        assert_eq!(err.to_string(), "cannot start /nonexistent/qemu");
        assert!(matches!(
            spawn(&[], &dir.path().join("log")),
            Err(Error::EmptyCommand)
        ));
    }
}
