//! The YAML profile: what a user asks strata to build.
//!
//! This module only reads and checks what the user wrote: serde types, the
//! "exactly one of" sections as enums ([`KernelSource`], [`RootSource`],
//! [`ExtensionSource`]) and value checks. It does no I/O beyond reading the
//! profile itself; whether the files it names exist and fit is `plan`'s job. Relative paths resolve against the profile's directory, and
//! `${arch}` in a path becomes the profile's architecture, so one profile
//! builds for both architectures by changing only `arch`.
//! The format is documented in `docs/profile.md`.

pub mod files;
pub mod platform;
pub mod units;
pub mod yaml_guard;
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
    /// Where the root's writable layer lives: `tmpfs` (default) or `persistent`.
    #[serde(default)]
    pub state: files::StateMode,
    /// Files the image ships on top of the root and every extension.
    #[serde(default)]
    pub files: Vec<files::FileSpec>,
    /// `pcr:` — sign the UKI's predicted PCR 11 policy (docs/trusted-boot-pcr.md).
    #[serde(default)]
    pub pcr: Option<PcrSpec>,
    /// What boot tests check beyond the platform's settings.
    #[serde(default)]
    pub boot_test: ProfileBootTest,
    /// Boot a unified kernel image: `true` (systemd-boot loads it), `direct`
    /// (the firmware loads it as `BOOT<ARCH>.EFI`) or `false`; `true` when
    /// `secure_boot` is given.
    #[serde(default)]
    pub uki: Option<UkiMode>,
    /// Sign every EFI binary for UEFI Secure Boot (docs/trusted-boot.md).
    #[serde(default)]
    pub secure_boot: Option<SecureBootSpec>,
}

/// `boot_test:` of a profile: overrides the platforms' boot-test checks.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBootTest {
    /// Start every Talos extension service once in the guest and judge it
    /// (absent: each platform's `boot_test.services`).
    #[serde(default)]
    pub services: Option<bool>,
}

/// `uki:` — whether and how the image boots a unified kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "raw::Uki")]
pub enum UkiMode {
    /// Kernel and initramfs as separate files, a Boot Loader Specification entry.
    Off,
    /// systemd-boot finds the UKI in `EFI/Linux/`.
    SystemdBoot,
    /// The UKI is the firmware's default loader, `EFI/BOOT/BOOT<ARCH>.EFI`.
    Direct,
}

/// `secure_boot:` — the key and certificate that sign the EFI binaries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootSpec {
    /// PEM private key (PKCS#8, encrypted PKCS#8 or PKCS#1), RSA.
    pub key: String,
    /// PEM (or DER) X.509 certificate of that key.
    pub cert: String,
    /// Name of the environment variable holding the key's passphrase.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Put `loader/keys/auto/{PK,KEK,db}.auth` on the ESP and let
    /// systemd-boot enrol them into a machine in setup mode.
    #[serde(default)]
    pub enroll: bool,
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

/// `pcr:` — the key that signs the UKI's TPM PCR 11 policies (`.pcrsig`);
/// its public key goes into `.pcrpkey`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrSpec {
    /// PEM RSA private key, relative to the profile's directory.
    pub key: String,
    /// Name of the environment variable holding the key's passphrase.
    #[serde(default)]
    pub passphrase_env: Option<String>,
}

/// `kernel:` — where the kernel comes from, and what the image adds to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "raw::Kernel")]
pub struct KernelSpec {
    /// Exactly one source.
    pub source: KernelSource,
    /// Extra kernel arguments, after the platform's.
    pub args: Vec<String>,
    /// Extra modules for the initramfs (their dependencies come along).
    pub modules: Vec<String>,
}

/// The one kernel source of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// `deb:` a Debian `linux-image-*` package.
    Deb(String),
    /// `vmlinuz:` + `modules_dir:` a kernel image and its `lib/modules/<release>`.
    Parts {
        /// The kernel image.
        vmlinuz: String,
        /// `lib/modules/<release>` that goes with it.
        modules_dir: String,
    },
}

/// `rootfs:` — exactly one source, and the squashfs compressor.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "raw::Rootfs")]
pub struct RootfsSpec {
    /// Exactly one source.
    pub source: RootSource,
    /// squashfs compressor for the root and the extensions.
    pub compression: SquashCompressor,
}

/// The one root filesystem source of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// `dir:` a directory tree.
    Dir(String),
    /// `tar:` a tar archive (optionally xz/zstd compressed).
    Tar(String),
    /// `squashfs:` an existing squashfs image, used as it is.
    Squashfs(String),
}

impl RootSource {
    /// The profile key (`dir`, `tar`, `squashfs`) and the path written there.
    pub fn key_and_path(&self) -> (&'static str, &str) {
        match self {
            RootSource::Dir(p) => ("dir", p),
            RootSource::Tar(p) => ("tar", p),
            RootSource::Squashfs(p) => ("squashfs", p),
        }
    }
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
#[serde(try_from = "raw::Extension")]
pub struct ExtensionSpec {
    /// Exactly one source.
    pub source: ExtensionSource,
    /// Extra paths a Talos extension may ship, beyond Talos' allow-list.
    pub allow_paths: Vec<String>,
    /// `false` ships the extension in the image without activating it
    /// (under `/usr/lib/strata/extensions-available/`).
    pub enabled: bool,
}

/// The one source of an extension entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionSource {
    /// `dir:` a Talos extension directory: `manifest.yaml` + `rootfs/`.
    Dir(String),
    /// `image:` a Talos extension OCI image in a registry (`host/repo:tag` or `@sha256:…`).
    Image(String),
    /// `oci_layout:` (+ `ref`) a Talos extension in an OCI image-layout directory.
    OciLayout {
        /// The layout directory.
        path: String,
        /// Which image of the layout (tag or digest).
        reference: Option<String>,
    },
    /// `docker_archive:` (+ `ref`) a Talos extension in a `docker save` tarball.
    DockerArchive {
        /// The tarball.
        path: String,
        /// Which image (RepoTag).
        reference: Option<String>,
    },
    /// `sysext:` a systemd-sysext `.raw` image (squashfs or erofs).
    Sysext(String),
    /// `confext:` a systemd-confext `.raw` image (squashfs or erofs).
    Confext(String),
}

impl ExtensionSource {
    /// The profile key of this source, for `extensions[i].<key>` blame.
    pub fn key(&self) -> &'static str {
        match self {
            ExtensionSource::Dir(_) => "dir",
            ExtensionSource::Image(_) => "image",
            ExtensionSource::OciLayout { .. } => "oci_layout",
            ExtensionSource::DockerArchive { .. } => "docker_archive",
            ExtensionSource::Sysext(_) => "sysext",
            ExtensionSource::Confext(_) => "confext",
        }
    }
}

/// The YAML shapes of the "exactly one of" sections: every key optional,
/// as written; `TryFrom` turns them into the enums above, and its error
/// goes through serde, so it carries the line and column of the section.
mod raw {
    use serde::Deserialize;

    /// Joins the section, the message and the hint so [`super::yaml_error`]
    /// can split them and position the section itself.
    fn refuse(section: &str, message: &str, hint: &str) -> String {
        format!(
            "{section}{}{message}{}{hint}",
            super::FIELD_MARK,
            super::HINT_MARK
        )
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Kernel {
        #[serde(default)]
        deb: Option<String>,
        #[serde(default)]
        vmlinuz: Option<String>,
        #[serde(default)]
        modules_dir: Option<String>,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        modules: Vec<String>,
    }

    impl TryFrom<Kernel> for super::KernelSpec {
        type Error = String;
        fn try_from(k: Kernel) -> Result<Self, String> {
            let source = match (k.deb, k.vmlinuz, k.modules_dir) {
                (Some(d), None, None) => super::KernelSource::Deb(d),
                (None, Some(vmlinuz), Some(modules_dir)) => super::KernelSource::Parts {
                    vmlinuz,
                    modules_dir,
                },
                (None, Some(_), None) => {
                    return Err(refuse(
                        "kernel.vmlinuz",
                        "`vmlinuz` needs `modules_dir`",
                        "add `modules_dir: path/to/lib/modules/<release>`",
                    ))
                }
                _ => {
                    return Err(refuse(
                        "kernel",
                        "give either `deb`, or `vmlinuz` with `modules_dir`",
                        "keep exactly one kernel source",
                    ))
                }
            };
            Ok(super::KernelSpec {
                source,
                args: k.args,
                modules: k.modules,
            })
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Uki {
        Bool(bool),
        Word(String),
    }

    impl TryFrom<Uki> for super::UkiMode {
        type Error = String;
        fn try_from(u: Uki) -> Result<Self, String> {
            match u {
                Uki::Bool(false) => Ok(super::UkiMode::Off),
                Uki::Bool(true) => Ok(super::UkiMode::SystemdBoot),
                Uki::Word(w) if w == "direct" => Ok(super::UkiMode::Direct),
                Uki::Word(w) => Err(refuse(
                    "uki",
                    &format!("unknown value `{w}`"),
                    "write `true`, `false` or `direct`",
                )),
            }
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rootfs {
        #[serde(default)]
        dir: Option<String>,
        #[serde(default)]
        tar: Option<String>,
        #[serde(default)]
        squashfs: Option<String>,
        #[serde(default)]
        compression: super::SquashCompressor,
    }

    impl TryFrom<Rootfs> for super::RootfsSpec {
        type Error = String;
        fn try_from(r: Rootfs) -> Result<Self, String> {
            let source = match (r.dir, r.tar, r.squashfs) {
                (Some(d), None, None) => super::RootSource::Dir(d),
                (None, Some(t), None) => super::RootSource::Tar(t),
                (None, None, Some(s)) => super::RootSource::Squashfs(s),
                _ => {
                    return Err(refuse(
                        "rootfs",
                        "give exactly one of `dir`, `tar` or `squashfs`",
                        "keep one root filesystem source",
                    ))
                }
            };
            Ok(super::RootfsSpec {
                source,
                compression: r.compression,
            })
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Extension {
        #[serde(default)]
        dir: Option<String>,
        #[serde(default)]
        image: Option<String>,
        #[serde(default)]
        oci_layout: Option<String>,
        #[serde(default)]
        docker_archive: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
        #[serde(default)]
        sysext: Option<String>,
        #[serde(default)]
        confext: Option<String>,
        #[serde(default)]
        allow_paths: Vec<String>,
        #[serde(default = "enabled_default")]
        enabled: bool,
    }

    fn enabled_default() -> bool {
        true
    }

    impl TryFrom<Extension> for super::ExtensionSpec {
        type Error = String;
        fn try_from(e: Extension) -> Result<Self, String> {
            use super::ExtensionSource as S;
            let mut sources = Vec::new();
            if let Some(p) = e.dir {
                sources.push(S::Dir(p));
            }
            if let Some(p) = e.image {
                sources.push(S::Image(p));
            }
            if let Some(path) = e.oci_layout {
                sources.push(S::OciLayout {
                    path,
                    reference: e.reference.clone(),
                });
            }
            if let Some(path) = e.docker_archive {
                sources.push(S::DockerArchive {
                    path,
                    reference: e.reference.clone(),
                });
            }
            if let Some(p) = e.sysext {
                sources.push(S::Sysext(p));
            }
            if let Some(p) = e.confext {
                sources.push(S::Confext(p));
            }
            if sources.len() != 1 {
                return Err(refuse(
                    "extensions[]",
                    "give exactly one source: dir, image, oci_layout, docker_archive, sysext or confext",
                    "split the entry, or remove the extra key",
                ));
            }
            let source = sources.remove(0);
            if e.reference.is_some()
                && !matches!(source, S::OciLayout { .. } | S::DockerArchive { .. })
            {
                return Err(refuse(
                    "extensions[].ref",
                    "`ref` only selects an image of an oci_layout or docker_archive",
                    "put the tag or digest into `image:` instead",
                ));
            }
            Ok(super::ExtensionSpec {
                source,
                allow_paths: e.allow_paths,
                enabled: e.enabled,
            })
        }
    }
}

/// Separates section, message and hint in the errors of [`raw`]'s conversions.
const HINT_MARK: &str = "\u{1f}fix:";
const FIELD_MARK: &str = "\u{1f}field:";

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
/// messages with file, line and fix. The text passes [`yaml_guard`] (size,
/// depth, aliases) before the parser sees it, and every string value is
/// checked for control characters before any of them is used.
pub fn load(path: &Path, arch_override: Option<Arch>) -> Result<LoadedProfile> {
    let source = read_text(path)?;
    yaml_guard::check(&source, yaml_guard::LIMITS)
        .map_err(|e| InputError::new(path, "", e.to_string(), e.hint()).at(e.position()))?;
    let values: serde_norway::Value =
        serde_norway::from_str(&source).map_err(|e| yaml_error(path, &source, &e))?;
    if let Some((field, c)) = control_char(&values, "") {
        return Err(field_error(
            path,
            &source,
            &field,
            format!("the value contains the control character {c:?}"),
            "keep the value on one line, without tabs, newlines or other control characters: it is written into generated files (boot entry, kernel command line, manifest)",
        )
        .into());
    }
    let mut profile: Profile =
        serde_norway::from_str(&source).map_err(|e| yaml_error(path, &source, &e))?;
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

/// The profile's text: a regular file (a FIFO would block), read up to the
/// guard's size limit and no further, in UTF-8.
fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let refuse = |message: String, hint: &str| InputError::new(path, "", message, hint);
    let hint = "check the path given to `strata build`";
    // Checked before opening: opening a FIFO for reading blocks.
    let meta = std::fs::metadata(path)
        .map_err(|e| refuse(format!("cannot read the profile: {e}"), hint))?;
    if !meta.is_file() {
        return Err(refuse("the profile is not a regular file".into(), hint).into());
    }
    let file = std::fs::File::open(path)
        .map_err(|e| refuse(format!("cannot read the profile: {e}"), hint))?;
    let limit = yaml_guard::LIMITS.max_bytes;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot read the profile: {e}"), hint))?;
    if bytes.len() > limit {
        let e = yaml_guard::GuardError::TooLarge {
            size: meta.len().max(bytes.len() as u64),
            limit,
        };
        return Err(refuse(e.to_string(), e.hint()).into());
    }
    String::from_utf8(bytes).map_err(|e| {
        refuse(
            format!(
                "the profile is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
            "save the profile as UTF-8",
        )
        .into()
    })
}

/// Fields documented as multi-line content, where newlines and tabs are
/// allowed (`[]` stands for any list position). Every other string value
/// ends up on one line of a generated file, so it may hold no control character.
/// `files[].content` is a file's bytes, written as they are into the files layer.
const MULTI_LINE_FIELDS: &[&str] = &["files[].content"];

/// The first string value (as a field path such as `kernel.args[1]`) that
/// holds a control character, and that character.
fn control_char(v: &serde_norway::Value, at: &str) -> Option<(String, char)> {
    use serde_norway::Value;
    match v {
        Value::String(s) => {
            let pattern = list_positions_erased(at);
            if MULTI_LINE_FIELDS.contains(&pattern.as_str()) {
                return None;
            }
            s.chars()
                .find(|c| c.is_control())
                .map(|c| (at.to_string(), c))
        }
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| control_char(item, &format!("{at}[{i}]"))),
        Value::Mapping(map) => map.iter().find_map(|(k, item)| {
            let key = match k {
                Value::String(k) => k.clone(),
                other => serde_norway::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            let field = if at.is_empty() {
                key
            } else {
                format!("{at}.{key}")
            };
            control_char(k, &field).or_else(|| control_char(item, &field))
        }),
        Value::Tagged(t) => control_char(&t.value, at),
        _ => None,
    }
}

/// `files[3].content` → `files[].content`.
fn list_positions_erased(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Turns a serde/YAML error into an input error with position and a hint.
fn yaml_error(path: &Path, source: &str, e: &serde_norway::Error) -> InputError {
    let full = e.to_string();
    // serde_norway appends " at line L column C"; we show the position our own way.
    let message = full.split(" at line ").next().unwrap_or(&full).to_string();
    if let Some((field, key)) = duplicate_key(&message) {
        return duplicate_error(path, source, e, &field, &key);
    }
    if message.contains(FIELD_MARK) {
        return section_error(path, source, e, &message);
    }
    let (message, own_hint) = match message.split_once(HINT_MARK) {
        Some((m, h)) => (m.to_string(), Some(h.to_string())),
        None => (message, None),
    };
    let hint = if let Some(h) = own_hint.as_deref() {
        h
    } else if message.contains("unknown field") {
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

/// The key of serde's duplicate-key messages: `duplicate entry with key "k"`
/// (a mapping read as a value) or ``duplicate field `k` `` (a struct).
/// serde puts the path of the mapping in front (`os: duplicate …`).
fn duplicate_key(message: &str) -> Option<(String, String)> {
    let (before, key) = match message.split_once("duplicate entry with key ") {
        Some((before, rest)) => (before, rest.trim_matches('"').to_string()),
        None => {
            let (before, rest) = message.split_once("duplicate field `")?;
            (before, rest.split('`').next()?.to_string())
        }
    };
    let parent = before.trim_end_matches(": ");
    let field = if parent.is_empty() || parent.contains(' ') {
        key.clone()
    } else {
        format!("{parent}.{key}")
    };
    Some((field, key))
}

/// A key given twice in one mapping: both lines are named, because YAML
/// parsers disagree on which one wins and a reader sees only one of them.
fn duplicate_error(
    path: &Path,
    source: &str,
    e: &serde_norway::Error,
    field: &str,
    key: &str,
) -> InputError {
    let hint = "keep one of them";
    match duplicate_lines(source, key) {
        Some(((first, _), (line, col))) => InputError::new(
            path,
            field,
            format!("duplicate key `{key}`: given on line {first} and again on line {line}"),
            hint,
        )
        .at(Some((line, col))),
        None => InputError::new(path, field, format!("duplicate key `{key}`"), hint)
            .at(e.location().map(|l| (l.line(), l.column()))),
    }
}

/// The first two block-style lines that give `key` at the same indentation
/// with no shallower line between them (one mapping): 1-based (line, column).
#[allow(clippy::type_complexity)]
fn duplicate_lines(source: &str, key: &str) -> Option<((usize, usize), (usize, usize))> {
    let plain = format!("{key}:");
    let quoted = format!("\"{key}\":");
    // (line, column) of each sighting whose mapping is still open: a line
    // indented less than a key's column ends that key's mapping.
    let mut open: Vec<(usize, usize)> = Vec::new();
    for (n, text) in source.lines().enumerate() {
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = text.len() - trimmed.len();
        let content = trimmed.trim_start_matches(['-', ' ']);
        let col = text.len() - content.len();
        open.retain(|&(_, c)| c <= indent);
        if content.starts_with(&plain) || content.starts_with(&quoted) {
            if let Some(&(l, c)) = open.iter().find(|&&(_, c)| c == col) {
                return Some(((l, c + 1), (n + 1, col + 1)));
            }
            open.push((n + 1, col));
        }
    }
    None
}

/// An "exactly one of" section refused by its `TryFrom`. serde's position
/// is that of the value, not of its key, so the section is located by name;
/// a list item (`extensions[]`) by the line serde gives.
fn section_error(path: &Path, source: &str, e: &serde_norway::Error, message: &str) -> InputError {
    let (left, right) = message.split_once(FIELD_MARK).unwrap_or(("", message));
    let section = left.rsplit(": ").next().unwrap_or(left);
    let (text, hint) = right.split_once(HINT_MARK).unwrap_or((right, ""));
    let field = match section.split_once("[]") {
        Some((list, tail)) => {
            let line = e.location().map(|l| l.line());
            (0..1024)
                .map(|i| format!("{list}[{i}]"))
                .take_while(|f| yamlpos::locate(source, &yamlpos::path(f)).is_some())
                .find(|f| yamlpos::locate(source, &yamlpos::path(f)).map(|p| p.0) == line)
                .map(|f| format!("{f}{tail}"))
                .unwrap_or_else(|| list.to_string())
        }
        None => section.to_string(),
    };
    let position = yamlpos::locate(source, &yamlpos::path(&field))
        .or_else(|| e.location().map(|l| (l.line(), l.column())));
    InputError::new(path, field, text, hint).at(position)
}

/// An input error about `field` of the profile at `path` whose text is `source`,
/// positioned at the field: the one way a profile field is blamed.
pub fn field_error(
    path: &Path,
    source: &str,
    field: &str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> InputError {
    InputError::new(path, field, message, hint).at(yamlpos::locate(source, &yamlpos::path(field)))
}

impl LoadedProfile {
    /// An input error about `field` of this profile, positioned in its text.
    pub fn error(
        &self,
        field: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> InputError {
        field_error(&self.path, &self.source, field, message, hint)
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

    /// Checks values serde cannot check: names, kernel arguments, non-empty strings.
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
        for (i, arg) in k.args.iter().enumerate() {
            if arg.contains('"') {
                return Err(self
                    .error(
                        &format!("kernel.args[{i}]"),
                        format!("`{arg}` holds a `\"`"),
                        "remove the quote: each list item is one argument already, and the kernel would join the arguments after it up to the next quote",
                    )
                    .into());
            }
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
        if p.os.id.is_empty() || p.os.version.is_empty() {
            return Err(self
                .error(
                    "os",
                    "`id` and `version` must not be empty",
                    "e.g. `id: strata`, `version: 1.0.0`",
                )
                .into());
        }
        // os-release(5): ID is lower-case letters, digits, `.`, `_`, `-`;
        // VERSION_ID the same with upper case and `~`, `+` (seen in the wild).
        // Both land in the boot entry's title and are compared with the root's os-release.
        let os_fields = [
            ("os.id", &p.os.id, "a-z, 0-9, `.`, `_` and `-`", false),
            (
                "os.version",
                &p.os.version,
                "letters, digits, `.`, `_`, `-`, `~` and `+`",
                true,
            ),
        ];
        for (field, value, allowed, version) in os_fields {
            let ok = value.chars().all(|c| {
                c.is_ascii_digit()
                    || c.is_ascii_lowercase()
                    || "._-".contains(c)
                    || (version && (c.is_ascii_uppercase() || "~+".contains(c)))
            });
            if !ok {
                return Err(self
                    .error(
                        field,
                        format!("`{value}` is not an os-release value"),
                        format!("use only {allowed}, as os-release(5) asks"),
                    )
                    .into());
            }
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
    fn the_pcr_key_is_read_and_resolved() {
        let p = load_text(&format!("{GOOD}pcr:\n  key: keys/pcr.key\n")).unwrap();
        let key = &p.profile.pcr.as_ref().unwrap().key;
        assert!(p.resolve(key).ends_with("keys/pcr.key"));
        assert!(load_text(&format!("{GOOD}pcr:\n  key: k\n  bank: sha1\n")).is_err());
    }

    #[test]
    fn unknown_keys_name_the_line_and_the_fix() {
        let e = load_text(&GOOD.replace("  dir: root", "  dir: root\n  colour: red")).unwrap_err();
        let err = e.to_string();
        assert!(
            err.contains(":9:3: rootfs: unknown field `colour`"),
            "{err}"
        );
        assert!(
            e.hint().unwrap_or_default().starts_with("remove or rename"),
            "{err}"
        );
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
        let e = load_text(&GOOD.replace("  dir: root", "  dir: root\n  tar: r.tar")).unwrap_err();
        assert!(
            e.to_string().contains(":7:1: rootfs: give exactly one"),
            "{e}"
        );
        assert_eq!(e.hint(), Some("keep one root filesystem source"));
    }

    #[test]
    fn sources_become_enums() {
        let p = load_text(GOOD).unwrap();
        assert_eq!(
            p.profile.kernel.source,
            KernelSource::Deb("k-${arch}.deb".into())
        );
        assert_eq!(p.profile.rootfs.source, RootSource::Dir("root".into()));
        assert_eq!(
            p.profile.extensions[0].source,
            ExtensionSource::Dir("ext/a".into())
        );
        let err = load_text(&GOOD.replace("  - dir: ext/a", "  - dir: ext/a\n    ref: v1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":11:5: extensions[0].ref: `ref` only selects"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn load_text(text: &str) -> Result<LoadedProfile> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        load(f.path(), None)
    }

    const GOOD: &str = "name: demo\narch: amd64\nplatform: metal\nos:\n  id: strata\n  version: 1.0.0\nkernel:\n  deb: k.deb\nrootfs:\n  dir: root\n";

    /// The error text, after checking it came within a second.
    fn refused(text: &str) -> String {
        let t = Instant::now();
        let e = load_text(text).unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidInput);
        format!("{e} | fix: {}", e.hint().unwrap_or_default())
    }

    #[test]
    fn a_newline_in_a_value_is_refused_at_its_field() {
        let err = refused(&GOOD.replace("  id: strata", "  id: \"strata\\noptions init=/bin/sh\""));
        assert!(
            err.contains(":5:3: os.id: the value contains the control character '\\n'"),
            "{err}"
        );
        let err =
            refused(&GOOD.replace("  deb: k.deb", "  deb: k.deb\n  args: [quiet, \"a\\tb\"]"));
        assert!(
            err.contains("kernel.args[1]: the value contains the control character '\\t'"),
            "{err}"
        );
    }

    #[test]
    fn values_that_would_break_generated_files_are_refused() {
        let err = refused(&GOOD.replace("  id: strata", "  id: Strata OS"));
        assert!(
            err.contains("os.id: `Strata OS` is not an os-release value"),
            "{err}"
        );
        let err = refused(&GOOD.replace("  version: 1.0.0", "  version: \"1 0\""));
        assert!(err.contains("os.version"), "{err}");
        let err = refused(&GOOD.replace(
            "  deb: k.deb",
            "  deb: k.deb\n  args: ['x=\"', 'init=/bin/sh\"']",
        ));
        assert!(err.contains("kernel.args[0]"), "{err}");
        load_text(&GOOD.replace("  version: 1.0.0", "  version: 1.0.0-RC1+b2~x")).unwrap();
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let err = refused(&GOOD.replace("  id: strata", "  id: strata\n  id: other"));
        assert!(
            err.contains(":6:3: os.id: duplicate key `id`: given on line 5 and again on line 6"),
            "{err}"
        );
        let err = refused(&format!("{GOOD}name: again\n"));
        assert!(
            err.contains(":11:1: name: duplicate key `name`: given on line 1 and again on line 11"),
            "{err}"
        );
        let twice = format!("{GOOD}extensions:\n  - dir: a\n  - dir: b\n    dir: c\n");
        let err = refused(&twice);
        assert!(
            err.contains("given on line 13 and again on line 14"),
            "{err}"
        );
        let err = refused(&GOOD.replace(
            "os:\n  id: strata\n  version: 1.0.0",
            "os: {id: a, id: b, version: 1}",
        ));
        assert!(err.contains("duplicate key `id`"), "{err}");
    }

    #[test]
    fn hostile_shapes_are_refused_quickly() {
        let err = refused(&format!("{GOOD}x: {}\n", "[".repeat(200_000)));
        assert!(
            err.contains(":11:67: collections nest deeper than 64 levels"),
            "{err}"
        );
        let err = refused(&format!("a: &a [x, x]\nb: [*a, *a]\n{GOOD}"));
        assert!(err.contains(":2:5: YAML alias `*a`"), "{err}");
        let err = refused(&format!("{GOOD}#{}\n", "x".repeat(2 << 20)));
        assert!(err.contains("more than the 1048576 bytes"), "{err}");
        let err = refused(&GOOD.replace("name: demo", "name: [1, 2]"));
        assert!(err.contains(":1:7: name: invalid type"), "{err}");
    }

    #[test]
    fn a_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = load(&fifo, None).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
