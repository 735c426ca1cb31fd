//! Boot-test runner: boots a strata image in QEMU under UEFI firmware and
//! judges the boot from the guest's own report (`STRATA {json}` lines on the
//! serial console, see [`strata_boot::report`]).
//!
//! Supported: amd64 (`q35`) and arm64 (`virt`) guests, Debian's OVMF/AAVMF
//! firmware, KVM when it really works and TCG otherwise, raw/qcow2/vmdk/vpc
//! images attached as virtio-blk, NVMe, AHCI, PVSCSI, virtio-scsi or CD-ROM.
//! The image is never modified (snapshot or read-only drive). Not supported:
//! networking, graphics, Secure Boot, several disks, BIOS boot.
//!
//! [`boot`] returns `Err` only when the VM could not be run at all; a guest
//! that fails gives `Ok` with `pass: false` and a reason. Every run leaves
//! `serial.log`, `qemu.log` (QEMU's own output) and `result.json` in the
//! work directory.

pub mod accel;
pub mod command;
pub mod firmware;
pub mod host;
pub mod process;
pub mod qmp;
pub mod run;
pub mod serial;
pub mod verdict;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
pub use strata_boot::report::Event;

pub use accel::kvm_usable;
pub use firmware::{find_firmware, Firmware};
pub use verdict::LayerVerdict;

/// Guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64, `q35` machine.
    Amd64,
    /// AArch64, `virt` machine.
    Arm64,
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if it really works here, TCG otherwise.
    Auto,
    /// Software emulation, always available.
    Tcg,
    /// KVM, or an error if it cannot run the guest.
    Kvm,
}

/// How the image is attached: the platform's device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    /// virtio-blk-pci (KVM/QEMU clouds).
    VirtioBlk,
    /// NVMe (AWS Nitro, GCP, Azure v6).
    Nvme,
    /// SATA disk on an AHCI controller.
    Ahci,
    /// VMware paravirtual SCSI.
    Pvscsi,
    /// virtio-scsi (GCP, arm64 clouds).
    VirtioScsi,
    /// Optical drive: SATA on amd64, virtio-scsi on arm64.
    Cdrom,
}

/// What QEMU's `-drive format=` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Plain disk or ISO image.
    Raw,
    /// QEMU copy-on-write v2.
    Qcow2,
    /// VMware disk (any subformat QEMU reads, including streamOptimized).
    Vmdk,
    /// Virtual PC / VHD.
    Vpc,
}

/// An extension the guest must report as mounted and visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// Extension name, as in its metadata.
    pub name: String,
    /// Expected version; empty accepts any.
    pub version: String,
}

/// One boot test.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The image to boot.
    pub image: PathBuf,
    /// Its container format.
    pub format: ImageFormat,
    /// Guest architecture.
    pub arch: Arch,
    /// How the image is attached.
    pub media: Media,
    /// Extensions the guest must report.
    pub expected: Vec<Expected>,
    /// Limit for the whole run, from QEMU's start to the verdict.
    pub timeout: Duration,
    /// Guest memory (at least 128 MiB).
    pub memory_mib: u32,
    /// Virtual CPUs (at least 1).
    pub cpus: u32,
    /// Accelerator choice.
    pub accel: Accel,
    /// Where serial.log, qemu.log, result.json and the firmware variables go;
    /// created if missing.
    pub work_dir: PathBuf,
}

/// The outcome of a boot test, also written to `work_dir/result.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BootResult {
    /// True when the guest's report satisfied every check.
    pub pass: bool,
    /// Why it passed, or every reason it failed.
    pub reason: String,
    /// The report events, in order.
    pub events: Vec<Event>,
    /// Per-extension findings: expected ones first.
    pub layers: Vec<LayerVerdict>,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The firmware code image used.
    pub firmware: PathBuf,
    /// Seconds from QEMU's start to the verdict.
    pub duration_secs: f64,
    /// `guest-poweroff`, `runner-quit-after-report`, `timeout` or `qemu-exit`.
    pub ended_by: String,
    /// QEMU's cause when the guest stopped itself (`guest-shutdown`,
    /// `guest-reset`, `guest-panic`).
    pub shutdown_reason: Option<String>,
    /// Report lines that could not be parsed.
    pub unreadable_lines: Vec<String>,
    /// True when QEMU did not exit on `quit` and had to be killed.
    pub qemu_killed: bool,
    /// The serial console log.
    pub serial_log: PathBuf,
    /// QEMU's own stdout/stderr.
    pub qemu_log: PathBuf,
    /// The full QEMU argv, binary first.
    pub qemu_command: Vec<String>,
}

/// Why a VM could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM was demanded but cannot work here.
    #[error(transparent)]
    Accel(#[from] accel::Error),
    /// The QEMU command line could not be built.
    #[error(transparent)]
    Command(#[from] command::Error),
    /// Firmware missing or not copyable.
    #[error(transparent)]
    Firmware(#[from] firmware::Error),
    /// QEMU missing.
    #[error(transparent)]
    Host(#[from] host::Error),
    /// A spec field is unusable.
    #[error("invalid boot spec: {field} {message}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// What is wrong with it, and the fix.
        message: String,
    },
    /// A file in the work directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Starting, waiting for or stopping QEMU failed.
    #[error(transparent)]
    Process(#[from] process::Error),
    /// QEMU exited before its monitor came up (usually a bad option or an
    /// unreadable image); its output says why.
    #[error("qemu exited ({status}) before it started the guest; its output ({log}):\n{output}")]
    QemuFailed {
        /// Exit status in words.
        status: String,
        /// QEMU's log file.
        log: PathBuf,
        /// The log's last lines.
        output: String,
    },
    /// The QMP monitor could not be reached.
    #[error(transparent)]
    Qmp(#[from] qmp::Error),
    /// Watching the run failed.
    #[error(transparent)]
    Run(#[from] run::Error),
}

/// How long QEMU may take to open its monitor socket.
const MONITOR_WAIT: Duration = Duration::from_secs(30);
/// How long a QEMU whose monitor failed may take to exit with its message.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Boots `spec.image` and judges the guest's report.
pub fn boot(spec: &BootSpec) -> Result<BootResult, Error> {
    validate(spec)?;
    let work = &spec.work_dir;
    fs::create_dir_all(work).map_err(|source| Error::Io {
        path: work.clone(),
        source,
    })?;
    let qemu = host::find_qemu(spec.arch)?;
    let fw = find_firmware(spec.arch)?;
    let accel = accel::resolve(spec.accel, spec.arch)?;
    let serial_log = work.join("serial.log");
    let qemu_log = work.join("qemu.log");
    let result_path = work.join("result.json");
    for stale in [&serial_log, &result_path] {
        remove_stale(stale)?;
    }
    let (qmp_socket, _socket_dir) = qmp_socket_path(work)?;
    remove_stale(&qmp_socket)?;
    let vars = firmware::copy_vars(&fw, work)?;
    let argv = command::build(&command::Inputs {
        qemu: &qemu,
        arch: spec.arch,
        accel,
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        firmware_code: &fw.code,
        firmware_vars: &vars,
        image: &spec.image,
        format: spec.format,
        media: spec.media,
        serial_log: &serial_log,
        qmp_socket: &qmp_socket,
    })?;

    let started = Instant::now();
    let mut vm = process::spawn(&argv, &qemu_log)?;
    let monitor = match qmp::connect(&qmp_socket, MONITOR_WAIT, || {
        matches!(vm.try_wait(), Ok(None))
    }) {
        Ok(m) => m,
        Err(e) => return Err(startup_failure(&mut vm, e, &qemu_log)),
    };
    let mut tail = serial::Tail::new(&serial_log);
    let watched = run::watch(&mut vm, Some(monitor), &mut tail, started, spec.timeout)?;
    let duration_secs = started.elapsed().as_secs_f64();

    let v = verdict::judge(&watched.console, &spec.expected, &watched.ending);
    let result = BootResult {
        pass: v.pass,
        reason: v.reason,
        events: watched.console.events,
        layers: v.layers,
        accel: accel.name().into(),
        firmware: fw.code,
        duration_secs,
        ended_by: watched.ending.ended_by().into(),
        shutdown_reason: match watched.ending {
            verdict::Ending::GuestStopped { reason } => Some(reason),
            _ => None,
        },
        unreadable_lines: watched.console.unreadable,
        qemu_killed: watched.killed,
        serial_log,
        qemu_log,
        qemu_command: argv,
    };
    write_result(&result_path, &result)?;
    Ok(result)
}

/// Refuses specs QEMU would fail on in less obvious ways.
fn validate(spec: &BootSpec) -> Result<(), Error> {
    let bad = |field, message: String| Err(Error::InvalidSpec { field, message });
    if !spec.image.is_file() {
        return bad(
            "image",
            format!("{} is not a readable file", spec.image.display()),
        );
    }
    if spec.memory_mib < 128 {
        return bad(
            "memory_mib",
            format!("is {}; UEFI and Linux need at least 128", spec.memory_mib),
        );
    }
    if spec.cpus == 0 {
        return bad("cpus", "is 0; use at least 1".into());
    }
    if spec.timeout.is_zero() {
        return bad("timeout", "is zero; give the guest time to boot".into());
    }
    if let Some(e) = spec.expected.iter().find(|e| e.name.is_empty()) {
        return bad(
            "expected",
            format!("has an entry with an empty name (version {:?})", e.version),
        );
    }
    Ok(())
}

/// The longest unix socket path Linux accepts (`sun_path` minus its NUL).
const SUN_PATH_MAX: usize = 107;

/// `work/qmp.sock`, or a socket in a fresh temporary directory when that
/// path is too long for a unix socket. The directory (if any) must outlive
/// the run.
fn qmp_socket_path(work: &Path) -> Result<(PathBuf, Option<tempfile::TempDir>), Error> {
    let path = work.join("qmp.sock");
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((path, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("strata-qmp-")
        .tempdir()
        .map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    Ok((dir.path().join("qmp.sock"), Some(dir)))
}

fn remove_stale(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Turns a monitor failure into the most useful error: QEMU's own output
/// when it exited (it may still be exiting when the socket breaks, so it
/// gets a moment), else the QMP error. QEMU is killed either way.
fn startup_failure(vm: &mut process::Vm, e: qmp::Error, log: &Path) -> Error {
    let until = Instant::now() + EXIT_WAIT;
    loop {
        if let Ok(Some(status)) = vm.try_wait() {
            return Error::QemuFailed {
                status: process::describe(status),
                log: log.to_owned(),
                output: last_lines(log, 20),
            };
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killing is all that is left to do; the QMP error says what failed.
    let _ = vm.kill();
    Error::Qmp(e)
}

/// The last `n` lines of a text file (empty if unreadable).
fn last_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn write_result(path: &Path, result: &BootResult) -> Result<(), Error> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(result).map_err(|e| io_err(e.into()))?;
    json.push(b'\n');
    fs::write(path, json).map_err(io_err)
}
