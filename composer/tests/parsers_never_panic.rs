//! Every parser of untrusted input answers `Ok` or `Err`, never a panic or a hang.
//!
//! Each parser gets random bytes (behind its format's magic, so the input gets past the first
//! check) and mutations of a valid sample made by strata's own writer or taken from a fixture:
//! bytes flipped, set to boundary values, truncated, spliced and duplicated. Each case runs on
//! its own thread with a deadline, so a hang fails the test instead of stalling the suite.
//! Case counts are small: the suite runs under `make test` on two cores.

use proptest::collection::vec;
use proptest::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Longest a single parse may take before it counts as a hang (debug build, loaded machine).
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `parse` on its own thread; a panic or a run past [`DEADLINE`] fails the case.
fn within<T: Send + 'static>(what: &str, parse: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let _ = tx.send(parse());
        })
        .expect("spawn the parser thread");
    match rx.recv_timeout(DEADLINE) {
        Ok(value) => {
            let _ = worker.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {DEADLINE:?} (a hang)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let payload = worker
                .join()
                .expect_err("the worker ended without an answer");
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what} panicked: {msg}")
        }
    }
}

/// One edit of a valid sample.
#[derive(Debug, Clone)]
enum Edit {
    /// XOR the byte at the position with a non-zero mask.
    Flip(usize, u8),
    /// Overwrite four bytes with a boundary value (sizes, counts, offsets).
    Set32(usize, u32),
    /// Cut the input at the position.
    Truncate(usize),
    /// Insert bytes at the position.
    Insert(usize, Vec<u8>),
    /// Copy a range over another position (duplicated headers, self-references).
    Copy(usize, usize, usize),
}

/// Positions biased towards the start, where headers and superblocks live.
fn position() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..256, 0usize..4096, any::<usize>()]
}

fn boundary() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        any::<u32>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (position(), 1u8..=255).prop_map(|(at, mask)| Edit::Flip(at, mask)),
        (position(), boundary()).prop_map(|(at, v)| Edit::Set32(at, v)),
        position().prop_map(Edit::Truncate),
        (position(), vec(any::<u8>(), 1..32)).prop_map(|(at, b)| Edit::Insert(at, b)),
        (position(), position(), 1usize..128).prop_map(|(a, b, n)| Edit::Copy(a, b, n)),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    vec(edit(), 1..6)
}

/// `sample` with `edits` applied; positions wrap around the current length.
fn mutate(sample: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = sample.to_vec();
    for e in edits {
        let len = out.len().max(1);
        match e {
            Edit::Flip(at, mask) => {
                if let Some(b) = out.get_mut(at % len) {
                    *b ^= mask;
                }
            }
            Edit::Set32(at, v) => {
                let at = at % len;
                for (i, b) in v.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            Edit::Truncate(at) => out.truncate(at % len),
            Edit::Insert(at, bytes) => {
                let at = (at % len).min(out.len());
                out.splice(at..at, bytes.iter().copied());
            }
            Edit::Copy(from, to, n) => {
                let (from, to) = (from % len, to % len);
                let chunk: Vec<u8> = out.iter().skip(from).take(*n).copied().collect();
                for (i, b) in chunk.into_iter().enumerate() {
                    if let Some(slot) = out.get_mut(to + i) {
                        *slot = b;
                    }
                }
            }
        }
    }
    out
}

/// Random bytes after the first `keep` bytes of `sample` (its magic and superblock).
fn behind_header(sample: &[u8], keep: usize, tail: &[u8]) -> Vec<u8> {
    let mut out = sample[..keep.min(sample.len())].to_vec();
    out.extend_from_slice(tail);
    out
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("composer/ has a parent")
        .to_path_buf()
}

fn corpus(rel: &str) -> String {
    let path = workspace_root().join("tests/corpus").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `bytes` to a file in a new temporary directory and hands `read` its path and the
/// directory (for scratch space); the directory is removed afterwards.
fn with_file<T>(name: &str, bytes: &[u8], read: impl FnOnce(&Path, &Path) -> T) -> T {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write the input");
    read(&path, dir.path())
}

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer hunt by hand).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    }
}

/// Every valid sample parses, so the mutations start from inputs the parsers accept.
#[test]
fn the_valid_samples_parse() {
    for name in ["plain.erofs", "lz4hc.erofs"] {
        with_file(name, &fixture(name), |path, dir| {
            let tree = strata::fs::erofs::read_in(path, dir).unwrap();
            assert!(tree.get("/d/big.txt").is_some(), "{name}");
        });
    }
    for xz in [false, true] {
        with_file("s.sqsh", &squashfs_sample(xz), |path, dir| {
            let tree = strata::fs::squashfs_read::read_in(path, dir).unwrap();
            assert!(tree.get("/usr/bin/tool").is_some());
        });
    }
    assert_eq!(
        strata::fs::cpio::read_entries(&cpio_sample()[..])
            .unwrap()
            .len(),
        4
    );
    let layout = oci_layout();
    strata::source::oci::layout::read_image(layout.path(), None, "amd64").unwrap();
    for text in release_samples() {
        assert!(strata_proto::osrelease::Release::parse(&text)
            .get("ID")
            .is_some());
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = corpus("talos-extensions/_talos-testdata/good-extension1/manifest.yaml");
    talos_dir(dir.path(), &manifest);
    strata::extension::talos::TalosExtension::read_dir(dir.path()).unwrap();
}

// ---- erofs (fixtures made by mkfs.erofs 1.5: plain and lz4hc; see tests/fixtures/README.md)

fn erofs(bytes: Vec<u8>) {
    within("erofs::read_in", move || {
        with_file("image.erofs", &bytes, |path, dir| {
            let _ = strata::fs::erofs::read_in(path, dir);
        })
    });
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn erofs_reader_survives_mutated_images(plain in any::<bool>(), e in edits()) {
        let sample = fixture(if plain { "plain.erofs" } else { "lz4hc.erofs" });
        erofs(mutate(&sample, &e));
    }

    #[test]
    fn erofs_reader_survives_random_bytes(tail in vec(any::<u8>(), 0..8192)) {
        erofs(behind_header(&fixture("plain.erofs"), 1024 + 128, &tail));
    }
}

// ---- squashfs (sample written by strata's own writer)

fn sample_tree() -> strata::fs::tree::Tree {
    use strata::fs::tree::{Entry, Tree};
    let mut t = Tree::new();
    t.insert("/etc", Entry::dir(0o755)).unwrap();
    t.insert("/etc/motd", Entry::bytes_file(b"hello\n".to_vec(), 0o644))
        .unwrap();
    let big: Vec<u8> = (0..20_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    t.insert("/usr/bin/tool", Entry::bytes_file(big, 0o755))
        .unwrap();
    t.insert("/usr/bin/alias", Entry::symlink("tool")).unwrap();
    t
}

fn squashfs_sample(xz: bool) -> Vec<u8> {
    use strata::fs::squashfs::{write_file, SquashCompression, SquashOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqsh");
    let opts = SquashOptions {
        compression: if xz {
            SquashCompression::Xz
        } else {
            SquashCompression::Zstd { level: 3 }
        },
        block_size: 4096,
        mtime: 0,
    };
    write_file(&sample_tree(), &path, &opts).unwrap();
    std::fs::read(path).unwrap()
}

fn squashfs(bytes: Vec<u8>) {
    within("squashfs_read::read_in", move || {
        with_file("image.sqsh", &bytes, |path, dir| {
            let _ = strata::fs::squashfs_read::read_in(path, dir);
        })
    });
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn squashfs_reader_survives_mutated_images(xz in any::<bool>(), e in edits()) {
        squashfs(mutate(&squashfs_sample(xz), &e));
    }

    #[test]
    fn squashfs_reader_survives_random_bytes(tail in vec(any::<u8>(), 0..8192)) {
        squashfs(behind_header(&squashfs_sample(false), 96, &tail));
    }
}

// ---- cpio (sample written by strata's own writer)

fn cpio_sample() -> Vec<u8> {
    let mut w = strata::fs::cpio::CpioWriter::new(Vec::new(), 0);
    w.dir("etc", 0o755).unwrap();
    w.file("etc/motd", 0o644, 6, &b"hello\n"[..]).unwrap();
    w.symlink("init", "/usr/bin/tool").unwrap();
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.finish().unwrap()
}

fn cpio(bytes: Vec<u8>) {
    within("cpio::read_entries", move || {
        let _ = strata::fs::cpio::read_entries(&bytes[..]);
    });
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn cpio_reader_survives_mutated_archives(e in edits()) {
        cpio(mutate(&cpio_sample(), &e));
    }

    #[test]
    fn cpio_reader_survives_random_bytes(tail in vec(any::<u8>(), 0..2048)) {
        cpio(behind_header(b"070701", 6, &tail));
    }

    #[test]
    fn cpio_reader_survives_random_hex_headers(fields in vec(0u8..16, 104), tail in vec(any::<u8>(), 0..256)) {
        let hex: Vec<u8> = fields.iter().map(|d| b"0123456789ABCDEF"[*d as usize]).collect();
        let mut bytes = b"070701".to_vec();
        bytes.extend_from_slice(&hex);
        bytes.extend_from_slice(&tail);
        cpio(bytes);
    }
}

// ---- ar / .deb (sample assembled here: ar + plain and xz-compressed tars)

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn deb_sample(xz: bool) -> Vec<u8> {
    let control = tar_of(&[(
        "./control",
        b"Package: pkg\nVersion: 1.0\nArchitecture: amd64\n",
    )]);
    let data = tar_of(&[
        ("./boot/vmlinuz-1.0", b"kernel"),
        ("./usr/bin/tool", b"#!/bin/sh\n"),
    ]);
    let (control, data, ext) = if xz {
        let xz = |raw: &[u8]| {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(raw).unwrap();
            e.finish().unwrap()
        };
        (xz(&control), xz(&data), ".xz")
    } else {
        (control, data, "")
    };
    let mut ar = ar::Builder::new(Vec::new());
    let members: [(String, &[u8]); 3] = [
        ("debian-binary".into(), b"2.0\n"),
        (format!("control.tar{ext}"), &control),
        (format!("data.tar{ext}"), &data),
    ];
    for (name, bytes) in members {
        let header = ar::Header::new(name.into_bytes(), bytes.len() as u64);
        ar.append(&header, bytes).unwrap();
    }
    ar.into_inner().unwrap()
}

fn deb(bytes: Vec<u8>) {
    within("deb::read_control and deb::extract", move || {
        with_file("p.deb", &bytes, |path, dir| {
            let _ = strata::source::deb::read_control(path);
            let dest = dir.join("x");
            std::fs::create_dir(&dest).unwrap();
            let _ = strata::source::deb::extract(path, &dest, |_| true, |_| {});
        })
    });
}

/// The samples are packages strata reads, so mutations start from a valid input.
#[test]
fn the_deb_samples_are_valid() {
    for xz in [false, true] {
        with_file("p.deb", &deb_sample(xz), |path, dir| {
            let info = strata::source::deb::read_control(path).unwrap();
            assert_eq!(info.package, "pkg");
            let got = strata::source::deb::extract(path, dir, |_| true, |_| {}).unwrap();
            assert!(
                got.iter().any(|p| p.rel.ends_with("usr/bin/tool")),
                "{got:?}"
            );
        });
    }
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn deb_reader_survives_mutated_packages(xz in any::<bool>(), e in edits()) {
        deb(mutate(&deb_sample(xz), &e));
    }

    #[test]
    fn deb_reader_survives_random_bytes(tail in vec(any::<u8>(), 0..2048)) {
        deb(behind_header(b"!<arch>\n", 8, &tail));
    }
}

// ---- OCI documents and layouts (samples written by strata's own layout writer)

/// A one-image OCI layout written by strata; returns its directory.
fn oci_layout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    strata::source::oci::layout::write_image(
        dir.path(),
        strata::source::oci::layout::LayerSource::Tree(&sample_tree()),
        "amd64",
        "v1",
        0,
    )
    .unwrap();
    dir
}

/// Every JSON document of a layout: index.json and the blobs that parse as JSON.
fn oci_documents() -> Vec<Vec<u8>> {
    let dir = oci_layout();
    let mut docs = vec![std::fs::read(dir.path().join("index.json")).unwrap()];
    let blobs = dir.path().join("blobs/sha256");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
            docs.push(bytes);
        }
    }
    assert!(docs.len() >= 3, "index, manifest and config");
    docs
}

fn oci_parse(bytes: Vec<u8>) {
    use strata::source::oci::image::{
        parse_document, parse_json, select_platform, Document, ImageConfig, ImageIndex,
        ImageManifest, Platform,
    };
    within("oci::image parsers", move || {
        let wanted = Platform::linux("amd64").unwrap();
        if let Ok(Document::Index(index)) = parse_document(&bytes, "doc") {
            let _ = select_platform(&index, &wanted, "img");
        }
        if let Ok(index) = parse_json::<ImageIndex>(&bytes, "index") {
            let _ = select_platform(&index, &wanted, "img");
        }
        let _ = parse_json::<ImageManifest>(&bytes, "manifest");
        if let Ok(config) = parse_json::<ImageConfig>(&bytes, "config") {
            let _ = config.platform();
        }
    });
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn oci_documents_survive_mutation(which in 0usize..3, e in edits()) {
        let docs = oci_documents();
        oci_parse(mutate(&docs[which % docs.len()], &e));
    }

    #[test]
    fn oci_documents_survive_random_bytes(bytes in vec(any::<u8>(), 0..512)) {
        oci_parse(bytes);
    }

    #[test]
    fn oci_layout_reader_survives_a_mutated_index(e in edits()) {
        let dir = oci_layout();
        let index = dir.path().join("index.json");
        let bytes = mutate(&std::fs::read(&index).unwrap(), &e);
        std::fs::write(&index, bytes).unwrap();
        let path = dir.path().to_path_buf();
        within("oci::layout::read_image", move || {
            let _ = strata::source::oci::layout::read_image(&path, None, "amd64");
        });
    }
}

/// A docker archive (`docker save` layout, Docker < 25 names) of one image with one layer.
fn docker_archive() -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    let layer = tar_of(&[("etc/motd", b"hello\n")]);
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
    );
    let config_name = format!("{}.json", hex::encode(Sha256::digest(config.as_bytes())));
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["ext/k:v1"],"Layers":["0/layer.tar"]}}]"#
    );
    tar_of(&[
        ("manifest.json", manifest.as_bytes()),
        (config_name.as_str(), config.as_bytes()),
        ("0/layer.tar", &layer),
    ])
}

fn docker(bytes: Vec<u8>) {
    within("oci::archive::read_archive", move || {
        with_file("image.tar", &bytes, |path, dir| {
            let _ = strata::source::oci::archive::read_archive(path, None, "amd64", dir);
        })
    });
}

#[test]
fn the_docker_archive_sample_is_valid() {
    with_file("image.tar", &docker_archive(), |path, dir| {
        strata::source::oci::archive::read_archive(path, None, "amd64", dir).unwrap();
    });
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn docker_archive_reader_survives_mutation(e in edits()) {
        docker(mutate(&docker_archive(), &e));
    }
}

// ---- extension-release / os-release (strata_proto::osrelease, and composer's checks; samples
// from the corpus)

fn release_samples() -> Vec<String> {
    vec![
        corpus("sysext/00-flatcar-default/extension-release.00-flatcar-default"),
        "ID=flatcar\nID_LIKE=coreos\nVERSION_ID=4230.2.0\nSYSEXT_LEVEL=1.0\n\
         ARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\nSYSEXT_SCOPE=\"system portable\"\n\
         # comment\nNAME='quoted \\\"value\\\"'\n"
            .to_string(),
    ]
}

fn release(text: String) {
    use strata::extension::sysext::{check, HostRelease, ImageKind, Target};
    within("extension-release parsers", move || {
        let _ = strata_proto::osrelease::Release::parse(&text);
        let host = HostRelease::from_os_release(&text, "amd64").ok();
        for kind in [ImageKind::Sysext, ImageKind::Confext] {
            let target = Target::of_host(host.as_ref());
            let _ = check(kind, "x", "extension-release.x", &text, &target, None);
        }
    });
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn release_parsers_survive_mutated_files(which in 0usize..2, e in edits()) {
        let sample = &release_samples()[which];
        release(String::from_utf8_lossy(&mutate(sample.as_bytes(), &e)).into_owned());
    }

    #[test]
    fn release_parsers_survive_random_text(text in "[A-Z_=\"'\\\\ #\\n\\t a-z0-9.-]{0,200}") {
        release(text);
    }
}

// ---- Talos manifest.yaml and extension service YAML (samples from the corpus)

/// A Talos extension directory: `manifest` and a rootfs with one program.
fn talos_dir(dir: &Path, manifest: &str) {
    std::fs::write(dir.join("manifest.yaml"), manifest).unwrap();
    let bin = dir.join("rootfs/usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("hello"), b"#!/bin/sh\n").unwrap();
}

fn talos_manifest(text: String) {
    within("talos manifest parsers", move || {
        let _ = strata::extension::talos::rules::check_manifest(
            &text,
            "manifest.yaml",
            None,
            Some("1.11.0"),
        );
        let dir = tempfile::tempdir().unwrap();
        talos_dir(dir.path(), &text);
        let _ = strata::extension::talos::TalosExtension::read_dir(dir.path());
    });
}

fn talos_service(text: String) {
    use strata::extension::talos::service::{check_service, check_services, ServiceFile};
    within("talos service parser", move || {
        let file = ServiceFile {
            label: "hello.yaml".into(),
            file_name: "hello.yaml".into(),
            text,
        };
        let _ = check_service(&file);
        let _ = check_services(&[file.clone(), file], None);
    });
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn talos_manifest_parsers_survive_mutation(e in edits()) {
        let sample = corpus("talos-extensions/_talos-testdata/good-extension1/manifest.yaml");
        talos_manifest(String::from_utf8_lossy(&mutate(sample.as_bytes(), &e)).into_owned());
    }

    #[test]
    fn talos_manifest_parsers_survive_random_text(text in "[a-z:{}\\[\\]\\-\"' .0-9\\n]{0,200}") {
        talos_manifest(text);
    }

    #[test]
    fn talos_service_parser_survives_mutation(e in edits()) {
        let sample = corpus("talos-extensions/_talos-testdata/services-hello/hello.yaml");
        talos_service(String::from_utf8_lossy(&mutate(sample.as_bytes(), &e)).into_owned());
    }

    #[test]
    fn talos_service_parser_survives_random_text(text in "[a-z:{}\\[\\]\\-\"' .0-9/\\n]{0,200}") {
        talos_service(text);
    }
}

// ---- Profiles: the YAML guard, then serde; hostile shapes are refused fast

/// Loads `text` as a profile on a worker thread; every outcome but a panic or a hang is fine.
fn profile(text: Vec<u8>) -> Result<(), String> {
    within("profile loader", move || {
        with_file("p.yaml", &text, |path, _| {
            strata::profile::load(path, None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
}

/// Each hostile shape is refused as bad input, with its position where it has one, in
/// under a second (the guard runs before the YAML parser, whose cost grows with the square
/// of the nesting depth: 200 KB of `[` took 34 s).
#[test]
fn hostile_profiles_are_refused_within_a_second() {
    let good = profiles_sample();
    let laughs: String = std::iter::once("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_string())
        .chain((b'b'..=b'i').map(|c| {
            let prev = (c - 1) as char;
            let c = c as char;
            format!("{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n")
        }))
        .collect();
    let block: String = (0..500)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "flow nesting",
            format!("{good}x: {}\n", "[".repeat(200_000)),
            "nest deeper than 64",
        ),
        (
            "block nesting",
            format!("{good}{block}"),
            "nest deeper than 64",
        ),
        ("billion laughs", format!("{laughs}{good}"), "alias `*a`"),
        ("duplicate key", format!("{good}arch: arm64\n"), "duplicate"),
        (
            "huge file",
            format!("{good}#{}\n", "x".repeat(2 << 20)),
            "more than the 1048576 bytes",
        ),
        (
            "control character",
            good.replace("id: strata", "id: \"str\\u001bata\""),
            "control character",
        ),
        (
            "NUL",
            good.replace("id: strata", "id: \"a\\0b\""),
            "control character",
        ),
        (
            "wrong type",
            good.replace("name: demo", "name: {a: 1}"),
            "name",
        ),
    ];
    for (what, text, want) in cases {
        let t = std::time::Instant::now();
        let err = profile(text.into_bytes()).expect_err(what);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{what} took {:?}",
            t.elapsed()
        );
        assert!(err.contains(want), "{what}: {err}");
    }
}

fn profiles_sample() -> String {
    "name: demo\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: k.deb\n  args: [quiet]\nrootfs:\n  dir: root\nextensions:\n  - dir: a\n".into()
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn the_profile_loader_survives_mutation(e in edits()) {
        let _ = profile(mutate(profiles_sample().as_bytes(), &e));
    }

    #[test]
    fn the_profile_loader_survives_random_text(text in "[a-z:{}\\[\\]\\-\"'&*!|> .0-9\\n]{0,300}") {
        let _ = profile(text.into_bytes());
    }
}
