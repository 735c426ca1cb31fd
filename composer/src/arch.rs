//! The target architecture and its per-architecture names: [`strata_proto::Arch`], the one
//! enum the composer, the guest init's build and the boot runner share.

pub use strata_proto::Arch;
