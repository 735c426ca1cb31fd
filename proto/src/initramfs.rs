//! The files the composer writes into the initramfs for the guest init, and
//! their formats: one definition that the composer serialises and the init
//! parses, so the two cannot drift.
//!
//! | path                          | what                                        |
//! |-------------------------------|---------------------------------------------|
//! | `/extensions.yaml`            | Talos layers to stack ([`ExtensionsYaml`])  |
//! | `/<image>`                    | each Talos layer's squashfs                 |
//! | `/sysext/<name>.raw`          | system extension images                     |
//! | `/confext/<name>.raw`         | configuration extension images              |
//! | `/etc/strata/modules.load`    | module files to load, dependencies first    |
//! | `/etc/strata/modules.check`   | extension modules to load by name           |
//! | `/etc/strata/extensions.json` | flattened and disabled extensions ([`Shipped`]) |
//! | `/etc/strata/guest.json`      | state mode and profile files ([`Guest`])    |
//! | `/files.sqsh`                 | the profile's `files:` as a squashfs layer  |
//!
//! `extensions.yaml` is YAML and this crate stays free of a YAML library (the
//! guest init must stay small and the composer picks its own): its types are
//! plain serde types, generic over the metadata the writer carries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::extrelease::Class;
use crate::kind::ExtensionKind;

/// The Talos extension list, in Talos' own format.
pub const EXTENSIONS_YAML: &str = "/extensions.yaml";
/// Module files to load, one absolute `.ko` path a line, dependencies first.
pub const MODULES_LOAD: &str = "/etc/strata/modules.load";
/// Extension modules to load by name once the root is merged.
pub const MODULES_CHECK: &str = "/etc/strata/modules.check";
/// Extensions that ship without a layer at boot.
pub const EXTENSIONS_JSON: &str = "/etc/strata/extensions.json";
/// The state mode and the profile's files (absent = tmpfs state, no files).
pub const GUEST_JSON: &str = "/etc/strata/guest.json";
/// The profile's `files:`, a squashfs stacked on top of every layer.
pub const FILES_IMAGE: &str = "/files.sqsh";
/// The GPT partition name of the partition persistent state lives on.
pub const STATE_PARTITION: &str = "DATA";
/// The directory the init keeps its lists in.
pub const STRATA_DIR: &str = "/etc/strata";

/// The first line of `modules.load`.
const MODULES_LOAD_HEADER: &str = "# written by strata: modules to load, dependencies first\n";
/// The first line of `modules.check`.
const MODULES_CHECK_HEADER: &str =
    "# written by strata: extension modules the init loads by name\n";

/// A contract path as a cpio archive names it (no leading `/`).
pub fn archive_name(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Where the images of a systemd class are in the initramfs.
pub fn images_dir(class: Class) -> &'static str {
    match class {
        Class::Sysext => "/sysext",
        Class::Confext => "/confext",
    }
}

/// The initramfs path of a systemd extension image, `/sysext/<name>.raw`.
pub fn image_path(class: Class, name: &str) -> String {
    format!("{}/{name}.raw", images_dir(class))
}

/// `extensions.yaml`: Talos layers, lowest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "M: Deserialize<'de>"))]
pub struct ExtensionsYaml<M> {
    /// Layers, lowest first (absent or `null` reads as none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub layers: Vec<YamlLayer<M>>,
}

impl<M> Default for ExtensionsYaml<M> {
    fn default() -> Self {
        ExtensionsYaml { layers: Vec::new() }
    }
}

/// One Talos layer of `extensions.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct YamlLayer<M> {
    /// The squashfs image's file name, at `/<image>` in the initramfs.
    pub image: String,
    /// The extension's manifest metadata: the composer writes all of it,
    /// the init reads [`LayerMetadata`].
    pub metadata: M,
}

impl<M> YamlLayer<M> {
    /// Where the image sits in the initramfs.
    pub fn image_path(&self) -> PathBuf {
        Path::new("/").join(&self.image)
    }
}

/// The part of a layer's metadata the guest reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMetadata {
    /// Extension name.
    #[serde(deserialize_with = "scalar_string")]
    pub name: String,
    /// Extension version (a YAML number is read as YAML shows it).
    #[serde(deserialize_with = "scalar_string")]
    pub version: String,
}

/// A layer image name must be a plain file name: images live at `/<name>`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    de: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(de)?.unwrap_or_default())
}

/// A YAML scalar as text: a string, or a number/bool YAML typed for us.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
}

fn scalar_string<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    Ok(match Scalar::deserialize(de)? {
        Scalar::Text(text) => text,
        Scalar::Unsigned(n) => n.to_string(),
        Scalar::Signed(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    })
}

/// `/etc/strata/extensions.json`. Fields are declared in the order the
/// file has always had (sorted), so serialising them writes the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipped {
    /// Extensions shipped as files, not activated (absent = none).
    #[serde(default)]
    pub disabled: Vec<Disabled>,
    /// Extensions merged into the root squashfs (absent = none).
    #[serde(default)]
    pub flattened: Vec<Flattened>,
}

impl Shipped {
    /// The file's bytes, as the composer writes them (pretty JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.disabled.is_empty() && self.flattened.is_empty()
    }
}

/// An extension flattened into the root: the guest checks its probe file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flattened {
    /// What kind of extension it was.
    pub kind: ExtensionKind,
    /// Extension name.
    pub name: String,
    /// The file that proves it is in the root.
    pub probe: Probe,
    /// Extension version (absent = empty).
    #[serde(default)]
    pub version: String,
}

/// A file and its expected digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Absolute path in the booted system.
    pub path: String,
    /// Hex sha256 of its content (the guest compares case-insensitively).
    pub sha256: String,
}

/// An extension shipped as an image file but not activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    /// What kind of extension it is.
    pub kind: ExtensionKind,
    /// Extension name.
    pub name: String,
    /// The image file, absolute in the booted system.
    pub path: String,
    /// Extension version (absent = empty).
    #[serde(default)]
    pub version: String,
}

impl Disabled {
    /// The image's file name, as the report's `image`.
    pub fn file_name(&self) -> String {
        Path::new(&self.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Where the merged root's writable layer lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateMode {
    /// A tmpfs: the root is writable, every change is gone at the next boot.
    #[default]
    Tmpfs,
    /// The `DATA` partition (formatted by the init on first boot): changes
    /// survive reboots.
    Persistent,
}

impl StateMode {
    /// The name the profile and the report use.
    pub fn as_str(self) -> &'static str {
        match self {
            StateMode::Tmpfs => "tmpfs",
            StateMode::Persistent => "persistent",
        }
    }
}

/// `/etc/strata/guest.json`: what the init does beyond the layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// Where the writable layer lives.
    #[serde(default)]
    pub state: StateMode,
    /// The profile's files, as `/files.sqsh` holds them (absent = none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ProfileFile>,
    /// Files several Talos layers ship, and whose copy the merged root
    /// must show: the upper layer's (absent = none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<Shadowed>,
    /// Start each Talos extension service once and report it
    /// (`boot_test.services: true`; absent = false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub services: bool,
}

/// A regular file that more than one Talos layer ships. Overlayfs shows
/// the copy of the upper layer (the later one in the profile, as Talos
/// stacks them), so the merged root must hold the last layer's content.
/// The composer leaves out paths a sysext, confext, the module layer or
/// the profile's `files:` also ship: those sit above every Talos layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadowed {
    /// Absolute path in the booted system.
    pub path: String,
    /// The names of the layers that ship it, lowest first: the last one's
    /// copy must show.
    pub layers: Vec<String>,
    /// Hex sha256 of the last layer's copy.
    pub sha256: String,
}

impl Guest {
    /// The file's bytes, as the composer writes them (pretty JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs of strings and numbers: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// True when it says nothing the defaults do not (the file is then left out).
    pub fn is_default(&self) -> bool {
        *self == Guest::default()
    }
}

/// One entry of the profile's `files:`, as the guest must find it in the
/// merged root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// Absolute path in the booted system.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: FileKind,
    /// Hex sha256 of a file's content, or of a symlink's target text;
    /// empty for a directory.
    #[serde(default)]
    pub sha256: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What a profile file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// `modules.load`'s text: a header comment, then one absolute path a line.
pub fn modules_load_text<S: AsRef<str>>(paths: impl IntoIterator<Item = S>) -> String {
    lines(MODULES_LOAD_HEADER, paths)
}

/// `modules.check`'s text: a header comment, then one module name a line.
pub fn modules_check_text<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    lines(MODULES_CHECK_HEADER, names)
}

fn lines<S: AsRef<str>>(header: &str, items: impl IntoIterator<Item = S>) -> String {
    let mut text = String::from(header);
    for item in items {
        text.push_str(item.as_ref());
        text.push('\n');
    }
    text
}

/// The entries of a line list (`modules.load`, `modules.check`): trimmed,
/// blank lines and `#` comments skipped, each with its 1-based line number.
pub fn list_entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, raw)| (index + 1, raw.trim()))
        .filter(|(_, entry)| !entry.is_empty() && !entry.starts_with('#'))
}

/// A `modules.check` entry is a module name or alias, not a path or a file.
pub fn is_module_name(entry: &str) -> bool {
    !entry.contains(['/', ' ', '\t']) && !entry.ends_with(".ko")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_through_their_text() {
        let text = modules_check_text(["macvtap", "nvme-core"]);
        assert_eq!(
            text,
            "# written by strata: extension modules the init loads by name\nmacvtap\nnvme-core\n"
        );
        let got: Vec<_> = list_entries(&text).collect();
        assert_eq!(got, [(2, "macvtap"), (3, "nvme-core")]);
        assert!(got.iter().all(|(_, n)| is_module_name(n)));
        let text = modules_load_text(["/lib/modules/6.1/kernel/a.ko"]);
        assert_eq!(
            text,
            "# written by strata: modules to load, dependencies first\n/lib/modules/6.1/kernel/a.ko\n"
        );
        assert!(!is_module_name("kernel/a.ko") && !is_module_name("a b"));
    }

    #[test]
    fn shipped_json_keeps_its_sorted_wire_form() {
        let shipped = Shipped {
            disabled: vec![Disabled {
                kind: ExtensionKind::Sysext,
                name: "tools".into(),
                path: "/usr/lib/strata/extensions-available/tools.raw".into(),
                version: "2.0".into(),
            }],
            flattened: vec![Flattened {
                kind: ExtensionKind::Talos,
                name: "hello".into(),
                probe: Probe {
                    path: "/usr/local/bin/hello".into(),
                    sha256: "ab".repeat(32),
                },
                version: "1.0.0".into(),
            }],
        };
        // What the composer wrote with `json!` (a sorted map) before these types.
        let before = serde_json::to_vec_pretty(&serde_json::to_value(&shipped).unwrap()).unwrap();
        assert_eq!(shipped.to_bytes(), before);
        let back: Shipped = serde_json::from_slice(&shipped.to_bytes()).unwrap();
        assert_eq!(back, shipped);
        assert_eq!(back.disabled[0].file_name(), "tools.raw");
    }

    #[test]
    fn image_paths_follow_the_class() {
        assert_eq!(image_path(Class::Sysext, "tools"), "/sysext/tools.raw");
        assert_eq!(image_path(Class::Confext, "cfg"), "/confext/cfg.raw");
        assert_eq!(archive_name(MODULES_CHECK), "etc/strata/modules.check");
        let layer = YamlLayer {
            image: "00-a.sqsh".to_string(),
            metadata: (),
        };
        assert_eq!(layer.image_path(), PathBuf::from("/00-a.sqsh"));
        assert!(is_plain_name("a.sqsh") && !is_plain_name("../a") && !is_plain_name(".."));
    }
}
