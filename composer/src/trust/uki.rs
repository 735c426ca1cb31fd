//! Unified kernel images (UAPI "Unified Kernel Image" specification): the
//! systemd EFI stub with the kernel, the initramfs, the command line and the
//! OS identity as PE sections, so that one file — and one Secure Boot
//! signature — covers everything the firmware hands to the kernel.
//!
//! Sections, in the order the file carries them:
//!
//! | section | content |
//! |---|---|
//! | `.osrel` | the root's os-release (systemd-boot shows its `PRETTY_NAME`) |
//! | `.cmdline` | the kernel command line, NUL-terminated (stubs before 254 expect the NUL) |
//! | `.uname` | the kernel release |
//! | `.sbat` | the stub's own, when it has none as a section (arm64): SBAT header line only |
//! | `.linux` | the kernel image, streamed from its file |
//! | `.initrd` | the initramfs, streamed from its file |
//! | `.pcrpkey`, `.pcrsig` | with a PCR key: the public key and the signed PCR 11 policy |
//!
//! A section the stub does not know is refused: a stub only reads sections
//! whose names it carries, so an unknown one would be silently ignored at
//! boot. The names a stub knows are read from the stub itself (its string
//! table); `.sbat` and `.uname` are metadata for shim and tools, which no
//! stub needs to know.

use super::authenticode::{self, SignError, Signer};
use super::pcr::{PcrSigned, Prediction};
use super::pe::{self, Content, NewSection, PeError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Sections the specification defines for metadata that no stub reads.
const METADATA_SECTIONS: [&str; 2] = [".sbat", ".uname"];

/// The SBAT header line every `.sbat` starts with (shim's SBAT.md).
const SBAT_HEADER: &str =
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n";

/// What goes into one UKI.
#[derive(Debug, Clone)]
pub struct UkiInputs<'a> {
    /// The systemd EFI stub (`linuxx64.efi.stub`, `linuxaa64.efi.stub`).
    pub stub: &'a Path,
    /// os-release text.
    pub osrel: &'a str,
    /// The kernel command line (without the NUL).
    pub cmdline: &'a str,
    /// The kernel release.
    pub uname: &'a str,
    /// The kernel image.
    pub linux: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
}

/// Why a UKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// Reading the stub or writing the image.
    #[error(transparent)]
    Pe(#[from] PeError),
    /// A section the stub would ignore.
    #[error("the EFI stub {} does not know the section {section} (it knows {known})", stub.display())]
    UnknownSection {
        /// The stub.
        stub: PathBuf,
        /// The section.
        section: String,
        /// What it knows.
        known: String,
    },
    /// The stub is for another machine.
    #[error("the EFI stub {} is for machine {found:#06x}, not {want:#06x}", stub.display())]
    Machine {
        /// The stub.
        stub: PathBuf,
        /// Its machine.
        found: u16,
        /// The image's.
        want: u16,
    },
    /// Writing a small section's file.
    #[error("writing {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signing (the image, or the PCR policy).
    #[error(transparent)]
    Sign(#[from] SignError),
    /// Predicting or signing PCR 11.
    #[error("predicting and signing PCR 11")]
    Pcr(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What [`build`] made.
#[derive(Debug)]
pub struct Uki {
    /// The image.
    pub path: PathBuf,
    /// Section names in file order (the stub's first).
    pub sections: Vec<String>,
    /// The predicted PCR 11 values, when a PCR signer was given.
    pub pcr: Option<Prediction>,
}

/// Predicts and signs PCR 11 for the UKI's sections, given as (name, file)
/// in the order the UKI carries them. The build passes
/// `|s| trust::pcr::sign_pcr11(s, &key)` when the profile has `pcr:`.
pub type PcrSigner<'a> =
    &'a dyn Fn(&[(&str, &Path)]) -> Result<PcrSigned, Box<dyn std::error::Error + Send + Sync>>;

/// `IMAGE_FILE_MACHINE_*` of an architecture.
pub fn machine(arch: crate::Arch) -> u16 {
    match arch {
        crate::Arch::Amd64 => 0x8664,
        crate::Arch::Arm64 => 0xaa64,
    }
}

/// Builds the UKI `out` from `inputs` (small sections go to files in
/// `work`), then signs it with `signer` when given. `pcr` adds `.pcrpkey`
/// and `.pcrsig` (see [`pcr_sections`]).
pub fn build(
    inputs: &UkiInputs<'_>,
    arch: crate::Arch,
    work: &Path,
    out: &Path,
    pcr: Option<PcrSigner<'_>>,
    signer: Option<&dyn Signer>,
) -> Result<Uki, UkiError> {
    let stub = pe::Headers::read(inputs.stub)?;
    if stub.machine() != machine(arch) {
        return Err(UkiError::Machine {
            stub: inputs.stub.into(),
            found: stub.machine(),
            want: machine(arch),
        });
    }
    let has_sbat = stub.sections.iter().any(|s| s.name == ".sbat");
    let mut sections = base_sections(inputs, has_sbat, work)?;
    let pcr = match pcr {
        Some(sign) => {
            let (extra, predicted) = pcr_sections(&sections, sign, work)?;
            sections.extend(extra);
            Some(predicted)
        }
        None => None,
    };
    check_known(inputs.stub, &sections)?;
    let to_pe: Vec<NewSection> = sections
        .iter()
        .map(|(name, path)| NewSection {
            name: name.clone(),
            content: Content::File(path.clone()),
        })
        .collect();
    let headers = pe::assemble(inputs.stub, &to_pe, out)?;
    if let Some(signer) = signer {
        authenticode::sign_pe(out, signer)?;
    }
    Ok(Uki {
        path: out.into(),
        sections: headers.sections.iter().map(|s| s.name.clone()).collect(),
        pcr,
    })
}

/// The sections every UKI has, each as (name, file holding its content).
fn base_sections(
    inputs: &UkiInputs<'_>,
    stub_has_sbat: bool,
    work: &Path,
) -> Result<Vec<(String, PathBuf)>, UkiError> {
    let write = |name: &str, bytes: &[u8]| -> Result<(String, PathBuf), UkiError> {
        let path = work.join(format!("uki{name}"));
        std::fs::write(&path, bytes).map_err(|source| UkiError::Io {
            path: path.clone(),
            source,
        })?;
        Ok((name.to_string(), path))
    };
    let mut cmdline = inputs.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    let mut out = vec![
        write(".osrel", inputs.osrel.as_bytes())?,
        write(".cmdline", &cmdline)?,
        write(".uname", inputs.uname.as_bytes())?,
    ];
    if !stub_has_sbat {
        out.push(write(".sbat", SBAT_HEADER.as_bytes())?);
    }
    out.push((".linux".into(), inputs.linux.into()));
    out.push((".initrd".into(), inputs.initrd.into()));
    Ok(out)
}

/// The `.pcrpkey` and `.pcrsig` sections for `sections`, made by `sign`
/// (which measures `.pcrpkey` itself: it derives it from its key), and the
/// prediction. They go last, `.pcrsig` after everything it signs.
fn pcr_sections(
    sections: &[(String, PathBuf)],
    sign: PcrSigner<'_>,
    work: &Path,
) -> Result<(Vec<(String, PathBuf)>, Prediction), UkiError> {
    let refs: Vec<(&str, &Path)> = sections
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let signed = sign(&refs).map_err(UkiError::Pcr)?;
    let mut out = Vec::new();
    for (name, bytes) in [
        (".pcrpkey", &signed.pcrpkey_pem),
        (".pcrsig", &signed.pcrsig_json),
    ] {
        let path = work.join(format!("uki{name}"));
        std::fs::write(&path, bytes).map_err(|source| UkiError::Io {
            path: path.clone(),
            source,
        })?;
        out.push((name.to_string(), path));
    }
    Ok((out, signed.predicted))
}

/// Refuses a section the stub would not read.
fn check_known(stub: &Path, sections: &[(String, PathBuf)]) -> Result<(), UkiError> {
    let known = known_sections(stub)?;
    for (name, _) in sections {
        if !known.contains(name.as_str()) && !METADATA_SECTIONS.contains(&name.as_str()) {
            return Err(UkiError::UnknownSection {
                stub: stub.into(),
                section: name.clone(),
                known: known.iter().cloned().collect::<Vec<_>>().join(" "),
            });
        }
    }
    Ok(())
}

/// The section names a stub looks for: the NUL-delimited ASCII strings of
/// the form `.name` in its file (systemd-stub keeps them in a table of C
/// strings), minus its own section names.
pub fn known_sections(stub: &Path) -> Result<BTreeSet<String>, UkiError> {
    let bytes = std::fs::read(stub).map_err(|source| UkiError::Io {
        path: stub.into(),
        source,
    })?;
    let own: BTreeSet<String> = pe::Headers::read(stub)?
        .sections
        .into_iter()
        .map(|s| s.name)
        .collect();
    Ok(bytes
        .split(|&b| b == 0)
        .filter(|s| {
            s.len() >= 3
                && s.len() <= 8
                && s[0] == b'.'
                && s[1..].iter().all(|c| c.is_ascii_lowercase())
        })
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| !own.contains(s))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel file named `kernel` and an `initrd` in `dir`, with these contents.
    fn kernel_and_initrd(
        dir: &Path,
        kernel: &str,
        linux: &[u8],
        initrd: &[u8],
    ) -> (PathBuf, PathBuf) {
        let paths = (dir.join(kernel), dir.join("initrd"));
        std::fs::write(&paths.0, linux).unwrap();
        std::fs::write(&paths.1, initrd).unwrap();
        paths
    }
    use crate::trust::authenticode::tests::{assert_verifies, snakeoil, SNAKEOIL_CERT};

    const STUB_X64: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const STUB_AA64: &str = "/usr/lib/systemd/boot/efi/linuxaa64.efi.stub";

    fn inputs<'a>(stub: &'a str, linux: &'a Path, initrd: &'a Path) -> UkiInputs<'a> {
        UkiInputs {
            stub: Path::new(stub),
            osrel: "ID=debian\nVERSION_ID=12\n",
            cmdline: "console=ttyS0 quiet",
            uname: "6.1.0-test-amd64",
            linux,
            initrd,
        }
    }

    fn section<'a>(data: &'a [u8], h: &pe::Headers, name: &str) -> &'a [u8] {
        let s = h.sections.iter().find(|s| s.name == name).unwrap();
        &data[s.raw_offset as usize..(s.raw_offset + s.virtual_size) as usize]
    }

    #[test]
    fn debians_252_stubs_know_the_sections_they_read() {
        for stub in [STUB_X64, STUB_AA64] {
            let known = known_sections(Path::new(stub)).unwrap();
            for s in [
                ".linux", ".osrel", ".cmdline", ".initrd", ".pcrsig", ".pcrpkey",
            ] {
                assert!(known.contains(s), "{stub}: {s} in {known:?}");
            }
            for s in [".ucode", ".profile", ".hwids", ".text"] {
                assert!(!known.contains(s), "{stub}: {s}");
            }
        }
    }

    #[test]
    fn a_section_the_stub_does_not_know_is_refused() {
        let e = check_known(
            Path::new(STUB_X64),
            &[(".ucode".into(), PathBuf::from("x"))],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("does not know the section .ucode"),
            "{e}"
        );
        check_known(
            Path::new(STUB_X64),
            &[(".uname".into(), PathBuf::from("x"))],
        )
        .unwrap();
    }

    #[test]
    fn a_uki_carries_every_section_and_objdump_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (linux, initrd) = kernel_and_initrd(
            dir.path(),
            "vmlinuz",
            &vec![0x4du8; 123_457],
            &vec![0x07u8; 65_536],
        );
        let out = dir.path().join("uki.efi");
        let uki = build(
            &inputs(STUB_X64, &linux, &initrd),
            crate::Arch::Amd64,
            dir.path(),
            &out,
            None,
            None,
        )
        .unwrap();
        let tail: Vec<&str> = uki
            .sections
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(tail, [".osrel", ".cmdline", ".uname", ".linux", ".initrd"]);
        let h = pe::Headers::read(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        assert_eq!(section(&data, &h, ".cmdline"), b"console=ttyS0 quiet\0");
        assert_eq!(section(&data, &h, ".uname"), b"6.1.0-test-amd64");
        assert_eq!(section(&data, &h, ".linux"), std::fs::read(&linux).unwrap());
        assert_eq!(
            section(&data, &h, ".initrd"),
            std::fs::read(&initrd).unwrap()
        );
        assert!(section(&data, &h, ".sbat").starts_with(SBAT_HEADER.as_bytes()));
        // objdump is the judge of the section table.
        let o = std::process::Command::new("objdump")
            .arg("-h")
            .arg(&out)
            .output()
            .expect("objdump (binutils)");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains(".initrd") && text.contains(".osrel"),
            "{text}"
        );
    }

    #[test]
    fn arm64_ukis_get_an_sbat_section_and_signed_ukis_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (linux, initrd) =
            kernel_and_initrd(dir.path(), "Image", &vec![1u8; 4096], &vec![2u8; 777]);
        let signer = snakeoil();
        for (stub, arch) in [
            (STUB_X64, crate::Arch::Amd64),
            (STUB_AA64, crate::Arch::Arm64),
        ] {
            let out = dir.path().join("uki.efi");
            let uki = build(
                &inputs(stub, &linux, &initrd),
                arch,
                dir.path(),
                &out,
                None,
                Some(&signer),
            )
            .unwrap();
            assert!(uki.sections.iter().any(|s| s == ".sbat"), "{stub}");
            assert_verifies(&out, Path::new(SNAKEOIL_CERT));
        }
        let e = build(
            &inputs(STUB_AA64, &linux, &initrd),
            crate::Arch::Amd64,
            dir.path(),
            &dir.path().join("x"),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(e, UkiError::Machine { .. }));
    }

    #[test]
    fn a_pcr_signer_sees_the_sections_in_order_and_its_sections_go_last() {
        let dir = tempfile::tempdir().unwrap();
        let (linux, initrd) = kernel_and_initrd(dir.path(), "vmlinuz", b"kernel", b"initrd");
        let seen = std::sync::Mutex::new(Vec::new());
        let sign = |s: &[(&str, &Path)]| {
            let mut seen = seen.lock().unwrap();
            for (name, path) in s {
                seen.push((name.to_string(), std::fs::read(path).unwrap()));
            }
            Ok(PcrSigned {
                pcrsig_json: b"{}".to_vec(),
                pcrpkey_pem: b"PEM".to_vec(),
                predicted: Prediction {
                    stub: "00".into(),
                    phases: Vec::new(),
                },
            })
        };
        let out = dir.path().join("uki.efi");
        let uki = build(
            &inputs(STUB_X64, &linux, &initrd),
            crate::Arch::Amd64,
            dir.path(),
            &out,
            Some(&sign),
            None,
        )
        .unwrap();
        let seen = seen.into_inner().unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".osrel", ".cmdline", ".uname", ".linux", ".initrd"]);
        assert_eq!(seen[1].1, b"console=ttyS0 quiet\0");
        let n = uki.sections.len();
        assert_eq!(uki.sections[n - 2..], [".pcrpkey", ".pcrsig"]);
        assert_eq!(uki.pcr.unwrap().stub, "00");
        let data = std::fs::read(&out).unwrap();
        let h = pe::Headers::read(&out).unwrap();
        assert_eq!(section(&data, &h, ".pcrpkey"), b"PEM");
    }

    #[test]
    fn the_same_inputs_give_the_same_uki() {
        let dir = tempfile::tempdir().unwrap();
        let (linux, initrd) = kernel_and_initrd(
            dir.path(),
            "vmlinuz",
            &vec![3u8; 10_000],
            &vec![4u8; 10_000],
        );
        let signer = snakeoil();
        let mut images = Vec::new();
        for name in ["a.efi", "b.efi"] {
            let out = dir.path().join(name);
            build(
                &inputs(STUB_X64, &linux, &initrd),
                crate::Arch::Amd64,
                dir.path(),
                &out,
                None,
                Some(&signer),
            )
            .unwrap();
            images.push(std::fs::read(&out).unwrap());
        }
        assert_eq!(images[0], images[1]);
    }
}
