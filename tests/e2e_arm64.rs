//! arm64 from the same profile: composed natively on the x86_64 host (nothing
//! of the target runs at build time), booted under qemu-system-aarch64 with
//! AAVMF. Wrong-arch inputs are refused before anything is written.

use strata_tests::*;

#[test]
fn the_default_profile_builds_and_boots_for_arm64() {
    if !have_inputs("arm64") {
        return;
    }
    let out = repo().join("target/e2e/default-arm64");
    let _ = std::fs::remove_dir_all(&out);
    let o = strata(
        &[
            "build",
            "profiles/default.yaml",
            "--arch",
            "arm64",
            "--out",
            out.to_str().unwrap(),
        ],
        &shared_cache(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let raw = out.join("metal-arm64.raw");
    let v = judge("sgdisk", &["-v", raw.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "{v}");
    let esp = out.join("esp.img");
    let (off, len) = partition_range(&raw, 1);
    extract(&raw, off, len, &esp);
    judge("fsck.vfat", &["-n", esp.to_str().unwrap()]);
    let listing = judge("mdir", &["-i", esp.to_str().unwrap(), "-/", "-b", "::/"]);
    assert!(listing.contains("BOOTAA64.EFI"), "{listing}");
    let entry = judge(
        "mtype",
        &[
            "-i",
            esp.to_str().unwrap(),
            "::/loader/entries/strata-default.conf",
        ],
    );
    assert!(
        entry.contains("console=ttyAMA0") && entry.contains("6.1.0") && entry.contains("arm64"),
        "{entry}"
    );
    std::fs::remove_file(&esp).unwrap();

    let result = boot_passes(&raw, &[], &shared_cache());
    let kernel = result["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "start")
        .unwrap();
    assert_eq!(
        kernel["machine"], "aarch64",
        "the guest must say it runs on aarch64: {kernel}"
    );
    let names = layer_names(&result);
    assert_eq!(names, ["hello", "motd"]);
}

/// An amd64 profile whose `field` points at arm64 material.
fn refused_for_amd64(replace: (&str, &str), extra_args: &[&str], wants: &[&str]) {
    if !have_inputs("amd64") || !have_inputs("arm64") {
        return;
    }
    let text_in = std::fs::read_to_string(repo().join("profiles/default.yaml")).unwrap();
    let root = repo();
    let profile = text_in
        .replace("../", &format!("{}/", root.display()))
        .replace(replace.0, replace.1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, profile).unwrap();
    let out = dir.path().join("out");
    let mut args = vec![
        "build",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra_args);
    let o = strata(&args, &shared_cache());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for w in wants {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
    assert!(!out.exists(), "output written for a refused build");
}

#[test]
fn an_arm64_kernel_is_refused_for_amd64() {
    refused_for_amd64(
        ("linux-image-${arch}.deb", "linux-image-arm64.deb"),
        &[],
        &["kernel.deb", "for arm64, but the profile's arch is amd64"],
    );
}

#[test]
fn an_arm64_root_filesystem_is_refused_for_amd64() {
    refused_for_amd64(
        ("rootfs-${arch}", "rootfs-arm64"),
        &[],
        &["root filesystem holds /bin/busybox built for arm64, but the profile's arch is amd64"],
    );
}

#[test]
fn an_arm64_init_is_refused_for_amd64() {
    let init = repo().join("target/aarch64-unknown-linux-musl/release/strata-init");
    refused_for_amd64(
        ("", ""),
        &["--init", init.to_str().unwrap()],
        &["guest init is built for arm64, but the profile's arch is amd64"],
    );
}
