//! The step cache end to end: a second build of profiles/default.yaml with the same cache
//! does nothing and says so, one changed extension re-squashes only that extension, a build
//! killed while writing a cache entry leaves nothing a later build trusts, and every output
//! is byte-identical to a `--no-cache` build's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use strata_tests::*;

/// `strata build <profile> --out <out>` with `cache`, plus `extra` flags.
fn build(profile: &Path, out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "build",
        profile.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = strata(&args, cache);
    assert!(o.status.success(), "{}", text(&o));
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_same(a: &Path, b: &Path) {
    let (x, y) = (dir_files(a), dir_files(b));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&x), names(&y), "{} vs {}", a.display(), b.display());
    for (f, g) in x.iter().zip(&y) {
        assert!(
            f.1 == g.1,
            "{} differs between {} and {}",
            f.0,
            a.display(),
            b.display()
        );
    }
}

fn entries(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("steps"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .count()
        })
        .unwrap_or(0)
}

/// Lines of a build's progress that report a cache hit.
fn cached_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.contains("cached)"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_second_build_is_all_hits_and_identical_to_an_uncached_one() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let profile = repo().join("profiles/default.yaml");
    let (a, b, n) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("n"),
    );

    let cold = build(&profile, &a, &cache, &[]);
    assert_eq!(
        cached_lines(&cold),
        Vec::<String>::new(),
        "{}",
        stderr(&cold)
    );
    let stored = entries(&cache);
    assert!(
        stored >= 5,
        "root, 2 layers, initramfs, disk, iso: {stored} entries"
    );

    let warm = build(&profile, &b, &cache, &[]);
    let hits = cached_lines(&warm);
    let err = stderr(&warm);
    for step in [
        "[3/7] squashfs",
        "[4/7] initramfs",
        "metal-amd64.disk",
        "metal-amd64.iso",
    ] {
        assert!(
            hits.iter()
                .any(|l| l.contains(step) && l.contains(" (cached)")),
            "no hit for {step}:\n{err}"
        );
    }
    assert_eq!(entries(&cache), stored, "a no-op build stored nothing new");

    // Under another umask the hits are copied, not linked: the artefacts take that umask's mode.
    let u = dir.path().join("u");
    let o = Command::new("sh")
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(strata_bin())
        .args([
            "build",
            profile.to_str().unwrap(),
            "--out",
            u.to_str().unwrap(),
        ])
        .current_dir(repo())
        .env("STRATA_CACHE", &cache)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(cached_lines(&o).len(), hits.len(), "{}", stderr(&o));
    for f in ["metal-amd64.raw", "metal-amd64.iso"] {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(u.join(f)).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600, "{f} under umask 077");
    }

    let uncached = build(&profile, &n, &cache, &["--no-cache"]);
    assert_eq!(cached_lines(&uncached), Vec::<String>::new());
    assert_eq!(entries(&cache), stored, "--no-cache wrote to the cache");
    assert_same(&a, &n);
    assert_same(&b, &n);
    assert_same(&u, &n);

    // `strata cache` lists what the builds stored; prune empties it.
    let o = strata(&["cache", "--cache", cache.to_str().unwrap()], &cache);
    assert!(o.status.success(), "{}", text(&o));
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains("rootfs.sqsh") && listing.contains("metal-amd64.iso"),
        "{listing}"
    );
    assert!(listing.contains(&format!("{stored} entries")), "{listing}");
    // The digest memo of the input files is listed and counted in the total.
    let digests = listing
        .lines()
        .find_map(|l| l.split_once("digests: ")?.1.split_once(" file digests"))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no digest memo line: {listing}"));
    assert!(digests > 0, "{listing}");
    assert!(listing.lines().last().unwrap().starts_with("total: "));
    // An age prune keeps what was just used, the memo's records included.
    let o = strata(
        &[
            "cache",
            "prune",
            "--older-than",
            "1h",
            "--cache",
            cache.to_str().unwrap(),
        ],
        &cache,
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.starts_with(&format!("removed 0 entries (0 B), kept {stored} "))
            && said.contains(&format!("digest memo: dropped 0 records, kept {digests} ")),
        "{}",
        text(&o)
    );
    let o = strata(
        &[
            "cache",
            "prune",
            "--max-size",
            "0",
            "--cache",
            cache.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(entries(&cache), 0);
    assert!(
        !cache.join("digests").exists(),
        "a full clear keeps the memo"
    );
    // The outputs linked from the cache are the user's: pruning leaves them whole.
    assert_same(&b, &n);
}

/// The default profile with absolute paths and the motd extension at `motd`.
fn profile_with(motd: &Path) -> String {
    let r = repo();
    format!(
        "name: default\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: {k}\nrootfs:\n  dir: {root}\nextensions:\n  - dir: {e}/hello\n  - dir: {m}\n",
        k = debian_cache().join("linux-image-${arch}.deb").display(),
        root = r.join("build/rootfs-${arch}").display(),
        e = r.join("examples/extensions").display(),
        m = motd.display(),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

#[test]
fn one_changed_extension_rebuilds_only_its_layer() {
    if !have_inputs("amd64") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let motd = dir.path().join("motd");
    copy_tree(&repo().join("examples/extensions/motd"), &motd);
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, profile_with(&motd)).unwrap();
    build(&p, &dir.path().join("first"), &cache, &[]);

    // The same bytes written again (new times, as a checkout or `touch` gives): keys go by
    // contents, so nothing is made again.
    let file = walk_files(&motd.join("rootfs"))
        .into_iter()
        .next()
        .expect("a file in motd");
    let mut bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let o = build(&p, &dir.path().join("rewritten"), &cache, &[]);
    let err = stderr(&o);
    assert!(
        err.contains("[3/7] squashfs: root + 2 layer(s) (cached)"),
        "a file rewritten with the same bytes keeps its layer:\n{err}"
    );

    // One byte more in one file of the extension.
    bytes.push(b'\n');
    std::fs::write(&file, bytes).unwrap();

    let changed = dir.path().join("changed");
    let o = build(&p, &changed, &cache, &[]);
    let err = stderr(&o);
    assert!(
        err.contains("[3/7] squashfs: root + 2 layer(s) (2 of 3 cached)"),
        "only the motd layer is squashed again:\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("[4/7] initramfs") && !l.contains("(cached)")),
        "the initramfs holds the new layer:\n{err}"
    );
    let n = dir.path().join("n");
    build(&p, &n, &cache, &["--no-cache"]);
    assert_same(&changed, &n);
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// SIGKILL while the first cache entry is being written, then a build with the same cache:
/// the same bytes as a `--no-cache` build, and no partial entry left.
#[test]
fn a_build_killed_while_storing_leaves_nothing_trusted() {
    if !have_inputs("amd64") {
        return;
    }
    let run = kill_and_rebuild(|cache, pid| {
        !names_in(&cache.join("tmp"), &format!(".partial-{pid}-")).is_empty()
    });
    assert_eq!(
        names_in(&run.cache.join("tmp"), ""),
        Vec::<String>::new(),
        "the killed build's partial entry was swept"
    );
    run.assert_like_a_clean_build();
    assert_cache_verifies_clean(&run.cache);
}

/// A default build killed by [`kill_when`] once `ready(cache, pid)` holds, then built again
/// with the same cache (into `again`).
struct Killed {
    dir: tempfile::TempDir,
    cache: PathBuf,
    profile: PathBuf,
    again: PathBuf,
}

fn kill_and_rebuild(ready: impl Fn(&Path, u32) -> bool) -> Killed {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let profile = repo().join("profiles/default.yaml");
    kill_when(&profile, &dir.path().join("killed"), &cache, |pid| {
        ready(&cache, pid)
    });
    let again = dir.path().join("again");
    build(&profile, &again, &cache, &[]);
    Killed {
        dir,
        cache,
        profile,
        again,
    }
}

impl Killed {
    /// The rebuild made the bytes a `--no-cache` build makes.
    fn assert_like_a_clean_build(&self) {
        let n = self.dir.path().join("n");
        build(&self.profile, &n, &self.cache, &["--no-cache"]);
        assert_same(&self.again, &n);
    }
}

/// Starts a build of `profile` into `out` with `cache` and SIGKILLs it as soon as `ready`
/// (given its pid) holds; fails if the build ends first or `ready` never holds.
fn kill_when(profile: &Path, out: &Path, cache: &Path, ready: impl Fn(u32) -> bool) {
    let mut child = Command::new(strata_bin())
        .args(["build", profile.to_str().unwrap(), "--out"])
        .arg(out)
        .current_dir(repo())
        .env("STRATA_CACHE", cache)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready(child.id()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before the moment to kill it"
        );
        assert!(Instant::now() < deadline, "the moment to kill never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGKILL while the kernel is unpacked into its cache, the images being written beside it:
/// the next build with the same cache unpacks the kernel afresh (the partial one is swept)
/// and makes the same bytes as a `--no-cache` build.
#[test]
fn a_build_killed_while_the_kernel_unpacks_beside_the_images_rebuilds_the_same_bytes() {
    if !have_inputs("amd64") {
        return;
    }
    // Killed while the kernel's partial directory exists: the images are being written
    // beside it then. Waiting also for an image's partial entry made the moment a few
    // milliseconds long on an idle machine (the default profile's images are small).
    let run = kill_and_rebuild(|cache, pid| {
        !names_in(&cache.join("kernels"), &format!(".partial-{pid}-")).is_empty()
    });
    assert_eq!(
        names_in(&run.cache.join("kernels"), ".partial-"),
        Vec::<String>::new(),
        "the killed build's partial kernel was swept"
    );
    assert_eq!(names_in(&run.cache.join("tmp"), ""), Vec::<String>::new());
    run.assert_like_a_clean_build();
}
