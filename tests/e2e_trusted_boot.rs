//! Trusted boot, end to end: the default profile with `secure_boot:` signed
//! by Debian's snakeoil test key (the key OVMF_VARS_4M.snakeoil.fd enrols),
//! judged by sbverify and osslsigncode on every EFI binary of the ESP, then
//! booted under the snakeoil Secure Boot firmware; and the same image signed
//! with a key that firmware does not know, which must not reach the guest;
//! and arm64 under AAVMF's snakeoil Secure Boot build; and enrolment: an
//! image signed with a fresh key and `enroll: true`, booted in setup mode,
//! enrols its key and comes back up under Secure Boot.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use strata_tests::*;

const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

/// profiles/default.yaml with its relative paths made absolute and `extra`
/// appended, written to `dir`.
fn profile(dir: &Path, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("profiles/default.yaml")).unwrap();
    let text = text.replace("../", &format!("{}/", repo().display()));
    let path = dir.join("signed.yaml");
    std::fs::write(&path, format!("{text}{extra}")).unwrap();
    path
}

fn secure_boot(key: &str, cert: &str) -> String {
    format!("secure_boot:\n  key: {key}\n  cert: {cert}\n  passphrase_env: STRATA_TEST_SB_PASS\n")
}

/// Builds `profile` into `out` with the snakeoil passphrase in the environment.
fn build(profile: &Path, out: &Path) -> std::process::Output {
    std::process::Command::new(strata_bin())
        .args([
            "build",
            profile.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(repo())
        .env("STRATA_CACHE", shared_cache())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("STRATA_TEST_SB_PASS", "snakeoil")
        .output()
        .expect("run strata")
}

/// The ESP of `raw`, copied out.
fn esp_of(raw: &Path, dir: &Path) -> PathBuf {
    let esp = dir.join("esp.img");
    let (off, len) = partition_range(raw, 1);
    extract(raw, off, len, &esp);
    esp
}

/// The default profile signed with the snakeoil key, built once for the tests here.
fn signed() -> Option<&'static PathBuf> {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    if !have_inputs("amd64") || !require_input(Path::new(SNAKEOIL_KEY)) {
        return None;
    }
    Some(OUT.get_or_init(|| {
        let out = repo().join("target/e2e/trusted-signed");
        let _ = std::fs::remove_dir_all(&out);
        let work = tempfile::tempdir().unwrap();
        let p = profile(work.path(), &secure_boot(SNAKEOIL_KEY, SNAKEOIL_CERT));
        let o = build(&p, &out);
        assert!(o.status.success(), "build failed: {}", text(&o));
        out
    }))
}

#[test]
fn every_efi_binary_on_a_signed_esp_verifies_with_the_snakeoil_cert() {
    if !require_tool("sbverify") || !require_tool("osslsigncode") || !require_tool("mcopy") {
        return;
    }
    let Some(out) = signed() else { return };
    let work = tempfile::tempdir().unwrap();
    let esp = esp_of(&out.join("metal-amd64.raw"), work.path());
    let esp_s = esp.to_str().unwrap();
    let listing = judge("mdir", &["-i", esp_s, "-/", "-b", "::/"]);
    let efis: Vec<&str> = listing
        .lines()
        .filter(|l| l.to_ascii_lowercase().ends_with(".efi"))
        .collect();
    assert_eq!(efis.len(), 2, "systemd-boot and the UKI: {listing}");
    for efi in efis {
        let local = work.path().join("x.efi");
        let _ = std::fs::remove_file(&local);
        judge("mcopy", &["-i", esp_s, efi, local.to_str().unwrap()]);
        let v = judge(
            "sbverify",
            &["--cert", SNAKEOIL_CERT, local.to_str().unwrap()],
        );
        assert!(v.contains("Signature verification OK"), "{efi}: {v}");
        judge(
            "osslsigncode",
            &[
                "verify",
                "-in",
                local.to_str().unwrap(),
                "-CAfile",
                SNAKEOIL_CERT,
            ],
        );
    }
    let conf = judge("mtype", &["-i", esp_s, "::/loader/loader.conf"]);
    assert!(conf.contains("default default.efi"), "{conf}");
    let uki = work.path().join("uki.efi");
    judge(
        "mcopy",
        &[
            "-i",
            esp_s,
            "::/EFI/Linux/default.efi",
            uki.to_str().unwrap(),
        ],
    );
    let sections = judge("objdump", &["-h", uki.to_str().unwrap()]);
    for s in [".osrel", ".cmdline", ".uname", ".sbat", ".linux", ".initrd"] {
        assert!(sections.contains(s), "{s} missing: {sections}");
    }
    assert!(
        !listing.contains("vmlinuz"),
        "the kernel is inside the UKI: {listing}"
    );
}

#[test]
fn a_certificate_of_another_key_is_refused_naming_the_field() {
    if !have_inputs("amd64") || !require_input(Path::new(SNAKEOIL_KEY)) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (other, _) = fresh_key(work.path());
    let p = profile(
        work.path(),
        &secure_boot(other.to_str().unwrap(), SNAKEOIL_CERT),
    );
    let out = work.path().join("out");
    let o = build(&p, &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("secure_boot.cert") && err.contains("does not hold the public key"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written for a refused profile");
}

#[test]
fn the_signed_image_boots_under_the_snakeoil_firmware_and_reports_secure_boot_on() {
    let Some(out) = signed() else { return };
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["builds"][0]["secure_boot"], true, "{m}");
    let r = boot_passes(&out.join("metal-amd64.raw"), &[], &shared_cache());
    assert_eq!(event(&r, "secure_boot")["enabled"], true, "{r}");
}

#[test]
fn an_image_signed_with_a_key_the_firmware_does_not_know_does_not_reach_the_guest() {
    if !have_inputs("amd64") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (key, cert) = fresh_key(work.path());
    let p = profile(
        work.path(),
        &secure_boot(key.to_str().unwrap(), cert.to_str().unwrap()),
    );
    let out = repo().join("target/e2e/trusted-stranger");
    let _ = std::fs::remove_dir_all(&out);
    let o = build(&p, &out);
    assert!(o.status.success(), "build failed: {}", text(&o));
    let raw = out.join("metal-amd64.raw");
    // The firmware refuses systemd-boot at once; the timeout only bounds the wait.
    let o = strata(
        &["boot", "--json", "--timeout", "240", raw.to_str().unwrap()],
        &shared_cache(),
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON from the boot: {}", text(&o)));
    assert!(!o.status.success() && r["pass"] == false, "{r}");
    let serial = std::fs::read_to_string(out.join("metal-amd64.raw.boot/serial.log")).unwrap();
    assert!(
        !serial.contains("STRATA {"),
        "the guest must not run:\n{serial}"
    );
    assert!(
        serial.contains("Access Denied"),
        "the firmware says why:\n{serial}"
    );
}

/// A fresh self-signed key and certificate in `dir`, unknown to every firmware.
fn fresh_key(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
    judge(
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=unknown to the firmware",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    (key, cert)
}

/// Setup mode: the Secure Boot firmware with an empty variable store. systemd-boot
/// enrols the image's own key (`enroll: true`) and resets; after the reset the
/// firmware checks systemd-boot and the UKI against that key and the guest reports
/// Secure Boot on. One boot (two firmware starts, a few seconds more than a plain one).
#[test]
fn a_key_enrolled_in_setup_mode_boots_with_secure_boot_on() {
    if !have_inputs("amd64") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (key, cert) = fresh_key(work.path());
    let enroll = format!(
        "{}  enroll: true\n",
        secure_boot(key.to_str().unwrap(), cert.to_str().unwrap())
    );
    let p = profile(work.path(), &enroll);
    let out = repo().join("target/e2e/trusted-enrol");
    let _ = std::fs::remove_dir_all(&out);
    let o = build(&p, &out);
    assert!(o.status.success(), "build failed: {}", text(&o));
    let raw = out.join("metal-amd64.raw");
    let r = boot_passes(&raw, &["--setup-mode"], &shared_cache());
    assert_eq!(event(&r, "secure_boot")["enabled"], true, "{r}");
    assert_eq!(r["guest_resets"], 1, "systemd-boot resets once: {r}");
    let vars = out.join("metal-amd64.raw.boot/OVMF_VARS_4M.fd");
    assert!(vars.is_file(), "the run's copy of the empty store");
    let serial = std::fs::read_to_string(out.join("metal-amd64.raw.boot/serial.log")).unwrap();
    let enrolled = serial
        .find("Enrolling secure boot keys from directory")
        .unwrap_or_else(|| panic!("systemd-boot did not enrol:\n{serial}"));
    let reported = serial.find("STRATA {").expect("the guest reported");
    assert!(
        enrolled < reported,
        "the guest ran before the keys were enrolled:\n{serial}"
    );
}

/// arm64 under AAVMF's snakeoil Secure Boot build (about 20 s under TCG on an idle machine).
#[test]
fn the_signed_image_boots_on_arm64_with_secure_boot_on() {
    if !have_inputs("arm64") || !require_input(Path::new(SNAKEOIL_KEY)) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let p = profile(work.path(), &secure_boot(SNAKEOIL_KEY, SNAKEOIL_CERT));
    let out = repo().join("target/e2e/trusted-signed-arm64");
    let _ = std::fs::remove_dir_all(&out);
    let o = std::process::Command::new(strata_bin())
        .args([
            "build",
            p.to_str().unwrap(),
            "--arch",
            "arm64",
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(repo())
        .env("STRATA_CACHE", shared_cache())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("STRATA_TEST_SB_PASS", "snakeoil")
        .output()
        .expect("run strata");
    assert!(o.status.success(), "build failed: {}", text(&o));
    let r = boot_passes(&out.join("metal-arm64.raw"), &[], &shared_cache());
    assert_eq!(event(&r, "secure_boot")["enabled"], true, "{r}");
}

/// `pcr:` needs a UKI: with `uki: false` it is refused naming `uki`; an
/// encrypted PCR key without `pcr.passphrase_env` is refused naming that
/// field, before anything is written.
#[test]
fn pcr_errors_name_the_field_to_fix() {
    if !have_inputs("amd64") || !require_input(Path::new(SNAKEOIL_KEY)) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cases = [
        (
            format!(
                "uki: false\npcr:\n  key: {SNAKEOIL_KEY}\n  passphrase_env: STRATA_TEST_SB_PASS\n"
            ),
            "`pcr` need a unified kernel image",
        ),
        (
            format!("pcr:\n  key: {SNAKEOIL_KEY}\n"),
            "pcr.passphrase_env",
        ),
    ];
    for (extra, want) in cases {
        let p = profile(work.path(), &extra);
        let out = work.path().join("out");
        let o = build(&p, &out);
        assert_eq!(o.status.code(), Some(2), "{extra}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{extra}: {err}");
        assert!(!out.exists(), "nothing is written for a refused profile");
    }
}

/// `strata build` of `profile` into `dir/<out>` with the private `cache` (and the snakeoil
/// passphrase), plus `extra` flags; returns the output directory and the progress text.
fn build_cached(
    profile: &Path,
    dir: &Path,
    out: &str,
    cache: &Path,
    extra: &[&str],
) -> (PathBuf, String) {
    let out = dir.join(out);
    let o = std::process::Command::new(strata_bin())
        .args([
            "build",
            profile.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .current_dir(repo())
        .env("STRATA_CACHE", cache)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("STRATA_TEST_SB_PASS", "snakeoil")
        .output()
        .expect("run strata");
    assert!(o.status.success(), "{}", text(&o));
    (out, String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Whether the build's progress says the metal UKI came from the cache (it must say
/// something about it either way).
fn uki_cached(progress: &str) -> bool {
    let line = progress
        .lines()
        .find(|l| l.contains("uki-metal:"))
        .unwrap_or_else(|| panic!("no UKI line in the progress: {progress}"));
    line.ends_with("(cached)")
}

/// The UKI is a step-cache entry: a no-op rebuild of a signed profile with a PCR key
/// finds it (no assembling, no signing), with the same PCR 11 prediction in manifest.json;
/// another command line or another Secure Boot key misses it; every output equals a
/// `--no-cache` build's byte for byte. No boot.
#[test]
fn the_uki_is_cached_and_a_new_cmdline_or_key_misses() {
    if !have_inputs("amd64") || !require_input(Path::new(SNAKEOIL_KEY)) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (dir, cache) = (work.path(), work.path().join("cache"));
    let pcr = format!("pcr:\n  key: {SNAKEOIL_KEY}\n  passphrase_env: STRATA_TEST_SB_PASS\n");
    let signed = format!(
        "uki: true\n{}{pcr}",
        secure_boot(SNAKEOIL_KEY, SNAKEOIL_CERT)
    );
    let p = profile(dir, &signed);
    let (first, made) = build_cached(&p, dir, "first", &cache, &[]);
    assert!(!uki_cached(&made), "{made}");
    let (again, hit) = build_cached(&p, dir, "again", &cache, &[]);
    assert!(
        uki_cached(&hit),
        "a no-op rebuild made the UKI again: {hit}"
    );
    let (plain, _) = build_cached(&p, dir, "plain", &cache, &["--no-cache"]);
    let files = |d: &Path| dir_files(d);
    assert!(files(&first) == files(&plain), "cold cache vs --no-cache");
    assert!(files(&again) == files(&plain), "warm cache vs --no-cache");
    let manifest = std::fs::read_to_string(again.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"pcr11\""), "{manifest}");

    // Another command line: `kernel.args` in the profile.
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, text.replace("kernel:\n", "kernel:\n  args: [quiet]\n")).unwrap();
    let (_, args) = build_cached(&p, dir, "args", &cache, &[]);
    assert!(
        !uki_cached(&args),
        "a new command line hit the old UKI: {args}"
    );

    // Another signing key and certificate, the command line as at first.
    let (key, cert) = fresh_key(dir);
    let other = format!(
        "uki: true\n{}{pcr}",
        secure_boot(key.to_str().unwrap(), cert.to_str().unwrap())
    );
    let p = profile(dir, &other);
    let (_, rekeyed) = build_cached(&p, dir, "rekeyed", &cache, &[]);
    assert!(
        !uki_cached(&rekeyed),
        "another key hit the old UKI: {rekeyed}"
    );
}
