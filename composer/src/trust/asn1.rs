//! The few DER encodings the signatures need, written by hand: PKCS#7
//! (Authenticode, authenticated EFI variables) is older than the CMS
//! types of the RustCrypto crates and differs from them in places
//! (content `[0] EXPLICIT` without an OCTET STRING), and a handful of
//! tag-length-value helpers say exactly what goes on the wire.

/// Object identifiers, as arcs.
pub mod oid {
    /// `sha256` (NIST).
    pub const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
    /// `rsaEncryption` (PKCS#1).
    pub const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
    /// `id-data` (PKCS#7).
    pub const DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
    /// `id-signedData` (PKCS#7).
    pub const SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
    /// `contentType` attribute (PKCS#9).
    pub const CONTENT_TYPE: &[u64] = &[1, 2, 840, 113549, 1, 9, 3];
    /// `messageDigest` attribute (PKCS#9).
    pub const MESSAGE_DIGEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 4];
    /// `SPC_INDIRECT_DATA_OBJID` (Authenticode).
    pub const SPC_INDIRECT_DATA: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 4];
    /// `SPC_STATEMENT_TYPE_OBJID`.
    pub const SPC_STATEMENT_TYPE: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 11];
    /// `SPC_SP_OPUS_INFO_OBJID`.
    pub const SPC_SP_OPUS_INFO: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 12];
    /// `SPC_PE_IMAGE_DATAOBJ`.
    pub const SPC_PE_IMAGE_DATA: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 15];
    /// `SPC_INDIVIDUAL_SP_KEY_PURPOSE_OBJID`.
    pub const SPC_INDIVIDUAL_SP_KEY_PURPOSE: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 21];
}

/// Tag, DER length, value.
pub fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = value.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// The value of one DER element (its tag and length dropped).
pub fn value_of(element: &[u8]) -> &[u8] {
    let first = element[1];
    let header = if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7f)
    };
    &element[header..]
}

/// An OBJECT IDENTIFIER.
pub fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut groups = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            groups.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        body.extend(groups.iter().rev());
    };
    push(arcs[0] * 40 + arcs[1]);
    for &a in &arcs[2..] {
        push(a);
    }
    tlv(0x06, &body)
}

/// A SET OF, its elements sorted by their encodings as DER requires.
pub fn set_of(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
    elements.sort();
    tlv(0x31, &elements.concat())
}

/// `AlgorithmIdentifier { sha256, NULL }`, as OpenSSL writes it.
pub fn sha256_algorithm() -> Vec<u8> {
    tlv(0x30, &[oid(oid::SHA256), tlv(0x05, &[])].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_known_bytes() {
        assert_eq!(
            oid(oid::SHA256),
            [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]
        );
        assert_eq!(oid(oid::SPC_INDIRECT_DATA)[..4], [0x06, 0x0a, 0x2b, 0x06]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(value_of(&tlv(0x30, &[0; 300])).len(), 300);
        assert_eq!(set_of(vec![vec![2], vec![1]]), [0x31, 2, 1, 2]);
    }
}
