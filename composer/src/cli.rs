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
        /// Build from the cache alone: contact no registry, and name any input that is missing.
        #[arg(long)]
        offline: bool,
        /// Print progress as JSON lines on stdout, one event per line (for CI), instead of
        /// bars or lines on stderr.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Also write each step's wall time and bytes, as JSON, to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Make every step anew: the step cache (squashfs images, initramfs, disk, formats)
        /// is neither read nor written.
        #[arg(long)]
        no_cache: bool,
    },
    /// Print the resolved plan of a profile: every input found and checked,
    /// outputs, command lines. Writes nothing (no cache, no output directory).
    Plan {
        /// The YAML profile.
        profile: PathBuf,
        /// Plan for this architecture instead of the profile's (amd64, arm64).
        #[arg(long)]
        arch: Option<String>,
        /// Guest init binary [default: the one built beside strata].
        #[arg(long)]
        init: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Boot artefacts in QEMU (UEFI) and judge each by what its guest reports. Several
    /// artefacts, or an output directory, boot in parallel and end in one table (exit 0 only
    /// if all passed).
    Boot {
        /// Artefacts written by `strata build` (with their manifest.json beside them), or
        /// output directories: every artefact of every build in their manifest.json.
        #[arg(required = true, value_name = "ARTEFACT|DIR")]
        artefacts: Vec<PathBuf>,
        /// Print the result as JSON (one artefact: its boot result; several: the report).
        #[arg(long)]
        json: bool,
        /// Also write the report as JUnit XML to this file (one testsuite per build, one
        /// testcase per artefact).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Guests booted at once [default: one per core, as far as free memory holds them].
        #[arg(long, value_name = "N")]
        jobs: Option<std::num::NonZeroUsize>,
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
        /// Boot even if the artefact's size or sha256 differs from manifest.json.
        #[arg(long)]
        no_verify: bool,
        /// Let the guest write to the artefact, so `state: persistent` survives
        /// into the next boot [default: writes are thrown away].
        #[arg(long)]
        keep_writes: bool,
        /// Start the Secure Boot firmware with an empty variable store (setup mode) and let
        /// the guest reset twice, so an image built with `secure_boot.enroll` enrols its keys;
        /// the guest must then report Secure Boot on.
        #[arg(long)]
        setup_mode: bool,
    },
    /// List the built-in platforms.
    Platforms,
    /// Show, prune or verify the step cache (squashfs images, initramfs, disks, formats).
    Cache {
        /// Cache directory [default: $XDG_CACHE_HOME/strata].
        #[arg(long, env = "STRATA_CACHE", global = true)]
        cache: Option<PathBuf>,
        /// What to do [default: show].
        #[command(subcommand)]
        command: Option<CacheCommand>,
    },
    /// Work with extensions.
    Ext {
        /// What to do with them.
        #[command(subcommand)]
        command: ExtCommand,
    },
}

/// `strata ext` subcommands.
#[derive(Debug, Subcommand)]
pub enum ExtCommand {
    /// Check extensions against Talos' and systemd-sysext's rules, as the
    /// build would: a table of findings. Exit 0 clean, 1 if any finding is
    /// an error, 2 if an input could not be validated at all.
    Validate {
        /// Talos extension directories, sysext/confext trees or .raw images
        /// (squashfs, erofs), OCI image layouts, docker archives, or
        /// extension-release files.
        #[arg(required_unless_present = "images")]
        paths: Vec<PathBuf>,
        /// An image in a registry (host/repo:tag or host/repo@sha256:…); repeatable.
        #[arg(long = "image", value_name = "REF")]
        images: Vec<String>,
        /// The image to pick from an OCI layout or docker archive holding several.
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
        /// The OS version extensions must be compatible with (Talos ranges, sysext VERSION_ID).
        #[arg(long)]
        os_version: Option<String>,
        /// The OS ID sysext images must match.
        #[arg(long)]
        os_id: Option<String>,
        /// The base system's os-release file (sysext matching: ID, VERSION_ID, SYSEXT_LEVEL).
        #[arg(long)]
        os_release: Option<PathBuf>,
        /// Target architecture (amd64, arm64): ELF programs and sysext ARCHITECTURE are checked.
        #[arg(long)]
        arch: Option<String>,
        /// Extra paths Talos extensions may ship (matched by path component).
        #[arg(long = "allow-path")]
        allow_paths: Vec<String>,
        /// Treat a bare extension-release file or a .raw image as a confext.
        #[arg(long)]
        confext: bool,
        /// Registries reached over plain HTTP (host:port), for --image.
        #[arg(long)]
        insecure: Vec<String>,
        /// Cache directory for pulled blobs [default: $XDG_CACHE_HOME/strata].
        #[arg(long, env = "STRATA_CACHE")]
        cache: Option<PathBuf>,
    },
    /// Make an extension without Docker: a Talos extension directory becomes
    /// an OCI image (in a layout, optionally pushed); a tree becomes a
    /// sysext/confext .raw image. The extension is validated first, and any
    /// error refuses the pack.
    Pack {
        /// A Talos extension directory, or (with --sysext/--confext) a tree of usr/, opt/ or etc/.
        dir: PathBuf,
        /// Write the OCI image into this image-layout directory.
        #[arg(long)]
        oci_layout: Option<PathBuf>,
        /// Tag of the image in the layout (and on push).
        #[arg(long, default_value = "latest")]
        tag: String,
        /// Push the image to this reference, e.g. 127.0.0.1:5000/ext/hello:1.0.
        #[arg(long)]
        push: Option<String>,
        /// Registries reached over plain HTTP (host:port).
        #[arg(long)]
        insecure: Vec<String>,
        /// Write a systemd-sysext .raw image here instead.
        #[arg(long, conflicts_with_all = ["oci_layout", "push", "confext"])]
        sysext: Option<PathBuf>,
        /// Write a systemd-confext .raw image here instead.
        #[arg(long, conflicts_with_all = ["oci_layout", "push", "sysext"])]
        confext: Option<PathBuf>,
        /// sysext/confext: the image name (default: the output file name without .raw).
        #[arg(long)]
        name: Option<String>,
        /// sysext/confext: release ID [default: _any, which matches every OS].
        #[arg(long)]
        id: Option<String>,
        /// sysext/confext: VERSION_ID the image is tied to.
        #[arg(long)]
        version_id: Option<String>,
        /// sysext/confext: SYSEXT_LEVEL / CONFEXT_LEVEL.
        #[arg(long)]
        level: Option<String>,
        /// sysext/confext: the extension's own version.
        #[arg(long)]
        extension_version: Option<String>,
        /// Target architecture (amd64, arm64) [default: the ELF programs' own; amd64 for a
        /// Talos image without programs; ARCHITECTURE=_any for a sysext without programs].
        #[arg(long)]
        arch: Option<String>,
    },
}

/// `strata cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the entries, least recently used first, the digest memo, and the total size.
    Show,
    /// Remove the entries unused for longer than --older-than, then the least
    /// recently used until at most --max-size is left; trim the digest memo alike.
    #[command(group(clap::ArgGroup::new("limit").required(true).multiple(true)))]
    Prune {
        /// An age: 30m, 12h, 7d, 2w.
        #[arg(long, value_name = "AGE", group = "limit")]
        older_than: Option<String>,
        /// A size: 10G, 500 MiB.
        #[arg(long, value_name = "SIZE", group = "limit")]
        max_size: Option<String>,
    },
    /// Hash every entry and remove those that do not match their metadata.
    Verify,
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
