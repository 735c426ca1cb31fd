//! The QEMU command line for one boot test.
//!
//! Supported machines: amd64 `q35` and arm64 `virt` with `-cpu max`, UEFI from
//! two pflash drives, the serial console written to a file, QMP on a unix
//! socket, a virtio RNG (the kernel's entropy pool fills sooner), and the image
//! attached through one of the [`Media`] device models. The guest does not
//! write to the image: disks use `snapshot=on` (writes go to a temporary
//! overlay), CD-ROMs are `readonly=on`; only `keep_writes` (for persistent
//! state across boots) drops `snapshot=on`. `-no-reboot -no-shutdown` turn a guest
//! reboot or power-off into a paused VM plus a QMP `SHUTDOWN` event, so the
//! runner sees why the guest stopped before it ends QEMU. Only
//! `allow_reset` (setup mode, where the boot loader enrols keys and resets)
//! drops `-no-reboot`: QEMU then restarts the guest and reports a `RESET`
//! event, which the runner counts (see [`crate::run`]).
//!
//! Not supported: networking, graphics, several disks. Option
//! values are QEMU's comma-separated syntax, so commas in paths are doubled;
//! paths must be valid UTF-8.

use std::path::{Path, PathBuf};

use crate::accel::Resolved;
use crate::{Arch, ImageFormat, Media};

/// What the command line is built from; all paths are final.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The emulator binary (`argv[0]`).
    pub qemu: &'a Path,
    /// Guest architecture.
    pub arch: Arch,
    /// KVM or TCG.
    pub accel: Resolved,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Firmware code image (read-only).
    pub firmware_code: &'a Path,
    /// This run's copy of the firmware variable store (read-write).
    pub firmware_vars: &'a Path,
    /// The image under test.
    pub image: &'a Path,
    /// Its container format.
    pub format: ImageFormat,
    /// How it is attached.
    pub media: Media,
    /// Writes reach the image (no `snapshot=on`; CD-ROMs stay read-only).
    pub keep_writes: bool,
    /// The firmware is a Secure Boot build: amd64's needs SMM and a secure
    /// pflash, or it refuses to start.
    pub secure_boot: bool,
    /// A guest reset restarts the guest (no `-no-reboot`) instead of
    /// stopping it; the runner bounds how often.
    pub allow_reset: bool,
    /// Where the serial console is written.
    pub serial_log: &'a Path,
    /// The QMP server socket QEMU creates.
    pub qmp_socket: &'a Path,
}

/// Why no command line could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// QEMU options are text; a path that is not UTF-8 cannot be passed.
    #[error("path {path} is not valid UTF-8; QEMU options need UTF-8 paths, rename it")]
    NonUtf8Path {
        /// The offending path.
        path: PathBuf,
    },
}

/// The drive id the media devices refer to.
const DRIVE: &str = "disk0";

impl ImageFormat {
    /// The name QEMU's `-drive format=` takes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vpc => "vpc",
        }
    }
}

/// Builds the full argv, binary first.
pub fn build(i: &Inputs) -> Result<Vec<String>, Error> {
    let mut argv = vec![text(i.qemu)?.to_owned()];
    let mut add = |items: &[&str]| argv.extend(items.iter().map(|s| (*s).to_owned()));
    add(&["-nodefaults", "-no-user-config", "-display", "none"]);
    if !i.allow_reset {
        add(&["-no-reboot"]);
    }
    add(&["-no-shutdown"]);
    add(&machine(i.arch, i.accel, i.secure_boot));
    add(&["-m", &i.memory_mib.to_string(), "-smp", &i.cpus.to_string()]);
    let code = format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        opt_path(i.firmware_code)?
    );
    let vars = format!(
        "if=pflash,format=raw,unit=1,file={}",
        opt_path(i.firmware_vars)?
    );
    add(&["-drive", &code, "-drive", &vars]);
    let serial = format!("file,id=ser0,path={}", opt_path(i.serial_log)?);
    add(&["-chardev", &serial, "-serial", "chardev:ser0"]);
    let qmp = format!("unix:{},server=on,wait=off", opt_path(i.qmp_socket)?);
    add(&["-qmp", &qmp]);
    add(&["-device", "virtio-rng-pci"]);
    let drive = drive(i.image, i.format, i.media, i.keep_writes)?;
    add(&["-drive", &drive]);
    let firmware_path = needs_firmware_path(i.arch, i.media);
    for device in media_devices(i.arch, i.media, if firmware_path { 2 } else { 1 }) {
        add(&["-device", &device]);
    }
    if firmware_path {
        let view = format!(
            "if=none,id={FIRMWARE_DRIVE},format={},file={},snapshot=on,readonly=on",
            i.format.qemu_name(),
            opt_path(i.image)?
        );
        let dev = format!("virtio-blk-pci,drive={FIRMWARE_DRIVE},bootindex=1");
        add(&["-drive", &view, "-device", &dev]);
    }
    Ok(argv)
}

/// The drive id of the firmware's own view of the image.
const FIRMWARE_DRIVE: &str = "fwboot";

/// Debian's OVMF has no PVSCSI driver, and AAVMF none for AHCI or PVSCSI:
/// from such a disk the firmware cannot even load systemd-boot. The image is
/// then also attached, read-only, on virtio-blk for the firmware to load the
/// ESP from, while the platform's device stays attached for the OS (the
/// guest reports which driver it found the disk through).
pub fn needs_firmware_path(arch: Arch, media: Media) -> bool {
    matches!(
        (arch, media),
        (Arch::Amd64, Media::Pvscsi) | (Arch::Arm64, Media::Pvscsi | Media::Ahci)
    )
}

/// Machine, accelerator and CPU model options.
fn machine(arch: Arch, accel: Resolved, secure_boot: bool) -> Vec<&'static str> {
    let mut v = match (arch, secure_boot) {
        (Arch::Amd64, false) => vec!["-machine", "q35"],
        // OVMF's Secure Boot build keeps its variables behind SMM, so the OS
        // cannot write them (Debian's README.Debian gives these options).
        (Arch::Amd64, true) => vec![
            "-machine",
            "q35,smm=on",
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
            "-global",
            "ICH9-LPC.disable_s3=1",
        ],
        // AAVMF needs neither (`secure` pflash even breaks it).
        (Arch::Arm64, _) => vec!["-machine", "virt"],
    };
    v.extend(["-accel", accel.name()]);
    match (arch, accel) {
        (_, Resolved::Kvm) => v.extend(["-cpu", "host"]),
        // QEMU's default x86 model (qemu64) boots Debian's kernel and is the
        // cheapest to emulate.
        (Arch::Amd64, Resolved::Tcg) => {}
        // The default arm64 CPU of `virt` is a Cortex-A15 (32-bit only).
        // `pauth-impdef` swaps the architected pointer-auth hash (QARMA,
        // very slow under TCG) for QEMU's cheap one; the guest cannot tell.
        (Arch::Arm64, Resolved::Tcg) => v.extend(["-cpu", "max,pauth-impdef=on"]),
    }
    v
}

/// The `-drive` option holding the image.
fn drive(
    image: &Path,
    format: ImageFormat,
    media: Media,
    keep_writes: bool,
) -> Result<String, Error> {
    let mut d = format!(
        "if=none,id={DRIVE},format={},file={}",
        format.qemu_name(),
        opt_path(image)?
    );
    d.push_str(match media {
        Media::Cdrom => ",media=cdrom,readonly=on",
        _ if keep_writes => "",
        _ => ",snapshot=on",
    });
    Ok(d)
}

/// The `-device` options attaching the drive, controller first.
fn media_devices(arch: Arch, media: Media, bootindex: u32) -> Vec<String> {
    let boot = format!("drive={DRIVE},bootindex={bootindex}");
    match (media, arch) {
        (Media::VirtioBlk, _) => vec![format!("virtio-blk-pci,{boot}")],
        (Media::Nvme, _) => vec![format!("nvme,serial=strata0,{boot}")],
        (Media::Ahci, _) => vec!["ahci,id=ahci0".into(), format!("ide-hd,bus=ahci0.0,{boot}")],
        (Media::Pvscsi, _) => vec![
            "pvscsi,id=scsi0".into(),
            format!("scsi-hd,bus=scsi0.0,{boot}"),
        ],
        (Media::VirtioScsi, _) => vec![
            "virtio-scsi-pci,id=scsi0".into(),
            format!("scsi-hd,bus=scsi0.0,{boot}"),
        ],
        (Media::Cdrom, Arch::Amd64) => {
            vec!["ahci,id=ahci0".into(), format!("ide-cd,bus=ahci0.0,{boot}")]
        }
        // AAVMF has no reliable AHCI/ATAPI path on `virt`; virtio-scsi is
        // what arm64 clouds and installers use for optical media.
        (Media::Cdrom, Arch::Arm64) => vec![
            "virtio-scsi-pci,id=scsi0".into(),
            format!("scsi-cd,bus=scsi0.0,{boot}"),
        ],
    }
}

fn text(path: &Path) -> Result<&str, Error> {
    path.to_str().ok_or_else(|| Error::NonUtf8Path {
        path: path.to_owned(),
    })
}

/// A path as a QEMU option value: commas are doubled so they do not end it.
fn opt_path(path: &Path) -> Result<String, Error> {
    Ok(text(path)?.replace(',', ",,"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    fn inputs(arch: Arch, accel: Resolved, media: Media) -> Inputs<'static> {
        Inputs {
            qemu: Path::new("/usr/bin/qemu"),
            arch,
            accel,
            memory_mib: 1024,
            cpus: 2,
            firmware_code: Path::new("/fw/CODE.fd"),
            firmware_vars: Path::new("/w/VARS.fd"),
            image: Path::new("/img/disk.raw"),
            format: ImageFormat::Raw,
            media,
            keep_writes: false,
            secure_boot: false,
            allow_reset: false,
            serial_log: Path::new("/w/serial.log"),
            qmp_socket: Path::new("/w/qmp.sock"),
        }
    }

    /// The value following each occurrence of `flag`.
    fn values<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn secure_boot_firmware_gets_smm_and_secure_pflash_on_amd64_only() {
        let mut i = inputs(Arch::Amd64, Resolved::Tcg, Media::VirtioBlk);
        i.secure_boot = true;
        let argv = build(&i).unwrap();
        assert_eq!(values(&argv, "-machine"), ["q35,smm=on"]);
        assert!(values(&argv, "-global").contains(&"driver=cfi.pflash01,property=secure,value=on"));
        let mut i = inputs(Arch::Arm64, Resolved::Tcg, Media::VirtioBlk);
        i.secure_boot = true;
        let argv = build(&i).unwrap();
        assert_eq!(values(&argv, "-machine"), ["virt"]);
        assert!(values(&argv, "-global").is_empty());
    }

    #[test]
    fn allowing_resets_drops_only_no_reboot() {
        let mut i = inputs(Arch::Amd64, Resolved::Tcg, Media::VirtioBlk);
        i.secure_boot = true;
        let strict = build(&i).unwrap();
        assert!(strict.iter().any(|a| a == "-no-reboot"));
        i.allow_reset = true;
        let lenient = build(&i).unwrap();
        assert!(!lenient.iter().any(|a| a == "-no-reboot"), "{lenient:?}");
        assert!(lenient.iter().any(|a| a == "-no-shutdown"));
        let without: Vec<&String> = strict.iter().filter(|a| *a != "-no-reboot").collect();
        assert_eq!(lenient.iter().collect::<Vec<_>>(), without);
    }

    #[test]
    fn amd64_tcg_virtio_blk_full_argv() {
        let argv = build(&inputs(Arch::Amd64, Resolved::Tcg, Media::VirtioBlk)).unwrap();
        let expected = [
            "/usr/bin/qemu",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-no-shutdown",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
            "-drive",
            "if=pflash,format=raw,unit=1,file=/w/VARS.fd",
            "-chardev",
            "file,id=ser0,path=/w/serial.log",
            "-serial",
            "chardev:ser0",
            "-qmp",
            "unix:/w/qmp.sock,server=on,wait=off",
            "-device",
            "virtio-rng-pci",
            "-drive",
            "if=none,id=disk0,format=raw,file=/img/disk.raw,snapshot=on",
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=1",
        ];
        assert_eq!(argv, expected);
    }

    #[test]
    fn keep_writes_drops_the_snapshot_of_disks_but_not_the_cdrom_read_only() {
        let mut i = inputs(Arch::Amd64, Resolved::Tcg, Media::VirtioBlk);
        i.keep_writes = true;
        let argv = build(&i).unwrap();
        assert_eq!(
            values(&argv, "-drive")[2],
            "if=none,id=disk0,format=raw,file=/img/disk.raw"
        );
        i.media = Media::Cdrom;
        let argv = build(&i).unwrap();
        assert!(values(&argv, "-drive")[2].ends_with(",media=cdrom,readonly=on"));
    }

    #[test]
    fn arm64_uses_virt_with_max_cpu() {
        let argv = build(&inputs(Arch::Arm64, Resolved::Tcg, Media::VirtioBlk)).unwrap();
        assert_eq!(values(&argv, "-machine"), ["virt"]);
        assert_eq!(values(&argv, "-cpu"), ["max,pauth-impdef=on"]);
        assert_eq!(values(&argv, "-accel"), ["tcg"]);
        assert_eq!(values(&argv, "-serial"), ["chardev:ser0"]);
        assert_eq!(values(&argv, "-drive").len(), 3);
    }

    #[test]
    fn kvm_passes_the_host_cpu() {
        let argv = build(&inputs(Arch::Amd64, Resolved::Kvm, Media::VirtioBlk)).unwrap();
        assert_eq!(values(&argv, "-accel"), ["kvm"]);
        assert_eq!(values(&argv, "-cpu"), ["host"]);
    }

    #[test]
    fn each_media_gets_its_device_model() {
        let table: &[(Arch, Media, &[&str])] = &[
            (
                Arch::Amd64,
                Media::Nvme,
                &[
                    "virtio-rng-pci",
                    "nvme,serial=strata0,drive=disk0,bootindex=1",
                ],
            ),
            (
                Arch::Amd64,
                Media::Ahci,
                &[
                    "virtio-rng-pci",
                    "ahci,id=ahci0",
                    "ide-hd,bus=ahci0.0,drive=disk0,bootindex=1",
                ],
            ),
            (
                Arch::Amd64,
                Media::Pvscsi,
                &[
                    "virtio-rng-pci",
                    "pvscsi,id=scsi0",
                    // OVMF cannot read PVSCSI: the firmware boots from a read-only view.
                    "scsi-hd,bus=scsi0.0,drive=disk0,bootindex=2",
                    "virtio-blk-pci,drive=fwboot,bootindex=1",
                ],
            ),
            (
                Arch::Arm64,
                Media::VirtioScsi,
                &[
                    "virtio-rng-pci",
                    "virtio-scsi-pci,id=scsi0",
                    "scsi-hd,bus=scsi0.0,drive=disk0,bootindex=1",
                ],
            ),
            (
                Arch::Amd64,
                Media::Cdrom,
                &[
                    "virtio-rng-pci",
                    "ahci,id=ahci0",
                    "ide-cd,bus=ahci0.0,drive=disk0,bootindex=1",
                ],
            ),
            (
                Arch::Arm64,
                Media::Cdrom,
                &[
                    "virtio-rng-pci",
                    "virtio-scsi-pci,id=scsi0",
                    "scsi-cd,bus=scsi0.0,drive=disk0,bootindex=1",
                ],
            ),
        ];
        for (arch, media, devices) in table {
            let argv = build(&inputs(*arch, Resolved::Tcg, *media)).unwrap();
            assert_eq!(values(&argv, "-device"), *devices, "{arch:?} {media:?}");
        }
    }

    #[test]
    fn cdrom_is_read_only_and_disks_are_snapshots() {
        let cd = build(&inputs(Arch::Amd64, Resolved::Tcg, Media::Cdrom)).unwrap();
        assert_eq!(
            values(&cd, "-drive")[2],
            "if=none,id=disk0,format=raw,file=/img/disk.raw,media=cdrom,readonly=on"
        );
        let mut i = inputs(Arch::Amd64, Resolved::Tcg, Media::Ahci);
        i.format = ImageFormat::Vpc;
        let hd = build(&i).unwrap();
        assert_eq!(
            values(&hd, "-drive")[2],
            "if=none,id=disk0,format=vpc,file=/img/disk.raw,snapshot=on"
        );
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut i = inputs(Arch::Amd64, Resolved::Tcg, Media::VirtioBlk);
        i.image = Path::new("/img/a,b.raw");
        i.qmp_socket = Path::new("/w,x/qmp.sock");
        let argv = build(&i).unwrap();
        assert_eq!(
            values(&argv, "-drive")[2],
            "if=none,id=disk0,format=raw,file=/img/a,,b.raw,snapshot=on"
        );
        assert_eq!(
            values(&argv, "-qmp"),
            ["unix:/w,,x/qmp.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn non_utf8_path_is_refused_by_name() {
        let mut i = inputs(Arch::Amd64, Resolved::Tcg, Media::VirtioBlk);
        let bad = Path::new(OsStr::from_bytes(b"/img/\xff.raw"));
        i.image = bad;
        let err = build(&i).unwrap_err();
        assert!(matches!(&err, Error::NonUtf8Path { path } if path == bad));
    }
}
