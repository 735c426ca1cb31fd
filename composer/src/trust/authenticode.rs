//! Authenticode signatures of EFI binaries, made natively: the PKCS#7
//! SignedData that UEFI firmware checks against its `db` before it runs an
//! image (what sbsign and osslsigncode write).
//!
//! The signed content is an `SpcIndirectDataContent` holding the image's
//! Authenticode SHA-256 digest ([`super::pe::authenticode_digest`]); the
//! signer signs the DER of its authenticated attributes (content type,
//! message digest, statement type, opus info) with RSA PKCS#1 v1.5. No
//! signing time is included, so the same image and key always give the same
//! bytes (PKCS#1 v1.5 is deterministic).
//!
//! Keys sit behind [`Signer`]: [`PemSigner`] holds a PEM key and its
//! certificate; a PKCS#11 token or an external command (keys that never
//! touch the build machine's disk) would implement the same two methods.

use super::asn1::{self, oid, tlv};
use super::keys::{Certificate, KeyError, PrivateKey};
use super::pe::{self, PeError};
use sha2::{Digest, Sha256};
use std::path::Path;

/// A holder of a signing key and its certificate.
pub trait Signer: Send + Sync {
    /// The certificate whose key makes the signatures; it goes into every
    /// signature, and the firmware's `db` must hold it (or its issuer).
    fn certificate(&self) -> &Certificate;
    /// RSASSA-PKCS1-v1_5 over a SHA-256 digest.
    fn sign_sha256(&self, digest: &[u8; 32]) -> Result<Vec<u8>, SignError>;
    /// A sha256 over the private key and the certificate: what a step-cache key names the
    /// signer by (another key or certificate misses; no key bytes in clear).
    fn fingerprint(&self) -> [u8; 32];
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key or certificate.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Reading or writing the image.
    #[error(transparent)]
    Pe(#[from] PeError),
    /// The certificate's issuer or serial number could not be encoded.
    #[error("cannot encode the certificate's issuer and serial number")]
    Encode(#[source] ::der::Error),
}

/// A PEM key with the certificate made for it.
#[derive(Debug)]
pub struct PemSigner {
    key: PrivateKey,
    cert: Certificate,
}

impl PemSigner {
    /// Pairs `key` with `cert`, refusing a certificate made for another key.
    pub fn new(key: PrivateKey, cert: Certificate) -> Result<PemSigner, KeyError> {
        cert.check_matches(&key)?;
        Ok(PemSigner { key, cert })
    }
}

impl Signer for PemSigner {
    fn certificate(&self) -> &Certificate {
        &self.cert
    }
    fn sign_sha256(&self, digest: &[u8; 32]) -> Result<Vec<u8>, SignError> {
        Ok(self.key.sign_sha256(digest)?)
    }
    fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::new()
            .chain_update(self.key.fingerprint())
            .chain_update(self.cert.der())
            .finalize()
            .into()
    }
}

/// Signs the unsigned PE image `path` in place.
pub fn sign_pe(path: &Path, signer: &dyn Signer) -> Result<(), SignError> {
    pe::pad_for_signature(path)?;
    let digest = pe::authenticode_digest(path)?;
    let pkcs7 = signed_data(&digest, signer)?;
    pe::embed_signature(path, &pkcs7)?;
    Ok(())
}

/// `SpcIndirectDataContent` for a PE image digest.
fn indirect_data(digest: &[u8; 32]) -> Vec<u8> {
    // SpcPeImageData: empty flags, file = SpcLink.file(SpcString.unicode("<<<Obsolete>>>")),
    // the form signtool, sbsign and osslsigncode write.
    let obsolete: Vec<u8> = "<<<Obsolete>>>"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let link = tlv(0xa0, &tlv(0xa2, &tlv(0x80, &obsolete)));
    let pe_image_data = tlv(0x30, &[tlv(0x03, &[0]), link].concat());
    let data = tlv(
        0x30,
        &[asn1::oid(oid::SPC_PE_IMAGE_DATA), pe_image_data].concat(),
    );
    let digest_info = tlv(
        0x30,
        &[asn1::sha256_algorithm(), tlv(0x04, digest)].concat(),
    );
    tlv(0x30, &[data, digest_info].concat())
}

/// The DER `ContentInfo` of the PKCS#7 SignedData over `digest`.
pub fn signed_data(digest: &[u8; 32], signer: &dyn Signer) -> Result<Vec<u8>, SignError> {
    let content = indirect_data(digest);
    // PKCS#7 v1.5: the message digest covers the content octets, without the
    // outer SEQUENCE's tag and length.
    let content_octets = asn1::value_of(&content);
    let attrs = asn1::set_of(vec![
        attribute(oid::CONTENT_TYPE, asn1::oid(oid::SPC_INDIRECT_DATA)),
        attribute(
            oid::MESSAGE_DIGEST,
            tlv(0x04, &Sha256::digest(content_octets)),
        ),
        attribute(
            oid::SPC_STATEMENT_TYPE,
            tlv(0x30, &asn1::oid(oid::SPC_INDIVIDUAL_SP_KEY_PURPOSE)),
        ),
        attribute(oid::SPC_SP_OPUS_INFO, tlv(0x30, &[])),
    ]);
    let encap = tlv(
        0x30,
        &[asn1::oid(oid::SPC_INDIRECT_DATA), tlv(0xa0, &content)].concat(),
    );
    signed_data_with(encap, attrs, signer)
}

/// A `ContentInfo` of type signedData around `encap` (the encapsulated
/// content info), signed over the DER SET `attrs` (authenticated
/// attributes) by `signer`.
pub(crate) fn signed_data_with(
    encap: Vec<u8>,
    attrs: Vec<u8>,
    signer: &dyn Signer,
) -> Result<Vec<u8>, SignError> {
    let to_sign: [u8; 32] = Sha256::digest(&attrs).into();
    let signature = signer.sign_sha256(&to_sign)?;
    // In the SignerInfo the SET is tagged [0] IMPLICIT instead of SET.
    let signed_attrs = [&[0xa0][..], &attrs[1..]].concat();
    let signer_info = signer_info(signer.certificate(), signed_attrs, &signature)?;
    Ok(content_info(encap, signer.certificate(), signer_info))
}

/// `ContentInfo { signedData, [0] SignedData }` with version 1, SHA-256,
/// the one certificate and the one signer.
pub(crate) fn content_info(encap: Vec<u8>, cert: &Certificate, signer_info: Vec<u8>) -> Vec<u8> {
    let signed = signed_data_body(encap, cert, signer_info);
    tlv(
        0x30,
        &[asn1::oid(oid::SIGNED_DATA), tlv(0xa0, &signed)].concat(),
    )
}

/// The `SignedData` itself: version 1, SHA-256, the one certificate, the
/// one signer (what authenticated EFI variables carry, without ContentInfo).
pub(crate) fn signed_data_body(
    encap: Vec<u8>,
    cert: &Certificate,
    signer_info: Vec<u8>,
) -> Vec<u8> {
    tlv(
        0x30,
        &[
            tlv(0x02, &[1]),
            asn1::set_of(vec![asn1::sha256_algorithm()]),
            encap,
            tlv(0xa0, cert.der()),
            asn1::set_of(vec![signer_info]),
        ]
        .concat(),
    )
}

/// `SignerInfo` version 1, identified by issuer and serial number;
/// `signed_attrs` empty leaves the authenticated attributes out.
pub(crate) fn signer_info(
    cert: &Certificate,
    signed_attrs: Vec<u8>,
    signature: &[u8],
) -> Result<Vec<u8>, SignError> {
    use ::der::Encode;
    let tbs = cert.x509().tbs_certificate();
    let issuer = tbs.issuer().to_der().map_err(SignError::Encode)?;
    let serial = tbs.serial_number().to_der().map_err(SignError::Encode)?;
    Ok(tlv(
        0x30,
        &[
            tlv(0x02, &[1]),
            tlv(0x30, &[issuer, serial].concat()),
            asn1::sha256_algorithm(),
            signed_attrs,
            tlv(
                0x30,
                &[asn1::oid(oid::RSA_ENCRYPTION), tlv(0x05, &[])].concat(),
            ),
            tlv(0x04, signature),
        ]
        .concat(),
    ))
}

/// `Attribute { type, SET { value } }`.
fn attribute(kind: &[u64], value: Vec<u8>) -> Vec<u8> {
    tlv(0x30, &[asn1::oid(kind), asn1::set_of(vec![value])].concat())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trust::keys::{Certificate, PrivateKey};
    use std::process::Command;

    pub(crate) const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
    pub(crate) const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

    pub(crate) fn snakeoil() -> PemSigner {
        // Every test sets the same value, so concurrent tests agree on it.
        std::env::set_var("STRATA_TEST_SNAKEOIL_PASS", "snakeoil");
        let key =
            PrivateKey::load(Path::new(SNAKEOIL_KEY), Some("STRATA_TEST_SNAKEOIL_PASS")).unwrap();
        let cert = Certificate::load(Path::new(SNAKEOIL_CERT)).unwrap();
        PemSigner::new(key, cert).unwrap()
    }

    /// A fresh self-signed key and certificate the firmware does not know.
    pub(crate) fn stranger(dir: &Path) -> PemSigner {
        let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            ])
            .args(["-subj", "/CN=strata test stranger", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs (scripts/deps.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PemSigner::new(
            PrivateKey::load(&key, None).unwrap(),
            Certificate::load(&cert).unwrap(),
        )
        .unwrap()
    }

    fn run(cmd: &mut Command) -> (bool, String) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/deps.sh installs it)"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// sbverify and osslsigncode both accept `efi` as signed by `cert`.
    pub(crate) fn assert_verifies(efi: &Path, cert: &Path) {
        let (ok, text) = run(Command::new("sbverify").arg("--cert").arg(cert).arg(efi));
        assert!(ok, "sbverify {}: {text}", efi.display());
        let (ok, text) = run(Command::new("osslsigncode")
            .args(["verify", "-in"])
            .arg(efi)
            .arg("-CAfile")
            .arg(cert));
        assert!(ok, "osslsigncode {}: {text}", efi.display());
    }

    #[test]
    fn signed_stubs_and_bootloaders_verify_with_sbverify_and_osslsigncode() {
        let dir = tempfile::tempdir().unwrap();
        let signer = snakeoil();
        for src in [
            "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "/usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
            "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        ] {
            let efi = dir.path().join("x.efi");
            std::fs::copy(src, &efi).unwrap();
            sign_pe(&efi, &signer).unwrap();
            assert_verifies(&efi, Path::new(SNAKEOIL_CERT));
        }
    }

    #[test]
    fn signing_is_reproducible_and_a_flipped_byte_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let signer = snakeoil();
        let src = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
        let (a, b) = (dir.path().join("a.efi"), dir.path().join("b.efi"));
        for p in [&a, &b] {
            std::fs::copy(src, p).unwrap();
            sign_pe(p, &signer).unwrap();
        }
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[0x600] ^= 1;
        std::fs::write(&a, bytes).unwrap();
        let (ok, _) = run(Command::new("sbverify")
            .arg("--cert")
            .arg(SNAKEOIL_CERT)
            .arg(&a));
        assert!(!ok, "a tampered image must not verify");
    }

    #[test]
    fn another_keys_signature_does_not_verify_against_the_snakeoil_cert() {
        let dir = tempfile::tempdir().unwrap();
        let efi = dir.path().join("x.efi");
        std::fs::copy("/usr/lib/systemd/boot/efi/systemd-bootx64.efi", &efi).unwrap();
        sign_pe(&efi, &stranger(dir.path())).unwrap();
        let (ok, _) = run(Command::new("sbverify")
            .arg("--cert")
            .arg(SNAKEOIL_CERT)
            .arg(&efi));
        assert!(!ok);
    }

    #[test]
    fn our_digest_is_osslsigncodes() {
        let dir = tempfile::tempdir().unwrap();
        let efi = dir.path().join("x.efi");
        std::fs::copy("/usr/lib/systemd/boot/efi/linuxx64.efi.stub", &efi).unwrap();
        sign_pe(&efi, &snakeoil()).unwrap();
        let (_, text) = run(Command::new("osslsigncode")
            .args(["verify", "-in"])
            .arg(&efi));
        let digest = hex::encode(pe::authenticode_digest(&efi).unwrap());
        assert!(
            text.to_lowercase()
                .contains(&format!("calculated message digest : {digest}")),
            "{text}"
        );
    }
}
