//! Command-line types only (clap); `main.rs` routes them to the library.
//! Doc comments here are the `--help` text.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Compose bootable Linux images with system extensions, and boot-test them.
#[derive(Debug, Parser)]
#[command(name = "strata", version, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the artefacts a profile describes into out/<name>/.
    Build {
        /// The YAML profile.
        profile: PathBuf,
        /// Output directory [default: out/<name>].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Build for this architecture instead of the profile's (amd64, arm64).
        #[arg(long)]
        arch: Option<String>,
        /// Cache directory [default: $XDG_CACHE_HOME/strata].
        #[arg(long, env = "STRATA_CACHE")]
        cache: Option<PathBuf>,
        /// Guest init binary [default: the one built beside strata].
        #[arg(long)]
        init: Option<PathBuf>,
    },
    /// Boot an artefact in QEMU (UEFI) and judge it by what the guest reports.
    Boot {
        /// An artefact written by `strata build` (its manifest.json must be beside it).
        artefact: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the guest's report.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// CPU acceleration: kvm only where it really works.
        #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
        accel: AccelArg,
        /// Guest memory in MiB [default: the platform's].
        #[arg(long)]
        memory: Option<u32>,
        /// Device model [default: the platform's]: virtio-blk, nvme, ahci, pvscsi, virtio-scsi, cdrom.
        #[arg(long)]
        media: Option<String>,
    },
    /// List the built-in platforms.
    Platforms,
}

/// `--accel` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccelArg {
    /// KVM if it works here, else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM (fails if unusable).
    Kvm,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
