//! `strata boot`: boot an artefact in QEMU and judge it by the guest's own report.
//!
//! What to expect of the guest (architecture, device model, the extensions
//! it must report) comes from the `manifest.json` the build wrote beside the
//! artefact. The serial log and the result (`result.json`) are kept in
//! `<artefact>.boot/`.

pub mod many;
pub mod report;
pub mod unpack;

use crate::arch::Arch;
use crate::error::{Error, InputError, Result};
use crate::format::OutputKind;
use crate::manifest::Manifest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_qemu::{Accel, BootResult, BootSpec, Expected, Media};

/// Options of `strata boot`.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// The artefact to boot.
    pub artefact: PathBuf,
    /// Give up after this long.
    pub timeout: Duration,
    /// Acceleration choice.
    pub accel: Accel,
    /// Overrides the platform's memory size.
    pub memory_mib: Option<u32>,
    /// Overrides the platform's device model.
    pub media: Option<String>,
    /// Check the artefact's size and sha256 against `manifest.json` before booting
    /// (`--no-verify` turns this off for an artefact changed on purpose).
    pub verify: bool,
    /// Let the guest write to the artefact (persistent state survives
    /// into the next boot); by default its writes are thrown away.
    pub keep_writes: bool,
    /// Boot under the Secure Boot firmware in setup mode (empty variable
    /// store), letting the image enrol its keys and reset.
    pub setup_mode: bool,
}

/// Boots the artefact; `Ok` carries the verdict (pass or fail), `Err` means QEMU could not run.
pub fn boot(opts: &BootOptions) -> Result<BootResult> {
    let art = &opts.artefact;
    if !art.is_file() {
        return Err(InputError::new(
            art,
            "",
            "artefact not found",
            "give a file written by `strata build` (e.g. out/default/metal-amd64.raw)",
        )
        .into());
    }
    let dir = artefact_dir(art);
    let manifest = Manifest::read(&dir).map_err(|e| -> Error {
        InputError::new(
            dir.join(crate::manifest::FILE_NAME),
            "",
            "cannot read the build manifest",
            "boot an artefact in the output directory of `strata build`, beside its manifest.json",
        )
        .caused_by(e)
        .into()
    })?;
    let (build, output) = listed(&manifest, &dir, art)?;
    let arch = Arch::parse(&build.arch).ok_or_else(|| -> Error {
        InputError::new(
            dir.join(crate::manifest::FILE_NAME),
            "arch",
            format!("unknown arch `{}`", build.arch),
            "rebuild the artefact with this strata",
        )
        .into()
    })?;
    let media_name = opts
        .media
        .clone()
        .or_else(|| output.media.clone())
        .unwrap_or_else(|| build.boot_test.media.clone());
    let kind = OutputKind::parse(&output.format).map_err(|m| -> Error {
        InputError::new(
            dir.join(crate::manifest::FILE_NAME),
            "format",
            m,
            "rebuild the artefact with this strata",
        )
        .into()
    })?;
    if opts.verify {
        verify(art, output)?;
    }
    let work = work_dir(art);
    std::fs::create_dir_all(&work).map_err(Error::io("creating", &work))?;
    let unpack_dir = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&work)
        .map_err(Error::io("creating a directory in", &work))?;
    let (image, format) = crate::boot::unpack::prepare(art, kind, unpack_dir.path())?;
    if opts.keep_writes && image != *art {
        return Err(InputError::new(
            art,
            "",
            format!(
                "--keep-writes needs an artefact the guest can write in place; {} is unpacked into a temporary copy first",
                output.file
            ),
            "boot a raw, qcow2, vhd or vmdk artefact, or drop --keep-writes",
        )
        .into());
    }
    let spec = BootSpec {
        image,
        format,
        arch,
        media: media(&media_name)?,
        expected: build
            .extensions
            .iter()
            .map(|e| Expected {
                name: e.name.clone(),
                version: e.version.clone(),
                kind: Some(e.kind),
                flattened: e.flattened,
                disabled: e.disabled,
            })
            .collect(),
        timeout: opts.timeout,
        memory_mib: opts.memory_mib.unwrap_or(build.boot_test.memory_mib),
        cpus: 1,
        accel: opts.accel,
        work_dir: work_dir(art),
        checks: strata_qemu::GuestChecks {
            modules: build.ext_modules.clone(),
            files: build.files.clone(),
            shadowed: build.shadowed.clone(),
            services: build.services.clone(),
            state: Some(build.state),
            // A predicted PCR 11 attaches swtpm and requires the guest to read one of the values.
            tpm: build.pcr11.as_ref().map(|p| strata_qemu::TpmCheck {
                pcr11: p
                    .values()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            }),
        },
        keep_writes: opts.keep_writes,
        secure_boot: build.secure_boot || opts.setup_mode,
        setup_mode: opts.setup_mode,
    };
    std::fs::create_dir_all(&spec.work_dir).map_err(Error::io("creating", &spec.work_dir))?;
    strata_qemu::boot(&spec).map_err(|e| Error::Environment {
        message: e.to_string(),
        hint: "see the message; `make deps` installs QEMU and the firmware".into(),
    })
}

/// The directory an artefact (and so its manifest) is in.
pub fn artefact_dir(art: &Path) -> PathBuf {
    art.parent()
        .map(Path::to_path_buf)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The build and manifest entry of the artefact `art` in `dir`, or an error naming both.
pub fn listed<'m>(
    manifest: &'m Manifest,
    dir: &Path,
    art: &Path,
) -> Result<(&'m crate::manifest::Build, &'m crate::manifest::Output)> {
    let file_name = art
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    manifest.find_output(&file_name).ok_or_else(|| -> Error {
        InputError::new(
            art,
            "",
            format!(
                "{file_name} is not listed in {}",
                dir.join(crate::manifest::FILE_NAME).display()
            ),
            "boot an artefact of that build, or rebuild",
        )
        .into()
    })
}

/// Refuses an artefact whose size or sha256 differs from what the build recorded, so a
/// truncated or altered file never reaches QEMU (where it would fail in some confusing way,
/// or worse, pass while not being what was built). The size is checked first: it is free.
pub fn verify(art: &Path, output: &crate::manifest::Output) -> Result<()> {
    let mismatch = |what: &str, expected: String, actual: String| -> Error {
        InputError::new(
            art,
            "",
            format!(
                "the artefact does not match manifest.json: {what} is {actual}, the build recorded {expected}"
            ),
            "rebuild it with `strata build` (or pass --no-verify to boot a file changed on purpose)",
        )
        .into()
    };
    let size = std::fs::metadata(art)
        .map_err(Error::io("reading", art))?
        .len();
    if size != output.size {
        return Err(mismatch(
            "its size",
            format!("{} bytes", output.size),
            format!("{size} bytes"),
        ));
    }
    let sum = crate::io::hash::file_sha256(art).map_err(Error::io("reading", art))?;
    if sum != output.sha256 {
        return Err(mismatch("its sha256", output.sha256.clone(), sum));
    }
    Ok(())
}

/// Where the serial log and the result of booting `art` are kept.
pub fn work_dir(art: &Path) -> PathBuf {
    let mut name = art.file_name().unwrap_or_default().to_os_string();
    name.push(".boot");
    art.with_file_name(name)
}

/// Maps a platform's device-model name to the runner's.
pub fn media(name: &str) -> Result<Media> {
    Ok(match name {
        "virtio-blk" | "virtio" => Media::VirtioBlk,
        "nvme" => Media::Nvme,
        "ahci" | "sata" => Media::Ahci,
        "pvscsi" => Media::Pvscsi,
        "virtio-scsi" => Media::VirtioScsi,
        "cdrom" => Media::Cdrom,
        other => {
            return Err(InputError::new(
                "--media",
                "",
                format!("unknown device model `{other}`"),
                "use virtio-blk, nvme, ahci, pvscsi, virtio-scsi or cdrom",
            )
            .into())
        }
    })
}

/// One line for people: the verdict and what it rests on.
pub fn summary(art: &Path, r: &BootResult) -> String {
    let ok = |l: &strata_qemu::LayerVerdict| {
        l.reported && l.visible && (l.mounted || l.flattened || l.disabled)
    };
    let layers: Vec<String> = r
        .layers
        .iter()
        .map(|l| {
            let state = match (ok(l), l.flattened, l.disabled) {
                (false, _, _) => " (NOT OK)",
                (true, true, _) => " (flattened)",
                (true, _, true) => " (shipped, not activated)",
                _ => "",
            };
            format!("{} {}{state}", l.name, l.version.as_deref().unwrap_or("?"))
        })
        .collect();
    format!(
        "{} {}: {} — {} of {} extension(s) confirmed by the guest: [{}]; {:.1} s under {} ({}); ended by {}; serial log {}",
        if r.pass { "PASS" } else { "FAIL" },
        art.display(),
        r.reason,
        r.layers.iter().filter(|l| ok(l)).count(),
        r.layers.len(),
        layers.join(", "),
        r.duration_secs,
        r.accel,
        strata_qemu::phases::describe(&r.phases),
        r.ended_by,
        r.serial_log.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// A directory holding `disk.raw` and a manifest that records `recorded` as its contents.
    fn built(recorded: &[u8], actual: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("disk.raw");
        std::fs::write(&art, actual).unwrap();
        let manifest = serde_json::json!({
            "strata": "0", "name": "t",
            "builds": [{
                "arch": "amd64", "platform": "metal",
                "os": {"id": "x", "version": "1"},
                "cmdline": "", "kernel_release": "", "inputs": [], "extensions": [],
                "modules": [], "boot_test": {"media": "virtio-blk", "memory_mib": 256},
                "epoch": 0,
                "outputs": [{"file": "disk.raw", "format": "raw", "size": recorded.len(),
                             "sha256": crate::io::hash::bytes_sha256(recorded)}]
            }]
        });
        std::fs::write(
            dir.path().join(crate::manifest::FILE_NAME),
            manifest.to_string(),
        )
        .unwrap();
        (dir, art)
    }

    fn opts(art: &Path) -> BootOptions {
        BootOptions {
            artefact: art.to_path_buf(),
            timeout: Duration::from_secs(1),
            accel: Accel::Tcg,
            memory_mib: None,
            media: None,
            verify: true,
            keep_writes: false,
            setup_mode: false,
        }
    }

    #[test]
    fn a_truncated_artefact_never_reaches_qemu() {
        let (_dir, art) = built(b"the whole disk", b"the whole");
        let err = boot(&opts(&art)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let msg = err.to_string();
        assert!(msg.contains("disk.raw"), "{msg}");
        assert!(msg.contains("9 bytes") && msg.contains("14 bytes"), "{msg}");
        assert!(!work_dir(&art).exists(), "boot went on to prepare a run");
    }

    #[test]
    fn an_altered_artefact_of_the_right_size_is_refused_with_both_sums() {
        let (_dir, art) = built(b"the whole disk", b"the WHOLE disk");
        let msg = boot(&opts(&art)).unwrap_err().to_string();
        assert!(
            msg.contains(&crate::io::hash::bytes_sha256(b"the whole disk"))
                && msg.contains(&crate::io::hash::bytes_sha256(b"the WHOLE disk")),
            "{msg}"
        );
        assert!(!work_dir(&art).exists());
    }

    #[test]
    fn no_verify_skips_the_check() {
        let (_dir, art) = built(b"the whole disk", b"the whole");
        let mut o = opts(&art);
        o.verify = false;
        // Past the check, unpacking or QEMU fail on this 9-byte file: but not on its sum.
        if let Err(e) = boot(&o) {
            assert!(!e.to_string().contains("manifest.json"), "{e}");
        }
    }
}
