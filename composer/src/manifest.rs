//! `manifest.json`, written beside the artefacts: what was built from what.
//!
//! It lists every output with its sha256, size and format, the digests of
//! the inputs, and what a boot test needs to judge the image (architecture,
//! platform device model, the extensions the guest must report). It holds
//! no timings or host names, so it is as reproducible as the images.

use crate::assets::layers::Composed;
use crate::assets::Assets;
use crate::error::{Error, ErrorKind, Result};
use crate::extension::source::Kind;
use crate::format::{Format, OutputKind};
use crate::io::outdir::OutDir;
use crate::plan::Plan;
use crate::source::kernel::Kernel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use strata_proto::initramfs::StateMode;

/// The file name of the manifest in an output directory.
pub const FILE_NAME: &str = "manifest.json";

/// The whole manifest: one section per (arch, platform) built into this
/// directory, so amd64 and arm64 builds of one profile can share `out/<name>/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// strata's version.
    pub strata: String,
    /// Profile name.
    pub name: String,
    /// The builds, sorted by arch then platform.
    pub builds: Vec<Build>,
}

/// For `skip_serializing_if`: the default state mode is left out, so
/// manifests of builds without `state:` keep their bytes.
fn is_false(b: &bool) -> bool {
    !*b
}

fn is_tmpfs(mode: &StateMode) -> bool {
    *mode == StateMode::Tmpfs
}

/// What one build of the profile produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Build {
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
    /// Kernel modules extensions ship, which the guest loads by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext_modules: Vec<String>,
    /// The profile's `files:`, which the guest reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Files several Talos layers ship (`guest.json`'s `shadowed`): the guest must report
    /// the layer order of each, so a boot without those reports fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
    /// Talos extension services the guest starts (`boot_test.services`), by name: each
    /// must be reported, so an init that started none fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Where the root's writable layer lives (absent: tmpfs).
    #[serde(default, skip_serializing_if = "is_tmpfs")]
    pub state: StateMode,
    /// PCR 11 (SHA-256 bank) predicted for the UKI, per boot phase, with
    /// the signed policy digests; absent when the build made no signed UKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr11: Option<crate::trust::pcr::Prediction>,
    /// Every EFI binary is signed for Secure Boot: boot tests use Secure
    /// Boot firmware and require the guest to report it on.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secure_boot: bool,
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
    /// Where it came from: the path as the profile writes it (relative to
    /// the profile's directory), an image reference, or the file name of an
    /// input the profile does not name (see [`crate::plan::InputNames`]).
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
    /// `talos`, `sysext` or `confext` (the guest's report names the same kinds).
    pub kind: strata_proto::ExtensionKind,
    /// Merged into the root at build time (`flatten: true`) rather than layered at boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flattened: bool,
    /// Shipped under `/usr/lib/strata/extensions-available/` but not activated (`enabled: false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
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
    /// Device model for boot tests when it differs from the build's (`cdrom` for an ISO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
}

impl Manifest {
    /// Reads the manifest in `dir`.
    pub fn read(dir: &std::path::Path) -> std::io::Result<Manifest> {
        let text = std::fs::read(dir.join(FILE_NAME))?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// The manifest after `build`: `previous` (the manifest already in the
    /// directory, if it is for the same profile name) keeps its other builds,
    /// and `build` replaces any earlier build of the same arch and platform.
    pub fn merge(previous: Option<Manifest>, name: &str, build: Build) -> Manifest {
        let mut builds: Vec<Build> = previous
            .filter(|m| m.name == name)
            .map(|m| m.builds)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| {
                (b.arch.as_str(), b.platform.as_str())
                    != (build.arch.as_str(), build.platform.as_str())
            })
            .collect();
        builds.push(build);
        builds.sort_by(|a, b| (&a.arch, &a.platform).cmp(&(&b.arch, &b.platform)));
        Manifest {
            strata: env!("CARGO_PKG_VERSION").into(),
            name: name.into(),
            builds,
        }
    }

    /// The build and output entry of an artefact file name.
    pub fn find_output(&self, file: &str) -> Option<(&Build, &Output)> {
        self.builds
            .iter()
            .find_map(|b| b.outputs.iter().find(|o| o.file == file).map(|o| (b, o)))
    }
}

impl Build {
    /// The manifest section of platform `i` of `plan`, from what the
    /// kernel and assets steps made and the outputs written (final paths).
    pub fn from_build(
        plan: &Plan,
        i: usize,
        kernel: &Kernel,
        assets: &Assets,
        pcr11: Option<crate::trust::pcr::Prediction>,
        finals: &[(OutputKind, PathBuf)],
    ) -> Result<Build> {
        let pp = &plan.platforms[i];
        Ok(Build {
            arch: plan.arch.to_string(),
            platform: pp.platform.name.clone(),
            os: Os {
                id: plan.os.0.clone(),
                version: plan.os.1.clone(),
            },
            cmdline: pp.cmdline.clone(),
            kernel_release: kernel.release.clone(),
            inputs: inputs(plan, kernel, &assets.composed)?,
            extensions: extensions(plan, &assets.composed),
            modules: assets.platforms[i]
                .modules
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            ext_modules: assets
                .module_layer
                .as_ref()
                .map(|m| m.names.clone())
                .unwrap_or_default(),
            files: plan.files.records.iter().map(|f| f.path.clone()).collect(),
            shadowed: assets.shadowed.iter().map(|s| s.path.clone()).collect(),
            services: assets.services.clone(),
            state: plan.state,
            pcr11,
            secure_boot: plan.trust.as_ref().is_some_and(|t| t.secure_boot.is_some()),
            boot_test: BootTest {
                media: pp.platform.boot_test.media.get(plan.arch),
                memory_mib: pp.platform.boot_test.memory_mib,
            },
            epoch: plan.epoch,
            outputs: finals
                .iter()
                .map(|(kind, path)| output(*kind, path))
                .collect::<Result<Vec<_>>>()?,
        })
    }
}

fn sha(path: &Path) -> Result<String> {
    crate::io::hash::file_sha256(path).map_err(Error::io("hashing", path))
}

fn output(kind: OutputKind, path: &Path) -> Result<Output> {
    Ok(Output {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: kind.to_string(),
        size: std::fs::metadata(path)
            .map_err(Error::io("reading", path))?
            .len(),
        sha256: sha(path)?,
        media: (kind.format == Format::Iso).then(|| "cdrom".to_string()),
    })
}

/// Every input with its digest: a layer's is that of the squashfs built
/// from it, a sysext's that of its image.
fn inputs(plan: &Plan, kernel: &Kernel, c: &Composed) -> Result<Vec<Input>> {
    let names = &plan.names;
    let mut ins = vec![Input {
        role: "kernel".into(),
        source: names.as_written(&plan.kernel.origin().display().to_string()),
        sha256: kernel.source_digest.clone(),
    }];
    ins.push(Input {
        role: "rootfs".into(),
        source: names.as_written(&plan.root_origin().display().to_string()),
        sha256: sha(&c.rootfs)?,
    });
    let mut talos_layers = c.layers.iter();
    for e in &plan.extensions {
        let sha256 = match &e.raw_image {
            Some(raw) => sha(raw)?,
            None => match talos_layers.next() {
                Some(l) => sha(&l.path)?,
                None => String::new(),
            },
        };
        let origin = names.as_written(&e.origin);
        ins.push(Input {
            role: format!("extension ({})", e.kind.as_str()),
            source: match &e.digest {
                Some(d) if !origin.contains(d.as_str()) => format!("{origin} ({d})"),
                _ => origin,
            },
            sha256,
        });
    }
    ins.push(Input {
        role: "bootloader".into(),
        source: names.bootloader(&plan.bootloader),
        sha256: sha(&plan.bootloader)?,
    });
    ins.push(Input {
        role: "init".into(),
        source: names.init(&plan.init),
        sha256: sha(&plan.init)?,
    });
    Ok(ins)
}

/// The extension list: Talos layers with their image names (the module
/// layer included), sysext/confext images as they sit in the initramfs,
/// flattened extensions, then the disabled ones.
fn extensions(plan: &Plan, c: &Composed) -> Vec<Extension> {
    let mut out = Vec::new();
    for e in &plan.extensions {
        let flattened = c
            .flattened
            .iter()
            .any(|f| f.name == e.name && f.kind == e.kind);
        let image = match (e.kind, flattened) {
            (_, true) => String::new(),
            (Kind::Talos, false) => c
                .layers
                .iter()
                .find(|l| l.name == e.name)
                .map(|l| l.image.clone())
                .unwrap_or_default(),
            (k, false) => crate::assets::guest_files::image_name(k, &e.name).unwrap_or_default(),
        };
        out.push(Extension {
            name: e.name.clone(),
            version: e.version.clone(),
            image,
            kind: e.kind,
            flattened,
            disabled: false,
        });
    }
    if let Some(m) = c.layers.iter().find(|l| l.name == "modules.dep") {
        out.push(Extension {
            name: m.name.clone(),
            version: m.version.clone(),
            image: m.image.clone(),
            kind: strata_proto::ExtensionKind::Talos,
            flattened: false,
            disabled: false,
        });
    }
    out.extend(plan.disabled.iter().map(|e| Extension {
        name: e.name.clone(),
        version: e.version.clone(),
        image: e.available_path(),
        kind: e.kind,
        flattened: false,
        disabled: true,
    }));
    out
}

/// Writes `manifest` into the output directory (temporary file, then rename).
pub fn write(out: &OutDir, manifest: &Manifest) -> Result<PathBuf> {
    let tmp = out.temp_file()?;
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::step(ErrorKind::Io, "writing manifest.json", e))?;
    std::fs::write(tmp.path(), [json.as_slice(), b"\n"].concat())
        .map_err(Error::io("writing", tmp.path()))?;
    out.persist(tmp, FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(arch: &str, file: &str) -> Build {
        Build {
            arch: arch.into(),
            platform: "metal".into(),
            os: Os {
                id: "x".into(),
                version: "1".into(),
            },
            cmdline: String::new(),
            kernel_release: String::new(),
            inputs: vec![],
            extensions: vec![],
            modules: vec![],
            ext_modules: vec![],
            files: vec![],
            shadowed: vec![],
            services: vec![],
            state: StateMode::Tmpfs,
            pcr11: None,
            secure_boot: false,
            boot_test: BootTest {
                media: "virtio-blk".into(),
                memory_mib: 1024,
            },
            epoch: 0,
            outputs: vec![Output {
                file: file.into(),
                format: "raw".into(),
                size: 1,
                sha256: String::new(),
                media: None,
            }],
        }
    }

    #[test]
    fn builds_of_other_arches_are_kept_and_sorted() {
        let m = Manifest::merge(None, "p", build("arm64", "metal-arm64.raw"));
        let m = Manifest::merge(Some(m), "p", build("amd64", "metal-amd64.raw"));
        let m = Manifest::merge(Some(m), "p", build("amd64", "metal-amd64.raw"));
        let arches: Vec<&str> = m.builds.iter().map(|b| b.arch.as_str()).collect();
        assert_eq!(arches, ["amd64", "arm64"]);
        assert_eq!(m.find_output("metal-arm64.raw").unwrap().0.arch, "arm64");
        // A manifest of another profile is not merged into.
        let other = Manifest::merge(Some(m), "q", build("amd64", "metal-amd64.raw"));
        assert_eq!(other.builds.len(), 1);
    }

    #[test]
    fn the_pcr11_prediction_is_recorded_only_when_made() {
        let mut b = build("amd64", "x.raw");
        let none = serde_json::to_string(&b).unwrap();
        assert!(!none.contains("pcr11"), "{none}");
        b.pcr11 = Some(crate::trust::pcr::predict_from(&[0u8; 32]));
        let text = serde_json::to_string(&b).unwrap();
        assert!(text.contains(r#""pcr11":{"stub":"0000"#), "{text}");
        assert!(text.contains(r#""phase":"enter-initrd:leave-initrd:sysinit:ready""#));
        assert_eq!(serde_json::from_str::<Build>(&text).unwrap(), b);
    }

    #[test]
    fn shadowed_files_and_services_are_recorded_only_when_there_are_some() {
        let mut b = build("amd64", "x.raw");
        let none = serde_json::to_string(&b).unwrap();
        assert!(
            !none.contains("shadowed") && !none.contains("services"),
            "{none}"
        );
        b.shadowed = vec!["/usr/local/share/who".into()];
        b.services = vec!["hello".into()];
        let text = serde_json::to_string(&b).unwrap();
        assert!(
            text.contains(r#""shadowed":["/usr/local/share/who"],"services":["hello"]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Build>(&text).unwrap(), b);
        // A manifest written before the fields existed reads as none.
        assert_eq!(
            serde_json::from_str::<Build>(&none).unwrap().services,
            Vec::<String>::new()
        );
    }
}
