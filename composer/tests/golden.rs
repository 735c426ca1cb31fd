//! Golden tests: for every profile in `profiles/` and `tests/profiles/`,
//! each architecture and each of its platforms, the resolved plan, the
//! kernel command line, the BLS entry and `extensions.yaml` are compared
//! with the files in `tests/golden/`. `STRATA_BLESS=1` rewrites them.
//!
//! Inputs are those of the profiles (`make kernel rootfs` for both
//! architectures); a missing input fails the test with the command that
//! makes it. The kernel release, read from the stable
//! `.cache/debian/linux-image-<arch>.deb`, is written as `<release>`, the
//! system's systemd-boot path as `<bootloader>`, so the goldens hold no
//! machine-specific text and survive a Debian kernel update.

use std::path::{Path, PathBuf};
use strata::plan::{self, Options};
use strata::Arch;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profiles() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["profiles", "tests/profiles"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        out.extend(
            files
                .into_iter()
                .map(|f| Path::new("..").join(dir).join(f.file_name().unwrap())),
        );
    }
    out
}

/// Compares `text` with the golden file `name`, or rewrites it when blessing.
fn check(name: &str, text: &str, failures: &mut Vec<String>) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("STRATA_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if want != text {
        failures.push(format!(
            "{name} differs (STRATA_BLESS=1 rewrites it):\n{}",
            diff(&want, text)
        ));
    }
}

/// A line diff: `-` golden, `+` now, with the line number.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i), g.get(i));
        if a != b {
            if let Some(a) = a {
                out.push_str(&format!("{:>4} - {a}\n", i + 1));
            }
            if let Some(b) = b {
                out.push_str(&format!("{:>4} + {b}\n", i + 1));
            }
        }
    }
    out
}

#[test]
fn plans_command_lines_boot_entries_and_extensions_yaml_match_the_goldens() {
    // Relative paths in, relative paths out: run from the crate directory.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for profile in profiles() {
        let stem = profile.file_stem().unwrap().to_string_lossy().into_owned();
        for arch in Arch::ALL {
            let deb = repo().join(format!(".cache/debian/linux-image-{arch}.deb"));
            let root = repo().join(format!("build/rootfs-{arch}"));
            assert!(
                deb.is_file() && root.is_dir(),
                "the golden tests need {} and {}: run `make kernel rootfs ARCH={arch}`",
                deb.display(),
                root.display()
            );
            let init = Path::new("..").join(format!("build/rootfs-{arch}/bin/busybox"));
            let opts = Options {
                profile: profile.clone(),
                arch: Some(arch),
                init: Some(init),
                source_date_epoch: Some(1_700_000_000),
                dry_run: true,
                ..Default::default()
            };
            let plan = plan::plan(&opts, &mut |_| {}).unwrap_or_else(|e| {
                panic!(
                    "{}: {}",
                    profile.display(),
                    e.chain().join("\n  caused by: ")
                )
            });
            let clean = |s: String| {
                s.replace(&plan.kernel.release, "<release>")
                    .replace(&plan.bootloader.display().to_string(), "<bootloader>")
            };
            let base = format!("{stem}-{arch}");
            let json = serde_json::to_string_pretty(&plan.dump()).unwrap() + "\n";
            check(&format!("{base}.plan.json"), &clean(json), &mut failures);
            seen.insert(format!("{base}.plan.json"));
            let layers = strata::assets::layers::layer_list(
                &plan,
                (!plan.ext_modules.is_empty()).then_some(plan.kernel.release.as_str()),
                Path::new("work"),
            )
            .unwrap();
            let yaml = strata::assets::guest_files::layers_yaml(&layers).unwrap();
            check(
                &format!("{base}.extensions.yaml"),
                &clean(yaml),
                &mut failures,
            );
            seen.insert(format!("{base}.extensions.yaml"));
            for (i, pp) in plan.platforms.iter().enumerate() {
                let name = format!("{base}-{}", pp.platform.name);
                check(
                    &format!("{name}.cmdline"),
                    &clean(pp.cmdline.clone() + "\n"),
                    &mut failures,
                );
                check(
                    &format!("{name}.bls.conf"),
                    &clean(plan.bls_entry(i)),
                    &mut failures,
                );
                seen.insert(format!("{name}.cmdline"));
                seen.insert(format!("{name}.bls.conf"));
            }
        }
    }
    // A golden no profile produces any more is stale.
    for e in std::fs::read_dir(repo().join("tests/golden")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let manifest =
            name == "default-amd64.manifest.json" || name == "default-arm64.manifest.json";
        if !seen.contains(&name) && !manifest && name != "README.md" {
            failures.push(format!(
                "tests/golden/{name} belongs to no profile any more: delete it"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Replaces what depends on the exact kernel package or this machine in a
/// manifest: digests and sizes become `<sha256>` and `<size>`.
fn clean_manifest(text: &str, release: &str, bootloader: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    for b in v["builds"].as_array_mut().unwrap() {
        b["kernel_release"] = "<release>".into();
        for i in b["inputs"].as_array_mut().unwrap() {
            i["sha256"] = "<sha256>".into();
            if i["source"] == bootloader {
                i["source"] = "<bootloader>".into();
            }
        }
        for o in b["outputs"].as_array_mut().unwrap() {
            o["sha256"] = "<sha256>".into();
            o["size"] = "<size>".into();
        }
    }
    (serde_json::to_string_pretty(&v).unwrap() + "\n").replace(release, "<release>")
}

#[test]
fn manifests_of_the_default_profile_match_the_goldens() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let mut failures = Vec::new();
    for arch in Arch::ALL {
        let init = Path::new("..").join(format!("build/rootfs-{arch}/bin/busybox"));
        assert!(
            init.is_file(),
            "the golden tests need {}: run `make rootfs ARCH={arch}`",
            init.display()
        );
        let out = tempfile::tempdir().unwrap();
        let opts = strata::build::BuildOptions {
            profile: "../profiles/default.yaml".into(),
            out_dir: Some(out.path().join("out")),
            // Shared by runs: the kernel is unpacked once.
            cache_dir: Some(repo().join("target/golden-cache")),
            arch: Some(arch),
            init: Some(init),
            offline: true,
            source_date_epoch: Some(1_700_000_000),
            no_cache: false,
            dry_run: false,
        };
        let report = strata::build::build(&opts, &())
            .unwrap_or_else(|e| panic!("{}", e.chain().join("\n  caused by: ")));
        let text = std::fs::read_to_string(report.out_dir.join("manifest.json")).unwrap();
        let b = &report.manifest.builds[0];
        let bootloader = &b
            .inputs
            .iter()
            .find(|i| i.role == "bootloader")
            .unwrap()
            .source;
        check(
            &format!("default-{arch}.manifest.json"),
            &clean_manifest(&text, &b.kernel_release, bootloader),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
