//! Distro roots, end to end (amd64 only; three boots in all):
//! - a debootstrap'd Debian 12 root with systemd (`make
//!   build/debian-root-amd64`), a Talos extension and profile `files:` (the
//!   host name and a unit that runs the extension's program): the guest
//!   must report, from inside the running systemd, `multi-user.target`
//!   reached with no failed unit, the profile's host name, and the
//!   extension's probe and the profile files found again;
//! - `state: persistent` on the busybox root: the first boot formats the
//!   DATA partition, the second boot of the same disk finds the boot count
//!   the first one wrote there.

use std::path::{Path, PathBuf};
use strata_tests::*;

/// The Debian root the Makefile makes.
fn debian_root() -> PathBuf {
    repo().join("build/debian-root-amd64")
}

/// Writes `profile` into a new temporary directory; returns it and the file.
fn profile_in(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn build(profile: &Path, out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    build_ok(profile, out);
}

#[test]
fn a_debian_root_with_systemd_comes_up_clean_with_the_profiles_files() {
    if !have_inputs("amd64") || !require_input(&debian_root()) {
        return;
    }
    let repo = repo();
    // The hello extension without its Talos compatibility range, which
    // Debian's VERSION_ID (12, not semver) cannot satisfy.
    let ext = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo.join("examples/extensions/hello/rootfs"))
        .arg(ext.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(
        ext.path().join("manifest.yaml"),
        "version: v1alpha1\nmetadata:\n  name: hello\n  version: 1.0.0\n  author: strata developers\n  description: hello, for any OS version\n",
    )
    .unwrap();
    let (_dir, profile) = profile_in(&format!(
        r#"name: debian
arch: amd64
platform: metal
os:
  id: debian
  version: "12"
kernel:
  deb: {repo}/.cache/debian/linux-image-amd64.deb
rootfs:
  dir: {repo}/build/debian-root-amd64
extensions:
  - dir: {ext}
files:
  - path: /etc/hostname
    content: "strata-debian\n"
  - path: /etc/systemd/system/strata-hello.service
    mode: "0644"
    content: |
      [Unit]
      Description=Runs the hello extension's program
      [Service]
      Type=oneshot
      RemainAfterExit=yes
      ExecStart=/usr/local/bin/strata-hello
      [Install]
      WantedBy=multi-user.target
  - path: /etc/systemd/system/multi-user.target.wants/strata-hello.service
    type: symlink
    target: /etc/systemd/system/strata-hello.service
"#,
        repo = repo.display(),
        ext = ext.path().display()
    ));
    let out = repo.join("target/e2e/distro-debian");
    build(&profile, &out);
    let result = boot_passes(&out.join("metal-amd64.raw"), &[], &shared_cache());
    let state = event(&result, "state");
    assert_eq!(state["mode"], "tmpfs", "{state}");
    let handover = event(&result, "handover");
    assert_eq!(handover["systemd"], true, "{handover}");
    let system = event(&result, "system");
    assert_eq!(system["state"], "running", "{system}");
    assert_eq!(system["multi_user"], true, "{system}");
    assert_eq!(system["failed"], serde_json::json!([]), "{system}");
    assert_eq!(system["hostname"], "strata-debian", "{system}");
    let seen: Vec<&str> = system["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in [
        "/etc/hostname",
        "/etc/systemd/system/strata-hello.service",
        "/usr/local/bin/strata-hello",
    ] {
        assert!(seen.contains(&want), "{want} not seen by systemd: {system}");
    }
    let files: Vec<&serde_json::Value> = result["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "file")
        .collect();
    assert_eq!(files.len(), 3, "{result}");
    assert!(files.iter().all(|f| f["ok"] == true), "{result}");
    // The unit the profile shipped ran the extension's program under systemd.
    let log = std::fs::read_to_string(out.join("metal-amd64.raw.boot/serial.log")).unwrap();
    assert!(log.contains(r#""event":"system""#), "{log}");
}

#[test]
#[ignore = "boot matrix (make boot-test): two boots; the init's ext2 writer is judged by e2fsck in its unit tests"]
fn persistent_state_is_formatted_on_first_boot_and_found_on_the_second() {
    if !have_inputs("amd64") {
        return;
    }
    let repo = repo();
    let (_dir, profile) = profile_in(&format!(
        r#"name: state
arch: amd64
platform: nocloud
os:
  id: strata
  version: 1.0.0
kernel:
  deb: {repo}/.cache/debian/linux-image-amd64.deb
rootfs:
  dir: {repo}/build/rootfs-amd64
outputs: [raw]
disk:
  size: 256 MiB
state: persistent
"#,
        repo = repo.display()
    ));
    let out = repo.join("target/e2e/distro-state");
    build(&profile, &out);
    let raw = out.join("nocloud-amd64.raw");
    let first = boot_passes(&raw, &["--keep-writes"], &shared_cache());
    let state = event(&first, "state");
    assert_eq!(state["mode"], "persistent", "{state}");
    assert_eq!(state["formatted"], true, "{state}");
    assert_eq!(state["boots"], 1, "{state}");
    // The partition now holds an ext2 file system that e2fsck accepts.
    if require_tool("e2fsck") {
        let (off, len) = partition_range(&raw, 2);
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data.img");
        extract(&raw, off, len, &data);
        let o = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "e2fsck: {}", text(&o));
    }
    // The first boot changed the artefact on purpose: its manifest digest no longer holds.
    let second = boot_passes(&raw, &["--keep-writes", "--no-verify"], &shared_cache());
    let state = event(&second, "state");
    assert_eq!(state["mode"], "persistent", "{state}");
    assert!(state.get("formatted").is_none(), "formatted again: {state}");
    assert_eq!(state["boots"], 2, "the first boot's count is gone: {state}");
}
