//! The YAML profile: what a user asks strata to build.
//!
//! This module only reads and checks what the user wrote: it does no I/O
//! beyond reading the profile itself and checking that the files it names
//! exist. Relative paths resolve against the profile's directory, and
//! `${arch}` in a path becomes the profile's architecture, so one profile
//! builds for both architectures by changing only `arch`.
//! The format is documented in `docs/profile.md`.

pub mod platform;
pub mod units;
pub mod yamlpos;

use crate::arch::Arch;
use crate::error::{InputError, Result};
use crate::profile::units::Size;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A profile as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Image name: the output directory is `out/<name>/`.
    pub name: String,
    /// Target architecture.
    pub arch: Arch,
    /// Platform name (`metal`), or a list of them: one disk per platform.
    pub platform: Platforms,
    /// The OS identity extensions are checked against.
    pub os: OsIdentity,
    /// The kernel and what goes with it.
    pub kernel: KernelSpec,
    /// The root filesystem.
    pub rootfs: RootfsSpec,
    /// Extensions, lowest first: later ones are stacked on top.
    #[serde(default)]
    pub extensions: Vec<ExtensionSpec>,
    /// Merge the extensions into the root filesystem at build time (one squashfs, no overlay at boot).
    #[serde(default)]
    pub flatten: bool,
    /// What a path provided by two extensions is, when flattening: `warn` (default) or `error`.
    #[serde(default)]
    pub conflicts: ConflictPolicy,
    /// How registries are reached.
    #[serde(default)]
    pub registries: RegistriesSpec,
    /// Output formats; the platform's defaults when absent.
    #[serde(default)]
    pub outputs: Option<Vec<String>>,
    /// qcow2 cluster size (default 64 KiB; some clouds want 8 KiB).
    #[serde(default, deserialize_with = "bytes_opt")]
    pub qcow2_cluster_size: Option<u64>,
    /// Disk sizes; the platform's defaults when absent.
    #[serde(default)]
    pub disk: Option<DiskSpec>,
    /// systemd-boot EFI binary; Debian's `systemd-boot-efi` when absent.
    #[serde(default)]
    pub bootloader: Option<String>,
    /// Guest init binary; the one built beside `strata` when absent.
    #[serde(default)]
    pub init: Option<String>,
    /// Timestamp (Unix seconds) for every file in the image, unless SOURCE_DATE_EPOCH is set.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// How the initramfs' small part is compressed.
    #[serde(default)]
    pub initramfs: InitramfsSpec,
}

/// Reads an optional size (`8 KiB`, `65536`) as bytes; `auto` is refused.
fn bytes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(Some(b)),
        Size::Auto => Err(serde::de::Error::custom(
            "give a size such as `8 KiB`; `auto` is not allowed here",
        )),
    }
}

/// `platform:` — one name or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Platforms {
    /// One platform.
    One(String),
    /// Several: the build writes each one's outputs.
    Many(Vec<String>),
}

impl Platforms {
    /// The names, in order.
    pub fn names(&self) -> Vec<String> {
        match self {
            Platforms::One(n) => vec![n.clone()],
            Platforms::Many(v) => v.clone(),
        }
    }

    /// True when written as a list.
    pub fn is_list(&self) -> bool {
        matches!(self, Platforms::Many(_))
    }
}

/// `os:` — the identity of the composed system.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsIdentity {
    /// os-release `ID`.
    pub id: String,
    /// os-release `VERSION_ID`; Talos extensions' `compatibility` is checked against it.
    pub version: String,
}

/// `kernel:` — a Debian .deb, or a vmlinuz with its modules directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// A Debian `linux-image-*` package.
    #[serde(default)]
    pub deb: Option<String>,
    /// A kernel image (instead of `deb`).
    #[serde(default)]
    pub vmlinuz: Option<String>,
    /// `lib/modules/<release>` that goes with `vmlinuz`.
    #[serde(default)]
    pub modules_dir: Option<String>,
    /// Extra kernel arguments, after the platform's.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra modules for the initramfs (their dependencies come along).
    #[serde(default)]
    pub modules: Vec<String>,
}

/// `rootfs:` — exactly one of a directory, a tar or a squashfs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// A directory tree.
    #[serde(default)]
    pub dir: Option<String>,
    /// A tar archive (optionally xz/zstd compressed).
    #[serde(default)]
    pub tar: Option<String>,
    /// An existing squashfs image, used as it is.
    #[serde(default)]
    pub squashfs: Option<String>,
    /// squashfs compressor for the root and the extensions.
    #[serde(default)]
    pub compression: SquashCompressor,
}

/// squashfs compressors the Debian kernel mounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SquashCompressor {
    /// zstd level 15 (as mksquashfs' default): fast to read, fast to write.
    #[default]
    Zstd,
    /// xz: smallest, slowest.
    Xz,
}

/// `initramfs:` options.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsSpec {
    /// Compressor of the init + modules segment.
    #[serde(default)]
    pub compression: InitramfsCompressor,
}

/// Compressors the kernel's initramfs unpacker accepts (xz needs CRC32).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitramfsCompressor {
    /// xz with a CRC32 check.
    #[default]
    Xz,
    /// zstd.
    Zstd,
}

/// One entry of `extensions:`: exactly one source, and options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSpec {
    /// A Talos extension directory: `manifest.yaml` + `rootfs/`.
    #[serde(default)]
    pub dir: Option<String>,
    /// A Talos extension OCI image in a registry: `host/repo:tag` or `host/repo@sha256:…`.
    #[serde(default)]
    pub image: Option<String>,
    /// A Talos extension in an OCI image-layout directory.
    #[serde(default)]
    pub oci_layout: Option<String>,
    /// A Talos extension in a `docker save` tarball.
    #[serde(default)]
    pub docker_archive: Option<String>,
    /// Which image of an `oci_layout` (tag or digest) or `docker_archive` (RepoTag).
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// A systemd-sysext `.raw` image (squashfs or erofs).
    #[serde(default)]
    pub sysext: Option<String>,
    /// A systemd-confext `.raw` image (squashfs or erofs).
    #[serde(default)]
    pub confext: Option<String>,
    /// Extra paths a Talos extension may ship, beyond Talos' allow-list.
    #[serde(default)]
    pub allow_paths: Vec<String>,
    /// `false` ships the extension in the image without activating it
    /// (under `/usr/lib/strata/extensions-available/`).
    #[serde(default = "enabled_default")]
    pub enabled: bool,
}

fn enabled_default() -> bool {
    true
}

impl ExtensionSpec {
    /// How many sources the entry names (exactly one is valid).
    pub fn source_count(&self) -> usize {
        [
            &self.dir,
            &self.image,
            &self.oci_layout,
            &self.docker_archive,
            &self.sysext,
            &self.confext,
        ]
        .iter()
        .filter(|s| s.is_some())
        .count()
    }
}

/// What a flatten conflict is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Listed, and the build goes on (the later extension wins).
    #[default]
    Warn,
    /// Listed, and the build stops.
    Error,
}

/// `registries:` — how to reach OCI registries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistriesSpec {
    /// Registries (`host:port`) reached over plain HTTP, e.g. `127.0.0.1:5000`.
    #[serde(default)]
    pub insecure: Vec<String>,
}

/// `disk:` — sizes of the disk and its EFI system partition.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Whole disk; `auto` fits the partitions.
    #[serde(default)]
    pub size: Size,
    /// EFI system partition; `auto` fits its contents plus headroom.
    #[serde(default)]
    pub esp_size: Size,
}

/// A profile read from a file, with the text it came from (for error positions).
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    /// What the user wrote.
    pub profile: Profile,
    /// The profile file.
    pub path: PathBuf,
    /// Its directory: relative paths resolve against it.
    pub dir: PathBuf,
    /// The file's text.
    pub source: String,
}

/// Reads and parses a profile, turning YAML and schema errors into
/// messages with file, line and fix.
pub fn load(path: &Path, arch_override: Option<Arch>) -> Result<LoadedProfile> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        InputError::new(
            path,
            "",
            format!("cannot read the profile: {e}"),
            "check the path given to `strata build`",
        )
    })?;
    let mut profile: Profile = serde_norway::from_str(&source).map_err(|e| yaml_error(path, &e))?;
    if let Some(arch) = arch_override {
        profile.arch = arch;
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let loaded = LoadedProfile {
        profile,
        path: path.to_path_buf(),
        dir,
        source,
    };
    loaded.validate()?;
    Ok(loaded)
}

/// Turns a serde/YAML error into an input error with position and a hint.
fn yaml_error(path: &Path, e: &serde_norway::Error) -> InputError {
    let full = e.to_string();
    // serde_norway appends " at line L column C"; we show the position our own way.
    let message = full.split(" at line ").next().unwrap_or(&full).to_string();
    let hint = if message.contains("unknown field") {
        "remove or rename the key; the keys each section accepts are listed in docs/profile.md"
    } else if message.contains("missing field") {
        "add the field; docs/profile.md shows a complete profile"
    } else if message.contains("unknown variant") {
        "use one of the values listed in the message"
    } else {
        "fix the YAML at this position; docs/profile.md shows the format"
    };
    let field = message
        .split_once(": ")
        .filter(|(f, _)| !f.contains(' '))
        .map(|(f, _)| f.to_string())
        .unwrap_or_default();
    let message = if field.is_empty() {
        message.clone()
    } else {
        message[field.len() + 2..].to_string()
    };
    InputError::new(path, field, message, hint).at(e.location().map(|l| (l.line(), l.column())))
}

impl LoadedProfile {
    /// An input error about `field` of this profile, positioned in its text.
    pub fn error(
        &self,
        field: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> InputError {
        InputError::new(&self.path, field, message, hint)
            .at(yamlpos::locate(&self.source, &yamlpos::path(field)))
    }

    /// Resolves a path the profile names: `${arch}` substituted, relative to the profile's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = p.replace("${arch}", self.profile.arch.debian());
        let path = Path::new(&p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    /// Resolves a path and checks that it exists (as a file or a directory).
    pub fn existing(&self, field: &str, p: &str, want_dir: bool, hint: &str) -> Result<PathBuf> {
        let path = self.resolve(p);
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

    /// Checks values serde cannot check: exactly-one-of choices, names, non-empty strings.
    fn validate(&self) -> Result<()> {
        let p = &self.profile;
        let name_ok = !p.name.is_empty()
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.name.starts_with('.');
        if !name_ok {
            return Err(self
                .error(
                    "name",
                    format!("`{}` cannot be used as a directory name", p.name),
                    "use letters, digits, `-`, `_` and `.` only",
                )
                .into());
        }
        let k = &p.kernel;
        match (&k.deb, &k.vmlinuz, &k.modules_dir) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (None, Some(_), None) => {
                return Err(self
                    .error(
                        "kernel.vmlinuz",
                        "`vmlinuz` needs `modules_dir`",
                        "add `modules_dir: path/to/lib/modules/<release>`",
                    )
                    .into())
            }
            _ => {
                return Err(self
                    .error(
                        "kernel",
                        "give either `deb`, or `vmlinuz` with `modules_dir`",
                        "keep exactly one kernel source",
                    )
                    .into())
            }
        }
        let r = &p.rootfs;
        if [&r.dir, &r.tar, &r.squashfs]
            .iter()
            .filter(|s| s.is_some())
            .count()
            != 1
        {
            return Err(self
                .error(
                    "rootfs",
                    "give exactly one of `dir`, `tar` or `squashfs`",
                    "keep one root filesystem source",
                )
                .into());
        }
        for (i, arg) in k.args.iter().enumerate() {
            if arg.trim().is_empty() || arg.contains(char::is_whitespace) {
                return Err(self
                    .error(
                        &format!("kernel.args[{i}]"),
                        format!("`{arg}` is not one kernel argument"),
                        "write one argument per list item, without spaces",
                    )
                    .into());
            }
        }
        for (i, e) in p.extensions.iter().enumerate() {
            if e.source_count() != 1 {
                return Err(self
                    .error(
                        &format!("extensions[{i}]"),
                        "give exactly one source: dir, image, oci_layout, docker_archive, sysext or confext",
                        "split the entry, or remove the extra key",
                    )
                    .into());
            }
            if e.reference.is_some() && e.oci_layout.is_none() && e.docker_archive.is_none() {
                return Err(self
                    .error(
                        &format!("extensions[{i}].ref"),
                        "`ref` only selects an image of an oci_layout or docker_archive",
                        "put the tag or digest into `image:` instead",
                    )
                    .into());
            }
        }
        if p.os.id.is_empty() || p.os.version.is_empty() {
            return Err(self
                .error(
                    "os",
                    "`id` and `version` must not be empty",
                    "e.g. `id: strata`, `version: 1.0.0`",
                )
                .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str) -> Result<LoadedProfile> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        load(f.path(), None)
    }

    const GOOD: &str = "\
name: demo
arch: amd64
platform: metal
os: {id: strata, version: 1.0.0}
kernel:
  deb: k-${arch}.deb
rootfs:
  dir: root
extensions:
  - dir: ext/a
";

    #[test]
    fn reads_a_good_profile() {
        let p = load_text(GOOD).unwrap();
        assert_eq!(p.profile.extensions.len(), 1);
        assert!(p.resolve("k-${arch}.deb").ends_with("k-amd64.deb"));
    }

    #[test]
    fn unknown_keys_name_the_line_and_the_fix() {
        let err = load_text(&GOOD.replace("  dir: root", "  dir: root\n  colour: red"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":9:3: rootfs: unknown field `colour`"),
            "{err}"
        );
        assert!(err.contains("fix: remove or rename"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let err = load_text(&GOOD.replace("arch: amd64", "arch: sparc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:7: arch: unknown variant `sparc`"), "{err}");
    }

    #[test]
    fn two_kernels_are_refused_with_position() {
        let err = load_text(&GOOD.replace(
            "  deb: k-${arch}.deb",
            "  deb: a\n  vmlinuz: b\n  modules_dir: c",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains(":5:1: kernel: give either"), "{err}");
    }

    #[test]
    fn missing_files_are_positioned() {
        let p = load_text(GOOD).unwrap();
        let err = p
            .existing("extensions[0].dir", "ext/a", true, "create it")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":10:5: extensions[0].dir: directory not found"),
            "{err}"
        );
    }
}
