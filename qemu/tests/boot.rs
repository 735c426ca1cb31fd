//! Real boots: a tiny systemd-boot + Debian kernel + busybox disk, built in
//! the test (see `support`), booted through `strata_qemu::boot` under the
//! accelerator `Accel::Auto` picks (TCG on hosts without working KVM).
//!
//! Inputs missing (Debian debs, mtools, sgdisk, QEMU, firmware): the test
//! prints one `SKIPPED` line and passes, unless `STRATA_E2E=1`, where it
//! fails instead (see `support::require`).

mod support;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::After;

use strata_proto::report::Event;
use strata_proto::ExtensionKind;
use strata_qemu::{boot, find_firmware, Accel, Arch, BootSpec, Expected, ImageFormat, Media};

/// A scratch directory; kept (and printed) when STRATA_KEEP_WORK=1, to look
/// at serial.log and result.json after the test.
fn scratch() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("strata-qemu-test-")
        .tempdir()
        .unwrap();
    if std::env::var("STRATA_KEEP_WORK").is_ok_and(|v| v == "1") {
        dir.disable_cleanup(true);
        println!("keeping {}", dir.path().display());
    }
    dir
}

/// Boots run one at a time: they are CPU-bound and timed.
static SERIAL: Mutex<()> = Mutex::new(());

fn layer(index: usize, name: &str, version: &str) -> Event {
    Event::Layer {
        index,
        image: format!("{index:02}-{name}.sqsh"),
        kind: ExtensionKind::Talos,
        name: name.into(),
        version: version.into(),
        mounted: true,
        visible: true,
        probe: Some(format!("/usr/local/bin/{name}")),
        detail: None,
        flattened: false,
        disabled: false,
    }
}

fn report() -> Vec<String> {
    [
        layer(0, "hello", "1.0.0"),
        layer(1, "tools", "2.3"),
        Event::Done {
            ok: true,
            layers: 2,
            smoke: true,
        },
    ]
    .iter()
    .map(Event::to_line)
    .collect()
}

fn expected(pairs: &[(&str, &str)]) -> Vec<Expected> {
    pairs
        .iter()
        .map(|(n, v)| Expected {
            name: (*n).into(),
            version: (*v).into(),
            ..Expected::default()
        })
        .collect()
}

/// The inputs for `arch`, or `None` when the test declines to run (see
/// `support::require`).
fn inputs_or_skip(arch: Arch) -> Option<support::Inputs> {
    let fw_arch = arch;
    let found = support::find_inputs(arch).and_then(|i| {
        find_firmware(fw_arch).map_err(|e| e.to_string())?;
        strata_qemu::host::find_qemu(fw_arch).map_err(|e| e.to_string())?;
        Ok(i)
    });
    support::require(found)
}

fn spec(arch: Arch, disk: &Path, work: &Path, want: Vec<Expected>) -> BootSpec {
    BootSpec {
        image: disk.to_owned(),
        format: ImageFormat::Raw,
        arch,
        media: Media::VirtioBlk,
        expected: want,
        timeout: Duration::from_secs(300),
        memory_mib: 512,
        cpus: 2,
        accel: Accel::Auto,
        work_dir: work.to_owned(),
        checks: strata_qemu::GuestChecks::default(),
        keep_writes: false,
        secure_boot: false,
        setup_mode: false,
    }
}

fn assert_started(events: &[Event], arch: Arch) {
    let machine = arch.uname();
    match events.first() {
        Some(Event::Start {
            kernel, machine: m, ..
        }) => {
            assert!(kernel.starts_with("6.1."), "kernel {kernel}");
            assert_eq!(m, machine);
        }
        other => panic!("first event is not start: {other:?}"),
    }
}

#[test]
fn amd64_passes_with_its_layers_and_fails_on_a_missing_one() {
    let Some(inputs) = inputs_or_skip(Arch::Amd64) else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch();
    let disk = support::build_disk(&inputs, &report(), After::PowerOff, dir.path()).unwrap();

    let work = dir.path().join("run-pass");
    let t = Instant::now();
    let r = boot(&spec(
        Arch::Amd64,
        &disk,
        &work,
        expected(&[("hello", "1.0.0"), ("tools", "2.3")]),
    ))
    .unwrap();
    println!(
        "amd64 boot: {} in {:.1} s (wall {:.1} s), accel {}, ended by {}",
        if r.pass { "pass" } else { "fail" },
        r.duration_secs,
        t.elapsed().as_secs_f64(),
        r.accel,
        r.ended_by
    );
    assert!(
        r.pass,
        "{}\nserial log: {}",
        r.reason,
        r.serial_log.display()
    );
    assert_eq!(r.ended_by, "guest-poweroff");
    assert_eq!(r.shutdown_reason.as_deref(), Some("guest-shutdown"));
    assert!(!r.qemu_killed, "qemu ignored quit");
    assert_started(&r.events, Arch::Amd64);
    let disks: Vec<&Event> = r
        .events
        .iter()
        .filter(|e| matches!(e, Event::Disk { .. }))
        .collect();
    // The fixture's own sysfs walk found the virtio disk it booted from.
    assert!(
        matches!(disks.as_slice(), [Event::Disk { name, drivers, size_bytes, removable: false }]
            if name == "vda" && drivers == &["virtio_blk", "virtio-pci"] && *size_bytes > 0),
        "{disks:?}"
    );
    assert_eq!(r.events.len(), 5);
    assert!(r
        .layers
        .iter()
        .all(|l| l.reported && l.mounted && l.visible));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("result.json")).unwrap()).unwrap();
    assert_eq!(json["pass"], true);
    assert_eq!(json["events"].as_array().map(Vec::len), Some(5));
    assert!(std::fs::read_to_string(&r.serial_log)
        .unwrap()
        .contains("STRATA "));

    // The second disk's init does not power off: the runner must end the
    // VM itself once the report is complete.
    let hang_dir = dir.path().join("hang");
    std::fs::create_dir_all(&hang_dir).unwrap();
    let disk = support::build_disk(&inputs, &report(), After::Hang, &hang_dir).unwrap();
    let work = dir.path().join("run-missing");
    let r = boot(&spec(
        Arch::Amd64,
        &disk,
        &work,
        expected(&[("hello", "1.0.0"), ("tools", "2.3"), ("absent", "1")]),
    ))
    .unwrap();
    println!(
        "amd64 boot with a missing extension, guest not powering off: {:.1} s, {}",
        r.duration_secs, r.reason
    );
    assert!(!r.pass);
    assert_eq!(r.reason, r#"extension "absent" not reported"#);
    assert_eq!(r.ended_by, "runner-quit-after-report");
    assert_eq!(r.shutdown_reason, None);
    assert!(!r.qemu_killed, "qemu ignored quit");
    assert_eq!(r.layers.len(), 3);
    assert!(!r.layers[2].reported);
}

/// True when QEMU and firmware are present (see `support::require`).
fn qemu_or_skip() -> bool {
    let found = find_firmware(Arch::Amd64)
        .map_err(|e| e.to_string())
        .and_then(|_| strata_qemu::host::find_qemu(Arch::Amd64).map_err(|e| e.to_string()));
    support::require(found).is_some()
}

/// A blank 4 MiB disk: nothing for the firmware to boot.
fn blank_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("blank.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    disk
}

#[test]
fn a_guest_that_never_reports_times_out() {
    if !qemu_or_skip() {
        return;
    }
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch();
    let disk = blank_disk(dir.path());
    let mut s = spec(
        Arch::Amd64,
        &disk,
        &dir.path().join("run"),
        expected(&[("hello", "")]),
    );
    // Too short for OVMF to even reach its boot manager under TCG.
    s.timeout = Duration::from_secs(2);
    let t = Instant::now();
    let r = boot(&s).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert!(!r.pass);
    assert_eq!(r.ended_by, "timeout");
    assert!(
        r.reason
            .starts_with("timeout after 2 s before the guest reported"),
        "{}",
        r.reason
    );
    assert!(
        r.reason.ends_with(r#"; extension "hello" not reported"#),
        "{}",
        r.reason
    );
}

#[test]
fn a_disk_with_nothing_to_boot_ends_at_the_firmware_shell() {
    if !qemu_or_skip() {
        return;
    }
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch();
    let disk = blank_disk(dir.path());
    let r = boot(&spec(Arch::Amd64, &disk, &dir.path().join("run"), vec![])).unwrap();
    println!("blank disk: {} after {:.1} s", r.ended_by, r.duration_secs);
    assert!(!r.pass);
    assert_eq!(r.ended_by, "firmware-shell", "{}", r.reason);
    assert!(
        r.reason.starts_with("the firmware found nothing to boot"),
        "{}",
        r.reason
    );
    assert!(!r.qemu_killed);
}

#[test]
fn qemu_refusing_the_image_is_an_error_with_its_message() {
    if !qemu_or_skip() {
        return;
    }
    let dir = scratch();
    let disk = dir.path().join("not-qcow2.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut s = spec(Arch::Amd64, &disk, &dir.path().join("run"), vec![]);
    s.format = ImageFormat::Qcow2;
    let err = boot(&s).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, strata_qemu::Error::QemuFailed { .. }),
        "{msg}"
    );
    assert!(msg.contains("qcow2"), "{msg}");
}

#[test]
fn invalid_spec_is_refused_before_qemu_starts() {
    let dir = scratch();
    let s = spec(
        Arch::Amd64,
        &dir.path().join("absent.img"),
        dir.path(),
        vec![],
    );
    let msg = boot(&s).unwrap_err().to_string();
    assert!(msg.starts_with("invalid boot spec: image "), "{msg}");
    assert!(msg.contains("absent.img"), "{msg}");
}

#[test]
fn arm64_passes_with_its_layers() {
    let Some(inputs) = inputs_or_skip(Arch::Arm64) else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch();
    let disk = support::build_disk(&inputs, &report(), After::PowerOff, dir.path()).unwrap();
    let work = dir.path().join("run");
    let r = boot(&spec(
        Arch::Arm64,
        &disk,
        &work,
        expected(&[("hello", "1.0.0"), ("tools", "")]),
    ))
    .unwrap();
    println!(
        "arm64 boot: {} in {:.1} s, accel {}, ended by {}",
        if r.pass { "pass" } else { "fail" },
        r.duration_secs,
        r.accel,
        r.ended_by
    );
    assert!(
        r.pass,
        "{}\nserial log: {}",
        r.reason,
        r.serial_log.display()
    );
    assert_eq!(r.ended_by, "guest-poweroff");
    assert_started(&r.events, Arch::Arm64);
}

/// What a boot from one media must give.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A pass: the guest reported a disk through the media's driver.
    Pass,
    /// A failure whose reason starts with this.
    Fail(&'static str),
}

/// Boots the fixture from each disk media in `list`, then as an El Torito
/// CD-ROM, and checks each outcome.
fn boots_from(arch: Arch, list: &[(Media, Outcome)]) {
    let Some(inputs) = inputs_or_skip(arch) else {
        return;
    };
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch();
    let disk = support::build_disk(&inputs, &report(), After::PowerOff, dir.path()).unwrap();
    let iso = support::build_iso(dir.path()).unwrap();
    let qemu_arch = arch;
    let mut wrong = Vec::new();
    for &(media, outcome) in list.iter().chain(&[(Media::Cdrom, Outcome::Pass)]) {
        let work = dir.path().join(format!("{media:?}"));
        let image = if media == Media::Cdrom { &iso } else { &disk };
        let mut s = spec(qemu_arch, image, &work, vec![]);
        s.media = media;
        s.timeout = Duration::from_secs(120);
        let r = boot(&s).unwrap();
        println!(
            "{arch:?} {media:?}: {} in {:.1} s",
            r.ended_by, r.duration_secs
        );
        let as_expected = match outcome {
            Outcome::Pass => r.pass,
            Outcome::Fail(start) => !r.pass && r.reason.starts_with(start),
        };
        if !as_expected {
            wrong.push(format!("{media:?}: {}", r.reason));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
#[ignore = "slow: one TCG boot per media; run with --ignored"]
fn amd64_boots_from_every_media() {
    let list = [
        (Media::VirtioBlk, Outcome::Pass),
        (Media::Nvme, Outcome::Pass),
        (Media::Ahci, Outcome::Pass),
        (Media::VirtioScsi, Outcome::Pass),
        // Debian's OVMF has no PVSCSI driver: the firmware boots from a
        // virtio-blk view, the guest must still see the PVSCSI disk.
        (Media::Pvscsi, Outcome::Pass),
    ];
    boots_from(Arch::Amd64, &list);
}

#[test]
#[ignore = "slow: one TCG boot per media; run with --ignored"]
fn arm64_boots_from_every_media() {
    let list = [
        (Media::VirtioBlk, Outcome::Pass),
        (Media::Nvme, Outcome::Pass),
        (Media::VirtioScsi, Outcome::Pass),
        // Debian's AAVMF has no AHCI driver: the firmware boots from a
        // virtio-blk view, the guest's AHCI driver finds the disk.
        (Media::Ahci, Outcome::Pass),
        // Linux has no PVSCSI driver on arm64: only the firmware's view is
        // seen, and the runner must say so.
        (
            Media::Pvscsi,
            Outcome::Fail("no disk reported through the vmw_pvscsi driver; disks seen: vda [virtio_blk, virtio-pci]"),
        ),
    ];
    boots_from(Arch::Arm64, &list);
}
