//! Broken profiles: each gives a clear error (file, field, fix), a non-zero
//! exit, and leaves nothing in the output directory.

use strata_tests::*;

/// The default profile with absolute paths, so it can live in a temp dir.
fn base_profile() -> String {
    let r = repo();
    format!(
        "name: broken\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: {k}\nrootfs:\n  dir: {root}\nextensions:\n  - dir: {e}/hello\n  - dir: {e}/motd\n",
        k = debian_cache().join("linux-image-${arch}.deb").display(),
        root = r.join("build/rootfs-${arch}").display(),
        e = r.join("examples/extensions").display(),
    )
}

/// Builds `profile` and checks: exit code, message parts, and no output left.
fn refused(profile: &str, code: i32, wants: &[&str]) {
    if !require_input(&strata_bin()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, profile).unwrap();
    let out = dir.path().join("out");
    let o = strata(
        &[
            "build",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &shared_cache(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{}", text(&o));
    for w in wants {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
    assert!(err.contains("fix:"), "no fix given:\n{err}");
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "files left in {}",
        out.display()
    );
}

#[test]
fn unknown_key() {
    refused(
        &base_profile().replace("platform: metal", "platform: metal\ncolour: blue"),
        2,
        &["p.yaml:4:1", "unknown field `colour`"],
    );
}

#[test]
fn missing_kernel_file() {
    refused(
        &base_profile().replace("linux-image-${arch}.deb", "nope.deb"),
        2,
        &["p.yaml:8:3: kernel.deb: file not found", "nope.deb"],
    );
}

#[test]
fn extension_without_manifest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rootfs/usr/local/bin")).unwrap();
    std::fs::write(dir.path().join("rootfs/usr/local/bin/x"), "x").unwrap();
    let p = base_profile().replace(
        &format!("{}/motd", repo().join("examples/extensions").display()),
        &dir.path().display().to_string(),
    );
    refused(&p, 2, &["has no manifest.yaml"]);
}

#[test]
fn esp_too_small() {
    if !have_inputs("amd64") {
        return;
    }
    let p = format!("{}disk:\n  esp_size: 8 MiB\n", base_profile());
    refused(&p, 2, &["disk.esp_size", "needs at least", "is 8 MiB"]);
}

#[test]
fn wrong_arch_kernel() {
    if !have_inputs("amd64") || !require_input(&kernel_deb("arm64")) {
        return;
    }
    let p = base_profile().replace("linux-image-${arch}.deb", "linux-image-arm64.deb");
    refused(&p, 2, &["kernel.deb", "arm64", "amd64"]);
}

#[test]
fn a_malformed_extension_is_refused_before_anything_is_written() {
    if !have_inputs("amd64") {
        return;
    }
    let bad = repo().join("tests/fixtures/extensions/talos/path-escape");
    let p = base_profile().replace(
        &format!("{}/motd", repo().join("examples/extensions").display()),
        &bad.display().to_string(),
    );
    refused(
        &p,
        2,
        &["extension validation failed", "talos.allowed-path"],
    );
}
