//! Faults during a build and damaged inputs: signals (SIGINT, SIGTERM clean up at once;
//! after SIGKILL the next build sweeps), a full disk, a corrupt prebuilt squashfs and a
//! truncated artefact given to `strata boot`. Each ends with a clear error naming its cause,
//! a non-zero exit, and nothing left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_tests::*;

/// The default profile with absolute paths; `raw` only, so a build is short.
fn profile() -> String {
    let r = repo();
    format!(
        "name: faults\narch: amd64\nplatform: metal\noutputs: [raw]\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: {k}\nrootfs:\n  dir: {root}\nextensions:\n  - dir: {e}/hello\n  - dir: {e}/motd\n",
        k = debian_cache().join("linux-image-${arch}.deb").display(),
        root = r.join("build/rootfs-${arch}").display(),
        e = r.join("examples/extensions").display(),
    )
}

/// A build without the step cache: a cached build would end before the point the test
/// interrupts (a killed build with the cache on is in e2e_cache.rs).
fn start(profile: &Path, out: &Path, cache: &Path) -> Child {
    Command::new(strata_bin())
        .args(["build", "--no-cache", profile.to_str().unwrap(), "--out"])
        .arg(out)
        .current_dir(repo())
        .env("STRATA_CACHE", cache)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strata")
}

/// Names in `dir` that hold `-<pid>-` (strata's temporaries of that process).
fn temps_of(dir: &Path, pid: u32) -> Vec<String> {
    let mark = format!("-{pid}-");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&mark))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `ready` holds for the running build, then sends `signal`; returns the exit
/// code and stderr.
fn interrupt(child: Child, signal: i32, ready: impl Fn(u32) -> bool) -> (Option<i32>, String) {
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready(pid) {
        assert!(
            Instant::now() < deadline,
            "the build never reached the point to interrupt"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ok = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// One clean build, then builds stopped by SIGINT and SIGTERM (temporaries gone at once, exit
/// 130 and 143) and by SIGKILL (temporaries left), then a build that sweeps the dead one's
/// temporaries and gives the clean build's bytes. Finally `strata boot` refuses the clean
/// artefact once truncated, before QEMU.
#[test]
fn signals_leave_no_temporary_files_and_the_next_build_is_identical() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, profile()).unwrap();
    // A private cache holding the shared kernel unpack would still unpack again; the shared
    // cache is used, and only this test's own pids are looked for in it.
    let cache = shared_cache();
    let tmp = cache.join("tmp");

    let clean = dir.path().join("clean");
    let o = start(&p, &clean, &cache).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    for (signal, code) in [(2, 130), (15, 143)] {
        let out = dir.path().join(format!("sig{signal}"));
        let child = start(&p, &out, &cache);
        let pid = child.id();
        let (got, err) = interrupt(child, signal, |pid| {
            temps_of(&tmp, pid).iter().any(|n| n.starts_with("build-"))
        });
        assert_eq!(got, Some(code), "signal {signal}:\n{err}");
        assert!(err.contains("temporary files removed"), "{err}");
        assert_eq!(temps_of(&tmp, pid), Vec::<String>::new(), "signal {signal}");
        assert!(!out.exists(), "signal {signal}: {} left", out.display());
    }

    // SIGKILL while an output is being written: its temporary stays behind...
    let out = dir.path().join("killed");
    let child = start(&p, &out, &cache);
    let pid = child.id();
    let (got, _) = interrupt(child, 9, |pid| !temps_of(&out, pid).is_empty());
    assert_eq!(got, None, "SIGKILL ends the process without an exit code");
    assert!(!temps_of(&out, pid).is_empty());
    // ... until the next build into the same directory, which gives the clean build's bytes.
    let o = start(&p, &out, &cache).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        temps_of(&out, pid),
        Vec::<String>::new(),
        "stale output temporaries"
    );
    assert_eq!(
        temps_of(&tmp, pid),
        Vec::<String>::new(),
        "stale cache temporaries"
    );
    let (a, b) = (dir_files(&clean), dir_files(&out));
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(a == b, "the build after a SIGKILL differs from a clean one");

    boot_refuses_a_truncated_artefact(&out);
}

fn boot_refuses_a_truncated_artefact(out: &Path) {
    let art = out.join("metal-amd64.raw");
    let len = std::fs::metadata(&art).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&art)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = strata(
        &["boot", art.to_str().unwrap(), "--timeout", "5"],
        &shared_cache(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(err.contains("metal-amd64.raw"), "{err}");
    assert!(
        err.contains("does not match manifest.json: its size is"),
        "{err}"
    );
    assert!(err.contains("--no-verify"), "{err}");
    let work: PathBuf = out.join("metal-amd64.raw.boot");
    assert!(!work.exists(), "boot went on to prepare QEMU");
}

/// A cache on a full disk: the error names the disk's cause and the cache, exit 4, and does
/// not blame the kernel package.
#[test]
fn a_full_disk_names_its_cause() {
    if !have_inputs("amd64") || !require_tool("mount") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success();
    if !mounted {
        assert!(
            !e2e_required(),
            "cannot mount a tmpfs (needs root) for the full-disk test"
        );
        eprintln!("SKIPPED a_full_disk_names_its_cause: cannot mount a tmpfs (not root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&small);
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, profile()).unwrap();
    let cache = small.join("cache");
    let o = start(&p, &dir.path().join("out"), &cache)
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(cache.to_str().unwrap()), "{err}");
    assert!(
        !err.contains("kernel.deb:"),
        "the kernel package is blamed:\n{err}"
    );
    assert!(!dir.path().join("out").exists());
    let leftover: Vec<String> = std::fs::read_dir(cache.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(leftover, Vec::<String>::new());

    // An output directory on the full disk (the kernel comes from the shared cache): an I/O
    // error naming the artefact being written, not a format limit; nothing left there.
    let out = small.join("out");
    let o = start(&p, &out, &shared_cache()).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(out.to_str().unwrap()), "{err}");
    assert!(err.contains("fix: free space"), "{err}");
    assert!(!out.exists(), "{} left behind", out.display());
}

/// A prebuilt root squashfs with a damaged directory table is refused by the plan.
#[test]
fn a_corrupt_prebuilt_root_squashfs_is_refused_at_plan_time() {
    if !have_inputs("amd64") || !require_tool("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.squashfs");
    let ok = Command::new("mksquashfs")
        .arg(repo().join("build/rootfs-amd64"))
        .arg(&img)
        .args([
            "-comp",
            "zstd",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mksquashfs failed");
    let mut bytes = std::fs::read(&img).unwrap();
    let dir_table = u64::from_le_bytes(bytes[72..80].try_into().unwrap()) as usize;
    for b in &mut bytes[dir_table..dir_table + 32] {
        *b ^= 0x5a;
    }
    std::fs::write(&img, &bytes).unwrap();
    let p = profile().replace(
        &format!("dir: {}", repo().join("build/rootfs-${arch}").display()),
        &format!("squashfs: {}", img.display()),
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, p).unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("cache");
    let o = start(&path, &out, &cache).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rootfs.squashfs: not a usable squashfs image"),
        "{err}"
    );
    assert!(err.contains("root.squashfs"), "{err}");
    assert!(!out.exists(), "output directory created");
}
