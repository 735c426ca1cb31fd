//! Trusted boot: the keys that sign what the firmware and the TPM check.
//!
//! [`keys`] loads the PEM private keys and X.509 certificates a profile
//! names (`secure_boot:` and `pcr:`). Everything here is native: no
//! openssl, sbsign or systemd-measure runs at build time; tests use those
//! as judges. [`pcr`] predicts and signs the UKI's PCR 11.

pub(crate) mod asn1;
pub mod authenticode;
pub mod enroll;
pub mod keys;
pub mod pcr;
pub mod pe;
pub mod uki;
