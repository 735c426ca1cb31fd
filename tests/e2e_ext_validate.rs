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
