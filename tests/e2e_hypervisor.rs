//! A real-world extension end to end: QEMU from Debian's `qemu-system-x86` and
//! `qemu-system-data` packages, the "hypervisor" extension a composable OS ships.
//! `usr/share/qemu` holds firmware QEMU loads into *emulated* machines (openbios-ppc,
//! s390-ccw.img, palcode-clipper, opensbi-riscv64, hppa-firmware): ELF files for other
//! machines that are data, not programs for the target. `strata ext pack` makes a sysext of
//! the packages' `usr/` (ARCHITECTURE derived from the x86-64 programs), `strata ext
//! validate` notes the firmware as info and exits 0, and the image composes and boots with
//! the extension merged — one boot.

use std::path::Path;
use std::process::Command;
use strata_tests::*;

/// Unpacks the two .debs into `dest` and keeps only `usr/`, what a sysext may carry.
fn unpack_qemu(dest: &Path) {
    let debs = debian_cache();
    for deb in ["qemu-system-x86-amd64.deb", "qemu-system-data.deb"] {
        let o = Command::new("dpkg-deb")
            .arg("-x")
            .arg(debs.join(deb))
            .arg(dest)
            .output()
            .expect("run dpkg-deb");
        assert!(o.status.success(), "dpkg-deb -x {deb}: {}", text(&o));
    }
    for item in std::fs::read_dir(dest).unwrap() {
        let path = item.unwrap().path();
        if path.file_name().is_some_and(|n| n != "usr") {
            std::fs::remove_dir_all(&path)
                .or_else(|_| std::fs::remove_file(&path))
                .unwrap();
        }
    }
}

#[test]
fn a_debian_qemu_sysext_validates_composes_and_boots() {
    let debs = debian_cache();
    let inputs = [
        debs.join("qemu-system-x86-amd64.deb"),
        debs.join("qemu-system-data.deb"),
    ];
    if !have_inputs("amd64")
        || !require_tool("dpkg-deb")
        || !inputs.iter().all(|p| require_input(p))
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = shared_cache();
    let tree = work.path().join("qemu");
    unpack_qemu(&tree);
    let firmware = tree.join("usr/share/qemu/openbios-ppc");
    assert!(
        firmware.is_file(),
        "the packages changed: no {}",
        firmware.display()
    );

    let raw = work.path().join("qemu.raw");
    let o = strata(
        &[
            "ext",
            "pack",
            tree.to_str().unwrap(),
            "--sysext",
            raw.to_str().unwrap(),
            "--extension-version",
            "7.2",
        ],
        &cache,
    );
    assert!(o.status.success(), "ext pack refused QEMU:\n{}", text(&o));

    let o = strata(
        &[
            "ext",
            "validate",
            "--arch",
            "amd64",
            "--os-id",
            "strata",
            "--os-version",
            "1.0.0",
            raw.to_str().unwrap(),
        ],
        &cache,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for f in [
        "openbios-ppc",
        "s390-ccw.img",
        "palcode-clipper",
        "hppa-firmware.img",
    ] {
        let row = out
            .lines()
            .find(|l| l.contains(&format!("/usr/share/qemu/{f}")))
            .unwrap_or_else(|| panic!("{f} not reported:\n{out}"));
        assert!(
            row.contains("info") && row.contains("content.foreign-elf"),
            "{row}"
        );
    }
    assert!(out.contains("0 errors"), "{out}");

    let profile = work.path().join("hypervisor.yaml");
    std::fs::write(
        &profile,
        format!(
            "name: hypervisor\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: {k}\nrootfs:\n  dir: {root}\nextensions:\n  - sysext: {raw}\noutputs: [raw]\n",
            k = kernel_deb("amd64").display(),
            root = repo().join("build/rootfs-amd64").display(),
            raw = raw.display(),
        ),
    )
    .unwrap();
    let out_dir = work.path().join("out");
    let o = strata(
        &[
            "build",
            profile.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(
        o.status.success(),
        "the QEMU sysext did not compose:\n{}",
        text(&o)
    );
    let r = boot_passes(&out_dir.join("metal-amd64.raw"), &[], &cache);
    let qemu = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "layer" && e["name"] == "qemu")
        .unwrap_or_else(|| panic!("the guest did not report the qemu layer: {r}"));
    assert!(
        qemu["mounted"] == true && qemu["visible"] == true,
        "the QEMU sysext is not merged: {qemu}"
    );
}
