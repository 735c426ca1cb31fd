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
    let o = build(&path, &out);
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

/// `-q` prints the error and nothing else; `--json` ends the events of the failed build with
/// the failed step, every line parseable, and the error stays on stderr.
#[test]
fn quiet_and_json_builds_still_report_the_error() {
    if !require_input(&strata_bin()) || !have_inputs("amd64") {
        return;
    }
    let p = format!("{}disk:\n  esp_size: 8 MiB\n", base_profile());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, p).unwrap();
    let build = |flag: &str| {
        let out = dir.path().join("out");
        let args = [
            "build",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            flag,
        ];
        strata(&args, &shared_cache())
    };

    let o = build("-q");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(o.stdout.is_empty(), "-q wrote to stdout: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: "),
        "-q printed more than the error:\n{err}"
    );
    assert!(err.contains("disk.esp_size"), "{err}");

    let o = build("--json");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let last = events.last().expect("no events");
    // The plan passed; the ESP is found too small when the disks are laid out.
    assert_eq!(
        (&last["event"], &last["step"]),
        (&"failed".into(), &"layout".into())
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "finished" && e["step"] == "squashfs"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("disk.esp_size"),
        "{err}"
    );
}

/// Runs `strata build` on `profile` with a private cache and `extra`
/// arguments; returns (exit code, stderr, the cache directory, the output directory).
fn run_private(profile: &str, extra: &[&str]) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, profile).unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let mut args = vec![
        "build",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = strata(&args, &cache);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o.status.code(), err, dir)
}

#[test]
fn a_corrupt_rootfs_tar_exits_2_with_the_tar_readers_reason_and_writes_nothing() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("root.tar");
    // A ustar header whose checksum is wrong: tar readers refuse it.
    let mut bytes = vec![0u8; 1024];
    bytes[..4].copy_from_slice(b"etc/");
    bytes[148..156].copy_from_slice(b"0000000\0");
    bytes[257..263].copy_from_slice(b"ustar\0");
    std::fs::write(&tar, &bytes).unwrap();
    let p = base_profile().replace(
        &format!("dir: {}", repo().join("build/rootfs-${arch}").display()),
        &format!("tar: {}", tar.display()),
    );
    let (code, err, tmp) = run_private(&p, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("rootfs.tar: cannot read the root filesystem archive"),
        "{err}"
    );
    assert!(err.contains("caused by:"), "no cause given:\n{err}");
    assert_eq!(
        err.matches(tar.to_str().unwrap()).count(),
        1,
        "the path should be named once:\n{err}"
    );
    assert!(err.contains("fix:"), "{err}");
    assert!(!tmp.path().join("out").exists(), "output directory created");
    assert!(!tmp.path().join("cache").exists(), "the cache was written");
}

#[test]
fn a_missing_bootloader_exits_3() {
    if !have_inputs("amd64") {
        return;
    }
    let p = format!(
        "{}bootloader: /nonexistent/systemd-bootx64.efi\n",
        base_profile()
    );
    let (code, err, _tmp) = run_private(&p, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("systemd-boot for amd64 not found"), "{err}");
    assert!(err.contains("fix: apt-get install"), "{err}");
}

#[test]
fn an_unwritable_cache_exits_4() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let cache = file.join("cache");
    let (code, err, _tmp) = run_private(&base_profile(), &["--cache", cache.to_str().unwrap()]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("caused by:"), "{err}");
}

#[test]
fn an_image_missing_from_the_cache_offline_exits_5() {
    if !have_inputs("amd64") {
        return;
    }
    let p = format!(
        "{}  - image: registry.invalid/strata/none:1\n",
        base_profile()
    );
    let (code, err, _tmp) = run_private(&p, &["--offline"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("extensions[2].image: cannot pull"), "{err}");
    assert!(err.contains("caused by:"), "{err}");
}

#[test]
fn a_disk_above_the_vhd_limit_exits_6() {
    if !have_inputs("amd64") {
        return;
    }
    let p = format!("{}outputs: [vhd]\ndisk:\n  size: 3 TiB\n", base_profile());
    let (code, err, tmp) = run_private(&p, &[]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("writing the vhd image"), "{err}");
    assert!(err.contains("above the vhd limit"), "{err}");
    let out = tmp.path().join("out");
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "files left in {}",
        out.display()
    );
}

#[test]
fn a_guest_that_cannot_report_in_time_exits_1() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    build_ok(std::path::Path::new("profiles/default.yaml"), &out);
    let art = out.join("metal-amd64.raw");
    // One second is too short for any guest to boot and report.
    let o = strata(
        &[
            "boot",
            art.to_str().unwrap(),
            "--timeout",
            "1",
            "--accel",
            "tcg",
        ],
        &shared_cache(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(err.contains("boot test failed"), "{err}");
}

/// Builds `profile` (written to a fresh directory) with `--out` at `out`
/// relative to that directory; returns (exit code, stderr, the directory).
fn run_with_out(profile: &str, out: &str) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, profile).unwrap();
    let out = dir.path().join(out);
    let o = strata(
        &[
            "build",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o.status.code(), err, dir)
}

#[test]
fn a_newline_in_os_id_is_refused_at_its_line() {
    // The probe's case: the newline would have become an `options` line of the boot entry.
    refused(
        &base_profile().replace("  id: strata", "  id: \"strata\\noptions init=/bin/sh\""),
        2,
        &["p.yaml:5:3: os.id", "control character '\\n'"],
    );
}

#[test]
fn hostile_profile_shapes_are_refused_quickly() {
    let alias = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{}deep: {}\n", base_profile(), "[".repeat(200_000)),
            vec!["p.yaml:14:70", "nest deeper than 64"],
        ),
        (
            format!("{alias}{}", base_profile()),
            vec!["p.yaml:2:8", "alias `*a`"],
        ),
        (
            base_profile().replace("platform: metal", "platform: metal\nplatform: aws"),
            vec!["p.yaml:4:1", "duplicate", "`platform`", "line 3"],
        ),
        (
            format!("{}# {}\n", base_profile(), "x".repeat(2 << 20)),
            vec!["p.yaml", "more than the 1048576 bytes"],
        ),
        (
            base_profile().replace("name: broken", "name: [1, 2]"),
            vec!["p.yaml:1:7", "name"],
        ),
    ];
    for (profile, wants) in cases {
        let t = std::time::Instant::now();
        refused(&profile, 2, &wants);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{wants:?} took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_kernel_command_line_over_the_limit_is_refused() {
    if !have_inputs("amd64") {
        return;
    }
    let long = "x".repeat(3000);
    refused(
        &base_profile().replace(
            "kernel:\n",
            &format!("kernel:\n  args: [quiet, strata.long={long}]\n"),
        ),
        2,
        &[
            "kernel.args",
            "over the kernel's limit of 2048",
            "`kernel.args` adds 3019 bytes",
        ],
    );
}

#[test]
fn os_must_match_the_roots_os_release() {
    if !have_inputs("amd64") {
        return;
    }
    // build/rootfs-* says ID=strata, VERSION_ID=1.0.0.
    refused(
        &base_profile().replace("  version: 1.0.0", "  version: 9.9.9"),
        2,
        &[
            "os.version",
            "`os.version: 9.9.9`",
            "/etc/os-release says VERSION_ID=1.0.0",
        ],
    );
    refused(
        &base_profile().replace("  id: strata", "  id: flatcar"),
        2,
        &["os.id", "ID=strata", "set `os.id: strata`"],
    );
}

#[test]
fn a_sysext_over_a_root_without_os_release_is_refused() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/bin")).unwrap();
    // The os-release check comes before the image is read: any file will do.
    let raw = dir.path().join("tools.raw");
    std::fs::write(&raw, b"").unwrap();
    let p = base_profile()
        .replace(
            &repo().join("build/rootfs-${arch}").display().to_string(),
            &dir.path().join("root").display().to_string(),
        )
        .replace(
            &format!(
                "  - dir: {}/motd\n",
                repo().join("examples/extensions").display()
            ),
            &format!("  - sysext: {}\n", raw.display()),
        );
    refused(
        &p,
        2,
        &[
            "rootfs.dir",
            "has no os-release",
            "add /usr/lib/os-release",
            "ID=strata",
        ],
    );
}

#[test]
fn an_output_directory_inside_an_input_tree_is_refused() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "ID=strata\nVERSION_ID=1.0.0\n").unwrap();
    let p = base_profile().replace(
        &repo().join("build/rootfs-${arch}").display().to_string(),
        &root.display().to_string(),
    );
    let (code, err, _tmp) = run_with_out(&p, &format!("{}/out/x", root.display()));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("rootfs.dir: the output directory"), "{err}");
    assert!(
        err.contains(&format!("is inside {}", root.display())),
        "{err}"
    );
    assert!(
        !root.join("out").exists(),
        "the output directory was created"
    );
}

#[test]
fn the_hosts_root_is_never_walked() {
    if !have_inputs("amd64") {
        return;
    }
    let p = base_profile().replace(
        &repo().join("build/rootfs-${arch}").display().to_string(),
        "/",
    );
    let t = std::time::Instant::now();
    refused(
        &p,
        2,
        &[
            "rootfs.dir",
            "the host's root directory",
            "never a running system's root",
        ],
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

/// The kernel is unpacked while the images are written: a package whose data is corrupt
/// past its control part (the plan reads only that) fails in the kernel step with the same
/// error as when the steps ran one after the other, while image sub-steps had started; every
/// step that started ends, the kernel cache keeps no partial entry, the work directory is
/// gone, no output is written, and what the images stored in the step cache is whole.
#[test]
fn a_corrupt_kernel_package_fails_while_the_images_are_written_and_leaves_nothing_half_done() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("linux-image-amd64.deb");
    let mut bytes = std::fs::read(kernel_deb("amd64")).unwrap();
    // data.tar.xz fills most of the package: flip bytes well inside it.
    let at = bytes.len() * 6 / 10;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&deb, &bytes).unwrap();
    let p = base_profile().replace(
        &kernel_deb("${arch}").display().to_string(),
        &deb.display().to_string(),
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, p).unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let args = [
        "build",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let o = strata(&args, &cache);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        "kernel.deb: cannot load the kernel",
        "lzma data error",
        "fix: give a Debian linux-image-* package",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    assert!(
        !err.contains("squashfs"),
        "the kernel's error, not another:\n{err}"
    );

    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let at = |event: &str, step: &str| {
        events
            .iter()
            .position(|e| e["event"] == event && e["step"] == step)
    };
    let kernel_failed = at("failed", "kernel").expect("the kernel step failed");
    let image_started = events.iter().position(|e| {
        e["event"] == "started" && e["step"].as_str().unwrap().starts_with("squashfs/")
    });
    assert!(
        image_started.is_some_and(|i| i < kernel_failed),
        "no image was being written while the kernel was unpacked"
    );
    for e in events.iter().filter(|e| e["event"] == "started") {
        let step = e["step"].as_str().unwrap();
        let ends = events
            .iter()
            .filter(|x| {
                x["step"] == step
                    && ["finished", "cached", "failed"].contains(&x["event"].as_str().unwrap())
            })
            .count();
        assert_eq!(ends, 1, "{step} started and ended {ends} times");
    }
    assert!(!out.exists(), "output directory created");
    assert_eq!(
        names_in(&cache.join("kernels"), ""),
        Vec::<String>::new(),
        "kernel cache"
    );
    assert_eq!(
        names_in(&cache.join("tmp"), ""),
        Vec::<String>::new(),
        "work directory"
    );
    assert_cache_verifies_clean(&cache);
}
