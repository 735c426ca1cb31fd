//! Trusted-boot assets: each platform's unified kernel image (the kernel,
//! its initramfs and its command line in one PE file, signed when the
//! profile has `secure_boot:`) and the signed systemd-boot that loads it.
//!
//! A platform's UKI differs from another's only by its command line and
//! initramfs; each is written into the build's work directory, where the
//! ESP takes it from.

use crate::assets::PlatformAssets;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::{Plan, PlatformPlan};
use crate::profile::UkiMode;
use crate::source::kernel::Kernel;
use crate::trust::keys::PrivateKey;
use crate::trust::pcr::{self, Prediction};
use crate::trust::uki::{self, UkiInputs};
use std::path::{Path, PathBuf};

/// What one platform's ESP boots through.
#[derive(Debug, Clone)]
pub struct UkiFiles {
    /// The UKI.
    pub uki: PathBuf,
    /// How it is booted.
    pub mode: UkiMode,
    /// systemd-boot, signed when Secure Boot is on (`None` for `uki: direct`).
    pub bootloader: Option<PathBuf>,
    /// Key enrolment files `(ESP path, file)`, when `secure_boot.enroll` is on.
    pub enrol: Vec<(String, PathBuf)>,
    /// PCR 11 as the stub and the boot phases will leave it, when the
    /// profile has `pcr:` (manifest.json records it; boot tests require it).
    pub pcr11: Option<Prediction>,
}

/// The UKI of every platform (in the plan's order), `None` each when the
/// profile boots a BLS entry.
pub fn make(
    plan: &Plan,
    kernel: &Kernel,
    platforms: &[PlatformAssets],
    work: &Path,
) -> Result<Vec<Option<UkiFiles>>> {
    let Some(trust) = &plan.trust else {
        return Ok(vec![None; plan.platforms.len()]);
    };
    let signer = trust.secure_boot.as_ref().map(|sb| &*sb.signer);
    let bootloader = match trust.mode {
        UkiMode::Direct => None,
        _ => Some(bootloader(plan, signer, work)?),
    };
    let enrol = match &trust.secure_boot {
        Some(sb) if sb.enroll => enrolment_files(plan, &*sb.signer, work)?,
        _ => Vec::new(),
    };
    let pcr_key = trust.pcr_key.as_ref();
    plan.platforms
        .iter()
        .zip(platforms)
        .map(|(pp, pa)| {
            let (path, pcr11) = one(plan, pp, kernel, &pa.initrd, pcr_key, work)?;
            Ok(Some(UkiFiles {
                pcr11,
                uki: path,
                mode: trust.mode,
                bootloader: bootloader.clone(),
                enrol: enrol.clone(),
            }))
        })
        .collect()
}

/// Where systemd-boot 252 looks for keys to enrol on its own
/// (`secure-boot-enroll force`): `loader/keys/auto/`.
pub const ENROL_DIR: &str = "loader/keys/auto";

/// `PK.auth`, `KEK.auth` and `db.auth` of the signer's certificate, written
/// to `work`, as (ESP path, file). The signature owner GUID derives from the
/// build's seed, the timestamp from its epoch: reproducible.
fn enrolment_files(
    plan: &Plan,
    signer: &dyn crate::trust::authenticode::Signer,
    work: &Path,
) -> Result<Vec<(String, PathBuf)>> {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"strata-secure-boot-owner")
        .chain_update(&plan.seed)
        .finalize();
    let mut owner = [0u8; 16];
    owner.copy_from_slice(&d[..16]);
    let files = crate::trust::enroll::auth_files(signer, owner, plan.epoch).map_err(|e| {
        Error::step(
            ErrorKind::Format,
            "making the Secure Boot enrolment files",
            e,
        )
    })?;
    let dir = work.join("keys");
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    files
        .into_iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(Error::io("writing", &path))?;
            Ok((format!("{ENROL_DIR}/{name}"), path))
        })
        .collect()
}

/// systemd-boot as the ESP carries it: a signed copy under Secure Boot.
fn bootloader(
    plan: &Plan,
    signer: Option<&dyn crate::trust::authenticode::Signer>,
    work: &Path,
) -> Result<PathBuf> {
    let Some(signer) = signer else {
        return Ok(plan.bootloader.clone());
    };
    let signed = work.join("systemd-boot.signed.efi");
    std::fs::copy(&plan.bootloader, &signed).map_err(Error::io("copying", &plan.bootloader))?;
    crate::trust::authenticode::sign_pe(&signed, signer).map_err(|e| {
        Error::step(
            ErrorKind::Format,
            format!("signing {}", plan.bootloader.display()),
            e,
        )
    })?;
    Ok(signed)
}

/// Builds (and signs) one platform's UKI; with a PCR key it carries the
/// signed PCR 11 policy, whose prediction is returned beside it.
fn one(
    plan: &Plan,
    pp: &PlatformPlan,
    kernel: &Kernel,
    initrd: &Path,
    pcr_key: Option<&PrivateKey>,
    work: &Path,
) -> Result<(PathBuf, Option<Prediction>)> {
    let trust = plan.trust.as_ref().expect("called with a trust plan");
    let dir = work.join(format!("uki-{}", pp.platform.name));
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let out = dir.join(format!("{}.efi", plan.name));
    let inputs = UkiInputs {
        stub: &trust.stub,
        osrel: &trust.osrel,
        cmdline: &pp.cmdline,
        uname: &kernel.release,
        linux: &kernel.vmlinuz,
        initrd,
    };
    let signer = trust.secure_boot.as_ref().map(|sb| &*sb.signer);
    let sign = |s: &[(&str, &Path)]| {
        let key = pcr_key.expect("only called with a PCR key");
        pcr::sign_pcr11(s, key).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    };
    let pcr_signer: Option<uki::PcrSigner<'_>> = pcr_key.map(|_| &sign as uki::PcrSigner<'_>);
    let built = uki::build(&inputs, plan.arch, &dir, &out, pcr_signer, signer).map_err(|e| {
        Error::step(
            ErrorKind::Format,
            format!("building the unified kernel image for {}", pp.platform.name),
            e,
        )
    })?;
    Ok((out, built.pcr))
}
