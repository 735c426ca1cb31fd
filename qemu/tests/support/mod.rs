//! Builds a tiny UEFI-bootable GPT disk for boot tests, with external tools
//! (allowed in tests only): `dpkg-deb` + `tar` unpack Debian's kernel and
//! busybox-static, `mkfs.vfat` + `mmd` + `mcopy` make the ESP, `sgdisk` the
//! GPT. The initramfs (newc cpio) is written here, because Debian 12 has no
//! `cpio` installed by default and the format is a few lines.
//!
//! The disk: ESP with systemd-boot as the removable-media loader, one loader
//! entry (kernel + initrd), and an initramfs whose /init is a busybox shell
//! script that loads the Debian kernel's disk drivers, reports each disk
//! it then finds in sysfs with the drivers behind it (as strata-init
//! does), prints the given report lines to /dev/console and powers off.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest architecture: the one enum every strata crate shares.
pub use strata_proto::Arch;

/// Everything the fixture needs from the host, found.
#[derive(Debug)]
pub struct Inputs {
    pub arch: Arch,
    pub kernel_deb: PathBuf,
    pub busybox_deb: PathBuf,
    pub systemd_boot: PathBuf,
}

const TOOLS: &[(&str, &str)] = &[
    ("dpkg-deb", "dpkg"),
    ("tar", "tar"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("sgdisk", "gdisk"),
    ("xorriso", "xorriso"),
];

/// Builds `dir/cd.iso` holding the ESP image that [`build_disk`] left in
/// `dir` as its UEFI El Torito boot image (needs `xorriso`).
pub fn build_iso(dir: &Path) -> Result<PathBuf, String> {
    if !on_path("xorriso") {
        return Err("`xorriso` not found (apt-get install xorriso)".into());
    }
    let tree = dir.join("iso-tree");
    fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    fs::copy(dir.join("esp.img"), tree.join("esp.img")).map_err(|e| e.to_string())?;
    let iso = dir.join("cd.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-V", "STRATA", "-o"])
        .arg(&iso)
        .args(["-e", "esp.img", "-no-emul-boot"])
        .arg(&tree))?;
    Ok(iso)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The Debian package cache `make test-inputs` fills (`scripts/fetch-debs.sh`),
/// relative to the workspace root.
pub fn debian_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/debian")
}

/// True under `make test`, which promises every tool and input (`STRATA_E2E=1`).
pub fn e2e_required() -> bool {
    std::env::var_os("STRATA_E2E").is_some_and(|v| v == "1")
}

/// The one way a test here declines to run: `found`'s value, or, when it
/// says what is missing, a failure under `STRATA_E2E=1` (a skip there would
/// hide a broken setup) and one `SKIPPED <test>: <why>` line otherwise.
pub fn require<T>(found: Result<T, String>) -> Option<T> {
    let why = match found {
        Ok(value) => return Some(value),
        Err(why) => why,
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    let fix = "make test-inputs (it runs make deps)";
    assert!(
        !e2e_required(),
        "STRATA_E2E=1 but {test} cannot run: {why}; fix: {fix}"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip must show in every run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why} ({fix})");
    None
}

/// The first file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn glob(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut hits: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    hits.sort();
    hits.into_iter().next()
}

/// Finds the inputs for `arch`, or says what is missing.
pub fn find_inputs(arch: Arch) -> Result<Inputs, String> {
    let a = arch.debian();
    let mut missing = Vec::new();
    for (tool, package) in TOOLS {
        if !on_path(tool) {
            missing.push(format!("`{tool}` (apt-get install {package})"));
        }
    }
    // The stable names fetch-debs.sh links to Debian's current packages.
    let cache = debian_cache();
    let present = |p: PathBuf| p.is_file().then_some(p);
    let kernel_deb = present(cache.join(format!("linux-image-{a}.deb")));
    let busybox_deb = present(cache.join(format!("busybox-static-{a}.deb")));
    if kernel_deb.is_none() {
        missing.push(format!("{}/linux-image-{a}.deb", cache.display()));
    }
    if busybox_deb.is_none() {
        missing.push(format!("{}/busybox-static-{a}.deb", cache.display()));
    }
    let systemd_boot = PathBuf::from(arch.systemd_boot());
    if !systemd_boot.is_file() {
        let pkg = if arch == Arch::Amd64 {
            "systemd-boot-efi"
        } else {
            "systemd-boot-efi:arm64"
        };
        missing.push(format!(
            "{} (apt-get install {pkg})",
            systemd_boot.display()
        ));
    }
    match (kernel_deb, busybox_deb, missing.is_empty()) {
        (Some(kernel_deb), Some(busybox_deb), true) => Ok(Inputs {
            arch,
            kernel_deb,
            busybox_deb,
            systemd_boot,
        }),
        _ => Err(format!("missing: {}", missing.join(", "))),
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Extracts the members of `deb` matching the tar wildcards `patterns` into `dest`.
fn extract(deb: &Path, patterns: &[String], dest: &Path) -> Result<(), String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    let stdout = dpkg.stdout.take().ok_or("dpkg-deb has no stdout")?;
    let tar = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(dest)
        .args(patterns)
        .stdin(stdout)
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let dpkg_status = dpkg.wait().map_err(|e| e.to_string())?;
    if !tar.status.success() || !dpkg_status.success() {
        return Err(format!(
            "extracting {patterns:?} from {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&tar.stderr)
        ));
    }
    Ok(())
}

/// Writes a newc cpio archive (the initramfs format) entry by entry.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let namesize = name.len() + 1;
        let header =
            format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino, mode, 0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.written += b.len() as u64;
        self.out.write_all(b)
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..n as usize])
    }

    fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, 0o040755, (0, 0), &[])
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, 0o100000 | mode, (0, 0), data)
    }
    fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, 0o120777, (0, 0), target.as_bytes())
    }
    fn chardev(&mut self, name: &str, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, 0o020600, (major, minor), &[])
    }

    fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// What the init does once it has printed its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// `poweroff -f`, like a smoke boot.
    PowerOff,
    /// Sleeps forever, like a boot that goes on into the real system.
    Hang,
}

/// The Debian kernel's disk drivers (all modules there) and what they
/// need, dependencies first, under `lib/modules/<release>/kernel/`. The
/// fixture loads every one that exists for the architecture, so a disk
/// shows up on any media the runner attaches.
const DISK_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "crypto/crct10dif_common.ko",
    "lib/crc-t10dif.ko",
    "lib/crc64.ko",
    "lib/crc64-rocksoft.ko",
    "block/t10-pi.ko",
    "drivers/nvme/host/nvme-core.ko",
    "drivers/nvme/host/nvme.ko",
    "drivers/scsi/scsi_common.ko",
    "drivers/scsi/scsi_mod.ko",
    "drivers/ata/libata.ko",
    "drivers/ata/libahci.ko",
    "drivers/ata/ahci.ko",
    "drivers/scsi/sd_mod.ko",
    "drivers/cdrom/cdrom.ko",
    "drivers/scsi/sr_mod.ko",
    "drivers/scsi/virtio_scsi.ko",
    "drivers/scsi/vmw_pvscsi.ko",
];

/// The disk modules Debian builds for `arch` (arm64 has virtio built in
/// and no PVSCSI, which is x86-only in Linux).
fn disk_modules(arch: Arch) -> Vec<&'static str> {
    DISK_MODULES
        .iter()
        .copied()
        .filter(|m| {
            arch == Arch::Amd64
                || !matches!(
                    *m,
                    "drivers/virtio/virtio_ring.ko"
                        | "drivers/virtio/virtio.ko"
                        | "drivers/scsi/vmw_pvscsi.ko"
                )
        })
        .collect()
}

/// Shell that loads /lib/modules/*.ko in the listed order, waits up to
/// 5 s for a disk (then 1 s more for the rest) and prints one `disk` event
/// per block device, with the `driver` links found walking up its sysfs
/// device path (what strata-init reports).
const DISK_REPORT: &str = r#"mount -t sysfs sysfs /sys
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
disks() {
    for b in /sys/block/*; do
        case ${b##*/} in loop*|ram*|zram*|"*") ;; *) echo ${b##*/} ;; esac
    done
}
i=0
while [ -z "$(disks)" ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
sleep 1
for n in $(disks); do
    d=$(readlink -f /sys/block/$n/device)
    drivers=""
    while [ -n "$d" ] && [ "$d" != /sys/devices ]; do
        if [ -L "$d/driver" ]; then
            x=$(readlink "$d/driver")
            drivers="$drivers${drivers:+,}\"${x##*/}\""
        fi
        d=${d%/*}
    done
    size=$(( $(cat /sys/block/$n/size) * 512 ))
    removable=false
    [ "$(cat /sys/block/$n/removable)" = 1 ] && removable=true
    echo "STRATA {\"event\":\"disk\",\"name\":\"$n\",\"drivers\":[$drivers],\"size_bytes\":$size,\"removable\":$removable}" > /dev/console
done
"#;

/// The /init script: a start event with the live kernel's identity, one
/// `disk` event per disk, the given lines, then `after`.
fn init_script(lines: &[String], after: After) -> Result<String, String> {
    let mut s = String::from("#!/bin/sh\nexport PATH=/bin\nmount -t proc proc /proc\n");
    s.push_str(
        "echo \"STRATA {\\\"event\\\":\\\"start\\\",\\\"kernel\\\":\\\"$(uname -r)\\\",\
         \\\"machine\\\":\\\"$(uname -m)\\\",\\\"cmdline\\\":\\\"\\\"}\" > /dev/console\n",
    );
    s.push_str(DISK_REPORT);
    for line in lines {
        if line.contains('\'') {
            return Err(format!("report line cannot hold a single quote: {line}"));
        }
        s.push_str(&format!("echo '{line}' > /dev/console\n"));
    }
    s.push_str(match after {
        After::PowerOff => "poweroff -f\n",
        After::Hang => "while :; do sleep 3600; done\n",
    });
    Ok(s)
}

/// The initramfs: busybox, the /init script and `modules` (file name and
/// content, in load order) in /lib/modules.
fn initramfs(
    busybox: &[u8],
    init: &str,
    modules: &[(String, Vec<u8>)],
    path: &Path,
) -> io::Result<()> {
    let mut c = Cpio::new(io::BufWriter::new(File::create(path)?));
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        c.dir(d)?;
    }
    c.chardev("dev/console", 5, 1)?;
    c.file("bin/busybox", 0o755, busybox)?;
    let applets = [
        "sh", "mount", "uname", "poweroff", "sleep", "usleep", "cat", "insmod", "readlink",
    ];
    for applet in applets {
        c.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    let mut order = String::new();
    for (name, data) in modules {
        c.file(&format!("lib/modules/{name}"), 0o644, data)?;
        order.push_str(name);
        order.push('\n');
    }
    c.file("lib/modules/order", 0o644, order.as_bytes())?;
    c.file("init", 0o755, init.as_bytes())?;
    c.finish()?.flush()
}

const MIB: u64 = 1024 * 1024;

/// Builds `dir/disk.img` that boots to an init printing `lines`, then doing
/// `after`. Returns the disk's path.
pub fn build_disk(
    inputs: &Inputs,
    lines: &[String],
    after: After,
    dir: &Path,
) -> Result<PathBuf, String> {
    let arch = inputs.arch;
    let unpack = dir.join("unpack");
    fs::create_dir_all(&unpack).map_err(|e| e.to_string())?;
    let wanted = disk_modules(arch);
    let mut patterns = vec!["./boot/vmlinuz-*".to_string()];
    patterns.extend(wanted.iter().map(|m| format!("./lib/modules/*/kernel/{m}")));
    extract(&inputs.kernel_deb, &patterns, &unpack)?;
    extract(&inputs.busybox_deb, &["./bin/busybox".into()], &unpack)?;
    let kernel =
        glob(&unpack.join("boot"), "vmlinuz-", "").ok_or("no vmlinuz in the kernel deb")?;
    let busybox = fs::read(unpack.join("bin/busybox")).map_err(|e| e.to_string())?;
    let release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or("vmlinuz without a release in its name")?;
    let module_dir = unpack.join("lib/modules").join(release).join("kernel");
    let modules = wanted
        .iter()
        .map(|m| {
            let name = m.rsplit('/').next().unwrap_or(m).to_string();
            fs::read(module_dir.join(m))
                .map(|data| (name, data))
                .map_err(|e| format!("{}: {e}", module_dir.join(m).display()))
        })
        .collect::<Result<Vec<_>, String>>()?;

    let root = dir.join("esp-tree");
    let initrd = root.join("initrd");
    fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    initramfs(&busybox, &init_script(lines, after)?, &modules, &initrd)
        .map_err(|e| e.to_string())?;
    fs::write(root.join("loader.conf"), "timeout 0\ndefault strata.conf\n")
        .map_err(|e| e.to_string())?;
    let entry = format!(
        "title strata boot test\nlinux /vmlinuz\ninitrd /initrd\noptions console={} panic=-1\n",
        arch.console()
    );
    fs::write(root.join("strata.conf"), entry).map_err(|e| e.to_string())?;

    // Size the ESP for its contents plus slack for FAT metadata.
    let payload = fs::metadata(&kernel).map_err(|e| e.to_string())?.len()
        + fs::metadata(&initrd).map_err(|e| e.to_string())?.len()
        + fs::metadata(&inputs.systemd_boot)
            .map_err(|e| e.to_string())?
            .len();
    let esp_mib = payload.div_ceil(MIB) + 8;
    let esp = dir.join("esp.img");
    let _ = fs::remove_file(&esp);
    run(Command::new("mkfs.vfat")
        .args(["-n", "STRATA", "-i", "5354524b", "-C"])
        .arg(&esp)
        .arg((esp_mib * 1024).to_string()))?;
    let m = |args: &[&str]| {
        let mut c = Command::new(args[0]);
        c.arg("-i")
            .arg(&esp)
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1");
        run(&mut c)
    };
    m(&[
        "mmd",
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
    ])?;
    let copy = |from: &Path, to: &str| {
        let from = from.to_str().ok_or("non-UTF-8 fixture path")?;
        m(&["mcopy", from, to])
    };
    copy(
        &inputs.systemd_boot,
        &format!("::/EFI/BOOT/{}", arch.efi_boot_file()),
    )?;
    copy(&kernel, "::/vmlinuz")?;
    copy(&initrd, "::/initrd")?;
    copy(&root.join("loader.conf"), "::/loader/loader.conf")?;
    copy(&root.join("strata.conf"), "::/loader/entries/strata.conf")?;

    let disk = dir.join("disk.img");
    let esp_bytes = esp_mib * MIB;
    let f = File::create(&disk).map_err(|e| e.to_string())?;
    f.set_len(MIB + esp_bytes + MIB)
        .map_err(|e| e.to_string())?;
    drop(f);
    let last = (MIB + esp_bytes) / 512 - 1;
    run(Command::new("sgdisk")
        .args(["--disk-guid=5354524B-0000-4000-8000-000000000001"])
        .arg(format!("--new=1:2048:{last}"))
        .args(["--typecode=1:ef00", "--change-name=1:ESP"])
        .args(["--partition-guid=1:5354524B-0000-4000-8000-000000000002"])
        .arg(&disk))?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .map_err(|e| e.to_string())?;
    out.seek(SeekFrom::Start(MIB)).map_err(|e| e.to_string())?;
    io::copy(&mut File::open(&esp).map_err(|e| e.to_string())?, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(disk)
}
