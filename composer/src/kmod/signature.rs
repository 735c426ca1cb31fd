//! Kernel module signatures: who signed a module, read from the signature
//! the kernel's `scripts/sign-file` appends.
//!
//! Why: under Secure Boot the kernel locks down (`LOCK_DOWN_IN_EFI_SECURE_BOOT`
//! in Debian) and loads only modules signed by a key in its keyrings. A
//! module an extension ships that is unsigned, or signed by another key,
//! would fail at boot; strata says so at compose time instead.
//!
//! Layout (kernel `include/linux/module_signature.h`): the module ends with
//! `<PKCS#7 DER> <struct module_signature> "~Module signature appended~\n"`;
//! the 12-byte struct holds algo, hash, id_type (2 = PKCS#7, the only kind
//! the kernel accepts since 4.3), signer_len, key_id_len, 3 pad bytes and
//! the big-endian length of the PKCS#7 message. The PKCS#7 SignedData names
//! its signer by issuer and serial number, or by subject key identifier
//! (RFC 5652 5.3); this module reads that identifier and nothing else: it
//! does not verify the signature (the kernel does, against its keys).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ModuleBytes;

/// The trailer `sign-file` appends after the signature.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature` size.
const INFO_LEN: usize = 12;
/// `id_type` of a PKCS#7 signature (`PKEY_ID_PKCS7`).
const PKEY_ID_PKCS7: u8 = 2;
/// Larger PKCS#7 blobs than this are not module signatures.
const MAX_SIG_LEN: u64 = 64 << 10;

/// Who signed a module, as its PKCS#7 SignerInfo names the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signer {
    /// Issuer (DER of the X.509 Name) and serial number (DER INTEGER content).
    IssuerSerial {
        /// The issuer's distinguished name, DER.
        issuer: Vec<u8>,
        /// The certificate's serial number.
        serial: Vec<u8>,
    },
    /// The certificate's subject key identifier.
    KeyId(Vec<u8>),
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::IssuerSerial { issuer, serial } => {
                let cn = common_name(issuer).unwrap_or_else(|| "(no CN)".into());
                write!(f, "\"{cn}\" serial {}", hex::encode(serial))
            }
            Signer::KeyId(id) => write!(f, "key id {}", hex::encode(id)),
        }
    }
}

/// What a module carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No `~Module signature appended~` trailer.
    Unsigned,
    /// A trailer the kernel would not accept (not PKCS#7, or malformed).
    Unusable(String),
    /// A PKCS#7 signature by this signer.
    Signed(Signer),
}

/// Why a module's signature could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module could not be read or decompressed.
    #[error(transparent)]
    Module(#[from] super::Error),
    /// Reading the module's tail failed.
    #[error("cannot read the signature of kernel module {}", path.display())]
    Read {
        /// The module file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The signature of module `name` (its suffix says how it is compressed).
/// A plain `.ko` on the host is read only at its end.
pub(crate) fn read(bytes: ModuleBytes<'_>, name: &Path) -> Result<Signature, Error> {
    match (super::module_suffix(name), bytes) {
        (Some(".ko"), ModuleBytes::Host(path)) => read_tail(path),
        (Some(".ko"), ModuleBytes::Memory(data)) => Ok(parse(data)),
        (_, bytes) => Ok(parse(&super::whole_module(bytes, name)?)),
    }
}

/// Reads just the signature area at the end of a host `.ko`.
fn read_tail(path: &Path) -> Result<Signature, Error> {
    let err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    let want = (MAGIC.len() + INFO_LEN) as u64 + MAX_SIG_LEN;
    let start = len.saturating_sub(want);
    f.seek(SeekFrom::Start(start)).map_err(err)?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(err)?;
    Ok(parse(&tail))
}

/// The signature at the end of `module` (a whole module, or its tail).
pub fn parse(module: &[u8]) -> Signature {
    let Some(body) = module.strip_suffix(MAGIC) else {
        return Signature::Unsigned;
    };
    if body.len() < INFO_LEN {
        return Signature::Unusable("truncated signature header".into());
    }
    let (rest, info) = body.split_at(body.len() - INFO_LEN);
    let id_type = info[2];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    if id_type != PKEY_ID_PKCS7 {
        return Signature::Unusable(format!(
            "signature type {id_type}, not PKCS#7 (the only type the kernel accepts)"
        ));
    }
    if sig_len == 0 || sig_len > rest.len() {
        return Signature::Unusable(format!("signature length {sig_len} does not fit the file"));
    }
    match pkcs7_signer(&rest[rest.len() - sig_len..]) {
        Some(s) => Signature::Signed(s),
        None => Signature::Unusable("the PKCS#7 message names no signer".into()),
    }
}

/// One DER TLV: (tag, content, rest after it).
fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&first, mut d) = d.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let v = d[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        d = &d[n..];
        v
    };
    (d.len() >= len).then(|| (tag, &d[..len], &d[len..]))
}

/// Skips `n` TLVs.
fn skip(mut d: &[u8], n: usize) -> Option<&[u8]> {
    for _ in 0..n {
        d = tlv(d)?.2;
    }
    Some(d)
}

/// The signer of the first SignerInfo of a PKCS#7 ContentInfo/SignedData.
fn pkcs7_signer(der: &[u8]) -> Option<Signer> {
    const SEQ: u8 = 0x30;
    let (SEQ, content_info, _) = tlv(der)? else {
        return None;
    };
    // contentType OID, then [0] EXPLICIT SignedData.
    let (0xa0, explicit, _) = tlv(skip(content_info, 1)?)? else {
        return None;
    };
    let (SEQ, signed_data, _) = tlv(explicit)? else {
        return None;
    };
    // version, digestAlgorithms, encapContentInfo, then optional [0] certs, [1] crls.
    let mut d = skip(signed_data, 3)?;
    while let Some((tag, _, rest)) = tlv(d) {
        if tag == 0x31 {
            break;
        }
        d = rest;
    }
    let (0x31, signer_infos, _) = tlv(d)? else {
        return None;
    };
    let (SEQ, signer_info, _) = tlv(signer_infos)? else {
        return None;
    };
    let (tag, sid, _) = tlv(skip(signer_info, 1)?)?;
    match tag {
        SEQ => {
            let (SEQ, _, after_issuer) = tlv(sid)? else {
                return None;
            };
            let issuer = &sid[..sid.len() - after_issuer.len()];
            let (0x02, serial, _) = tlv(after_issuer)? else {
                return None;
            };
            Some(Signer::IssuerSerial {
                issuer: issuer.to_vec(),
                serial: serial.to_vec(),
            })
        }
        0x80 => Some(Signer::KeyId(sid.to_vec())),
        _ => None,
    }
}

/// The commonName (2.5.4.3) of a DER X.509 Name, for messages.
fn common_name(name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, mut rdns, _) = tlv(name)?;
    while let Some((_, rdn, rest)) = tlv(rdns) {
        let (_, atv, _) = tlv(rdn)?;
        let (_, oid, value) = tlv(atv)?;
        if oid == CN {
            return Some(String::from_utf8_lossy(tlv(value)?.1).into_owned());
        }
        rdns = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module signed by Debian's build key, from the shared inputs.
    fn debian_module() -> Option<PathBuf> {
        let p = crate::test_support::ext_dummy_module();
        crate::test_support::require_input(&p).then_some(p)
    }

    #[test]
    fn debian_module_is_signed_by_its_build_key() {
        let Some(p) = debian_module() else { return };
        let tail = read(ModuleBytes::Host(&p), &p).unwrap();
        let whole = std::fs::read(&p).unwrap();
        assert_eq!(parse(&whole), tail);
        let Signature::Signed(s) = tail else {
            panic!("{tail:?}")
        };
        // What `modinfo` prints as signer and sig_key for this module.
        assert_eq!(
            s.to_string(),
            "\"Build time autogenerated kernel key\" serial 5ee11331142993a99cd5035b98534874661bdee5"
        );
    }

    #[test]
    fn stripped_and_broken_trailers() {
        let Some(p) = debian_module() else { return };
        let whole = std::fs::read(&p).unwrap();
        let info_at = whole.len() - MAGIC.len() - INFO_LEN;
        let sig_len = u32::from_be_bytes(whole[info_at + 8..info_at + 12].try_into().unwrap());
        let stripped = &whole[..info_at - sig_len as usize];
        assert_eq!(parse(stripped), Signature::Unsigned);
        let mut not_pkcs7 = whole.clone();
        not_pkcs7[info_at + 2] = 1;
        assert!(matches!(parse(&not_pkcs7), Signature::Unusable(_)));
        let mut too_long = whole.clone();
        too_long[info_at + 8..info_at + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse(&too_long), Signature::Unusable(_)));
        assert!(matches!(parse(MAGIC), Signature::Unusable(_)));
    }

    #[test]
    fn xz_module_is_read_whole() {
        let Some(p) = debian_module() else { return };
        let whole = std::fs::read(&p).unwrap();
        let mut xz = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new(&mut xz, 1);
        io::Write::write_all(&mut enc, &whole).unwrap();
        enc.finish().unwrap();
        let s = read(ModuleBytes::Memory(&xz), Path::new("dummy.ko.xz")).unwrap();
        assert_eq!(s, parse(&whole));
    }
}
