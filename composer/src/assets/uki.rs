//! Trusted-boot assets: each platform's unified kernel image (the kernel,
//! its initramfs and its command line in one PE file, signed when the
//! profile has `secure_boot:`) and the signed systemd-boot that loads it.
//!
//! A platform's UKI differs from another's only by its command line and
//! initramfs. Each is a step-cache entry (step `uki`): its key covers every
//! byte that decides the image (see [`uki_key`]), so a build that changed
//! nothing neither assembles nor signs it again. The PCR 11 prediction the
//! manifest records comes back from a hit too: the entry keeps PCR 11 as the
//! stub leaves it, from which every phase value follows
//! ([`pcr::predict_from`]).

use crate::assets::PlatformAssets;
use crate::cache::{Cache, Key, KeyBuilder};
use crate::error::{Error, ErrorKind, Result};
use crate::plan::{Plan, PlatformPlan};
use crate::profile::UkiMode;
use crate::progress::{Sink, Task};
use crate::source::kernel::Kernel;
use crate::trust::keys::PrivateKey;
use crate::trust::pcr::{self, Prediction};
use crate::trust::uki::{self, UkiInputs};
use std::collections::BTreeMap;
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

/// Where the UKIs are made: the work directory, the step cache, and the sink
/// their progress goes to (as sub-steps `initramfs/uki-<platform>`: a UKI is
/// the initramfs's wrapper, and a build keeps its seven steps).
struct Place<'a> {
    work: &'a Path,
    cache: &'a Cache,
    progress: &'a dyn Sink,
}

/// The UKI of every platform (in the plan's order), `None` each when the
/// profile boots a BLS entry.
pub fn make(
    plan: &Plan,
    kernel: &Kernel,
    platforms: &[PlatformAssets],
    work: &Path,
    cache: &Cache,
    progress: &dyn Sink,
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
    let place = Place {
        work,
        cache,
        progress,
    };
    plan.platforms
        .iter()
        .zip(platforms)
        .map(|(pp, pa)| {
            let (path, pcr11) = one(plan, pp, kernel, &pa.initrd, pcr_key, &place)?;
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

/// Builds (and signs) one platform's UKI, or finds it in the step cache;
/// with a PCR key it carries the signed PCR 11 policy, whose prediction is
/// returned beside it.
fn one(
    plan: &Plan,
    pp: &PlatformPlan,
    kernel: &Kernel,
    initrd: &Path,
    pcr_key: Option<&PrivateKey>,
    place: &Place<'_>,
) -> Result<(PathBuf, Option<Prediction>)> {
    let trust = plan.trust.as_ref().expect("called with a trust plan");
    let dir = place.work.join(format!("uki-{}", pp.platform.name));
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
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
    let task = Task::start(
        place.progress,
        format!("initramfs/uki-{}", pp.platform.name),
        None,
    );
    let made = place.cache.get_or_make(
        "uki",
        &format!("{}-{}.efi", plan.name, pp.platform.name),
        || uki_key(&inputs, plan.arch, signer, pcr_key),
        &dir.join(format!("{}.efi", plan.name)),
        |out| {
            let built =
                uki::build(&inputs, plan.arch, &dir, out, pcr_signer, signer).map_err(|e| {
                    Error::step(
                        ErrorKind::Format,
                        format!("building the unified kernel image for {}", pp.platform.name),
                        e,
                    )
                })?;
            let size = std::fs::metadata(out)
                .map_err(Error::io("reading", out))?
                .len();
            let mut extra = BTreeMap::from([("bytes".to_string(), size)]);
            extra.extend(
                built
                    .pcr
                    .as_ref()
                    .map(stub_words)
                    .transpose()?
                    .into_iter()
                    .flatten(),
            );
            Ok(extra)
        },
    )?;
    let pcr11 = pcr_key.map(|_| prediction(&made.extra)).transpose()?;
    let bytes = made.extra.get("bytes").copied();
    let signed = if signer.is_some() { ", signed" } else { "" };
    task.end(made.is_hit(), bytes, &format!("{}.efi{signed}", plan.name));
    Ok((made.path, pcr11))
}

/// The UKI's step key: everything that decides its bytes. The stub, kernel
/// and initramfs by content; the `.osrel`, `.cmdline` and `.uname` texts
/// (`.sbat` follows from the stub); the architecture; the Secure Boot
/// signer's and the PCR key's fingerprints (sha256 of the private key, and of
/// the certificate: never key bytes in clear); the PCR phases. The strata
/// version, which fixes how sections are laid out and signed, comes with
/// every key. strata puts no `.splash` or `.dtb` into a UKI.
fn uki_key(
    inputs: &UkiInputs<'_>,
    arch: crate::Arch,
    signer: Option<&dyn crate::trust::authenticode::Signer>,
    pcr_key: Option<&PrivateKey>,
) -> Result<Key> {
    let mut k = KeyBuilder::new("uki");
    k.debug("arch", &arch);
    for (label, path) in [
        ("stub", inputs.stub),
        ("linux", inputs.linux),
        ("initrd", inputs.initrd),
    ] {
        k.file(label, path).map_err(Error::io("reading", path))?;
    }
    k.str("osrel", inputs.osrel)
        .str("cmdline", inputs.cmdline)
        .str("uname", inputs.uname);
    let none = Vec::new();
    let fingerprint = |f: Option<[u8; 32]>| f.map_or(none.clone(), |f| f.to_vec());
    k.bytes("secure-boot", &fingerprint(signer.map(|s| s.fingerprint())));
    k.bytes(
        "pcr-key",
        &fingerprint(pcr_key.map(PrivateKey::fingerprint)),
    );
    k.debug("phases", &pcr::PHASES);
    Ok(k.finish())
}

/// Labels of the four 64-bit words of PCR 11 as the stub leaves it, in a
/// UKI entry's figures.
const STUB_WORDS: [&str; 4] = ["pcr11.0", "pcr11.1", "pcr11.2", "pcr11.3"];

/// PCR 11 after the stub (`prediction.stub`), as four big-endian words for
/// the cache entry: every phase value follows from it.
fn stub_words(p: &Prediction) -> Result<Vec<(String, u64)>> {
    let digest = stub_digest(&p.stub).ok_or_else(|| {
        Error::step(
            ErrorKind::Format,
            "recording the PCR 11 prediction",
            format!("`{}` is not a sha256", p.stub),
        )
    })?;
    Ok(STUB_WORDS
        .iter()
        .zip(digest.chunks_exact(8))
        .map(|(label, w)| {
            let word = u64::from_be_bytes(w.try_into().expect("8 bytes"));
            (label.to_string(), word)
        })
        .collect())
}

fn stub_digest(hex_digest: &str) -> Option<pcr::Sha256Digest> {
    hex::decode(hex_digest).ok()?.try_into().ok()
}

/// The PCR 11 prediction from a UKI entry's figures ([`stub_words`]).
fn prediction(extra: &BTreeMap<String, u64>) -> Result<Prediction> {
    let mut digest = [0u8; 32];
    for (label, out) in STUB_WORDS.iter().zip(digest.chunks_exact_mut(8)) {
        let word = extra.get(*label).ok_or_else(|| {
            Error::step(
                ErrorKind::Io,
                "reading the cached UKI's PCR 11 prediction",
                format!("its entry has no `{label}`"),
            )
            .with_hint("run `strata cache prune --max-size 0`, then build again")
        })?;
        out.copy_from_slice(&word.to_be_bytes());
    }
    Ok(pcr::predict_from(&digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prediction survives the trip through an entry's figures whole.
    #[test]
    fn the_prediction_comes_back_from_the_entry_figures() {
        let stub: pcr::Sha256Digest = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let p = pcr::predict_from(&stub);
        let extra: BTreeMap<String, u64> = stub_words(&p).unwrap().into_iter().collect();
        assert_eq!(extra.len(), 4);
        assert_eq!(prediction(&extra).unwrap(), p);
        let mut short = extra.clone();
        short.remove("pcr11.2");
        assert!(prediction(&short).is_err());
    }
}
