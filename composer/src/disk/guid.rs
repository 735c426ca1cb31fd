//! GUIDs for GPT, derived from names so that images are reproducible.
//!
//! GPT stores a GUID's first three fields little-endian ("mixed endian");
//! [`Guid::to_disk`] does that conversion. Derived GUIDs are RFC 9562
//! version 8 (custom) UUIDs built from a SHA-256, as Talos does for its
//! partition GUIDs, so the same profile always gives the same disk.

use sha2::{Digest, Sha256};
use std::fmt;

/// A GUID in its textual (big-endian) byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// EFI system partition type.
    pub const ESP: Guid = Guid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
    /// Linux filesystem data type.
    pub const LINUX_DATA: Guid = Guid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);

    /// A GUID from its 128-bit value as written `XXXXXXXX-XXXX-…`.
    pub const fn from_u128(v: u128) -> Guid {
        Guid(v.to_be_bytes())
    }

    /// A version-8 UUID derived from `parts` (joined unambiguously).
    pub fn derive(parts: &[&[u8]]) -> Guid {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        b[6] = (b[6] & 0x0f) | 0x80; // version 8
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
        Guid(b)
    }

    /// The on-disk (mixed-endian) bytes GPT stores.
    pub fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        let mut d = b;
        d[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        d[4..6].copy_from_slice(&[b[5], b[4]]);
        d[6..8].copy_from_slice(&[b[7], b[6]]);
        d
    }

    /// The inverse of [`Guid::to_disk`].
    pub fn from_disk(d: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(d).to_disk())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode_upper(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_guid_is_stored_mixed_endian() {
        assert_eq!(
            Guid::ESP.to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        let d = Guid::ESP.to_disk();
        assert_eq!(&d[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(Guid::from_disk(d), Guid::ESP);
    }

    #[test]
    fn derived_guids_are_stable_v8() {
        let a = Guid::derive(&[b"profile", b"EFI"]);
        assert_eq!(a, Guid::derive(&[b"profile", b"EFI"]));
        assert_ne!(a, Guid::derive(&[b"profileE", b"FI"]));
        assert_eq!(a.0[6] >> 4, 8);
        assert_eq!(a.0[8] >> 6, 0b10);
    }
}
