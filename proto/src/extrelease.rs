//! Whether a sysext or confext image may be merged, by systemd's rules
//! (`extension_release_validate()`, `open_extension_release()` and the
//! forbidden-content check of systemd-sysext).
//!
//! The composer renders a broken rule as a finding (`strata ext validate`,
//! `strata build`), the guest init as a refusal to merge the image. Both ask
//! the predicates here, so an image the composer passes is one the guest
//! merges, and the other way round.
//!
//! The release file is `usr/lib/extension-release.d/extension-release.<name>`
//! (confext: `etc/extension-release.d/...`), symlinks resolved inside the
//! image. When it is missing, systemd falls back to the one regular file
//! `extension-release.<x>` in that directory whose `<x>` is the image name
//! cut at its first `_` or `+` (so `foo_1.2_x86-64.raw` finds
//! `extension-release.foo`), or which carries the xattr
//! `user.extension-release.strict` set to false; two candidates are an error
//! ([`pick_release_file`]).
//!
//! Rules, in systemd's order ([`validate`]): the release data is not empty;
//! its scope (`SYSEXT_SCOPE`/`CONFEXT_SCOPE`, default `system portable`)
//! contains `system`, as strata merges for the booted system;
//! `ARCHITECTURE` is empty, `_any` or the host's architecture in systemd
//! spelling; `ID` is set; the host has an `ID` (else systemd merges
//! nothing); `ID=_any` is accepted without version checks, otherwise the
//! host's `ID` or one of its `ID_LIKE` equals the image's; a host with neither `VERSION_ID` nor the level key
//! (`SYSEXT_LEVEL`/`CONFEXT_LEVEL`) accepts; when both sides set the level
//! key, they must be equal; otherwise `VERSION_ID` must equal the host's.
//! A sysext that ships `usr/lib/os-release` is refused before all that.
//! Not supported: `--force`, image policies, signatures, the initrd scope
//! (strata never merges for the initrd itself).

use crate::osrelease::Release;

/// Which kind of systemd extension image: the part of
/// [`crate::ExtensionKind`] these rules apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `systemd-sysext`: merges `/usr` and `/opt`.
    Sysext,
    /// `systemd-confext`: merges `/etc`.
    Confext,
}

impl Class {
    /// `sysext` or `confext`, as paths and reports spell it.
    pub fn as_str(self) -> &'static str {
        crate::ExtensionKind::from(self).as_str()
    }

    /// Directory of the release file inside the image (absolute in the image).
    pub fn release_dir(self) -> &'static str {
        match self {
            Class::Sysext => "/usr/lib/extension-release.d",
            Class::Confext => "/etc/extension-release.d",
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

    /// The API level key compared with the host (`SYSEXT_LEVEL`/`CONFEXT_LEVEL`).
    pub fn level_key(self) -> &'static str {
        match self {
            Class::Sysext => "SYSEXT_LEVEL",
            Class::Confext => "CONFEXT_LEVEL",
        }
    }

    /// The scope key (`SYSEXT_SCOPE`/`CONFEXT_SCOPE`).
    pub fn scope_key(self) -> &'static str {
        match self {
            Class::Sysext => "SYSEXT_SCOPE",
            Class::Confext => "CONFEXT_SCOPE",
        }
    }

    /// `SYSEXT_VERSION_ID` or `CONFEXT_VERSION_ID`.
    pub fn version_key(self) -> &'static str {
        match self {
            Class::Sysext => "SYSEXT_VERSION_ID",
            Class::Confext => "CONFEXT_VERSION_ID",
        }
    }

    /// The systemd tool that merges this class.
    pub fn tool(self) -> &'static str {
        match self {
            Class::Sysext => "systemd-sysext",
            Class::Confext => "systemd-confext",
        }
    }

    /// The other class (for "this key belongs to the other kind" hints).
    pub fn other(self) -> Class {
        match self {
            Class::Sysext => Class::Confext,
            Class::Confext => Class::Sysext,
        }
    }
}

/// The host side of the match: what the root's os-release says, and the
/// architecture the image must be built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `ID`; empty when unset (systemd then merges nothing).
    pub id: String,
    /// `ID_LIKE`, split at whitespace.
    pub id_like: Vec<String>,
    /// `VERSION_ID`, when set and not empty.
    pub version_id: Option<String>,
    /// `SYSEXT_LEVEL`, when set and not empty.
    pub sysext_level: Option<String>,
    /// `CONFEXT_LEVEL`, when set and not empty.
    pub confext_level: Option<String>,
    /// Architecture in systemd's spelling (`x86-64`, `arm64`).
    pub architecture: String,
}

/// An architecture name strata cannot map to systemd's spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("architecture {0:?} is unknown; hint: use amd64 or arm64")]
pub struct UnknownArchitecture(pub String);

impl Host {
    /// The host described by an os-release file; `architecture` in any
    /// spelling [`systemd_arch`] knows.
    pub fn new(release: &Release, architecture: &str) -> Result<Host, UnknownArchitecture> {
        let architecture = systemd_arch(architecture)
            .ok_or_else(|| UnknownArchitecture(architecture.to_string()))?;
        Ok(Host::with_architecture(release, architecture))
    }

    /// The host described by an os-release file, `architecture` already in
    /// systemd's spelling (the guest passes its `uname -m` through
    /// [`systemd_arch`], keeping names it does not know as they are).
    pub fn with_architecture(release: &Release, architecture: &str) -> Host {
        let opt = |k: &str| release.non_empty(k).map(String::from);
        Host {
            id: opt("ID").unwrap_or_default(),
            id_like: release
                .get("ID_LIKE")
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            version_id: opt("VERSION_ID"),
            sysext_level: opt("SYSEXT_LEVEL"),
            confext_level: opt("CONFEXT_LEVEL"),
            architecture: architecture.to_string(),
        }
    }

    /// [`Host::new`] from the text of an os-release file.
    pub fn from_os_release(text: &str, architecture: &str) -> Result<Host, UnknownArchitecture> {
        Host::new(&Release::parse(text), architecture)
    }

    /// The host's level for this class (`SYSEXT_LEVEL`/`CONFEXT_LEVEL`).
    pub fn level(&self, class: Class) -> Option<&str> {
        match class {
            Class::Sysext => self.sysext_level.as_deref(),
            Class::Confext => self.confext_level.as_deref(),
        }
        .filter(|l| !l.is_empty())
    }
}

/// A rule the image breaks: systemd would not merge it. The fields are what
/// each side needs to explain the refusal in its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The release file carries no `KEY=VALUE` line.
    Empty,
    /// The scope leaves out the booted system.
    Scope {
        /// `SYSEXT_SCOPE` or `CONFEXT_SCOPE`.
        key: &'static str,
        /// The image's value.
        scope: String,
    },
    /// `ARCHITECTURE` is no name systemd knows.
    UnknownArchitecture {
        /// The image's value.
        image: String,
    },
    /// `ARCHITECTURE` names another machine.
    Architecture {
        /// The image's value.
        image: String,
        /// The host's, in systemd spelling.
        host: String,
    },
    /// `ID` is missing or empty.
    NoId,
    /// The host's os-release has no `ID`: systemd merges nothing then.
    HostId,
    /// `ID` matches neither the host's `ID` nor its `ID_LIKE`.
    Id {
        /// The image's `ID`.
        image: String,
        /// The host's `ID`.
        host: String,
        /// The host's `ID_LIKE`.
        like: Vec<String>,
    },
    /// Both sides set the level key, to different values.
    Level {
        /// `SYSEXT_LEVEL` or `CONFEXT_LEVEL`.
        key: &'static str,
        /// The image's value.
        image: String,
        /// The host's value.
        host: String,
    },
    /// `VERSION_ID` is needed but missing.
    NoVersionId {
        /// `SYSEXT_LEVEL` or `CONFEXT_LEVEL`.
        key: &'static str,
        /// The host's `VERSION_ID`.
        host: String,
    },
    /// `VERSION_ID` differs from the host's.
    VersionId {
        /// The image's value.
        image: String,
        /// The host's value.
        host: String,
    },
}

/// systemd's `extension_release_validate()` for the booted system's scope:
/// the first rule the image breaks, in systemd's order.
pub fn validate(class: Class, host: &Host, image: &Release) -> Result<(), Mismatch> {
    if image.is_empty() {
        return Err(Mismatch::Empty);
    }
    check_scope(class, image)?;
    check_architecture(image, Some(&host.architecture))?;
    check_identity(class, Some(host), image)
}

/// The scope must include `system`; an unset scope means `system portable`.
pub fn check_scope(class: Class, image: &Release) -> Result<(), Mismatch> {
    let key = class.scope_key();
    match image.get(key) {
        Some(scope) if !scope.split_whitespace().any(|s| s == "system") => Err(Mismatch::Scope {
            key,
            scope: scope.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `ARCHITECTURE`: unset, `_any`, or a systemd name equal to the host's
/// (without a host, only the name is checked).
pub fn check_architecture(image: &Release, host: Option<&str>) -> Result<(), Mismatch> {
    let Some(arch) = image.non_empty("ARCHITECTURE").filter(|a| *a != "_any") else {
        return Ok(());
    };
    if !SYSTEMD_ARCHES.contains(&arch) {
        return Err(Mismatch::UnknownArchitecture {
            image: arch.to_string(),
        });
    }
    match host {
        Some(host) if host != arch => Err(Mismatch::Architecture {
            image: arch.to_string(),
            host: host.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `ID`, then (unless `ID=_any`) the host's `ID`/`ID_LIKE` and the version
/// rules. Without a host, only the image's `ID` is checked.
pub fn check_identity(class: Class, host: Option<&Host>, image: &Release) -> Result<(), Mismatch> {
    let id = image.non_empty("ID").ok_or(Mismatch::NoId)?;
    let Some(host) = host else { return Ok(()) };
    // systemd refuses the whole merge for such a host, `_any` images included.
    if host.id.is_empty() {
        return Err(Mismatch::HostId);
    }
    if id == "_any" {
        return Ok(());
    }
    if id != host.id && !host.id_like.iter().any(|l| l == id) {
        return Err(Mismatch::Id {
            image: id.to_string(),
            host: host.id.clone(),
            like: host.id_like.clone(),
        });
    }
    check_version(class, host, image)
}

/// The version part of `extension_release_validate`, including its quirk
/// that a host with a level but no `VERSION_ID` accepts an image without a level.
fn check_version(class: Class, host: &Host, image: &Release) -> Result<(), Mismatch> {
    let key = class.level_key();
    let host_level = host.level(class);
    let host_version = host.version_id.as_deref().filter(|v| !v.is_empty());
    if host_level.is_none() && host_version.is_none() {
        return Ok(());
    }
    if let (Some(host_level), Some(image_level)) = (host_level, image.non_empty(key)) {
        if host_level == image_level {
            return Ok(());
        }
        return Err(Mismatch::Level {
            key,
            image: image_level.to_string(),
            host: host_level.to_string(),
        });
    }
    let Some(host_version) = host_version else {
        return Ok(());
    };
    match image.non_empty("VERSION_ID") {
        None => Err(Mismatch::NoVersionId {
            key,
            host: host_version.to_string(),
        }),
        Some(v) if v != host_version => Err(Mismatch::VersionId {
            image: v.to_string(),
            host: host_version.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether an image of this class may ship a path at all: a sysext must not
/// ship `usr/lib/os-release` (it would replace the root's); systemd refuses it.
pub fn forbidden_content(class: Class) -> &'static [&'static str] {
    match class {
        Class::Sysext => &["/usr/lib/os-release"],
        Class::Confext => &[],
    }
}

/// The version a report shows for an image: `SYSEXT_VERSION_ID` (or
/// `CONFEXT_VERSION_ID`), else `VERSION_ID`, else empty.
pub fn shown_version(class: Class, image: &Release) -> String {
    image
        .non_empty(class.version_key())
        .or_else(|| image.non_empty("VERSION_ID"))
        .unwrap_or_default()
        .to_string()
}

/// systemd's `image_name_is_valid()`: a file name without control
/// characters, not starting with `.#`.
pub fn is_valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.starts_with(".#")
        && !name.chars().any(char::is_control)
}

/// The image name without version or tries suffix: cut at the first `_` or
/// `+` (`foo_1.2_x86-64+3` → `foo`).
pub fn base_name(name: &str) -> &str {
    name.split(['_', '+']).next().unwrap_or(name)
}

/// A file `extension-release.*` found in the release directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The file name, `extension-release.<x>`.
    pub file_name: String,
    /// Its `user.extension-release.strict` xattr.
    pub strict: Strict,
}

/// The `user.extension-release.strict` xattr of a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strict {
    /// Absent or true: the name must fit the image.
    Yes,
    /// Set to false: the file applies whatever the image is called.
    No,
    /// Not visible (images checked before they are written out carry no xattrs).
    Unknown,
}

/// The fallback choice of release file, when `extension-release.<name>` is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The one candidate systemd uses.
    Found(String),
    /// The only candidate does not fit the name, and whether its xattr lets
    /// it apply anyway cannot be seen: systemd decides on the booted system.
    Unverified(String),
    /// No candidate fits; `candidates` files were there.
    Missing {
        /// How many `extension-release.*` files the directory holds.
        candidates: usize,
    },
    /// Several candidates fit (systemd: `ENOTUNIQ`).
    NotUnique(Vec<String>),
}

/// Chooses among the regular files `extension-release.*` of the release
/// directory (their suffix must be a valid image name), as systemd does when
/// `extension-release.<name>` itself is absent.
pub fn pick_release_file(name: &str, candidates: &[Candidate]) -> Pick {
    let valid: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| {
            c.file_name
                .strip_prefix("extension-release.")
                .is_some_and(is_valid_image_name)
        })
        .collect();
    let base = base_name(name);
    let mut fitting: Vec<String> = valid
        .iter()
        .filter(|c| c.file_name["extension-release.".len()..] == *base || c.strict == Strict::No)
        .map(|c| c.file_name.clone())
        .collect();
    fitting.sort();
    match (fitting.len(), valid.as_slice()) {
        (1, _) => Pick::Found(fitting.remove(0)),
        (0, [one]) if one.strict == Strict::Unknown => Pick::Unverified(one.file_name.clone()),
        (0, _) => Pick::Missing {
            candidates: valid.len(),
        },
        _ => Pick::NotUnique(fitting),
    }
}

/// systemd's architecture name for a Debian, `uname -m` or systemd spelling.
pub fn systemd_arch(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" | "x86_64" | "x86-64" => "x86-64",
        "arm64" | "aarch64" => "arm64",
        "aarch64_be" | "arm64-be" => "arm64-be",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "ppc64" => "ppc64",
        "ppc64el" | "ppc64le" | "ppc64-le" => "ppc64-le",
        "i386" | "i486" | "i586" | "i686" | "x86" => "x86",
        "armhf" | "arm" | "armv7l" | "armv6l" | "armv5tel" | "armv7b" => "arm",
        "loongarch64" => "loongarch64",
        _ => return None,
    })
}

/// Architecture names systemd knows (`architecture_to_string`).
pub const SYSTEMD_ARCHES: &[&str] = &[
    "x86",
    "x86-64",
    "ppc",
    "ppc-le",
    "ppc64",
    "ppc64-le",
    "ia64",
    "parisc",
    "parisc64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "mips",
    "mips-le",
    "mips64",
    "mips64-le",
    "alpha",
    "arm",
    "arm-be",
    "arm64",
    "arm64-be",
    "sh",
    "sh64",
    "m68k",
    "tilegx",
    "cris",
    "nios2",
    "riscv32",
    "riscv64",
    "arc",
    "arc-be",
    "loongarch64",
];

/// systemd's `parse_boolean()`.
pub fn parse_boolean(text: &str) -> Option<bool> {
    match text.trim_end_matches('\0').to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str, arch: &str) -> Host {
        Host::from_os_release(text, arch).unwrap()
    }

    fn rel(text: &str) -> Release {
        Release::parse(text)
    }

    #[test]
    fn rules_in_systemd_order() {
        use Class::{Confext, Sysext};
        let flatcar = host(
            "ID=flatcar\nID_LIKE=coreos\nVERSION_ID=4230.2.0\nSYSEXT_LEVEL=1.0\n",
            "amd64",
        );
        let cases: &[(Class, &str, Result<(), Mismatch>)] = &[
            (Sysext, "", Err(Mismatch::Empty)),
            (Sysext, "ID=_any\n", Ok(())),
            (
                Sysext,
                "ID=fedora\nSYSEXT_SCOPE=initrd\nARCHITECTURE=arm64\n",
                Err(Mismatch::Scope {
                    key: "SYSEXT_SCOPE",
                    scope: "initrd".into(),
                }),
            ),
            (Confext, "ID=_any\nSYSEXT_SCOPE=initrd\n", Ok(())),
            (
                Sysext,
                "ID=fedora\nARCHITECTURE=arm64\n",
                Err(Mismatch::Architecture {
                    image: "arm64".into(),
                    host: "x86-64".into(),
                }),
            ),
            (
                Sysext,
                "ID=_any\nARCHITECTURE=amd64\n",
                Err(Mismatch::UnknownArchitecture {
                    image: "amd64".into(),
                }),
            ),
            (Sysext, "ARCHITECTURE=_any\n", Err(Mismatch::NoId)),
            (
                Sysext,
                "ID=fedora\n",
                Err(Mismatch::Id {
                    image: "fedora".into(),
                    host: "flatcar".into(),
                    like: vec!["coreos".into()],
                }),
            ),
            (Sysext, "ID=coreos\nSYSEXT_LEVEL=1.0\n", Ok(())),
            (
                Sysext,
                "ID=flatcar\nSYSEXT_LEVEL=2\n",
                Err(Mismatch::Level {
                    key: "SYSEXT_LEVEL",
                    image: "2".into(),
                    host: "1.0".into(),
                }),
            ),
            (
                Confext,
                "ID=flatcar\nSYSEXT_LEVEL=1.0\n",
                Err(Mismatch::NoVersionId {
                    key: "CONFEXT_LEVEL",
                    host: "4230.2.0".into(),
                }),
            ),
            (
                Sysext,
                "ID=flatcar\nVERSION_ID=1\n",
                Err(Mismatch::VersionId {
                    image: "1".into(),
                    host: "4230.2.0".into(),
                }),
            ),
            (Sysext, "ID=flatcar\nVERSION_ID=4230.2.0\n", Ok(())),
        ];
        for (class, text, want) in cases {
            assert_eq!(
                &validate(*class, &flatcar, &rel(text)),
                want,
                "{class:?} {text:?}"
            );
        }
    }

    #[test]
    fn a_host_without_id_merges_nothing() {
        let bare = host("VERSION_ID=1\n", "arm64");
        for text in ["ID=_any\n", "ID=linux\n"] {
            assert_eq!(
                validate(Class::Sysext, &bare, &rel(text)),
                Err(Mismatch::HostId)
            );
        }
        // Without a host (compose time, base unknown) only the image's own fields count.
        assert_eq!(check_identity(Class::Sysext, None, &rel("ID=x\n")), Ok(()));
        assert_eq!(
            check_identity(Class::Sysext, None, &rel("ID=\n")),
            Err(Mismatch::NoId)
        );
    }

    #[test]
    fn a_level_without_version_id_is_systemds_quirk() {
        let level_only = host("ID=flatcar\nSYSEXT_LEVEL=1.0\n", "amd64");
        assert_eq!(
            validate(Class::Sysext, &level_only, &rel("ID=flatcar\n")),
            Ok(())
        );
        let rolling = host("ID=arch\n", "amd64");
        assert_eq!(
            validate(Class::Sysext, &rolling, &rel("ID=arch\nVERSION_ID=9\n")),
            Ok(())
        );
    }

    fn candidates(list: &[(&str, Strict)]) -> Vec<Candidate> {
        list.iter()
            .map(|(n, strict)| Candidate {
                file_name: format!("extension-release.{n}"),
                strict: *strict,
            })
            .collect()
    }

    #[test]
    fn the_release_file_fallback() {
        use Strict::{No, Unknown, Yes};
        let found = |n: &str| Pick::Found(format!("extension-release.{n}"));
        assert_eq!(
            pick_release_file("foo_1.2_x86-64", &candidates(&[("foo", Yes)])),
            found("foo")
        );
        assert_eq!(
            pick_release_file("app", &candidates(&[("other", Yes)])),
            Pick::Missing { candidates: 1 }
        );
        assert_eq!(
            pick_release_file("app", &candidates(&[("other", No)])),
            found("other")
        );
        assert_eq!(
            pick_release_file("app", &candidates(&[("other", Unknown)])),
            Pick::Unverified("extension-release.other".into())
        );
        assert_eq!(
            pick_release_file("a_1", &candidates(&[("b", No), ("a", Yes)])),
            Pick::NotUnique(vec![
                "extension-release.a".into(),
                "extension-release.b".into()
            ])
        );
        assert_eq!(
            pick_release_file("c", &candidates(&[("a", Unknown), ("b", Unknown)])),
            Pick::Missing { candidates: 2 }
        );
        assert_eq!(
            pick_release_file("c", &candidates(&[(".#tmp", Unknown)])),
            Pick::Missing { candidates: 0 }
        );
    }

    #[test]
    fn names_and_spellings() {
        assert_eq!(base_name("foo_1.2_x86-64"), "foo");
        assert_eq!(base_name("foo+3-1"), "foo");
        for bad in ["", ".", "..", "a/b", ".#tmp", "a\nb"] {
            assert!(!is_valid_image_name(bad), "{bad:?}");
        }
        assert!(is_valid_image_name("docker-24.0_x86-64"));
        assert_eq!(systemd_arch("x86_64"), Some("x86-64"));
        assert_eq!(systemd_arch("i686"), Some("x86"));
        assert_eq!(systemd_arch("sparc"), None);
        assert!(Host::from_os_release("", "sparc").is_err());
        for arch in ["x86-64", "arm64", "x86", "arm", "ppc64-le", "riscv64"] {
            assert!(SYSTEMD_ARCHES.contains(&arch), "{arch}");
        }
        assert_eq!(parse_boolean("Off"), Some(false));
        assert_eq!(parse_boolean("1\0"), Some(true));
        assert_eq!(parse_boolean("maybe"), None);
        assert_eq!(forbidden_content(Class::Sysext), ["/usr/lib/os-release"]);
        assert!(forbidden_content(Class::Confext).is_empty());
    }

    #[test]
    fn versions_shown_prefer_the_extension_key() {
        let r = rel("VERSION_ID=12\nSYSEXT_VERSION_ID=1.2.3\n");
        assert_eq!(shown_version(Class::Sysext, &r), "1.2.3");
        assert_eq!(shown_version(Class::Confext, &r), "12");
        assert_eq!(
            shown_version(Class::Sysext, &rel("SYSEXT_VERSION_ID=\nVERSION_ID=7\n")),
            "7"
        );
    }
}
