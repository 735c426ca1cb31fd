//! The trusted-boot part of the plan: whether the image boots a unified
//! kernel image, which EFI stub builds it, and the Secure Boot signer.
//!
//! The key and certificate are loaded here, at plan time, so a wrong
//! passphrase or a certificate made for another key fails before anything
//! is written, with the profile field to fix.

use super::Blame;
use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::profile::{LoadedProfile, SecureBootSpec, UkiMode};
use crate::trust::authenticode::{PemSigner, Signer};
use crate::trust::keys::{Certificate, PrivateKey};
use std::path::PathBuf;

/// How the image boots a UKI.
pub struct TrustPlan {
    /// `SystemdBoot` or `Direct` (never `Off`: then there is no plan).
    pub mode: UkiMode,
    /// The systemd EFI stub.
    pub stub: PathBuf,
    /// The `.osrel` text: the root's os-release, else one made from `os:`.
    pub osrel: String,
    /// Secure Boot signing, when asked for.
    pub secure_boot: Option<SecureBootPlan>,
    /// `pcr.key`, loaded: signs the UKI's PCR 11 policies (`.pcrsig`).
    pub pcr_key: Option<PrivateKey>,
}

/// The signer of every EFI binary, and whether its keys are enrolled.
pub struct SecureBootPlan {
    /// Signs the UKI and systemd-boot.
    pub signer: Box<dyn Signer>,
    /// Ship `loader/keys/<name>/*.auth` and `secure-boot-enroll` in loader.conf.
    pub enroll: bool,
}

/// Debian's systemd EFI stub for `arch` (package systemd-boot-efi).
pub fn default_stub(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        Arch::Arm64 => "/usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
    }
}

/// The trusted-boot plan of the profile, `None` for a BLS-entry image.
pub(crate) fn resolve(
    lp: &LoadedProfile,
    blame: &Blame,
    root_os_release: Option<&str>,
) -> Result<Option<TrustPlan>> {
    let p = &lp.profile;
    let wants_uki = p.secure_boot.is_some() || p.pcr.is_some();
    let mode = match (p.uki, wants_uki) {
        (Some(UkiMode::Off), true) => {
            return Err(blame
                .error(
                    "uki",
                    "`secure_boot` and `pcr` need a unified kernel image, and `uki` is false",
                    "remove `uki: false` (`secure_boot` and `pcr` imply `uki: true`)",
                )
                .into())
        }
        (Some(UkiMode::Off), false) | (None, false) => return Ok(None),
        (Some(mode), _) => mode,
        (None, true) => UkiMode::SystemdBoot,
    };
    let stub = PathBuf::from(default_stub(p.arch));
    if !stub.is_file() {
        return Err(Error::Environment {
            message: format!("the systemd EFI stub {} is missing", stub.display()),
            hint: format!(
                "install Debian's systemd-boot-efi{} (scripts/deps.sh)",
                if p.arch == Arch::Arm64 { ":arm64" } else { "" }
            ),
        });
    }
    let osrel = root_os_release
        .map(str::to_string)
        .unwrap_or_else(|| format!("ID={}\nVERSION_ID={}\n", p.os.id, p.os.version));
    let secure_boot = match &p.secure_boot {
        Some(sb) => Some(secure_boot(lp, blame, sb, mode)?),
        None => None,
    };
    let pcr_key = match &p.pcr {
        Some(pcr) => Some(load_key(
            lp,
            blame,
            "pcr",
            &pcr.key,
            pcr.passphrase_env.as_deref(),
        )?),
        None => None,
    };
    Ok(Some(TrustPlan {
        mode,
        stub,
        osrel,
        secure_boot,
        pcr_key,
    }))
}

/// Loads the key and certificate of `secure_boot:`.
fn secure_boot(
    lp: &LoadedProfile,
    blame: &Blame,
    sb: &SecureBootSpec,
    mode: UkiMode,
) -> Result<SecureBootPlan> {
    if sb.enroll && mode == UkiMode::Direct {
        return Err(blame
            .error(
                "secure_boot.enroll",
                "enrolment is done by systemd-boot, and `uki: direct` boots without it",
                "use `uki: true`, or drop `enroll`",
            )
            .into());
    }
    let hint = "name a PEM file (docs/trusted-boot.md says how to make one)";
    let cert_path = blame.existing(lp, "secure_boot.cert", &sb.cert, false, hint)?;
    let key = load_key(
        lp,
        blame,
        "secure_boot",
        &sb.key,
        sb.passphrase_env.as_deref(),
    )?;
    let cert = Certificate::load(&cert_path)
        .map_err(|e| blame.error("secure_boot.cert", e.to_string(), e.fix()))?;
    let signer = PemSigner::new(key, cert)
        .map_err(|e| blame.error("secure_boot.cert", e.to_string(), e.fix()))?;
    Ok(SecureBootPlan {
        signer: Box::new(signer),
        enroll: sb.enroll,
    })
}

/// Loads the private key `<section>.key`, decrypted with the passphrase in
/// the environment variable `<section>.passphrase_env` names; an error
/// blames whichever of the two fields is wrong.
fn load_key(
    lp: &LoadedProfile,
    blame: &Blame,
    section: &str,
    key: &str,
    passphrase_env: Option<&str>,
) -> Result<PrivateKey> {
    let hint = "name a PEM file (docs/trusted-boot.md says how to make one)";
    let field = format!("{section}.key");
    let path = blame.existing(lp, &field, key, false, hint)?;
    PrivateKey::load(&path, passphrase_env).map_err(|e| {
        let wrong = if matches!(
            e,
            crate::trust::keys::KeyError::NeedsPassphrase { .. }
                | crate::trust::keys::KeyError::PassphraseUnset { .. }
        ) {
            format!("{section}.passphrase_env")
        } else {
            field.clone()
        };
        blame.error(&wrong, e.to_string(), e.fix()).into()
    })
}
