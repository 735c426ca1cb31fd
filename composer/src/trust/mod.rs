//! Trusted boot: what strata computes so the image can be trusted at boot.

pub mod pcr;
