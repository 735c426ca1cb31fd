//! `manifest.json`, written beside the artefacts: what was built from what.
//!
//! It lists every output with its sha256, size and format, the digests of
//! the inputs, and what a boot test needs to judge the image (architecture,
//! platform device model, the extensions the guest must report). It holds
//! no timings or host names, so it is as reproducible as the images.

use serde::{Deserialize, Serialize};

/// The file name of the manifest in an output directory.
pub const FILE_NAME: &str = "manifest.json";

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// strata's version.
    pub strata: String,
    /// Profile name.
    pub name: String,
    /// Target architecture (`amd64`, `arm64`).
    pub arch: String,
    /// Platform name.
    pub platform: String,
    /// OS identity.
    pub os: Os,
    /// The kernel command line baked into the boot entry.
    pub cmdline: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Every input, with its digest.
    pub inputs: Vec<Input>,
    /// Extension layers, lowest first.
    pub extensions: Vec<Extension>,
    /// Kernel modules in the initramfs, load order.
    pub modules: Vec<String>,
    /// How boot tests attach the image.
    pub boot_test: BootTest,
    /// Timestamp used for every file (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// The artefacts.
    pub outputs: Vec<Output>,
}

/// OS identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Os {
    /// os-release ID.
    pub id: String,
    /// os-release VERSION_ID.
    pub version: String,
}

/// One input file or directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Input {
    /// What it is: `kernel`, `rootfs`, `extension`, `bootloader`, `init`.
    pub role: String,
    /// Where it came from, as the profile names it (resolved).
    pub source: String,
    /// sha256 of the file, or of the squashfs built from a directory.
    pub sha256: String,
}

/// One extension layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Extension {
    /// Extension name.
    pub name: String,
    /// Extension version.
    pub version: String,
    /// Layer file in the initramfs.
    pub image: String,
    /// `talos`, `sysext` or `confext`.
    pub kind: String,
}

/// Boot-test settings from the platform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootTest {
    /// QEMU device model name (`virtio-blk`, `nvme`, …).
    pub media: String,
    /// Guest memory.
    pub memory_mib: u32,
}

/// One artefact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    /// File name in the output directory.
    pub file: String,
    /// Format (`raw`, …).
    pub format: String,
    /// Size in bytes (apparent size; raw images are sparse).
    pub size: u64,
    /// sha256 of the file.
    pub sha256: String,
}

impl Manifest {
    /// Reads the manifest in `dir`.
    pub fn read(dir: &std::path::Path) -> std::io::Result<Manifest> {
        let text = std::fs::read(dir.join(FILE_NAME))?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }
}
