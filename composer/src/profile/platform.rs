//! Platforms: what differs between metal, clouds and hypervisors.
//!
//! One YAML file per platform in `platforms/` gives the kernel arguments, the
//! default outputs, the disk layout and the QEMU device model that stands for
//! the platform in boot tests. The files are compiled into the binary, so
//! `strata` works from any directory; a profile overrides what it sets.

use crate::arch::Arch;
use crate::error::InputError;
use crate::profile::units::Size;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The platform files shipped with strata, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("aws", include_str!("../../../platforms/aws.yaml")),
    ("azure", include_str!("../../../platforms/azure.yaml")),
    ("gcp", include_str!("../../../platforms/gcp.yaml")),
    ("metal", include_str!("../../../platforms/metal.yaml")),
    ("nocloud", include_str!("../../../platforms/nocloud.yaml")),
    ("vmware", include_str!("../../../platforms/vmware.yaml")),
];

/// A platform definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// The platform's name, as profiles refer to it.
    pub name: String,
    /// One line for `strata platforms`.
    pub description: String,
    /// Kernel arguments per architecture; the last `console=` receives the guest's report.
    pub kernel_args: BTreeMap<Arch, Vec<String>>,
    /// Extra initramfs modules the platform's hardware needs, per architecture.
    #[serde(default)]
    pub modules: PerArch<Vec<String>>,
    /// Output formats built when the profile names none.
    pub outputs: Vec<String>,
    /// Disk size and partitions.
    pub disk: PlatformDisk,
    /// How boot tests emulate the platform.
    pub boot_test: BootTest,
}

/// The disk layout of a platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformDisk {
    /// Whole disk size; `auto` fits the partitions.
    #[serde(default)]
    pub size: Size,
    /// Partitions in disk order.
    pub partitions: Vec<PartitionSpec>,
}

/// One partition of a platform's layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// GPT partition name.
    pub label: String,
    /// What the partition holds.
    #[serde(rename = "type")]
    pub kind: PartitionKind,
    /// Size; `auto` fits the contents (the ESP) or takes the rest (the last partition).
    #[serde(default)]
    pub size: Size,
}

/// Partition roles, each with its GPT type GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionKind {
    /// EFI system partition (FAT32): bootloader, kernel, initramfs.
    Esp,
    /// An empty Linux data partition, formatted on first boot by the OS.
    Linux,
}

/// The QEMU stand-in for a platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTest {
    /// Device model: virtio-blk, nvme, ahci, pvscsi, virtio-scsi or cdrom;
    /// one for all architectures or one per architecture.
    pub media: PerArch<String>,
    /// Guest memory.
    pub memory_mib: u32,
    /// Start every Talos extension service once in the guest and judge it
    /// (a profile's `boot_test.services` overrides this).
    #[serde(default)]
    pub services: bool,
}

/// A value for every architecture, or one per architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerArch<T> {
    /// The same for every architecture.
    All(T),
    /// Per architecture; a missing architecture gets the default.
    Each(BTreeMap<Arch, T>),
}

impl<T: Default> Default for PerArch<T> {
    fn default() -> Self {
        PerArch::Each(BTreeMap::new())
    }
}

impl<T: Clone + Default> PerArch<T> {
    /// The value for `arch`.
    pub fn get(&self, arch: Arch) -> T {
        match self {
            PerArch::All(v) => v.clone(),
            PerArch::Each(m) => m.get(&arch).cloned().unwrap_or_default(),
        }
    }
}

/// Names of the built-in platforms.
pub fn names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// Why a built-in platform cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// No platform of that name is built in.
    #[error("unknown platform `{name}`; available: {available}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The built-in names.
        available: String,
    },
    /// A built-in file does not parse (a bug in strata).
    #[error("built-in platform `{name}` is invalid")]
    Invalid {
        /// The platform.
        name: String,
        /// The YAML error.
        #[source]
        source: serde_norway::Error,
    },
}

/// Loads a built-in platform by name.
pub fn load(name: &str) -> std::result::Result<Platform, PlatformError> {
    let (_, text) =
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| PlatformError::Unknown {
                name: name.to_string(),
                available: names().join(", "),
            })?;
    serde_norway::from_str(text).map_err(|source| PlatformError::Invalid {
        name: name.to_string(),
        source,
    })
}

impl Platform {
    /// The platform's kernel arguments for `arch`.
    pub fn args(&self, arch: Arch) -> &[String] {
        self.kernel_args
            .get(&arch)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// An error about a platform file.
pub fn platform_error(name: &str, field: &str, message: impl Into<String>) -> InputError {
    InputError::new(
        format!("platforms/{name}.yaml"),
        field,
        message,
        "fix the platform file or override the value in the profile",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_platform_parses() {
        for name in names() {
            let p = load(name).unwrap();
            assert_eq!(p.name, name);
            for arch in Arch::ALL {
                assert!(
                    p.args(arch).iter().any(|a| a.starts_with("console=")),
                    "{name} {arch}"
                );
            }
            assert_eq!(
                p.disk
                    .partitions
                    .iter()
                    .filter(|p| p.kind == PartitionKind::Esp)
                    .count(),
                1
            );
        }
    }

    #[test]
    fn unknown_platforms_list_the_known_ones() {
        assert!(load("mars")
            .unwrap_err()
            .to_string()
            .contains("available: aws, azure, gcp, metal, nocloud, vmware"));
    }
}
