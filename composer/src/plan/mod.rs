//! The plan of a build: every input the profile names, resolved and
//! checked before anything is written to the cache or the output directory.
//!
//! [`plan`] reads the profile ([`crate::profile`]), finds each file, reads
//! the root filesystem and every extension, and refuses anything that would
//! fail later: a missing or unreadable file, a corrupt archive, a binary or
//! kernel of the wrong architecture, an extension module built for another
//! kernel, an unknown output, a cluster size out of range. The result is a
//! [`Plan`]; the later steps (`assets`, `disk`, `format`, `manifest`) read
//! only the plan, never the profile.
//!
//! Two decisions need the unpacked kernel and so are made after it: the
//! module closure ([`modules`]) and the ESP and disk layout ([`esp`]), which
//! depends on the size of the initramfs. Both live here, so every message
//! that blames a profile field is made in this folder.
//!
//! | file | what |
//! |---|---|
//! | [`inputs`] | profile → paths, root tree, extensions, platforms, outputs |
//! | [`kernel`] | the kernel source, its release and architecture |
//! | [`cmdline`] | the kernel command line and the boot entry |
//! | [`modules`] | the initramfs module set |
//! | [`esp`] | ESP contents, ESP size, disk layout |
//! | [`binaries`] | the guest init and the bootloader |
//! | [`files`] | the profile's `files:` and `state:` |
//! | [`trust`] | `uki:` and `secure_boot:`: the EFI stub, the signer |
//! | [`dump`] | the plan as text or JSON (`strata plan`) |

pub mod binaries;
pub mod cmdline;
pub mod dump;
pub mod esp;
pub mod files;
pub mod inputs;
pub mod kernel;
pub mod modules;
pub mod trust;

use crate::arch::Arch;
use crate::error::{Error, ErrorKind, InputError, Result};
use crate::extension::source::Resolved;
use crate::format::OutputKind;
use crate::fs::squashfs::SquashOptions;
use crate::fs::tree::Tree;
use crate::profile::platform::Platform;
use crate::profile::units::Size;
use crate::profile::{ConflictPolicy, InitramfsCompressor, LoadedProfile};
use std::path::{Path, PathBuf};

pub use inputs::plan;

/// What `strata build` or `strata plan` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The profile file.
    pub profile: PathBuf,
    /// Output directory; `out/<name>` when absent. It must not lie inside
    /// an input tree, or one build's artefacts would go into the next image.
    pub out_dir: Option<PathBuf>,
    /// Cache root; `$XDG_CACHE_HOME/strata` when absent.
    pub cache_dir: Option<PathBuf>,
    /// Overrides the profile's `arch`.
    pub arch: Option<Arch>,
    /// Overrides where the guest init comes from.
    pub init: Option<PathBuf>,
    /// Resolve from the cache alone: no registry is contacted.
    pub offline: bool,
    /// SOURCE_DATE_EPOCH, when set: wins over the profile's `epoch`.
    pub source_date_epoch: Option<u64>,
    /// `--no-cache`: make every step anew; the step cache is neither read nor written.
    pub no_cache: bool,
    /// `strata plan`: write nothing to the cache. Scratch space comes from
    /// the system's temporary directory, and registry images are pulled
    /// into a throwaway blob store (with `offline`, the cache is only read).
    pub dry_run: bool,
}

/// The default cache root: `$XDG_CACHE_HOME/strata`, else `~/.cache/strata`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("strata");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("strata")
}

/// Everything a build will do, decided and checked.
pub struct Plan {
    /// The profile file, as given.
    pub profile: PathBuf,
    /// Image name (`out/<name>/`).
    pub name: String,
    /// Target architecture.
    pub arch: Arch,
    /// os-release `ID` and `VERSION_ID`.
    pub os: (String, String),
    /// The kernel and its release.
    pub kernel: kernel::KernelPlan,
    /// The root filesystem.
    pub root: RootPlan,
    /// Enabled extensions, lowest first.
    pub extensions: Vec<Resolved>,
    /// Extensions with `enabled: false`: shipped, not activated.
    pub disabled: Vec<Resolved>,
    /// The profile's `files:`: the layer on top of everything, and the guest's list.
    pub files: files::FilesPlan,
    /// Where the root's writable layer lives.
    pub state: crate::profile::files::StateMode,
    /// Names of the kernel modules extensions ship (checked against the release).
    pub ext_modules: Vec<String>,
    /// Merge the extensions into the root at build time.
    pub flatten: bool,
    /// The guest starts every Talos extension service once and judges it
    /// (`boot_test.services`: the profile's, else any platform's).
    pub boot_services: bool,
    /// What a path two flattened extensions provide is.
    pub conflicts: ConflictPolicy,
    /// Each platform with what it gets.
    pub platforms: Vec<PlatformPlan>,
    /// The systemd-boot binary.
    pub bootloader: PathBuf,
    /// The guest init binary.
    pub init: PathBuf,
    /// Timestamp of every file.
    pub epoch: u64,
    /// Seed of every derived identifier (GUIDs, serials): profile text + arch.
    pub seed: Vec<u8>,
    /// squashfs settings for the root and the layers.
    pub squash: SquashOptions,
    /// Compressor of the initramfs' compressed segment.
    pub initramfs_compression: InitramfsCompressor,
    /// The profile's `disk.esp_size`.
    pub esp_size: Size,
    /// The image boots under Secure Boot (`secure_boot:`), where the kernel
    /// locks down and loads only modules signed by a key it trusts: every
    /// module an extension ships is checked at compose time.
    pub signed_modules_only: bool,
    /// The unified kernel image and its signing, when the profile asks for them.
    pub trust: Option<trust::TrustPlan>,
    /// The cache root.
    pub cache: PathBuf,
    /// The output directory (`--out`, else `out/<name>`), checked to lie
    /// outside every input tree.
    pub out_dir: PathBuf,
    /// How `manifest.json` names the inputs.
    pub names: InputNames,
    /// Where messages about profile fields point.
    blame: Blame,
    /// Holds unpacked extension and root contents until the build ends.
    _scratch: Option<tempfile::TempDir>,
}

/// The root filesystem: where it comes from and, unless it is a prebuilt
/// squashfs used as it is, its tree (read once, here).
pub struct RootPlan {
    /// `dir`, `tar` or `squashfs`.
    pub kind: &'static str,
    /// The resolved path.
    pub path: PathBuf,
    /// The tree; `None` for a prebuilt squashfs that is shipped unchanged.
    pub tree: Option<Tree>,
}

/// How `manifest.json` names the inputs, so that it is the same whatever
/// the working directory and the output path: a path the profile names as
/// the profile writes it (relative to the profile's directory, `${arch}`
/// substituted), and an input the profile does not name (the default guest
/// init, `--init`, the system's systemd-boot) by its file name alone; the
/// digest beside each name identifies the input.
#[derive(Debug, Clone)]
pub struct InputNames {
    /// The profile's directory, which resolved paths are made relative to again.
    profile_dir: PathBuf,
    /// The init, when the profile names it (else its file name is used).
    init_in_profile: bool,
    /// The bootloader, when the profile names it.
    bootloader_in_profile: bool,
}

impl InputNames {
    /// A path the profile names, resolved by [`LoadedProfile::resolve`],
    /// back as the profile writes it (an origin that is no such path, like
    /// an image reference, is returned unchanged).
    /// A `scheme:path` origin (`docker-archive:…`, `oci:…`) keeps its scheme.
    pub fn as_written(&self, origin: &str) -> String {
        let relative = |p: &str| {
            Path::new(p)
                .strip_prefix(&self.profile_dir)
                .ok()
                .map(|rel| rel.display().to_string())
        };
        if let Some(rel) = relative(origin) {
            return rel;
        }
        match origin.split_once(':') {
            Some((scheme, rest)) if !scheme.contains('/') => match relative(rest) {
                Some(rel) => format!("{scheme}:{rel}"),
                None => origin.to_string(),
            },
            _ => origin.to_string(),
        }
    }

    /// The guest init's name.
    pub fn init(&self, path: &Path) -> String {
        self.named(path, self.init_in_profile)
    }

    /// The bootloader's name.
    pub fn bootloader(&self, path: &Path) -> String {
        self.named(path, self.bootloader_in_profile)
    }

    fn named(&self, path: &Path, in_profile: bool) -> String {
        if in_profile {
            return self.as_written(&path.display().to_string());
        }
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// One platform's share of a build.
pub struct PlatformPlan {
    /// The platform definition.
    pub platform: Platform,
    /// Outputs, in the order written.
    pub outputs: Vec<OutputKind>,
    /// Module names asked for (defaults, platform's, profile's), before the closure.
    pub modules: Vec<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// Whole-disk size: the profile's `disk.size`, else the platform's.
    pub disk_size: Size,
}

/// Positions messages about profile fields: the file and its text.
#[derive(Debug, Clone)]
pub(crate) struct Blame {
    path: PathBuf,
    source: String,
}

impl Blame {
    /// Resolves a path the profile names and checks it is a file (or a directory).
    pub(crate) fn existing(
        &self,
        lp: &LoadedProfile,
        field: &str,
        p: &str,
        want_dir: bool,
        hint: &str,
    ) -> Result<PathBuf> {
        let path = lp.resolve(p);
        let ok = if want_dir {
            path.is_dir()
        } else {
            path.is_file()
        };
        if !ok {
            let what = if want_dir { "directory" } else { "file" };
            let found = if path.exists() {
                format!("{} is not a {what}", path.display())
            } else {
                format!("{what} not found: {}", path.display())
            };
            return Err(self.error(field, found, hint).into());
        }
        Ok(path)
    }

    pub(crate) fn of(lp: &LoadedProfile) -> Blame {
        Blame {
            path: lp.path.clone(),
            source: lp.source.clone(),
        }
    }

    /// Bad input at `field`.
    pub(crate) fn error(
        &self,
        field: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> InputError {
        crate::profile::field_error(&self.path, &self.source, field, message, hint)
    }

    /// A source (registry, pull) that failed for `field`: exit code of a
    /// source error, message positioned like bad input.
    pub(crate) fn source_failed(
        &self,
        field: &str,
        message: impl Into<String>,
        hint: &str,
        cause: impl Into<crate::error::Cause>,
    ) -> Error {
        let e = self.error(field, message, "");
        Error::step(ErrorKind::Source, e.to_string(), cause).with_hint(hint)
    }
}

impl Plan {
    /// Refuses a flatten whose conflicts the profile says are errors.
    pub fn check_conflicts(&self, conflicts: &[String]) -> Result<()> {
        if conflicts.is_empty() || self.conflicts != ConflictPolicy::Error {
            return Ok(());
        }
        Err(self
            .blame
            .error(
                "conflicts",
                format!(
                    "{} path(s) provided by more than one extension:\n  {}",
                    conflicts.len(),
                    conflicts.join("\n  ")
                ),
                "remove the duplicates, or set `conflicts: warn`",
            )
            .into())
    }

    /// Flattening could not place an extension (blamed on `flatten`).
    pub fn flatten_refused(&self, message: String) -> Error {
        self.blame
            .error("flatten", message, "see docs/extensions.md")
            .into()
    }

    /// The origin of the root, for messages and the manifest.
    pub fn root_origin(&self) -> &Path {
        &self.root.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &str) -> InputNames {
        InputNames {
            profile_dir: PathBuf::from(dir),
            init_in_profile: false,
            bootloader_in_profile: true,
        }
    }

    #[test]
    fn inputs_are_named_as_the_profile_writes_them() {
        let n = names("profiles");
        assert_eq!(
            n.as_written("profiles/../.cache/debian/k.deb"),
            "../.cache/debian/k.deb"
        );
        assert_eq!(names(".").as_written("./root"), "root");
        assert_eq!(
            n.as_written("docker-archive:profiles/ext.tar:v1"),
            "docker-archive:ext.tar:v1"
        );
        assert_eq!(n.as_written("/abs/root"), "/abs/root");
        assert_eq!(
            n.as_written("127.0.0.1:5000/ext/tools:1.0"),
            "127.0.0.1:5000/ext/tools:1.0"
        );
        assert_eq!(
            n.init(Path::new(
                "/home/u/strata/target/x86_64-unknown-linux-musl/release/strata-init"
            )),
            "strata-init"
        );
        assert_eq!(
            n.bootloader(Path::new("profiles/efi/boot.efi")),
            "efi/boot.efi"
        );
    }
}
