//! sysext images as people publish them, made by the real tools: squashfs compressed with each
//! of the five codecs mksquashfs offers (gzip, its default, lzo, lz4, xz, zstd), erofs
//! uncompressed and lz4 (mkfs.erofs), and a GPT disk image (DDI) with a `usr` partition and a
//! `usr-verity` partition beside it (sgdisk, as systemd-repart lays them out). One profile takes
//! all eight, a confext (mksquashfs of `tests/fixtures/extensions/confext/settings`) and two
//! Talos layers that ship the same file (`order-lower`, then `order-upper`), and ONE image
//! boots: the guest must report every image mounted, with the version from its own release
//! file, and its file visible under /usr (the confext's under /etc), and the shadowed file
//! must show the upper layer's copy. `strata ext validate` accepts each image (exit 0), and the
//! build says the DDI's verity hash is not enforced.

use std::path::{Path, PathBuf};
use strata_tests::*;

const MIB: u64 = 1 << 20;
/// The release file every image carries (its own name and version appended).
const RELEASE: &str = "ID=_any\nARCHITECTURE=x86-64\n";
/// DPS type GUIDs (x86-64) of a `/usr` partition and its verity partition.
const USR_X86_64: &str = "8484680C-9521-48C6-9C11-B0720656F69E";
const USR_VERITY_X86_64: &str = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6";

/// The files of image `name`, rooted at `usr` (the image's `/usr`): its release file and
/// `/usr/share/<name>/probe`.
fn usr_tree(usr: &Path, name: &str, version: usize) {
    let rel = usr.join("lib/extension-release.d");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(
        rel.join(format!("extension-release.{name}")),
        format!("{RELEASE}SYSEXT_VERSION_ID={version}.0\n"),
    )
    .unwrap();
    let share = usr.join("share").join(name);
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("probe"), format!("made by {name}\n")).unwrap();
}

fn run(program: &str, args: &[&str]) {
    judge(program, args);
}

/// mksquashfs of `src` into `out` with `comp`.
fn squashfs(src: &Path, out: &Path, comp: &str) {
    run(
        "mksquashfs",
        &[
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "-comp",
            comp,
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
        ],
    );
}

/// A DDI: GPT with the squashfs `fs` in a usr-x86-64 partition and a 1 MiB usr-verity-x86-64
/// partition (hash data strata does not read), the way systemd-repart lays out a sysext.
fn ddi(fs: &Path, out: &Path) {
    let fs_len = std::fs::metadata(fs).unwrap().len();
    let part = fs_len.div_ceil(MIB) * MIB;
    let disk_len = MIB + part + MIB + MIB;
    std::fs::File::create(out)
        .unwrap()
        .set_len(disk_len)
        .unwrap();
    let o = out.to_str().unwrap();
    run(
        "sgdisk",
        &[
            &format!("--new=1:2048:+{}", part / 512),
            &format!("--typecode=1:{USR_X86_64}"),
            "--change-name=1:ddi-usr",
            "--new=2:0:+1M",
            &format!("--typecode=2:{USR_VERITY_X86_64}"),
            "--change-name=2:ddi-verity",
            o,
        ],
    );
    // The file system goes into partition 1, at 1 MiB.
    run(
        "dd",
        &[
            &format!("if={}", fs.display()),
            &format!("of={o}"),
            "bs=1M",
            "seek=1",
            "conv=notrunc",
            "status=none",
        ],
    );
}

/// Makes the eight images in `dir`; returns (name, file).
fn images(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut version = 0;
    let mut tree = |name: &str| {
        version += 1;
        let root = dir.join(format!("tree-{name}"));
        usr_tree(&root.join("usr"), name, version);
        root
    };
    for comp in ["gzip", "lzo", "lz4", "xz", "zstd"] {
        let name = format!("sq-{comp}");
        let src = tree(&name);
        let image = dir.join(format!("{name}.raw"));
        squashfs(&src, &image, comp);
        out.push((name, image));
    }
    for (name, args) in [("erofs-plain", &[][..]), ("erofs-lz4", &["-zlz4"][..])] {
        let src = tree(name);
        let image = dir.join(format!("{name}.raw"));
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--all-root",
            "--quiet",
            image.to_str().unwrap(),
            src.to_str().unwrap(),
        ]);
        run("mkfs.erofs", &all);
        out.push((name.to_string(), image));
    }
    // The DDI's file system holds /usr's contents at its top: a usr partition is mounted at /usr.
    let src = tree("ddi-usr");
    let fs = dir.join("ddi-usr.sqsh");
    squashfs(&src.join("usr"), &fs, "zstd");
    let image = dir.join("ddi-usr.raw");
    ddi(&fs, &image);
    out.push(("ddi-usr".into(), image));
    out
}

/// The confext: mksquashfs of the fixture tree (its release file says `CONFEXT_VERSION_ID=3.0`).
fn confext(dir: &Path) -> PathBuf {
    let image = dir.join("settings.raw");
    squashfs(
        &repo().join("tests/fixtures/extensions/confext/settings"),
        &image,
        "zstd",
    );
    image
}

/// The file both order fixtures ship, each with its own name as content.
const SHADOWED: &str = "/usr/local/share/strata-order/who";

fn profile(dir: &Path, images: &[(String, PathBuf)], confext: &Path) -> PathBuf {
    let r = repo();
    let mut text = format!(
        "name: sysext-images\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: {}\nrootfs:\n  dir: {}\noutputs: [raw]\nextensions:\n",
        kernel_deb("amd64").display(),
        r.join("build/rootfs-amd64").display(),
    );
    for (_, image) in images {
        text.push_str(&format!("  - sysext: {}\n", image.display()));
    }
    text.push_str(&format!("  - confext: {}\n", confext.display()));
    for layer in ["order-lower", "order-upper"] {
        let fixture = r.join("tests/fixtures/extensions/talos").join(layer);
        text.push_str(&format!("  - dir: {}\n", fixture.display()));
    }
    let p = dir.join("sysext-images.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_published_sysext_format_boots_as_an_extension() {
    if !have_inputs("amd64") {
        return;
    }
    for tool in ["mksquashfs", "mkfs.erofs", "sgdisk", "dd"] {
        if !require_tool(tool) {
            return;
        }
    }
    let work = tempfile::tempdir().unwrap();
    let images = images(work.path());
    let cache = shared_cache();

    let p = profile(work.path(), &images, &confext(work.path()));
    let out = work.path().join("out");
    let o = strata(
        &["build", p.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &cache,
    );
    assert!(o.status.success(), "build failed:\n{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("sysext.verity") && said.contains("usr-verity"),
        "the build must say the DDI's verity partition is not enforced:\n{said}"
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["builds"][0]["shadowed"],
        serde_json::json!([SHADOWED]),
        "the build must record the shadowed file, so a boot without its report fails"
    );
    let r = boot_passes(&out.join("metal-amd64.raw"), &[], &cache);
    let events = r["events"].as_array().expect("events");
    for (at, (name, _)) in images.iter().enumerate() {
        let ev = events
            .iter()
            .find(|e| e["event"] == "layer" && e["kind"] == "sysext" && e["name"] == **name)
            .unwrap_or_else(|| panic!("{name} not reported: {r}"));
        assert!(
            ev["mounted"] == true && ev["visible"] == true,
            "{name} must be merged and its files visible: {ev}"
        );
        assert_eq!(
            ev["version"],
            format!("{}.0", at + 1),
            "{name}: the version comes from the image's own release file: {ev}"
        );
    }

    let settings = events
        .iter()
        .find(|e| e["event"] == "layer" && e["kind"] == "confext")
        .unwrap_or_else(|| panic!("the confext was not reported: {r}"));
    assert!(
        settings["name"] == "settings"
            && settings["version"] == "3.0"
            && settings["mounted"] == true
            && settings["visible"] == true
            && settings["probe"]
                .as_str()
                .is_some_and(|p| p.starts_with("/etc/")),
        "the confext must be merged on /etc with its file visible there: {settings}"
    );
    let stack = events
        .iter()
        .find(|e| e["event"] == "stack" && e["path"] == SHADOWED)
        .unwrap_or_else(|| panic!("{SHADOWED}, shipped by two layers, was not checked: {r}"));
    assert!(
        stack["ok"] == true
            && stack["shown"] == "order-upper"
            && stack["layers"] == serde_json::json!(["order-lower", "order-upper"]),
        "the later layer's copy must show: {stack}"
    );

    // `strata ext validate` opens each image the way the build does.
    for (name, image) in &images {
        let o = strata(
            &[
                "ext",
                "validate",
                "--arch",
                "amd64",
                image.to_str().unwrap(),
            ],
            &cache,
        );
        assert!(
            o.status.success(),
            "ext validate refused {name}:\n{}",
            text(&o)
        );
    }
}
