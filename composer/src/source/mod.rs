//! Inputs from outside: the only code that reads packages and fetches
//! images. A Debian kernel package ([`deb`], [`kernel`]) and OCI images from
//! registries, layouts and docker archives ([`oci`]).

pub mod deb;
pub mod kernel;
pub mod oci;
