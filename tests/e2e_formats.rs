//! Every output format, judged by independent tools against the raw image
//! it was converted from; then every platform's artefact booted with its
//! platform's device model, on amd64 (all at once, by one `strata boot --junit`
//! call over the output directory) and arm64.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use strata_tests::*;

/// Builds `profile` (for `arch`) once per test run into target/e2e/<dir>;
/// `None` when the inputs are missing (each test says so: see `have_inputs`).
fn build_once(
    cell: &'static OnceLock<PathBuf>,
    profile: &str,
    arch: &str,
    dir: &str,
) -> Option<&'static PathBuf> {
    if !have_inputs(arch) {
        return None;
    }
    Some(cell.get_or_init(|| {
        let out = repo().join("target/e2e").join(dir);
        let _ = std::fs::remove_dir_all(&out);
        let o = strata(
            &[
                "build",
                profile,
                "--arch",
                arch,
                "--out",
                out.to_str().unwrap(),
            ],
            &shared_cache(),
        );
        assert!(
            o.status.success(),
            "build of {profile} for {arch} failed: {}",
            text(&o)
        );
        out
    }))
}

fn formats() -> Option<&'static PathBuf> {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    build_once(&CELL, "tests/profiles/formats.yaml", "amd64", "formats")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_img_info(path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["info", "--output=json"];
    args.extend_from_slice(extra);
    args.push(s(path));
    serde_json::from_str(&judge("qemu-img", &args)).unwrap()
}

#[test]
fn qcow2_and_vmdk_are_clean_and_equal_the_raw_image() {
    let Some(out) = formats() else { return };
    let raw = out.join("nocloud-amd64.raw");
    let size = std::fs::metadata(&raw).unwrap().len();
    for (file, fmt) in [
        ("nocloud-amd64.qcow2", "qcow2"),
        ("nocloud-amd64.vmdk", "vmdk"),
    ] {
        let p = out.join(file);
        let info = qemu_img_info(&p, &["-f", fmt]);
        assert_eq!(info["format"], fmt, "{info}");
        assert_eq!(info["virtual-size"], size, "{file}: {info}");
        judge("qemu-img", &["check", "-f", fmt, s(&p)]);
        let cmp = judge(
            "qemu-img",
            &["compare", "-f", fmt, "-F", "raw", s(&p), s(&raw)],
        );
        assert!(cmp.contains("Images are identical"), "{file}: {cmp}");
    }
    let vmdk = qemu_img_info(&out.join("nocloud-amd64.vmdk"), &["-f", "vmdk"]);
    assert_eq!(
        vmdk["format-specific"]["data"]["create-type"], "streamOptimized",
        "{vmdk}"
    );
}

#[test]
fn the_fixed_vhd_has_a_valid_footer_and_equals_the_raw_image() {
    let Some(out) = formats() else { return };
    let raw = out.join("nocloud-amd64.raw");
    let vhd = out.join("nocloud-amd64.vhd");
    let data = std::fs::read(&vhd).unwrap();
    let footer = &data[data.len() - 512..];
    assert_eq!(&footer[..8], b"conectix");
    let stored = u32::from_be_bytes(footer[64..68].try_into().unwrap());
    let sum: u32 = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, b)| u32::from(*b))
        .sum();
    assert_eq!(stored, !sum, "footer checksum");
    assert_eq!(
        u32::from_be_bytes(footer[60..64].try_into().unwrap()),
        2,
        "disk type fixed"
    );
    let size = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    assert_eq!(size % (1 << 20), 0, "Azure needs a whole number of MiB");
    assert_eq!(
        &data[..data.len() - 512],
        &std::fs::read(&raw).unwrap()[..],
        "VHD data differs from the raw image"
    );
    let info = qemu_img_info(&vhd, &["-f", "vpc"]);
    assert_eq!(info["format"], "vpc", "{info}");
}

#[test]
fn the_ova_holds_ovf_manifest_and_a_vmdk_equal_to_the_raw_image() {
    let Some(out) = formats() else { return };
    let ova = out.join("nocloud-amd64.ova");
    let list = judge("tar", &["-tvf", s(&ova)]);
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{list}");
    assert!(
        names[0].ends_with(".ovf") && names[1].ends_with(".mf") && names[2].ends_with(".vmdk"),
        "{list}"
    );
    let dir = tempfile::tempdir().unwrap();
    judge("tar", &["-xf", s(&ova), "-C", s(dir.path())]);
    let ovf = std::fs::read_to_string(dir.path().join(names[0])).unwrap();
    for want in [
        "VirtualSCSI",
        "VmxNet3",
        "disk.EnableUUID",
        "ovf:capacity=",
        "ovf:populatedSize=",
    ] {
        assert!(ovf.contains(want), "OVF lacks {want}");
    }
    let mf = std::fs::read_to_string(dir.path().join(names[1])).unwrap();
    assert_eq!(
        mf.lines().filter(|l| l.starts_with("SHA256(")).count(),
        2,
        "{mf}"
    );
    let check = std::process::Command::new("sha256sum")
        .args(["-c", names[1]])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let vmdk = dir.path().join(names[2]);
    judge("qemu-img", &["check", "-f", "vmdk", s(&vmdk)]);
    let cmp = judge(
        "qemu-img",
        &[
            "compare",
            "-f",
            "vmdk",
            "-F",
            "raw",
            s(&vmdk),
            s(&out.join("nocloud-amd64.raw")),
        ],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
}

#[test]
fn the_gcp_tarball_holds_disk_raw() {
    let Some(out) = formats() else { return };
    let tgz = out.join("nocloud-amd64.raw.tar.gz");
    let list = judge("tar", &["-tvzf", s(&tgz)]);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(list.contains(" disk.raw"), "{list}");
    let dir = tempfile::tempdir().unwrap();
    judge("tar", &["-xzf", s(&tgz), "-C", s(dir.path())]);
    let cmp = judge(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            s(&dir.path().join("disk.raw")),
            s(&out.join("nocloud-amd64.raw")),
        ],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
}

#[test]
fn the_iso_has_a_uefi_el_torito_entry_and_a_valid_gpt() {
    let Some(out) = formats() else { return };
    let iso = out.join("nocloud-amd64.iso");
    let report = judge(
        "xorriso",
        &["-indev", s(&iso), "-report_el_torito", "plain"],
    );
    assert!(report.contains("UEFI"), "no UEFI boot entry:\n{report}");
    let v = judge("sgdisk", &["-v", s(&iso)]);
    assert!(v.contains("No problems found"), "{v}");
    let esp = out.join("iso-esp.img");
    let (off, len) = partition_range(&iso, 1);
    extract(&iso, off, len, &esp);
    judge("fsck.vfat", &["-n", s(&esp)]);
    std::fs::remove_file(&esp).unwrap();
}

#[test]
fn compressed_raw_images_decompress_to_the_raw_image() {
    let Some(out) = formats() else { return };
    let raw = std::fs::read(out.join("nocloud-amd64.raw")).unwrap();
    for (file, tool) in [
        ("nocloud-amd64.raw.xz", "xz"),
        ("nocloud-amd64.raw.zst", "zstd"),
    ] {
        let p = out.join(file);
        judge(tool, &["-t", s(&p)]);
        let o = std::process::Command::new(tool)
            .args(["-dc", s(&p)])
            .output()
            .unwrap();
        assert!(
            o.stdout == raw,
            "{file} does not decompress to the raw image"
        );
    }
    let info = judge("xz", &["-lvv", s(&out.join("nocloud-amd64.raw.xz"))]);
    assert!(info.contains("CRC64"), "{info}");
}

fn all_platforms(arch: &str) -> Option<&'static PathBuf> {
    static AMD64: OnceLock<PathBuf> = OnceLock::new();
    static ARM64: OnceLock<PathBuf> = OnceLock::new();
    let cell = if arch == "arm64" { &ARM64 } else { &AMD64 };
    build_once(
        cell,
        "profiles/all-platforms.yaml",
        arch,
        &format!("all-platforms-{arch}"),
    )
}

/// Boots one artefact as it is and checks the guest's own report.
fn boots(arch: &str, file: &str, media: &str) {
    let Some(out) = all_platforms(arch) else {
        return;
    };
    let art = out.join(file);
    let r = boot_passes(&art, &[], &shared_cache());
    let cmd = r["qemu_command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        cmd.contains(media),
        "{file} was not attached as {media}: {cmd}"
    );
    let names = layer_names(&r);
    assert_eq!(names, ["hello", "motd"], "{file}");
}

/// The device model each amd64 artefact of the all-platforms build must be attached as.
const AMD64_MEDIA: [(&str, &str); 7] = [
    ("metal-amd64.raw", "virtio-blk-pci,drive=disk0"),
    ("metal-amd64.iso", "ide-cd"),
    ("aws-amd64.raw.zst", "nvme,"),
    ("vmware-amd64.ova", "pvscsi"),
    ("nocloud-amd64.qcow2", "format=qcow2"),
    ("azure-amd64.vhd", "ide-hd"),
    ("gcp-amd64.raw.tar.gz", "virtio-scsi-pci"),
];

/// A copy of an output directory (its manifest and artefacts, sparse) to spoil safely.
fn copy_outputs(out: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(repo().join("target/e2e")).unwrap();
    let manifest = out.join("manifest.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let mut files = vec![manifest];
    for b in m["builds"].as_array().unwrap() {
        for o in b["outputs"].as_array().unwrap() {
            files.push(out.join(o["file"].as_str().unwrap()));
        }
    }
    let mut args = vec!["--sparse=always", "--reflink=auto"];
    args.extend(files.iter().map(|f| s(f)));
    args.push(s(dir.path()));
    judge("cp", &args);
    dir
}

/// Inverts the byte at `offset` of `file` in place.
fn flip_byte(file: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[!b[0]]).unwrap();
}

/// The check: one `strata boot --junit` call over a multi-platform build's output
/// directory gives one testcase per artefact, each booted with its platform's device model;
/// a corrupted artefact among them is a failed testcase with its reason, and the exit is 1.
/// metal-amd64.raw is the one spoiled (e2e_default boots that kind of image).
#[test]
fn amd64_every_platform_boots_from_one_call_and_a_corrupted_artefact_fails() {
    let Some(out) = all_platforms("amd64") else {
        return;
    };
    if !require_tool("xmllint") || !require_tool("cp") {
        return;
    }
    let copy = copy_outputs(out);
    let dir = copy.path();
    let spoilt = dir.join("metal-amd64.raw");
    flip_byte(&spoilt, 0x200); // the primary GPT header: same size, another sum
    let junit = dir.join("junit.xml");
    let o = strata(
        &[
            "boot",
            "--json",
            "--timeout",
            "400",
            "--junit",
            s(&junit),
            s(dir),
        ],
        &shared_cache(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON report: {}", text(&o)));
    let cases: Vec<&serde_json::Value> = report["suites"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["cases"].as_array().unwrap())
        .collect();
    assert_eq!(cases.len(), AMD64_MEDIA.len(), "{report}");
    for (file, media) in AMD64_MEDIA {
        let c = cases
            .iter()
            .find(|c| c["artefact"] == s(&dir.join(file)))
            .unwrap_or_else(|| panic!("no case for {file}: {report}"));
        if file == "metal-amd64.raw" {
            assert_eq!(c["pass"], false, "{c}");
            let reason = c["reason"].as_str().unwrap();
            assert!(
                reason.contains("does not match manifest.json: its sha256"),
                "{reason}"
            );
            continue;
        }
        let r = &c["result"];
        assert!(
            c["pass"] == true,
            "{file} did not pass: {}\n{}",
            c["reason"],
            text(&o)
        );
        let cmd: Vec<&str> = r["qemu_command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            cmd.join(" ").contains(media),
            "{file} was not attached as {media}: {cmd:?}"
        );
        let names = layer_names(r);
        assert_eq!(names, ["hello", "motd"], "{file}");
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    judge(
        "xmllint",
        &[
            "--noout",
            "--schema",
            s(&repo().join("tests/junit.xsd")),
            s(&junit),
        ],
    );
    assert_eq!(
        xml.matches("<testsuite ").count(),
        6,
        "one suite per platform: {xml}"
    );
    assert_eq!(
        xml.matches("<testcase ").count(),
        AMD64_MEDIA.len(),
        "{xml}"
    );
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    assert!(!xml.contains("<error "), "{xml}");
    let failed = xml
        .split("<testcase ")
        .find(|c| c.contains("<failure "))
        .unwrap();
    assert!(failed.starts_with("name=\"metal-amd64.raw\""), "{failed}");
    assert!(failed.contains("does not match manifest.json"), "{failed}");
    let serial = dir.join("aws-amd64.raw.zst.boot/serial.log");
    assert!(
        xml.contains(&format!("[[ATTACHMENT|{}]]", serial.display())),
        "{xml}"
    );
}

#[test]
fn arm64_metal_raw_boots() {
    boots("arm64", "metal-arm64.raw", "virtio-blk-pci,drive=disk0");
}

#[test]
#[ignore = "boot matrix (make boot-test): amd64 boots every format, arm64 its raw disk in make test"]
fn arm64_iso_boots_as_a_cdrom() {
    boots("arm64", "metal-arm64.iso", "scsi-cd");
}

#[test]
#[ignore = "boot matrix (make boot-test): amd64 boots every format, arm64 its raw disk in make test"]
fn arm64_aws_raw_zst_boots_on_nvme() {
    boots("arm64", "aws-arm64.raw.zst", "nvme,");
}

#[test]
#[ignore = "boot matrix (make boot-test): amd64 boots every format, arm64 its raw disk in make test"]
fn arm64_vmware_ova_boots() {
    boots("arm64", "vmware-arm64.ova", "format=vmdk");
}

#[test]
#[ignore = "boot matrix (make boot-test): amd64 boots every format, arm64 its raw disk in make test"]
fn arm64_nocloud_qcow2_boots() {
    boots("arm64", "nocloud-arm64.qcow2", "format=qcow2");
}
