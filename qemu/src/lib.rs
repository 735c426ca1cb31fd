//! Boot-test runner: boots a strata image in QEMU under UEFI firmware and
//! judges the boot from the guest's own report (`STRATA {json}` lines on the
//! serial console, see [`strata_proto::report`]).
//!
//! Supported: amd64 (`q35`) and arm64 (`virt`) guests, Debian's OVMF/AAVMF
//! firmware, KVM when it really works and TCG otherwise, raw/qcow2/vmdk/vpc
//! images attached as virtio-blk, NVMe, AHCI, PVSCSI, virtio-scsi or CD-ROM.
//! The image is never modified (snapshot or read-only drive). A software
//! TPM 2.0 ([`swtpm`]) is attached when [`GuestChecks::tpm`] asks for one.
//! Secure Boot ([`BootSpec::secure_boot`]) uses Debian's snakeoil-keyed
//! firmware, or its empty store for setup mode ([`BootSpec::setup_mode`]).
//! Not supported:
//! networking, graphics, several disks, BIOS boot. Debian's
//! firmware lacks some drivers (OVMF: PVSCSI; AAVMF: AHCI and PVSCSI): the
//! image is then also attached, read-only, on virtio-blk for the firmware
//! to load from (see [`command::needs_firmware_path`]). Either way the
//! guest must report a disk behind the platform's driver
//! ([`Media::guest_driver`]), which proves the OS used the platform's
//! device model and not the firmware's view.
//!
//! [`boot`] returns `Err` only when the VM could not be run at all; a guest
//! that fails gives `Ok` with `pass: false` and a reason. Every run leaves
//! `serial.log`, `qemu.log` (QEMU's own output) and `result.json` in the
//! work directory.

pub mod accel;
pub mod command;
pub mod firmware;
pub mod host;
pub mod phases;
pub mod process;
pub mod qmp;
pub mod run;
pub mod serial;
pub mod swtpm;
pub mod verdict;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
pub use strata_proto::report::Event;
pub use strata_proto::{Arch, ExtensionKind};

pub use accel::kvm_usable;
pub use firmware::{find_firmware, Firmware};
pub use phases::Phase;
pub use verdict::LayerVerdict;

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

impl Media {
    /// The Linux driver the guest must report a disk through (the
    /// controller's, as sysfs names it) when the image is attached this
    /// way on `arch`. Debian's arm64 kernel has no `vmw_pvscsi` (PVSCSI is
    /// x86-only in Linux), so arm64 PVSCSI boots always fail this check.
    pub fn guest_driver(self, arch: Arch) -> &'static str {
        match (self, arch) {
            (Media::VirtioBlk, _) => "virtio_blk",
            (Media::Nvme, _) => "nvme",
            (Media::Ahci, _) | (Media::Cdrom, Arch::Amd64) => "ahci",
            (Media::Pvscsi, _) => "vmw_pvscsi",
            (Media::VirtioScsi, _) | (Media::Cdrom, Arch::Arm64) => "virtio_scsi",
        }
    }
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

/// An extension the guest must report: as a layer (mounted and visible),
/// flattened into the root (its probe visible with the recorded digest)
/// or shipped disabled (its image file present and not mounted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// Extension name, as in its metadata.
    pub name: String,
    /// Expected version; empty accepts any.
    pub version: String,
    /// The kind the guest must report; `None` accepts any (set it when a
    /// Talos extension and a sysext may share a name).
    pub kind: Option<ExtensionKind>,
    /// Merged into the root squashfs at build time (no layer at boot).
    pub flattened: bool,
    /// Shipped as an image file but not activated.
    pub disabled: bool,
}

/// What the guest must report beyond its layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestChecks {
    /// Kernel modules extensions ship, which the guest must load by name.
    pub modules: Vec<String>,
    /// The profile's files, which the guest must report as it was asked to
    /// ship them.
    pub files: Vec<String>,
    /// Files several Talos layers ship: the guest must report each one's
    /// layer order (a `stack` event), so a guest that skipped the check fails.
    pub shadowed: Vec<String>,
    /// Talos extension services the guest must start and report (a
    /// `service` event each), by name.
    pub services: Vec<String>,
    /// The state mode the guest must report using (`None`: any).
    pub state: Option<strata_proto::initramfs::StateMode>,
    /// Attach a software TPM (swtpm) and judge the PCR 11 the guest reports.
    pub tpm: Option<TpmCheck>,
}

/// What the guest must report about its TPM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TpmCheck {
    /// The PCR 11 values the build predicted, by name (`stub`, then each
    /// phase path), lowercase hex: the guest's value must be one of them.
    /// Empty when the image has no UKI (no prediction): any value passes.
    pub pcr11: Vec<(String, String)>,
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
    /// Further things the guest must report (extension modules).
    pub checks: GuestChecks,
    /// Let the guest write to the image (persistent state survives into the
    /// next boot); otherwise its writes go to a throwaway overlay.
    pub keep_writes: bool,
    /// Boot under Secure Boot firmware with Debian's snakeoil keys enrolled;
    /// the guest must then report Secure Boot on.
    pub secure_boot: bool,
    /// With `secure_boot`: start that firmware with an empty variable store
    /// (setup mode) instead, so the image's boot loader can enrol its own
    /// keys; it resets the machine afterwards, and up to
    /// [`MAX_SETUP_RESETS`] guest resets restart the guest instead of ending
    /// the run.
    pub setup_mode: bool,
}

/// Guest resets a setup-mode boot lets through: systemd-boot resets once
/// after enrolling; a second leaves room for firmware that resets again
/// when its Secure Boot state changes. More means a reset loop.
pub const MAX_SETUP_RESETS: u32 = 2;

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
    /// Where those seconds went (firmware, loader, kernel, the init's
    /// steps, ...), see [`phases`].
    pub phases: Vec<Phase>,
    /// `guest-poweroff`, `runner-quit-after-report`, `timeout`, `qemu-exit`,
    /// `firmware-shell` (the firmware found nothing to boot) or `kernel-panic`.
    pub ended_by: String,
    /// QEMU's cause when the guest stopped itself (`guest-shutdown`,
    /// `guest-reset`, `guest-panic`).
    pub shutdown_reason: Option<String>,
    /// Report lines that could not be parsed.
    pub unreadable_lines: Vec<String>,
    /// True when QEMU did not exit on `quit` and had to be killed.
    pub qemu_killed: bool,
    /// Guest resets QEMU reported: only a setup-mode boot lets any through,
    /// and the one past [`MAX_SETUP_RESETS`] ends the run and counts too.
    pub guest_resets: u32,
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
    /// The software TPM could not be started.
    #[error(transparent)]
    Swtpm(#[from] swtpm::Error),
}

/// How long QEMU may take to open its monitor socket.
const MONITOR_WAIT: Duration = Duration::from_secs(30);
/// How long a QEMU whose monitor failed may take to exit with its message.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Boots `spec.image` and judges the guest's report.
pub fn boot(spec: &BootSpec) -> Result<BootResult, Error> {
    validate(spec)?;
    let plan = prepare(spec)?;
    let started = Instant::now();
    let mut vm = process::spawn(&plan.argv, &plan.qemu_log)?;
    let alive = |vm: &mut process::Vm| matches!(vm.try_wait(), Ok(None));
    let monitor = match qmp::connect(&plan.qmp_socket, MONITOR_WAIT, || alive(&mut vm)) {
        Ok(m) => m,
        Err(e) => return Err(startup_failure(&mut vm, e, &plan.qemu_log)),
    };
    let mut tail = serial::Tail::new(&plan.serial_log);
    let max_resets = if spec.setup_mode { MAX_SETUP_RESETS } else { 0 };
    let watched = run::watch(
        &mut vm,
        Some(monitor),
        &mut tail,
        started,
        spec.timeout,
        max_resets,
    )?;
    let duration_secs = started.elapsed().as_secs_f64();
    let result = assemble(spec, plan, watched, duration_secs);
    write_result(&spec.work_dir.join("result.json"), &result)?;
    Ok(result)
}

/// Everything a run needs before QEMU starts.
struct Plan {
    argv: Vec<String>,
    accel: accel::Resolved,
    firmware: PathBuf,
    serial_log: PathBuf,
    qemu_log: PathBuf,
    qmp_socket: PathBuf,
    /// Holds the socket's directory when work_dir's path is too long.
    _socket_dir: Option<tempfile::TempDir>,
    /// The software TPM, stopped when the run's plan is dropped.
    _tpm: Option<swtpm::Swtpm>,
}

/// Finds QEMU and firmware, picks the accelerator, clears the work
/// directory of an earlier run's outputs and builds the command line.
fn prepare(spec: &BootSpec) -> Result<Plan, Error> {
    let work = &spec.work_dir;
    fs::create_dir_all(work).map_err(|source| Error::Io {
        path: work.clone(),
        source,
    })?;
    let qemu = host::find_qemu(spec.arch)?;
    let fw = if spec.setup_mode {
        firmware::find_setup_mode_firmware(spec.arch)?
    } else if spec.secure_boot {
        firmware::find_secure_boot_firmware(spec.arch)?
    } else {
        find_firmware(spec.arch)?
    };
    let accel = accel::resolve(spec.accel, spec.arch)?;
    let serial_log = work.join("serial.log");
    let (qmp_socket, socket_dir) = qmp_socket_path(work)?;
    for stale in [&serial_log, &work.join("result.json"), &qmp_socket] {
        remove_stale(stale)?;
    }
    let vars = firmware::copy_vars(&fw, work)?;
    let mut argv = command::build(&command::Inputs {
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
        keep_writes: spec.keep_writes,
        secure_boot: spec.secure_boot,
        allow_reset: spec.setup_mode,
        serial_log: &serial_log,
        qmp_socket: &qmp_socket,
    })?;
    let tpm = match spec.checks.tpm {
        Some(_) => Some(swtpm::Swtpm::start(
            socket_dir.as_ref().map_or(work, |d| d.path()),
        )?),
        None => None,
    };
    if let Some(t) = &tpm {
        argv.extend(t.qemu_args(spec.arch));
    }
    Ok(Plan {
        argv,
        accel,
        firmware: fw.code,
        serial_log,
        qemu_log: work.join("qemu.log"),
        qmp_socket,
        _socket_dir: socket_dir,
        _tpm: tpm,
    })
}

/// Judges the run and gathers the result.
fn assemble(spec: &BootSpec, plan: Plan, watched: run::Watched, duration_secs: f64) -> BootResult {
    let mut v = verdict::judge(&watched.console, &spec.expected, &watched.ending);
    let mut extra = verdict::judge_checks(&watched.console.events, &spec.checks);
    if spec.secure_boot {
        extra.extend(verdict::secure_boot_problem(&watched.console.events));
    }
    extra.extend(verdict::judge_disks(
        &watched.console.events,
        spec.media.guest_driver(spec.arch),
    ));
    if !extra.is_empty() {
        let mut reasons: Vec<String> = if v.pass {
            Vec::new()
        } else {
            vec![v.reason.clone()]
        };
        reasons.extend(extra);
        v.pass = false;
        v.reason = reasons.join("; ");
    }
    let phases = phases::phases(
        &watched.console.arrivals,
        &watched.console.events,
        duration_secs,
    );
    let ended_by = watched.ending.ended_by().into();
    let shutdown_reason = match watched.ending {
        verdict::Ending::GuestStopped { reason } => Some(reason),
        _ => None,
    };
    BootResult {
        pass: v.pass,
        reason: v.reason,
        events: watched.console.events,
        layers: v.layers,
        accel: plan.accel.name().into(),
        firmware: plan.firmware,
        duration_secs,
        phases,
        ended_by,
        shutdown_reason,
        unreadable_lines: watched.console.unreadable,
        qemu_killed: watched.killed,
        guest_resets: watched.resets,
        serial_log: plan.serial_log,
        qemu_log: plan.qemu_log,
        qemu_command: plan.argv,
    }
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
    if spec.setup_mode && !spec.secure_boot {
        return bad(
            "setup_mode",
            "needs secure_boot: setup mode is a state of the Secure Boot firmware".into(),
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
    if let Some(e) = spec.expected.iter().find(|e| e.flattened && e.disabled) {
        return bad(
            "expected",
            format!(
                "entry {:?} is both flattened and disabled; an extension is one or the other",
                e.name
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &Path, work: &Path) -> BootSpec {
        BootSpec {
            image: image.to_owned(),
            format: ImageFormat::Raw,
            arch: Arch::Amd64,
            media: Media::VirtioBlk,
            expected: vec![],
            timeout: Duration::from_secs(60),
            memory_mib: 512,
            cpus: 1,
            accel: Accel::Tcg,
            work_dir: work.to_owned(),
            checks: GuestChecks::default(),
            keep_writes: false,
            secure_boot: false,
            setup_mode: false,
        }
    }

    #[test]
    fn socket_moves_to_a_temp_dir_when_the_work_path_is_too_long() {
        let short = Path::new("/w");
        let (path, dir) = qmp_socket_path(short).unwrap();
        assert_eq!(path, Path::new("/w/qmp.sock"));
        assert!(dir.is_none());
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        let (path, dir) = qmp_socket_path(&long).unwrap();
        let dir = dir.expect("a temporary directory");
        assert!(path.starts_with(dir.path()));
        assert!(path.as_os_str().len() <= SUN_PATH_MAX);
    }

    #[test]
    fn spec_fields_are_checked_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("disk.img");
        fs::write(&image, b"").unwrap();
        let ok = spec(&image, tmp.path());
        assert!(validate(&ok).is_ok());
        type Spoil = Box<dyn Fn(&mut BootSpec)>;
        let cases: [(&str, Spoil); 7] = [
            ("setup_mode", Box::new(|s| s.setup_mode = true)),
            ("image", Box::new(|s| s.image = s.work_dir.clone())),
            ("memory_mib", Box::new(|s| s.memory_mib = 64)),
            ("cpus", Box::new(|s| s.cpus = 0)),
            ("timeout", Box::new(|s| s.timeout = Duration::ZERO)),
            (
                "expected",
                Box::new(|s| {
                    s.expected.push(Expected {
                        name: String::new(),
                        version: "1".into(),
                        ..Expected::default()
                    })
                }),
            ),
            (
                "expected",
                Box::new(|s| {
                    s.expected.push(Expected {
                        name: "hello".into(),
                        flattened: true,
                        disabled: true,
                        ..Expected::default()
                    })
                }),
            ),
        ];
        for (field, spoil) in cases {
            let mut s = ok.clone();
            spoil(&mut s);
            let err = validate(&s).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid boot spec: {field} ")),
                "{err}"
            );
        }
    }

    #[test]
    fn each_media_names_the_driver_the_guest_must_use() {
        let table = [
            (Media::VirtioBlk, Arch::Amd64, "virtio_blk"),
            (Media::VirtioBlk, Arch::Arm64, "virtio_blk"),
            (Media::Nvme, Arch::Amd64, "nvme"),
            (Media::Nvme, Arch::Arm64, "nvme"),
            (Media::Ahci, Arch::Amd64, "ahci"),
            (Media::Ahci, Arch::Arm64, "ahci"),
            (Media::Pvscsi, Arch::Amd64, "vmw_pvscsi"),
            (Media::Pvscsi, Arch::Arm64, "vmw_pvscsi"),
            (Media::VirtioScsi, Arch::Amd64, "virtio_scsi"),
            (Media::VirtioScsi, Arch::Arm64, "virtio_scsi"),
            (Media::Cdrom, Arch::Amd64, "ahci"),
            (Media::Cdrom, Arch::Arm64, "virtio_scsi"),
        ];
        for (media, arch, driver) in table {
            assert_eq!(media.guest_driver(arch), driver, "{media:?} {arch:?}");
        }
    }

    #[test]
    fn result_json_carries_the_public_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let result = BootResult {
            pass: false,
            reason: "timeout".into(),
            events: vec![Event::Done {
                ok: true,
                layers: 0,
                smoke: true,
            }],
            layers: vec![],
            accel: "tcg".into(),
            firmware: "/fw".into(),
            duration_secs: 1.5,
            phases: vec![Phase {
                name: "firmware".into(),
                secs: 1.5,
            }],
            ended_by: "timeout".into(),
            shutdown_reason: None,
            unreadable_lines: vec![],
            qemu_killed: false,
            guest_resets: 0,
            serial_log: "/w/serial.log".into(),
            qemu_log: "/w/qemu.log".into(),
            qemu_command: vec!["qemu".into()],
        };
        let path = tmp.path().join("result.json");
        write_result(&path, &result).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["ended_by"], "timeout");
        assert_eq!(v["events"][0]["event"], "done");
        assert_eq!(v["duration_secs"], 1.5);
        assert_eq!(v["phases"][0]["name"], "firmware");
        assert_eq!(v["phases"][0]["secs"], 1.5);
        assert_eq!(v["qemu_command"][0], "qemu");
    }
}
