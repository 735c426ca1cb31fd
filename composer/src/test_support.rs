//! Where the unit tests find their inputs, and the one way a test may decline to run.
//!
//! A test that needs an external judge (`sgdisk`, `depmod`, …), a Makefile-made input (the
//! Debian packages in `.cache/debian`) or root asks here first. Under `make test`, which sets
//! `STRATA_E2E=1`, a missing prerequisite is a failure naming the package and the fix: a
//! skip there would hide a broken setup and let a judge silently stop judging. In a bare
//! `cargo test` the test prints one `SKIPPED <test>: <why>` line to stderr and returns, so
//! a contributor without the tools still gets a green, honest run.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// True under `make test`, which promises every tool and input (`STRATA_E2E=1`).
pub(crate) fn e2e_required() -> bool {
    std::env::var_os("STRATA_E2E").is_some_and(|v| v == "1")
}

/// The workspace root: inputs are found relative to it, never by an absolute path, so a
/// fresh clone and a git worktree behave alike.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("composer/ has a parent")
        .to_path_buf()
}

/// The Debian package cache `make test-inputs` fills (`scripts/fetch-debs.sh`).
pub(crate) fn debian_cache() -> PathBuf {
    workspace_root().join(".cache/debian")
}

/// Debian's kernel package for `arch` under its stable name: `fetch-debs.sh` links it to
/// whatever kernel release Debian currently ships, so tests read the release from the
/// package instead of pinning one.
pub(crate) fn kernel_deb(arch: &str) -> PathBuf {
    debian_cache().join(format!("linux-image-{arch}.deb"))
}

/// Debian's busybox-static package for `arch` under its stable name.
pub(crate) fn busybox_deb(arch: &str) -> PathBuf {
    debian_cache().join(format!("busybox-static-{arch}.deb"))
}

/// The in-repository corpus of real third-party extension metadata (`tests/corpus`).
pub(crate) fn corpus_dir() -> PathBuf {
    workspace_root().join("tests/corpus")
}

/// The Debian package that ships `tool` (what `make deps` installs).
fn package_of(tool: &str) -> &str {
    match tool {
        "sgdisk" => "gdisk",
        "mkfs.vfat" | "fsck.vfat" => "dosfstools",
        "mcopy" | "mmd" | "mdir" | "mtype" => "mtools",
        "mksquashfs" | "unsquashfs" => "squashfs-tools",
        "mkfs.erofs" | "fsck.erofs" | "dump.erofs" => "erofs-utils",
        "depmod" | "modinfo" | "modprobe" => "kmod",
        "dpkg-deb" => "dpkg",
        "xz" => "xz-utils",
        "qemu-img" => "qemu-utils",
        "xmllint" => "libxml2-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-system-aarch64" => "qemu-system-arm",
        other => other,
    }
}

/// True when `tool` is on `PATH`. Otherwise panics under `STRATA_E2E=1` naming the package
/// to install, or prints `SKIPPED <test>: ...` and returns false.
pub(crate) fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    found
        || decline(
            &format!(
                "{tool} is not installed (Debian package {})",
                package_of(tool)
            ),
            "make deps",
        )
}

/// True when every tool in `tools` is installed (see [`require_tool`]).
pub(crate) fn require_tools(tools: &[&str]) -> bool {
    tools.iter().all(|t| require_tool(t))
}

/// True when the test input `path` exists. Otherwise panics under `STRATA_E2E=1` or prints
/// `SKIPPED <test>: ...` and returns false. The fix is `make test-inputs`.
pub(crate) fn require_input(path: &Path) -> bool {
    path.exists()
        || decline(
            &format!("test input {} is missing", path.display()),
            "make test-inputs",
        )
}

/// True when the test runs as root (chroot, mounts). Otherwise panics under
/// `STRATA_E2E=1` or prints `SKIPPED <test>: ...` and returns false.
pub(crate) fn require_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root || decline(&format!("{what} needs root"), "run the tests as root")
}

/// True when `ok`: for a prerequisite only trying can tell (a mount, a chroot). Otherwise
/// panics under `STRATA_E2E=1` with `why` and `fix`, or prints `SKIPPED <test>: ...`.
pub(crate) fn require(ok: bool, why: &str, fix: &str) -> bool {
    ok || decline(why, fix)
}

/// True under `STRATA_E2E=1`: for tests too slow for every `cargo test` (QEMU boots).
/// Otherwise prints `SKIPPED <test>: ...` and returns false.
pub(crate) fn require_e2e(why: &str) -> bool {
    e2e_required() || decline(why, "make test (STRATA_E2E=1) runs it")
}

/// The one place a test declines: a failure under `STRATA_E2E=1`, one stderr line otherwise.
fn decline(why: &str, fix: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if e2e_required() {
        panic!("STRATA_E2E=1 but {test} cannot run: {why}; fix: {fix}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip must show in every run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why} ({fix})");
    false
}

/// Runs a judge (a real tool the test compares against) and returns its
/// output; a failing judge fails the test with what it printed.
pub(crate) fn judge_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Debian's signed `dummy.ko` inside the test extension `make test-inputs`
/// builds (`build/ext-dummy-amd64`), found whatever the kernel release; a
/// path that does not exist (for [`require_input`] to report) when absent.
pub(crate) fn ext_dummy_module() -> PathBuf {
    let modules = workspace_root().join("build/ext-dummy-amd64/rootfs/usr/lib/modules");
    std::fs::read_dir(&modules)
        .into_iter()
        .flatten()
        .flatten()
        .map(|release| release.path().join("kernel/drivers/net/dummy.ko"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| modules.join("<release>/kernel/drivers/net/dummy.ko"))
}
