//! Whether a sysext or confext image may be merged into the root, by
//! systemd's rules (`extension_release_validate()`, `open_extension_release()`
//! and the forbidden-content check of systemd-sysext).
//!
//! The release file is `usr/lib/extension-release.d/extension-release.<name>`
//! (confext: `etc/extension-release.d/...`), symlinks resolved inside the
//! image. When it is missing, systemd falls back to the one regular file
//! `extension-release.<x>` in that directory whose `<x>` is the image name
//! cut at its first `_` or `+` (so `foo_1.2_x86-64.raw` finds
//! `extension-release.foo`), or which carries the xattr
//! `user.extension-release.strict` set to false; two candidates are an error.
//!
//! Rules, checked in systemd's order, the first failure rejects the image:
//! the release data is not empty; its scope (`SYSEXT_SCOPE`/`CONFEXT_SCOPE`,
//! default `system portable`) contains `system`, as strata merges for the
//! booted system; `ARCHITECTURE` is empty, `_any` or this machine's
//! architecture in systemd spelling; `ID` is set; `ID=_any` is accepted
//! without version checks, otherwise it equals the root's `ID` or one of
//! its `ID_LIKE`; a root with neither `VERSION_ID` nor the level key
//! (`SYSEXT_LEVEL`/`CONFEXT_LEVEL`) accepts; when both sides set the level
//! key, they must be equal; otherwise `VERSION_ID` must equal the root's.
//! A sysext that ships `usr/lib/os-release` is refused before all that.
//! Not supported: `--force`, image policies, signatures, the initrd scope
//! (strata never merges for the initrd itself).

use std::io;
use std::path::{Path, PathBuf};

use crate::osrelease::{self, Release};
use crate::rootpath;
use crate::sys::cpath;

/// The xattr that lets a release file's name differ from the image's.
const STRICT_XATTR: &std::ffi::CStr = c"user.extension-release.strict";

/// Which kind of extension image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A system extension: merged on `/usr` and `/opt`.
    Sysext,
    /// A configuration extension: merged on `/etc`.
    Confext,
}

impl Class {
    /// The lower-case name used in paths and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Sysext => "sysext",
            Class::Confext => "confext",
        }
    }

    /// The directory holding the release file, relative to the image root.
    pub fn release_dir(self) -> &'static str {
        match self {
            Class::Sysext => "usr/lib/extension-release.d",
            Class::Confext => "etc/extension-release.d",
        }
    }

    /// The hierarchies merged by default, as systemd does without
    /// `SYSTEMD_SYSEXT_HIERARCHIES`/`SYSTEMD_CONFEXT_HIERARCHIES`.
    pub fn hierarchies(self) -> &'static [&'static str] {
        match self {
            Class::Sysext => &["usr", "opt"],
            Class::Confext => &["etc"],
        }
    }

    /// The release key prefix: `SYSEXT` or `CONFEXT`.
    fn key_prefix(self) -> &'static str {
        match self {
            Class::Sysext => "SYSEXT",
            Class::Confext => "CONFEXT",
        }
    }

    /// `SYSEXT_LEVEL` or `CONFEXT_LEVEL`.
    pub fn level_key(self) -> String {
        format!("{}_LEVEL", self.key_prefix())
    }

    /// `SYSEXT_SCOPE` or `CONFEXT_SCOPE`.
    pub fn scope_key(self) -> String {
        format!("{}_SCOPE", self.key_prefix())
    }

    /// `SYSEXT_VERSION_ID` or `CONFEXT_VERSION_ID`.
    pub fn version_key(self) -> String {
        format!("{}_VERSION_ID", self.key_prefix())
    }
}

/// Why an image is not merged: the systemd rule it broke, or why its
/// release data could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// ARCHITECTURE names another machine.
    #[error("ARCHITECTURE={image:?} does not match this machine ({host}); build the image for {host} or set ARCHITECTURE=_any")]
    Architecture {
        /// The image's value.
        image: String,
        /// This machine, in systemd spelling.
        host: String,
    },
    /// The release file has no `KEY=VALUE` line.
    #[error("{path} carries no release data; systemd ignores such images (set at least ID=)")]
    Empty {
        /// The release file.
        path: PathBuf,
    },
    /// A sysext ships the OS' own release file.
    #[error("the image ships usr/lib/os-release, which systemd refuses (it would replace the root's); remove it from the image")]
    ForbiddenOsRelease,
    /// The root's os-release has no ID.
    #[error(
        "the root's os-release ({path}) has no ID; systemd refuses to merge extensions without one"
    )]
    HostId {
        /// The root's os-release file.
        path: PathBuf,
    },
    /// The root's os-release could not be read.
    #[error("cannot check the image against the root")]
    HostRelease(#[source] osrelease::Error),
    /// ID does not match the root.
    #[error("ID={image:?} matches neither the root's ID={host:?} nor its ID_LIKE={like:?}; set ID to the root's ID or _any")]
    Id {
        /// The image's ID.
        image: String,
        /// The root's ID.
        host: String,
        /// The root's ID_LIKE.
        like: String,
    },
    /// The image name cannot name an image.
    #[error("image name {name:?} is not valid (empty, a path, a control character or a leading \".#\"); rename the .raw file")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Both sides set the level key, to different values.
    #[error("{key}={image:?} differs from the root's {key}={host:?}")]
    Level {
        /// SYSEXT_LEVEL or CONFEXT_LEVEL.
        key: String,
        /// The image's value.
        image: String,
        /// The root's value.
        host: String,
    },
    /// No release file under the expected name nor a usable fallback.
    #[error("no release file {dir}/extension-release.{name} in the image (nor one extension-release.{base} or one marked user.extension-release.strict=false); add it, named after the image")]
    Missing {
        /// The release directory, relative to the image root.
        dir: &'static str,
        /// The image name.
        name: String,
        /// The name cut at the first `_` or `+`.
        base: String,
    },
    /// ID is missing or empty.
    #[error("the release file sets no ID; set ID=<root's ID> or ID=_any")]
    NoId,
    /// VERSION_ID is needed but missing.
    #[error("the release file sets no VERSION_ID, but the root has VERSION_ID={host:?} and no shared {key}; set VERSION_ID={host:?} or matching {key}s")]
    NoVersionId {
        /// The root's VERSION_ID.
        host: String,
        /// SYSEXT_LEVEL or CONFEXT_LEVEL.
        key: String,
    },
    /// Several fallback release files fit.
    #[error("{dir} holds several candidate release files ({candidates}) and none named extension-release.{name}; keep exactly one")]
    NotUnique {
        /// The release directory, relative to the image root.
        dir: &'static str,
        /// The image name.
        name: String,
        /// The candidates' file names.
        candidates: String,
    },
    /// The release file could not be read.
    #[error(transparent)]
    Release(osrelease::Error),
    /// The release directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The scope leaves out the booted system.
    #[error("{key}={scope:?} does not include \"system\"; strata merges for the booted system, add system to the scope")]
    Scope {
        /// SYSEXT_SCOPE or CONFEXT_SCOPE.
        key: String,
        /// The image's value.
        scope: String,
    },
    /// VERSION_ID differs from the root's.
    #[error("VERSION_ID={image:?} differs from the root's VERSION_ID={host:?}")]
    VersionId {
        /// The image's value.
        image: String,
        /// The root's value.
        host: String,
    },
}

/// systemd's `image_name_is_valid()`.
pub fn is_valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.chars().any(char::is_control)
        && !name.starts_with(".#")
}

/// The name without version or tries suffix: cut at the first `_` or `+`.
pub fn base_name(name: &str) -> &str {
    name.split(['_', '+']).next().unwrap_or(name)
}

/// The architecture of `uname -m` as systemd spells it in `ARCHITECTURE=`.
pub fn systemd_architecture(machine: &str) -> &str {
    match machine {
        "x86_64" => "x86-64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        "aarch64" | "arm64" => "arm64",
        "aarch64_be" => "arm64-be",
        "armv7l" | "armv6l" | "armv5tel" | "armv7b" | "arm" => "arm",
        "ppc64le" => "ppc64-le",
        "ppc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loongarch64",
        other => other,
    }
}

/// Finds the image's release file (see the module doc) under `image`.
pub fn find_release_file(image: &Path, class: Class, name: &str) -> Result<PathBuf, Rejection> {
    if !is_valid_image_name(name) {
        return Err(Rejection::InvalidName {
            name: name.to_string(),
        });
    }
    let dir_rel = class.release_dir();
    let primary = Path::new(dir_rel).join(format!("extension-release.{name}"));
    let read_fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Rejection::Read { path, source }
    };
    let resolved = rootpath::resolve(image, &primary).map_err(read_fail(&image.join(&primary)))?;
    if resolved.exists() {
        return Ok(resolved);
    }
    let dir =
        rootpath::resolve(image, Path::new(dir_rel)).map_err(read_fail(&image.join(dir_rel)))?;
    let base = base_name(name);
    let missing = || Rejection::Missing {
        dir: dir_rel,
        name: name.to_string(),
        base: base.to_string(),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(source) => return Err(Rejection::Read { path: dir, source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_fail(&dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(suffix) = file_name.strip_prefix("extension-release.") else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || !is_valid_image_name(suffix) {
            continue;
        }
        if suffix == base || strict_xattr(&entry.path()) == Some(false) {
            found.push(file_name);
        }
    }
    found.sort();
    match found.as_slice() {
        [] => Err(missing()),
        [one] => Ok(dir.join(one)),
        many => Err(Rejection::NotUnique {
            dir: dir_rel,
            name: name.to_string(),
            candidates: many.join(", "),
        }),
    }
}

/// `user.extension-release.strict` as a boolean; `None` when absent or not
/// a boolean (systemd then skips the file).
fn strict_xattr(path: &Path) -> Option<bool> {
    let c_path = cpath(path).ok()?;
    let mut value = [0u8; 16];
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // kernel writes at most `value.len()` bytes into `value`.
    let len = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            STRICT_XATTR.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    let len = usize::try_from(len).ok()?;
    parse_boolean(std::str::from_utf8(value.get(..len)?).ok()?)
}

/// systemd's `parse_boolean()`.
fn parse_boolean(text: &str) -> Option<bool> {
    match text.trim_end_matches('\0').to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// The checks of the root that do not depend on the image.
pub fn check_host(host: &Release, host_path: &Path) -> Result<(), Rejection> {
    match host.non_empty("ID") {
        Some(_) => Ok(()),
        None => Err(Rejection::HostId {
            path: host_path.to_path_buf(),
        }),
    }
}

/// A sysext must not ship `usr/lib/os-release` (systemd's forbidden content).
pub fn check_content(image: &Path, class: Class) -> Result<(), Rejection> {
    if class != Class::Sysext {
        return Ok(());
    }
    let path = rootpath::resolve(image, Path::new("usr/lib/os-release")).map_err(|source| {
        Rejection::Read {
            path: image.join("usr/lib/os-release"),
            source,
        }
    })?;
    if path.symlink_metadata().is_ok() {
        return Err(Rejection::ForbiddenOsRelease);
    }
    Ok(())
}

/// systemd's `extension_release_validate()` for the booted system's scope.
/// `host` is the root's os-release (with a non-empty ID), `image` the
/// image's release data, `machine` is `uname -m`.
pub fn validate(
    class: Class,
    host: &Release,
    image: &Release,
    release_path: &Path,
    machine: &str,
) -> Result<(), Rejection> {
    if image.is_empty() {
        return Err(Rejection::Empty {
            path: release_path.to_path_buf(),
        });
    }
    check_scope(class, image)?;
    check_architecture(image, machine)?;
    let id = image.non_empty("ID").ok_or(Rejection::NoId)?;
    if id == "_any" {
        return Ok(());
    }
    check_id(host, id)?;
    check_version(class, host, image)
}

fn check_scope(class: Class, image: &Release) -> Result<(), Rejection> {
    let key = class.scope_key();
    match image.get(&key) {
        Some(scope) if !scope.split_whitespace().any(|s| s == "system") => Err(Rejection::Scope {
            key,
            scope: scope.to_string(),
        }),
        _ => Ok(()),
    }
}

fn check_architecture(image: &Release, machine: &str) -> Result<(), Rejection> {
    let host = systemd_architecture(machine);
    match image.non_empty("ARCHITECTURE") {
        Some(arch) if arch != "_any" && arch != host => Err(Rejection::Architecture {
            image: arch.to_string(),
            host: host.to_string(),
        }),
        _ => Ok(()),
    }
}

fn check_id(host: &Release, id: &str) -> Result<(), Rejection> {
    let host_id = host.get("ID").unwrap_or_default();
    let like = host.get("ID_LIKE").unwrap_or_default();
    if id == host_id || like.split_whitespace().any(|l| l == id) {
        return Ok(());
    }
    Err(Rejection::Id {
        image: id.to_string(),
        host: host_id.to_string(),
        like: like.to_string(),
    })
}

fn check_version(class: Class, host: &Release, image: &Release) -> Result<(), Rejection> {
    let key = class.level_key();
    let host_version = host.non_empty("VERSION_ID");
    let host_level = host.non_empty(&key);
    if host_version.is_none() && host_level.is_none() {
        return Ok(());
    }
    if let (Some(host_level), Some(image_level)) = (host_level, image.non_empty(&key)) {
        if host_level == image_level {
            return Ok(());
        }
        return Err(Rejection::Level {
            key,
            image: image_level.to_string(),
            host: host_level.to_string(),
        });
    }
    // Only the host's level is set (or only the image's): compare versions.
    let Some(host_version) = host_version else {
        return Ok(());
    };
    match image.non_empty("VERSION_ID") {
        None => Err(Rejection::NoVersionId {
            host: host_version.to_string(),
            key,
        }),
        Some(v) if v != host_version => Err(Rejection::VersionId {
            image: v.to_string(),
            host: host_version.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// The version shown in the report: `SYSEXT_VERSION_ID` (or
/// `CONFEXT_VERSION_ID`), else `VERSION_ID`, else empty.
pub fn shown_version(class: Class, image: &Release) -> String {
    image
        .non_empty(&class.version_key())
        .or_else(|| image.non_empty("VERSION_ID"))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;
    use crate::sys::error_chain;

    fn rel(pairs: &[(&str, &str)]) -> Release {
        Release::from_pairs(pairs)
    }

    fn check(class: Class, host: &Release, image: &Release) -> Result<(), String> {
        validate(
            class,
            host,
            image,
            Path::new("/x/extension-release.a"),
            "x86_64",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_systemd_rules_in_a_table() {
        use Class::{Confext, Sysext};
        let debian = rel(&[("ID", "debian"), ("VERSION_ID", "12")]);
        let derived = rel(&[
            ("ID", "strata"),
            ("ID_LIKE", "debian ubuntu"),
            ("VERSION_ID", "12"),
        ]);
        let leveled = rel(&[
            ("ID", "flatcar"),
            ("VERSION_ID", "4000.1"),
            ("SYSEXT_LEVEL", "1.0"),
            ("CONFEXT_LEVEL", "2"),
        ]);
        let rolling = rel(&[("ID", "arch")]);
        type Case<'a> = (
            Class,
            &'a Release,
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (Sysext, &debian, &[], Some("carries no release data")),
            (Sysext, &debian, &[("ID", "_any")], None),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("VERSION_ID", "99")],
                None,
            ),
            (
                Sysext,
                &debian,
                &[("ID", "debian"), ("VERSION_ID", "12")],
                None,
            ),
            (
                Sysext,
                &debian,
                &[("ID", "debian"), ("VERSION_ID", "11")],
                Some("VERSION_ID=\"11\" differs from the root's VERSION_ID=\"12\""),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "debian")],
                Some("sets no VERSION_ID, but the root has VERSION_ID=\"12\""),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "fedora"), ("VERSION_ID", "12")],
                Some("ID=\"fedora\" matches neither the root's ID=\"debian\" nor its ID_LIKE=\"\""),
            ),
            (Sysext, &debian, &[("VERSION_ID", "12")], Some("sets no ID")),
            (Sysext, &debian, &[("ID", "")], Some("sets no ID")),
            (
                Sysext,
                &derived,
                &[("ID", "ubuntu"), ("VERSION_ID", "12")],
                None,
            ),
            (
                Sysext,
                &derived,
                &[("ID", "debian"), ("VERSION_ID", "13")],
                Some("differs from the root's VERSION_ID"),
            ),
            (Sysext, &rolling, &[("ID", "arch")], None),
            (
                Sysext,
                &leveled,
                &[("ID", "flatcar"), ("SYSEXT_LEVEL", "1.0")],
                None,
            ),
            (
                Sysext,
                &leveled,
                &[
                    ("ID", "flatcar"),
                    ("SYSEXT_LEVEL", "1.1"),
                    ("VERSION_ID", "4000.1"),
                ],
                Some("SYSEXT_LEVEL=\"1.1\" differs from the root's SYSEXT_LEVEL=\"1.0\""),
            ),
            (
                Sysext,
                &leveled,
                &[("ID", "flatcar"), ("VERSION_ID", "4000.1")],
                None,
            ),
            (
                Sysext,
                &leveled,
                &[("ID", "flatcar"), ("CONFEXT_LEVEL", "2")],
                Some("sets no VERSION_ID"),
            ),
            (
                Confext,
                &leveled,
                &[("ID", "flatcar"), ("CONFEXT_LEVEL", "2")],
                None,
            ),
            (
                Confext,
                &leveled,
                &[("ID", "flatcar"), ("SYSEXT_LEVEL", "1.0")],
                Some("sets no VERSION_ID"),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("ARCHITECTURE", "x86-64")],
                None,
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("ARCHITECTURE", "_any")],
                None,
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("ARCHITECTURE", "")],
                None,
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("ARCHITECTURE", "arm64")],
                Some("ARCHITECTURE=\"arm64\" does not match this machine (x86-64)"),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("ARCHITECTURE", "x86_64")],
                Some("does not match this machine"),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("SYSEXT_SCOPE", "initrd portable")],
                Some("SYSEXT_SCOPE=\"initrd portable\" does not include \"system\""),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("SYSEXT_SCOPE", "")],
                Some("does not include \"system\""),
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("SYSEXT_SCOPE", "initrd system")],
                None,
            ),
            (
                Sysext,
                &debian,
                &[("ID", "_any"), ("CONFEXT_SCOPE", "initrd")],
                None,
            ),
            (
                Confext,
                &debian,
                &[("ID", "_any"), ("CONFEXT_SCOPE", "initrd")],
                Some("CONFEXT_SCOPE=\"initrd\""),
            ),
            // Scope and architecture are checked before ID, as in systemd.
            (
                Sysext,
                &debian,
                &[("ID", "fedora"), ("ARCHITECTURE", "s390x")],
                Some("ARCHITECTURE"),
            ),
        ];
        for (class, host, image, want) in cases {
            let got = check(*class, host, &rel(image));
            match want {
                None => assert_eq!(got, Ok(()), "{class:?} {image:?}"),
                Some(text) => {
                    let message =
                        got.expect_err(&format!("{class:?} {image:?} should be rejected"));
                    assert!(message.contains(text), "{class:?} {image:?}: {message}");
                }
            }
        }
    }

    #[test]
    fn a_root_without_id_is_refused() {
        let err =
            check_host(&rel(&[("VERSION_ID", "1")]), Path::new("/r/etc/os-release")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the root's os-release (/r/etc/os-release) has no ID; systemd refuses to merge extensions without one"
        );
        assert!(check_host(&rel(&[("ID", "x")]), Path::new("/")).is_ok());
    }

    #[test]
    fn architectures_use_systemd_spelling() {
        assert_eq!(systemd_architecture("x86_64"), "x86-64");
        assert_eq!(systemd_architecture("aarch64"), "arm64");
        assert_eq!(systemd_architecture("i686"), "x86");
        assert_eq!(systemd_architecture("mips"), "mips");
    }

    #[test]
    fn names_and_base_names() {
        assert_eq!(base_name("foo_1.2_x86-64"), "foo");
        assert_eq!(base_name("foo+3-1"), "foo");
        assert_eq!(base_name("foo"), "foo");
        for bad in ["", ".", "..", "a/b", ".#tmp", "a\nb"] {
            assert!(!is_valid_image_name(bad), "{bad:?}");
        }
        assert!(is_valid_image_name("docker-24.0_x86-64"));
    }

    fn image_with(files: &[&str]) -> TestDir {
        let dir = TestDir::new("extrel");
        for file in files {
            dir.file(file, b"ID=_any\n");
        }
        dir
    }

    #[test]
    fn the_release_file_is_found_by_name_then_by_base_name() {
        let img = image_with(&["usr/lib/extension-release.d/extension-release.hello"]);
        assert_eq!(
            find_release_file(&img.0, Class::Sysext, "hello").unwrap(),
            img.0
                .join("usr/lib/extension-release.d/extension-release.hello")
        );
        let got = find_release_file(&img.0, Class::Sysext, "hello_1.2+3").unwrap();
        assert_eq!(
            got,
            img.0
                .join("usr/lib/extension-release.d/extension-release.hello")
        );
        let img = image_with(&["etc/extension-release.d/extension-release.cfg"]);
        assert!(find_release_file(&img.0, Class::Confext, "cfg").is_ok());
        let err = find_release_file(&img.0, Class::Sysext, "cfg").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no release file usr/lib/extension-release.d/extension-release.cfg in the image (nor one extension-release.cfg or one marked user.extension-release.strict=false); add it, named after the image"
        );
    }

    #[test]
    fn a_differently_named_file_needs_the_relaxed_xattr() {
        let img = image_with(&["usr/lib/extension-release.d/extension-release.other"]);
        let err = find_release_file(&img.0, Class::Sysext, "hello").unwrap_err();
        assert!(matches!(err, Rejection::Missing { .. }));
        let path = img
            .0
            .join("usr/lib/extension-release.d/extension-release.other");
        let c_path = cpath(&path).unwrap();
        // SAFETY: NUL-terminated strings and a 1-byte value, all outliving the call.
        let ret = unsafe {
            libc::lsetxattr(
                c_path.as_ptr(),
                STRICT_XATTR.as_ptr(),
                b"0".as_ptr().cast(),
                1,
                0,
            )
        };
        if ret != 0 {
            eprintln!(
                "skipped: cannot set user xattrs here: {}",
                io::Error::last_os_error()
            );
            return;
        }
        assert_eq!(
            find_release_file(&img.0, Class::Sysext, "hello").unwrap(),
            path
        );
    }

    #[test]
    fn two_fallback_candidates_are_an_error() {
        let img = TestDir::new("extrel-two");
        img.file(
            "usr/lib/extension-release.d/extension-release.hello",
            b"ID=_any\n",
        );
        std::os::unix::fs::symlink(
            "extension-release.hello",
            img.0
                .join("usr/lib/extension-release.d/extension-release.hello_2"),
        )
        .unwrap();
        // The exact name wins, even through a symlink.
        assert!(find_release_file(&img.0, Class::Sysext, "hello_2").is_ok());
        let img = image_with(&[
            "usr/lib/extension-release.d/extension-release.a",
            "usr/lib/extension-release.d/extension-release.b",
        ]);
        let path_b = img
            .0
            .join("usr/lib/extension-release.d/extension-release.b");
        let c_path = cpath(&path_b).unwrap();
        // SAFETY: NUL-terminated strings and a 5-byte value, all outliving the call.
        let ret = unsafe {
            libc::lsetxattr(
                c_path.as_ptr(),
                STRICT_XATTR.as_ptr(),
                b"false".as_ptr().cast(),
                5,
                0,
            )
        };
        if ret != 0 {
            eprintln!(
                "skipped: cannot set user xattrs here: {}",
                io::Error::last_os_error()
            );
            return;
        }
        let err = find_release_file(&img.0, Class::Sysext, "a_1").unwrap_err();
        assert!(
            err.to_string()
                .contains("(extension-release.a, extension-release.b)"),
            "{err}"
        );
    }

    #[test]
    fn a_sysext_must_not_ship_os_release() {
        let img = image_with(&["usr/lib/os-release"]);
        assert!(matches!(
            check_content(&img.0, Class::Sysext),
            Err(Rejection::ForbiddenOsRelease)
        ));
        assert!(check_content(&img.0, Class::Confext).is_ok());
        let img = image_with(&["etc/os-release"]);
        assert!(check_content(&img.0, Class::Sysext).is_ok());
    }

    #[test]
    fn versions_shown_prefer_the_extension_key() {
        let r = rel(&[("VERSION_ID", "12"), ("SYSEXT_VERSION_ID", "1.2.3")]);
        assert_eq!(shown_version(Class::Sysext, &r), "1.2.3");
        assert_eq!(shown_version(Class::Confext, &r), "12");
        assert_eq!(shown_version(Class::Sysext, &rel(&[("ID", "_any")])), "");
    }

    #[test]
    fn booleans_parse_like_systemd() {
        assert_eq!(parse_boolean("0"), Some(false));
        assert_eq!(parse_boolean("Off"), Some(false));
        assert_eq!(parse_boolean("yes"), Some(true));
        assert_eq!(parse_boolean("maybe"), None);
        let err = Rejection::HostRelease(osrelease::Error::Missing {
            root: PathBuf::from("/r"),
        });
        assert!(error_chain(&err)
            .starts_with("cannot check the image against the root: /r has no os-release file"));
    }
}
