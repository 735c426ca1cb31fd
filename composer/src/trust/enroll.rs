//! Secure Boot key enrolment files: `PK.auth`, `KEK.auth` and `db.auth`,
//! the time-based authenticated variables (UEFI 2.x §8.2.2,
//! `EFI_VARIABLE_AUTHENTICATION_2`) that systemd-boot writes into a
//! machine in setup mode when `loader.conf` says `secure-boot-enroll`.
//!
//! Each file is the authentication header (an `EFI_TIME`, then a
//! `WIN_CERTIFICATE_UEFI_GUID` of type PKCS#7 holding a detached SignedData)
//! followed by the variable's data: an `EFI_SIGNATURE_LIST` with the one
//! X.509 certificate. The signature covers variable name (UTF-16, no NUL),
//! vendor GUID, attributes, timestamp and data, and is made with the same
//! key for all three: a self-signed PK that also serves as KEK and db
//! entry, as mkosi and Talos enrol for VMs. The timestamp comes from
//! SOURCE_DATE_EPOCH, so the files are reproducible.

use super::asn1::{self, oid, tlv};
use super::authenticode::{self, SignError, Signer};
use sha2::{Digest, Sha256};

/// `EFI_GLOBAL_VARIABLE` (PK, KEK).
const GLOBAL: [u8; 16] = guid(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID` (db).
const SECURITY_DB: [u8; 16] = guid(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// `EFI_CERT_X509_GUID`: a signature list of DER certificates.
const CERT_X509: [u8; 16] = guid(
    0xa5c059a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
/// `EFI_CERT_TYPE_PKCS7_GUID`.
const CERT_TYPE_PKCS7: [u8; 16] = guid(
    0x4aafd29d,
    0x68df,
    0x49ee,
    [0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7],
);
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
const ATTRIBUTES: u32 = 0x01 | 0x02 | 0x04 | 0x20;
/// `WIN_CERT_TYPE_EFI_GUID`.
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;

/// A GUID in its little-endian (EFI) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The three files, as (file name, bytes): `PK.auth`, `KEK.auth`, `db.auth`.
/// `owner` is the signature owner GUID recorded with the certificate.
pub fn auth_files(
    signer: &dyn Signer,
    owner: [u8; 16],
    epoch: u64,
) -> Result<Vec<(&'static str, Vec<u8>)>, SignError> {
    let list = signature_list(signer.certificate().der(), owner);
    let time = efi_time(epoch);
    [("PK", GLOBAL), ("KEK", GLOBAL), ("db", SECURITY_DB)]
        .into_iter()
        .map(|(name, vendor)| {
            let file = match name {
                "PK" => "PK.auth",
                "KEK" => "KEK.auth",
                _ => "db.auth",
            };
            Ok((file, auth_variable(name, vendor, &time, &list, signer)?))
        })
        .collect()
}

/// `EFI_SIGNATURE_LIST` holding one X.509 certificate.
fn signature_list(cert: &[u8], owner: [u8; 16]) -> Vec<u8> {
    let entry = 16 + cert.len();
    let mut out = Vec::with_capacity(28 + entry);
    out.extend_from_slice(&CERT_X509);
    out.extend_from_slice(&((28 + entry) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(entry as u32).to_le_bytes());
    out.extend_from_slice(&owner);
    out.extend_from_slice(cert);
    out
}

/// `EFI_TIME` of a Unix time (UTC; nanoseconds, time zone, daylight zero).
fn efi_time(epoch: u64) -> [u8; 16] {
    let (year, month, day) = crate::date::civil_from_days((epoch / 86_400) as i64);
    let secs = epoch % 86_400;
    let mut t = [0u8; 16];
    t[0..2].copy_from_slice(&(year.clamp(0, 9999) as u16).to_le_bytes());
    t[2] = month;
    t[3] = day;
    t[4] = (secs / 3600) as u8;
    t[5] = (secs % 3600 / 60) as u8;
    t[6] = (secs % 60) as u8;
    t
}

/// One `.auth` file: authentication header, then `data`.
fn auth_variable(
    name: &str,
    vendor: [u8; 16],
    time: &[u8; 16],
    data: &[u8],
    signer: &dyn Signer,
) -> Result<Vec<u8>, SignError> {
    let mut signed = Sha256::new();
    for unit in name.encode_utf16() {
        signed.update(unit.to_le_bytes());
    }
    signed.update(vendor);
    signed.update(ATTRIBUTES.to_le_bytes());
    signed.update(time);
    signed.update(data);
    let digest: [u8; 32] = signed.finalize().into();
    let signature = signer.sign_sha256(&digest)?;
    // No authenticated attributes: the signature is over the digest itself.
    let info = authenticode::signer_info(signer.certificate(), Vec::new(), &signature)?;
    let encap = tlv(0x30, &asn1::oid(oid::DATA));
    let pkcs7 = authenticode::signed_data_body(encap, signer.certificate(), info);
    let mut out = Vec::with_capacity(16 + 24 + pkcs7.len() + data.len());
    out.extend_from_slice(time);
    out.extend_from_slice(&((24 + pkcs7.len()) as u32).to_le_bytes());
    out.extend_from_slice(&0x0200u16.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
    out.extend_from_slice(&CERT_TYPE_PKCS7);
    out.extend_from_slice(&pkcs7);
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::authenticode::tests::{snakeoil, SNAKEOIL_CERT};

    /// The signed bytes and the DER SignedData of a `.auth` file.
    fn split(name: &str, vendor: [u8; 16], auth: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let len = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
        assert_eq!(&auth[22..24], &WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
        assert_eq!(&auth[24..40], &CERT_TYPE_PKCS7);
        let pkcs7 = auth[40..16 + len].to_vec();
        let data = auth[16 + len..].to_vec();
        let mut signed: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        signed.extend_from_slice(&vendor);
        signed.extend_from_slice(&ATTRIBUTES.to_le_bytes());
        signed.extend_from_slice(&auth[..16]);
        signed.extend_from_slice(&data);
        (signed, pkcs7, data)
    }

    #[test]
    fn auth_files_verify_with_openssl_and_carry_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let signer = snakeoil();
        let files = auth_files(&signer, [7; 16], 1_700_000_000).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["PK.auth", "KEK.auth", "db.auth"]);
        for ((file, auth), (name, vendor)) in
            files
                .iter()
                .zip([("PK", GLOBAL), ("KEK", GLOBAL), ("db", SECURITY_DB)])
        {
            let (signed, pkcs7, data) = split(name, vendor, auth);
            assert_eq!(&data[..16], &CERT_X509);
            assert!(data.ends_with(signer.certificate().der()), "{file}");
            // openssl wants a ContentInfo around the SignedData.
            let ci = tlv(
                0x30,
                &[asn1::oid(oid::SIGNED_DATA), tlv(0xa0, &pkcs7)].concat(),
            );
            let (p, c) = (dir.path().join("p7.der"), dir.path().join("content"));
            std::fs::write(&p, ci).unwrap();
            std::fs::write(&c, signed).unwrap();
            let out = std::process::Command::new("openssl")
                .args([
                    "smime",
                    "-verify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-noverify",
                    "-in",
                ])
                .arg(&p)
                .arg("-content")
                .arg(&c)
                .arg("-certfile")
                .arg(SNAKEOIL_CERT)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "{file}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // 2023-11-14 22:13:20 UTC
        assert_eq!(
            efi_time(1_700_000_000)[..7],
            [0xe7, 0x07, 11, 14, 22, 13, 20]
        );
    }
}
