//! The guest's side of systemd's extension-release rules: finding an
//! image's release file on the mounted image and turning a broken rule into
//! the refusal the report shows. The rules themselves (and the release file
//! parser) are [`strata_proto::extrelease`], the ones the composer checks
//! images with before they ship.
//!
//! The release file is `usr/lib/extension-release.d/extension-release.<name>`
//! (confext: `etc/extension-release.d/...`), symlinks resolved inside the
//! image; the fallback among other `extension-release.*` files reads the
//! `user.extension-release.strict` xattr here and leaves the choice to
//! [`strata_proto::extrelease::pick_release_file`].
//! Not supported: `--force`, image policies, signatures, the initrd scope
//! (strata never merges for the initrd itself).

use std::io;
use std::path::{Path, PathBuf};

use strata_proto::extrelease::{self as rules, Candidate, Host, Mismatch, Pick, Strict};
pub use strata_proto::extrelease::{
    base_name, is_valid_image_name, parse_boolean, shown_version, systemd_arch, Class,
};
use strata_proto::osrelease::Release;

use crate::osrelease;
use crate::rootpath;
use crate::sys::cpath;

/// The xattr that lets a release file's name differ from the image's.
const STRICT_XATTR: &std::ffi::CStr = c"user.extension-release.strict";

/// Why an image is not merged: the systemd rule it broke, or why its
/// release data could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// ARCHITECTURE is no name systemd knows.
    #[error("ARCHITECTURE={image:?} is not an architecture name systemd knows; this machine is {host}, set ARCHITECTURE={host} or _any")]
    UnknownArchitecture {
        /// The image's value.
        image: String,
        /// This machine, in systemd spelling.
        host: String,
    },
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
        /// The root's ID_LIKE, space-separated.
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

/// The release directory, relative to the image root.
fn release_dir(class: Class) -> &'static str {
    class.release_dir().trim_start_matches('/')
}

/// Finds the image's release file (see the module doc) under `image`.
pub fn find_release_file(image: &Path, class: Class, name: &str) -> Result<PathBuf, Rejection> {
    if !is_valid_image_name(name) {
        return Err(Rejection::InvalidName {
            name: name.to_string(),
        });
    }
    let dir_rel = release_dir(class);
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
    let missing = || Rejection::Missing {
        dir: dir_rel,
        name: name.to_string(),
        base: base_name(name).to_string(),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(source) => return Err(Rejection::Read { path: dir, source }),
    };
    let mut candidates = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_fail(&dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || !file_name.starts_with("extension-release.") {
            continue;
        }
        let strict = match strict_xattr(&entry.path()) {
            Some(false) => Strict::No,
            _ => Strict::Yes,
        };
        candidates.push(Candidate { file_name, strict });
    }
    match rules::pick_release_file(name, &candidates) {
        Pick::Found(one) => Ok(dir.join(one)),
        // Only an image whose xattrs cannot be seen yields this; ours are mounted.
        Pick::Unverified(_) | Pick::Missing { .. } => Err(missing()),
        Pick::NotUnique(many) => Err(Rejection::NotUnique {
            dir: dir_rel,
            name: name.to_string(),
            candidates: many.join(", "),
        }),
    }
}

/// `user.extension-release.strict` as a boolean; `None` when absent or not
/// a boolean (systemd then treats the file as strict).
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

/// The checks of the root that do not depend on the image: systemd merges
/// nothing for a root without `ID`.
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
    for forbidden in rules::forbidden_content(class) {
        let rel = forbidden.trim_start_matches('/');
        let path = rootpath::resolve(image, Path::new(rel)).map_err(|source| Rejection::Read {
            path: image.join(rel),
            source,
        })?;
        if path.symlink_metadata().is_ok() {
            return Err(Rejection::ForbiddenOsRelease);
        }
    }
    Ok(())
}

/// systemd's `extension_release_validate()` for the booted system's scope,
/// by the shared rules. `host` is the root's os-release (read from
/// `host_path`), `image` the image's release data (from `release_path`),
/// `machine` is `uname -m`.
pub fn validate(
    class: Class,
    (host, host_path): (&Release, &Path),
    image: &Release,
    release_path: &Path,
    machine: &str,
) -> Result<(), Rejection> {
    let arch = systemd_arch(machine).unwrap_or(machine);
    let host = Host::with_architecture(host, arch);
    rules::validate(class, &host, image).map_err(|m| rejection(m, arch, host_path, release_path))
}

/// The guest's words for a broken rule.
fn rejection(m: Mismatch, arch: &str, host_path: &Path, release_path: &Path) -> Rejection {
    match m {
        Mismatch::Empty => Rejection::Empty {
            path: release_path.to_path_buf(),
        },
        Mismatch::Scope { key, scope } => Rejection::Scope {
            key: key.to_string(),
            scope,
        },
        Mismatch::UnknownArchitecture { image } => Rejection::UnknownArchitecture {
            image,
            host: arch.to_string(),
        },
        Mismatch::Architecture { image, host } => Rejection::Architecture { image, host },
        Mismatch::NoId => Rejection::NoId,
        Mismatch::HostId => Rejection::HostId {
            path: host_path.to_path_buf(),
        },
        Mismatch::Id { image, host, like } => Rejection::Id {
            image,
            host,
            like: like.join(" "),
        },
        Mismatch::Level { key, image, host } => Rejection::Level {
            key: key.to_string(),
            image,
            host,
        },
        Mismatch::NoVersionId { key, host } => Rejection::NoVersionId {
            host,
            key: key.to_string(),
        },
        Mismatch::VersionId { image, host } => Rejection::VersionId { image, host },
    }
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
            (host, Path::new("/r/etc/os-release")),
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
                Some("ARCHITECTURE=\"x86_64\" is not an architecture name systemd knows; this machine is x86-64"),
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
        assert_eq!(systemd_arch("x86_64"), Some("x86-64"));
        assert_eq!(systemd_arch("aarch64"), Some("arm64"));
        assert_eq!(systemd_arch("i686"), Some("x86"));
        assert_eq!(systemd_arch("mips"), None);
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
        let why = format!(
            "cannot set user xattrs here: {}",
            io::Error::last_os_error()
        );
        if !crate::test_support::require(
            ret == 0,
            &why,
            "run the tests on a filesystem with user xattrs",
        ) {
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
        let why = format!(
            "cannot set user xattrs here: {}",
            io::Error::last_os_error()
        );
        if !crate::test_support::require(
            ret == 0,
            &why,
            "run the tests on a filesystem with user xattrs",
        ) {
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
