//! Support code shared by the end-to-end tests in `tests/`: locating the
//! built `strata` binary and the Makefile-made inputs, running commands,
//! and small readers for what the judges need (GPT offsets, cpio segments).
//!
//! End-to-end tests need the inputs `make test` prepares (kernel .deb,
//! rootfs, guest init) and some tools. [`require_tool`] and [`require_input`]
//! are the only way a test here declines to run: under `make test`
//! (STRATA_E2E=1) a missing tool or input is a failure naming the fix; in a
//! bare `cargo test` the test prints one `SKIPPED <test>: <why>` line and
//! returns.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when the environment promises every end-to-end input (under `make test`).
pub fn e2e_required() -> bool {
    std::env::var_os("STRATA_E2E").is_some_and(|v| v == "1")
}

/// The one place a test declines: a failure under `STRATA_E2E=1`, where a
/// skip would hide a broken setup; one `SKIPPED` line on stderr otherwise.
fn decline(why: &str, fix: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    assert!(
        !e2e_required(),
        "STRATA_E2E=1 but {test} cannot run: {why}; fix: {fix}"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip must show in every run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why} ({fix})");
    false
}

/// True when `tool` is on `PATH`; otherwise see [`decline`] (fix: `make deps`).
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    found || decline(&format!("{tool} is not installed"), "make deps")
}

/// True when the input `path` exists; otherwise see [`decline`] (fix: `make
/// test-inputs strata`, which make the inputs and the release binary).
pub fn require_input(path: &Path) -> bool {
    path.exists()
        || decline(
            &format!("test input {} is missing", path.display()),
            "make test-inputs strata",
        )
}

/// The Debian package cache that `make test-inputs` fills.
pub fn debian_cache() -> PathBuf {
    repo().join(".cache/debian")
}

/// Debian's current kernel package for `arch`, under the stable name
/// `scripts/fetch-debs.sh` links.
pub fn kernel_deb(arch: &str) -> PathBuf {
    debian_cache().join(format!("linux-image-{arch}.deb"))
}

/// The in-repository extension metadata corpus.
pub fn corpus_dir() -> PathBuf {
    repo().join("tests/corpus")
}

/// True when every end-to-end input for `arch` exists (the release `strata`,
/// the kernel .deb, the rootfs, the guest init); see [`require_input`].
pub fn have_inputs(arch: &str) -> bool {
    [
        strata_bin(),
        kernel_deb(arch),
        repo().join(format!("build/rootfs-{arch}")),
        repo().join(format!("target/{}/release/strata-init", musl_target(arch))),
    ]
    .iter()
    .all(|p| require_input(p))
}

/// The Rust musl target of a Debian arch name.
pub fn musl_target(arch: &str) -> &'static str {
    match arch {
        "arm64" => "aarch64-unknown-linux-musl",
        _ => "x86_64-unknown-linux-musl",
    }
}

/// The `strata` binary under test (release build, as the Makefile makes it).
pub fn strata_bin() -> PathBuf {
    std::env::var_os("STRATA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/strata"))
}

/// Runs `strata` with `args` in the repository root, with a private cache.
pub fn strata(args: &[&str], cache: &Path) -> Output {
    Command::new(strata_bin())
        .args(args)
        .current_dir(repo())
        .env("STRATA_CACHE", cache)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("run strata")
}

/// Boots `artefact` with `strata boot --json` (`extra` options before it) and returns the
/// result; panics, with the reason and the output, unless the guest's own report passed.
/// The timeout allows for a TCG boot on a loaded CI machine.
pub fn boot_passes(artefact: &Path, extra: &[&str], cache: &Path) -> serde_json::Value {
    let mut args = vec!["boot", "--json", "--timeout", "400"];
    args.extend(extra);
    args.push(artefact.to_str().expect("a UTF-8 path"));
    let o = strata(&args, cache);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON from booting {}: {}", artefact.display(), text(&o)));
    assert!(
        o.status.success() && r["pass"] == true,
        "{} did not pass: {}\n{}",
        artefact.display(),
        r["reason"],
        text(&o)
    );
    r
}

/// The first event of type `kind` the guest reported in a boot result.
pub fn event<'a>(result: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    result["events"]
        .as_array()
        .expect("the result lists events")
        .iter()
        .find(|e| e["event"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {result}"))
}

/// The kernel cache shared by the tests of one run (unpacking the .deb once).
pub fn shared_cache() -> PathBuf {
    let dir = repo().join("target/e2e-cache");
    std::fs::create_dir_all(&dir).expect("create the test cache");
    dir
}

/// Runs an external judge; panics with its output if it is missing or fails.
pub fn judge(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run ({e}); `make deps` installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// Text of a command's output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Byte offset and length of GPT partition `n` (1-based), read from the primary header.
pub fn partition_range(disk: &Path, n: usize) -> (u64, u64) {
    let data = std::fs::read(disk).expect("read disk");
    let header = &data[512..1024];
    assert_eq!(&header[..8], b"EFI PART", "no GPT header");
    let entries_lba = u64::from_le_bytes(header[72..80].try_into().unwrap());
    let entry_size = u32::from_le_bytes(header[84..88].try_into().unwrap()) as u64;
    let at = (entries_lba * 512 + (n as u64 - 1) * entry_size) as usize;
    let first = u64::from_le_bytes(data[at + 32..at + 40].try_into().unwrap());
    let last = u64::from_le_bytes(data[at + 40..at + 48].try_into().unwrap());
    (first * 512, (last - first + 1) * 512)
}

/// Copies `len` bytes at `offset` of `src` into a new file `dest`.
pub fn extract(src: &Path, offset: u64, len: u64, dest: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(src).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut out = std::fs::File::create(dest).expect("create");
    std::io::copy(&mut f.take(len), &mut out).expect("copy");
}

/// Splits concatenated newc cpio data: returns the end offset of the first
/// archive (after `TRAILER!!!` and its padding, up to the next non-zero byte).
pub fn first_cpio_end(data: &[u8]) -> usize {
    let mut at = 0usize;
    loop {
        assert_eq!(&data[at..at + 6], b"070701", "not a newc header at {at}");
        let field = |i: usize| {
            usize::from_str_radix(
                std::str::from_utf8(&data[at + 6 + i * 8..at + 14 + i * 8]).unwrap(),
                16,
            )
            .unwrap()
        };
        let size = field(6);
        let namesize = field(11);
        let name = &data[at + 110..at + 110 + namesize - 1];
        let data_at = (at + 110 + namesize).next_multiple_of(4);
        at = (data_at + size).next_multiple_of(4);
        if name == b"TRAILER!!!" {
            while at < data.len() && data[at] == 0 {
                at += 1;
            }
            return at;
        }
    }
}

/// Every regular file directly in `dir` (`manifest.json` included), as (name, bytes) sorted
/// by name: what two builds that must agree are compared by.
pub fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// The names in `dir` that start with `prefix` (none when `dir` does not exist).
pub fn names_in(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// `strata cache verify` on `cache` finds every entry sound (removes none).
pub fn assert_cache_verifies_clean(cache: &Path) {
    let o = strata(
        &["cache", "verify", "--cache", cache.to_str().unwrap()],
        cache,
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("removed 0 entries"),
        "{}",
        text(&o)
    );
}

/// The names of the layers a guest reported in its boot result, lowest first.
pub fn layer_names(result: &serde_json::Value) -> Vec<&str> {
    result["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect()
}

/// `strata build PROFILE --out OUT` with the shared cache, whatever its outcome.
pub fn build(profile: &Path, out: &Path) -> Output {
    strata(
        &[
            "build",
            profile.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &shared_cache(),
    )
}

/// [`build`]; panics with strata's output if the build fails.
pub fn build_ok(profile: &Path, out: &Path) {
    let o = build(profile, out);
    assert!(o.status.success(), "build failed: {}", text(&o));
}
