//! `/etc/strata/extensions.json`: extensions that ship in the image
//! without a layer at boot, and how the init checks them.
//!
//! ```json
//! {"flattened":[{"name":"hello","version":"1.0.0","kind":"talos",
//!                "probe":{"path":"/usr/local/bin/hello","sha256":"<64 hex>"}}],
//!  "disabled":[{"name":"tools","version":"2.0","kind":"sysext",
//!               "path":"/usr/lib/strata/extensions-available/tools.raw"}]}
//! ```
//!
//! * **flattened**: merged into the root squashfs at build time. The
//!   check: the probe file, resolved inside the merged root, is a regular
//!   file whose sha256 is the recorded one (compared case-insensitively;
//!   read in chunks, never whole).
//! * **disabled**: shipped as an image file in the root but not activated.
//!   The check: the file, resolved inside the merged root, is a regular
//!   file (`visible`), and it is not in use (`mounted`): no loop device
//!   is backed by it (`/sys/block/loop*/loop/backing_file`, compared by
//!   device and inode) and no layer of the same kind and name was mounted
//!   in this boot.
//!
//! The types are [`strata_proto::initramfs::Shipped`], which the composer
//! serialises. Both lists are optional (absent = empty); a missing file means neither.
//! `version` is optional (empty). Unknown keys are ignored. Not supported:
//! other probe digests, directories as probes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
pub use strata_proto::initramfs::{Disabled, Flattened, Probe, Shipped, EXTENSIONS_JSON};

use crate::checks::Visibility;
use crate::rootpath;

const CHUNK: usize = 64 * 1024;

/// The file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but cannot be read.
    #[error("cannot read {file}")]
    Read {
        /// The JSON file.
        file: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The JSON does not match the format.
    #[error(
        "{file} is not a valid shipped-extensions list \
         ({{\"flattened\":[{{name, version, kind, probe: {{path, sha256}}}}], \"disabled\":[{{name, version, kind, path}}]}})"
    )]
    Parse {
        /// The JSON file.
        file: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A field that must hold an absolute path does not.
    #[error("{file}: {field} is {value:?}; give the absolute path as the booted system sees it")]
    NotAbsolute {
        /// The JSON file.
        file: PathBuf,
        /// Which field, e.g. `disabled[0].path`.
        field: String,
        /// What it holds.
        value: String,
    },
    /// A sha256 that is not 64 hexadecimal digits.
    #[error("{file}: {field} is {value:?}, not a sha256 (64 hexadecimal digits)")]
    BadSha256 {
        /// The JSON file.
        file: PathBuf,
        /// Which field.
        field: String,
        /// What it holds.
        value: String,
    },
    /// An entry without a name.
    #[error("{file}: {field} is empty; every extension needs its name")]
    EmptyName {
        /// The JSON file.
        file: PathBuf,
        /// Which field.
        field: String,
    },
}

/// Parses the text; `file` only names the file in errors.
pub fn parse(text: &str, file: &Path) -> Result<Shipped, Error> {
    let shipped: Shipped = serde_json::from_str(text).map_err(|source| Error::Parse {
        file: file.to_path_buf(),
        source,
    })?;
    let file = || file.to_path_buf();
    for (i, f) in shipped.flattened.iter().enumerate() {
        check_name(&f.name, || format!("flattened[{i}].name"), file)?;
        check_absolute(&f.probe.path, || format!("flattened[{i}].probe.path"), file)?;
        if f.probe.sha256.len() != 64 || !f.probe.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BadSha256 {
                file: file(),
                field: format!("flattened[{i}].probe.sha256"),
                value: f.probe.sha256.clone(),
            });
        }
    }
    for (i, d) in shipped.disabled.iter().enumerate() {
        check_name(&d.name, || format!("disabled[{i}].name"), file)?;
        check_absolute(&d.path, || format!("disabled[{i}].path"), file)?;
    }
    Ok(shipped)
}

fn check_name(
    name: &str,
    field: impl Fn() -> String,
    file: impl Fn() -> PathBuf,
) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::EmptyName {
            file: file(),
            field: field(),
        });
    }
    Ok(())
}

fn check_absolute(
    path: &str,
    field: impl Fn() -> String,
    file: impl Fn() -> PathBuf,
) -> Result<(), Error> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(Error::NotAbsolute {
            file: file(),
            field: field(),
            value: path.to_string(),
        });
    }
    Ok(())
}

/// Reads and parses the file; a missing file means nothing shipped.
pub fn read(file: &Path) -> Result<Shipped, Error> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(&text, file),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Shipped::default()),
        Err(source) => Err(Error::Read {
            file: file.to_path_buf(),
            source,
        }),
    }
}

/// The lowercase hex sha256 of a file's content, read in chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A regular file at `path` inside `root`: its host path, or why not.
fn regular_file(root: &Path, path: &str) -> Result<PathBuf, String> {
    let host = rootpath::resolve(root, Path::new(path))
        .map_err(|err| format!("cannot resolve {path} in {}: {err}", root.display()))?;
    match host.metadata() {
        Ok(meta) if meta.is_file() => Ok(host),
        Ok(_) => Err(format!("{path} is not a regular file in the merged root")),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Err(format!("{path} is missing from the merged root"))
        }
        Err(err) => Err(format!("cannot read {}: {err}", host.display())),
    }
}

/// The flattened check: visible when the probe is in `root` with the
/// recorded sha256.
pub fn check_flattened(root: &Path, f: &Flattened) -> Visibility {
    let path = &f.probe.path;
    let result = regular_file(root, path).and_then(|host| {
        let got =
            sha256_file(&host).map_err(|err| format!("cannot read {}: {err}", host.display()))?;
        if got.eq_ignore_ascii_case(&f.probe.sha256) {
            Ok(())
        } else {
            Err(format!(
                "sha256 of {path} is {got}, expected {}",
                f.probe.sha256.to_ascii_lowercase()
            ))
        }
    });
    Visibility {
        visible: result.is_ok(),
        probe: Some(path.clone()),
        detail: result.err(),
    }
}

/// What the disabled check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledCheck {
    /// The image is in use anyway.
    pub mounted: bool,
    /// Presence of the file (probe = its path), with the reasons.
    pub visibility: Visibility,
}

/// The disabled check. `backing` are the files loop devices are backed
/// by ([`loop_backing_files`]); `active` is true when a layer of the same
/// kind and name was mounted in this boot.
pub fn check_disabled(
    root: &Path,
    d: &Disabled,
    backing: &[PathBuf],
    active: bool,
) -> DisabledCheck {
    let mut notes = Vec::new();
    let (visible, in_loop) = match regular_file(root, &d.path) {
        Ok(host) => {
            let in_loop = backing.iter().find(|b| same_file(b, &host));
            if let Some(b) = in_loop {
                notes.push(format!(
                    "loop device backed by {} (this file) is attached",
                    b.display()
                ));
            }
            (true, in_loop.is_some())
        }
        Err(why) => {
            notes.push(why);
            (false, false)
        }
    };
    if active {
        notes.push(format!(
            "a {} layer named {:?} is mounted in this boot",
            d.kind.as_str(),
            d.name
        ));
    }
    DisabledCheck {
        mounted: in_loop || active,
        visibility: Visibility {
            visible,
            probe: Some(d.path.clone()),
            detail: (!notes.is_empty()).then(|| notes.join("; ")),
        },
    }
}

/// The same file: same device and inode (paths may differ).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The backing files of the attached loop devices in `sys_block`
/// (`loop*/loop/backing_file`); detached devices have none. Unreadable
/// entries are skipped: a device detached while listing has no file.
pub fn loop_backing_files(sys_block: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop"))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| std::fs::read_to_string(sys_block.join(n).join("loop/backing_file")).ok())
        .map(|text| PathBuf::from(text.trim_end_matches('\n')))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;
    use crate::sys::error_chain;
    use std::os::unix::fs::symlink;
    use strata_proto::ExtensionKind;

    const FILE: &str = "/etc/strata/extensions.json";
    /// sha256("hello\n")
    const HELLO: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn parse_ok(text: &str) -> Shipped {
        parse(text, Path::new(FILE)).unwrap()
    }

    fn parse_err(text: &str) -> String {
        error_chain(&parse(text, Path::new(FILE)).unwrap_err())
    }

    #[test]
    fn reads_both_lists() {
        let text = format!(
            r#"{{"flattened":[{{"name":"hello","version":"1.0.0","kind":"talos","probe":{{"path":"/usr/local/bin/hello","sha256":"{HELLO}"}}}}],
               "disabled":[{{"name":"tools","version":"2.0","kind":"sysext","path":"/usr/lib/strata/extensions-available/tools.raw","extra":1}}]}}"#
        );
        let s = parse_ok(&text);
        assert_eq!(
            s.flattened,
            [Flattened {
                name: "hello".into(),
                version: "1.0.0".into(),
                kind: ExtensionKind::Talos,
                probe: Probe {
                    path: "/usr/local/bin/hello".into(),
                    sha256: HELLO.into()
                }
            }]
        );
        assert_eq!(s.disabled.len(), 1);
        assert_eq!(s.disabled[0].kind, ExtensionKind::Sysext);
        assert_eq!(s.disabled[0].file_name(), "tools.raw");
        for empty in ["{}", r#"{"flattened":[]}"#, r#"{"disabled":[]}"#] {
            assert_eq!(parse_ok(empty), Shipped::default(), "{empty}");
        }
        assert_eq!(
            parse_ok(r#"{"disabled":[{"name":"c","kind":"confext","path":"/x.raw"}]}"#).disabled[0]
                .version,
            ""
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let table = [
            (
                r#"{"disabled":[{"name":"t","kind":"sysext","path":"x.raw"}]}"#,
                r#"/etc/strata/extensions.json: disabled[0].path is "x.raw"; give the absolute path as the booted system sees it"#,
            ),
            (
                r#"{"flattened":[{"name":"h","kind":"talos","probe":{"path":"/a","sha256":"abc"}}]}"#,
                r#"/etc/strata/extensions.json: flattened[0].probe.sha256 is "abc", not a sha256 (64 hexadecimal digits)"#,
            ),
            (
                r#"{"flattened":[{"name":"","kind":"talos","probe":{"path":"/a","sha256":"abc"}}]}"#,
                "/etc/strata/extensions.json: flattened[0].name is empty; every extension needs its name",
            ),
        ];
        for (text, message) in table {
            assert_eq!(parse_err(text), message);
        }
        let err = parse_err(r#"{"disabled":[{"name":"t","kind":"rpm","path":"/x"}]}"#);
        assert!(
            err.starts_with("/etc/strata/extensions.json is not a valid shipped-extensions list"),
            "{err}"
        );
        assert!(err.contains("unknown variant `rpm`"), "{err}");
        assert!(parse_err("").contains("is not a valid"));
    }

    #[test]
    fn a_missing_file_means_nothing_shipped() {
        assert_eq!(
            read(Path::new("/nonexistent/extensions.json")).unwrap(),
            Shipped::default()
        );
    }

    #[test]
    fn sha256_matches_known_digests() {
        let dir = TestDir::new("sha");
        dir.file("hello", b"hello\n").file("empty", b"");
        assert_eq!(sha256_file(&dir.0.join("hello")).unwrap(), HELLO);
        assert_eq!(
            sha256_file(&dir.0.join("empty")).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Longer than one chunk: the digest must cover every chunk.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        dir.file("big", &big);
        let want: String = Sha256::digest(&big)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha256_file(&dir.0.join("big")).unwrap(), want);
    }

    fn flattened(path: &str, sha256: &str) -> Flattened {
        Flattened {
            name: "hello".into(),
            version: "1".into(),
            kind: ExtensionKind::Talos,
            probe: Probe {
                path: path.into(),
                sha256: sha256.into(),
            },
        }
    }

    #[test]
    fn flattened_probes_are_checked_by_digest_inside_the_root() {
        let root = TestDir::new("flat-root");
        root.file("usr/local/bin/hello", b"hello\n").dir("bin");
        symlink("/usr/local/bin/hello", root.0.join("bin/hello")).unwrap();
        let ok = check_flattened(&root.0, &flattened("/usr/local/bin/hello", HELLO));
        assert_eq!(
            ok,
            Visibility {
                visible: true,
                probe: Some("/usr/local/bin/hello".into()),
                detail: None
            }
        );
        // Absolute links resolve inside the root; uppercase digests match.
        let upper = HELLO.to_ascii_uppercase();
        assert!(check_flattened(&root.0, &flattened("/bin/hello", &upper)).visible);
        let bad = check_flattened(&root.0, &flattened("/usr/local/bin/hello", &"0".repeat(64)));
        assert!(!bad.visible);
        assert_eq!(
            bad.detail.as_deref(),
            Some(
                format!(
                    "sha256 of /usr/local/bin/hello is {HELLO}, expected {}",
                    "0".repeat(64)
                )
                .as_str()
            )
        );
        let gone = check_flattened(&root.0, &flattened("/usr/bin/absent", HELLO));
        assert_eq!(
            gone.detail.as_deref(),
            Some("/usr/bin/absent is missing from the merged root")
        );
        let dir = check_flattened(&root.0, &flattened("/usr/local", HELLO));
        assert_eq!(
            dir.detail.as_deref(),
            Some("/usr/local is not a regular file in the merged root")
        );
    }

    fn disabled(path: &str) -> Disabled {
        Disabled {
            name: "tools".into(),
            version: "2.0".into(),
            kind: ExtensionKind::Sysext,
            path: path.into(),
        }
    }

    #[test]
    fn disabled_images_must_be_present_and_unused() {
        let root = TestDir::new("disabled-root");
        root.file("usr/lib/strata/extensions-available/tools.raw", b"hsqs")
            .file("other.raw", b"x");
        let path = "/usr/lib/strata/extensions-available/tools.raw";
        let host = root.0.join(&path[1..]);
        let fine = check_disabled(&root.0, &disabled(path), &[root.0.join("other.raw")], false);
        assert_eq!(
            fine,
            DisabledCheck {
                mounted: false,
                visibility: Visibility {
                    visible: true,
                    probe: Some(path.into()),
                    detail: None
                }
            }
        );
        // A loop device backed by the file through another path (a link).
        let alias = root.0.join("alias.raw");
        symlink(&host, &alias).unwrap();
        let looped = check_disabled(
            &root.0,
            &disabled(path),
            std::slice::from_ref(&alias),
            false,
        );
        assert!(looped.mounted && looped.visibility.visible);
        assert_eq!(
            looped.visibility.detail,
            Some(format!(
                "loop device backed by {} (this file) is attached",
                alias.display()
            ))
        );
        let active = check_disabled(&root.0, &disabled(path), &[], true);
        assert!(active.mounted);
        assert_eq!(
            active.visibility.detail.as_deref(),
            Some(r#"a sysext layer named "tools" is mounted in this boot"#)
        );
        let gone = check_disabled(&root.0, &disabled("/usr/lib/x.raw"), &[], false);
        assert!(!gone.mounted && !gone.visibility.visible);
        assert_eq!(
            gone.visibility.detail.as_deref(),
            Some("/usr/lib/x.raw is missing from the merged root")
        );
    }

    #[test]
    fn loop_backing_files_come_from_bound_loop_devices_only() {
        let sys = TestDir::new("sys-block");
        sys.file("loop0/loop/backing_file", b"/rootfs.sqsh\n")
            .dir("loop1")
            .file("loop2/loop/backing_file", b"/strata/root/usr/x.raw\n")
            .file("vda/size", b"8\n");
        assert_eq!(
            loop_backing_files(&sys.0),
            [
                PathBuf::from("/rootfs.sqsh"),
                PathBuf::from("/strata/root/usr/x.raw")
            ]
        );
        assert!(loop_backing_files(Path::new("/nonexistent")).is_empty());
    }
}
