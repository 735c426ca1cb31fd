//! `strata ext validate` from the command line: clean extensions pass,
//! real upstream metadata and hand-made malformed extensions get the findings
//! a careful reader expects, and any error makes the exit code non-zero.

use strata_tests::*;

fn validate(args: &[&str]) -> (i32, String) {
    let mut all = vec!["ext", "validate"];
    all.extend_from_slice(args);
    let o = strata(&all, &shared_cache());
    assert!(strata_bin().exists());
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn the_demo_extensions_are_clean() {
    if !require_input(&strata_bin()) {
        return;
    }
    let (code, out) = validate(&[
        "--os-version",
        "1.11.0",
        "--arch",
        "amd64",
        "examples/extensions/hello",
        "examples/extensions/motd",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 extensions, 0 errors"), "{out}");
}

#[test]
fn upstream_metadata_gets_the_expected_findings() {
    if !require_input(&strata_bin()) {
        return;
    }
    let c = corpus_dir();
    let talos = c.join("talos-extensions");
    let mdadm = talos.join("_historical/mdadm@caf79383");
    let zfs = talos.join("zfs");
    let docker_arm64 = c.join("sysext/_variants/docker-arm64");
    let (code, out) = validate(&[
        "--os-version",
        "1.11.0",
        "--os-id",
        "flatcar",
        "--arch",
        "amd64",
        mdadm.to_str().unwrap(),
        zfs.to_str().unwrap(),
        docker_arm64.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("talos.metadata-type"),
        "mdadm's `version: 4.2` float:\n{out}"
    );
    assert!(
        out.contains("talos.template-placeholder"),
        "unrendered {{{{ .VERSION }}}}:\n{out}"
    );
    assert!(
        out.contains("sysext.architecture"),
        "arm64 sysext on amd64:\n{out}"
    );
}

#[test]
fn malformed_extensions_are_refused_with_the_rule_named() {
    if !require_input(&strata_bin()) {
        return;
    }
    let f = repo().join("tests/fixtures/extensions/talos");
    let (code, out) = validate(&[
        "--os-version",
        "1.11.0",
        "--arch",
        "amd64",
        f.join("path-escape").to_str().unwrap(),
        f.join("bad-manifest").to_str().unwrap(),
        f.join("wrong-arch").to_str().unwrap(),
        f.join("bad-services").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    for rule in ["talos.allowed-path", "service.restart"] {
        assert!(out.contains(rule), "{rule} missing:\n{out}");
    }
    assert!(out.contains("arm64"), "wrong-arch ELF not named:\n{out}");
}

/// Runs `strata ext validate` with a deadline: a validator that blocks (on a FIFO, say) fails
/// the test instead of hanging it.
fn validate_within(args: &[&str], secs: u64) -> (i32, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(strata_bin())
        .args(["ext", "validate"])
        .args(args)
        .current_dir(repo())
        .env("STRATA_CACHE", shared_cache())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strata");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > secs {
            let _ = child.kill();
            panic!("strata ext validate {args:?} still runs after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn arch_alone_judges_architecture_and_unrun_checks_are_named() {
    if !require_input(&strata_bin()) {
        return;
    }
    let arm64 = corpus_dir().join("sysext/_variants/docker-arm64");
    let (code, out, err) = validate_within(&["--arch", "amd64", arm64.to_str().unwrap()], 30);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("sysext.architecture"), "{out}");
    // hello needs Talos >= 1.0.0; without --os-version that is not checked, and said so.
    let (code, out, err) = validate_within(&["--arch", "amd64", "examples/extensions/hello"], 30);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("not checked") && out.contains("--os-version"),
        "{out}"
    );
    assert!(!out.contains("passed every check"), "{out}");
}

/// A tar archive of `(name, contents)` regular files, written by hand so that the test can
/// put names in it that tar tools refuse to write (`../x`).
fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let field = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        field(&mut h, 100, 8, 0o644);
        field(&mut h, 108, 8, 0);
        field(&mut h, 116, 8, 0);
        field(&mut h, 124, 12, data.len() as u64);
        field(&mut h, 136, 12, 1_700_000_000);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn sha256(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blob");
    std::fs::write(&f, data).unwrap();
    judge("sha256sum", &[f.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A `docker save` archive of one image whose only layer is `layer`.
fn docker_archive(layer: &[u8]) -> Vec<u8> {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{}\"]}}}}",
        sha256(layer)
    );
    let config_name = format!("{}.json", sha256(config.as_bytes()));
    let manifest = format!(
        "[{{\"Config\":\"{config_name}\",\"RepoTags\":[\"ext/evil:1\"],\"Layers\":[\"l/layer.tar\"]}}]"
    );
    tar(&[
        ("manifest.json", manifest.as_bytes()),
        (&config_name, config.as_bytes()),
        ("l/layer.tar", layer),
    ])
}

#[test]
fn every_source_the_build_takes_is_validated_with_the_builds_refusals() {
    if !require_input(&strata_bin()) || !require_tool("sha256sum") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let manifest = std::fs::read(repo().join("examples/extensions/hello/manifest.yaml")).unwrap();
    let tool: &[u8] = b"#!/bin/sh\necho hi\n";
    // A clean image, as an OCI layout made by `ext pack` and as a docker archive.
    let layout = work.path().join("layout");
    let o = strata(
        &[
            "ext",
            "pack",
            "examples/extensions/hello",
            "--oci-layout",
            layout.to_str().unwrap(),
        ],
        &shared_cache(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let clean = work.path().join("clean.tar");
    std::fs::write(
        &clean,
        docker_archive(&tar(&[
            ("manifest.yaml", &manifest),
            ("rootfs/usr/local/bin/hello", tool),
        ])),
    )
    .unwrap();
    // A hostile one: a layer entry escaping the root, which the build refuses.
    let evil = work.path().join("evil.tar");
    std::fs::write(
        &evil,
        docker_archive(&tar(&[
            ("manifest.yaml", &manifest),
            ("rootfs/usr/local/bin/hello", tool),
            ("../../etc/cron.d/evil", b"* * * * * root sh\n"),
        ])),
    )
    .unwrap();
    let args = |paths: &[&std::path::Path]| -> Vec<String> {
        let mut a: Vec<String> = ["--arch", "amd64", "--os-version", "1.11.0"]
            .map(String::from)
            .to_vec();
        a.extend(paths.iter().map(|p| p.display().to_string()));
        a
    };
    let a = args(&[&layout, &clean]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, err) = validate_within(&a, 60);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 extensions, 0 errors"), "{out}");
    let a = args(&[&evil]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, out, err) = validate_within(&a, 60);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("source.unpack") && out.contains("escapes the root"),
        "{out}"
    );
}

#[test]
fn hostile_names_and_special_files_cannot_fool_or_hang_validate() {
    if !require_input(&strata_bin()) || !require_tool("mkfifo") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("extension-release.x");
    judge("mkfifo", &[fifo.to_str().unwrap()]);
    let (code, out, err) = validate_within(&[fifo.to_str().unwrap()], 20);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("FIFO"), "{err}");
    let link = work.path().join("extension-release.y");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let (code, _, err) = validate_within(&[link.to_str().unwrap()], 20);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("symlink"), "{err}");
    // A sysext whose top-level names try to forge an `ok` row and clear the screen.
    let ext = work.path().join("forge");
    let rel = ext.join("usr/lib/extension-release.d");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::write(
        rel.join("extension-release.forge"),
        "ID=_any\nARCHITECTURE=x86-64\n",
    )
    .unwrap();
    std::fs::write(
        ext.join("x\nforge  ok  -  -  sysext extension passed every check"),
        "",
    )
    .unwrap();
    std::fs::write(ext.join("y\u{1b}[2J"), "").unwrap();
    let (code, out, err) = validate_within(&["--arch", "amd64", ext.to_str().unwrap()], 20);
    assert_eq!(code, 0, "warnings only: {out}{err}");
    assert!(
        !out.contains('\u{1b}'),
        "an escape sequence reached the terminal: {out:?}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("forge  ok")),
        "a file name forged a row: {out}"
    );
    assert!(out.contains("x\\nforge"), "{out}");
}
