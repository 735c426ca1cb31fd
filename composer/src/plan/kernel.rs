//! The kernel source of a plan: which file, which release, which
//! architecture, found without unpacking anything.
//!
//! A Debian `linux-image-<release>` package names its release in its
//! `Package:` field and its architecture in `Architecture:`; both come from
//! the control member, so the plan knows them before the package is
//! unpacked into the cache. The release is what extension modules are
//! checked against. After the kernel step, [`KernelPlan::check_loaded`]
//! confirms the unpacked kernel is the one planned.

use super::Blame;
use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::profile::{KernelSource, LoadedProfile};
use crate::source::kernel::{self, Kernel};
use std::path::{Path, PathBuf};

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum KernelInput {
    /// A Debian package, unpacked into the cache by the kernel step.
    Deb(PathBuf),
    /// A kernel image and its modules directory, used in place.
    Parts {
        /// The image.
        vmlinuz: PathBuf,
        /// `lib/modules/<release>`.
        modules_dir: PathBuf,
    },
}

/// The planned kernel.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    /// Its source.
    pub input: KernelInput,
    /// Its release (`uname -r`).
    pub release: String,
    /// Extra arguments the profile gives (after the platform's and strata's).
    pub args: Vec<String>,
    /// Extra modules the profile asks for.
    pub modules: Vec<String>,
    /// The profile field a kernel problem is blamed on.
    field: &'static str,
    arch: Arch,
    blame: Blame,
}

const DEB_HINT: &str = "download it with `make kernel` (apt-get download linux-image-<arch>'s linux-image-* dependency)";

/// Resolves and checks the profile's kernel source.
pub(crate) fn resolve(lp: &LoadedProfile, blame: &Blame) -> Result<KernelPlan> {
    let arch = lp.profile.arch;
    let (input, release, field) = match &lp.profile.kernel.source {
        KernelSource::Deb(d) => {
            let deb = blame.existing(lp, "kernel.deb", d, false, DEB_HINT)?;
            let release = deb_release(&deb, arch, blame)?;
            (KernelInput::Deb(deb), release, "kernel.deb")
        }
        KernelSource::Parts {
            vmlinuz,
            modules_dir,
        } => {
            let v = blame.existing(
                lp,
                "kernel.vmlinuz",
                vmlinuz,
                false,
                "give the path of a kernel image",
            )?;
            let m = blame.existing(
                lp,
                "kernel.modules_dir",
                modules_dir,
                true,
                "give the kernel's lib/modules/<release> directory",
            )?;
            let machine = kernel::detect_machine(&v).map_err(|e| -> Error {
                blame
                    .error(
                        "kernel.vmlinuz",
                        "cannot use the kernel image",
                        "give a bzImage, an arm64 Image or an EFI zboot image",
                    )
                    .caused_by(e)
                    .into()
            })?;
            check_machine(machine, arch, &v, "kernel.vmlinuz", blame)?;
            let release = m
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                KernelInput::Parts {
                    vmlinuz: v,
                    modules_dir: m,
                },
                release,
                "kernel.vmlinuz",
            )
        }
    };
    if !is_release(&release) {
        let field = if field == "kernel.vmlinuz" {
            "kernel.modules_dir"
        } else {
            field
        };
        return Err(blame
            .error(
                field,
                format!("`{}` is not a kernel release", release.escape_debug()),
                "a release (`uname -r`) is letters, digits and `.`, `_`, `-`, `+`, `~`; give a kernel whose package or lib/modules directory is named so",
            )
            .into());
    }
    Ok(KernelPlan {
        input,
        release,
        args: lp.profile.kernel.args.clone(),
        modules: lp.profile.kernel.modules.clone(),
        field,
        arch,
        blame: blame.clone(),
    })
}

/// True for what `uname -r` can print: the release goes into the boot
/// entry's `version` line, module paths and the manifest, so a newline or a
/// space in it would forge lines or split values there.
fn is_release(release: &str) -> bool {
    !release.is_empty()
        && release
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+~".contains(c))
}

/// The release a `linux-image-<release>` package holds, after checking its architecture.
fn deb_release(deb: &Path, arch: Arch, blame: &Blame) -> Result<String> {
    let info = crate::source::deb::read_control(deb).map_err(|e| -> Error {
        blame
            .error(
                "kernel.deb",
                "cannot read the package",
                "give a Debian linux-image-* package",
            )
            .caused_by(e)
            .into()
    })?;
    let want = arch.debian();
    if info.architecture != want {
        return Err(blame
            .error(
                "kernel.deb",
                format!(
                    "{} is package {} for {}, but the profile's arch is {want}",
                    deb.display(),
                    info.package,
                    info.architecture
                ),
                format!("use linux-image-{want} (`make kernel ARCH={want}`)"),
            )
            .into());
    }
    let release = info
        .package
        .strip_prefix("linux-image-")
        .map(|r| r.strip_suffix("-unsigned").unwrap_or(r))
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| -> Error {
            blame
                .error(
                    "kernel.deb",
                    format!(
                        "{} is package {}, not a linux-image-<release> package",
                        deb.display(),
                        info.package
                    ),
                    "give the versioned package (linux-image-amd64 only depends on it)",
                )
                .into()
        })?;
    Ok(release.to_string())
}

fn check_machine(found: Arch, arch: Arch, image: &Path, field: &str, blame: &Blame) -> Result<()> {
    if found == arch {
        return Ok(());
    }
    Err(blame
        .error(
            field,
            format!(
                "the kernel {} is built for {found}, but the profile's arch is {arch}",
                image.display()
            ),
            "use the linux-image package of the profile's arch",
        )
        .into())
}

impl KernelPlan {
    /// The kernel step: unpacks the package into the cache (once per
    /// package digest), or indexes the given modules directory.
    pub fn load(&self, cache: &Path) -> Result<Kernel> {
        let k = match &self.input {
            KernelInput::Deb(deb) => kernel::from_deb(deb, cache),
            KernelInput::Parts {
                vmlinuz,
                modules_dir,
            } => kernel::from_parts(vmlinuz, modules_dir),
        }
        .map_err(|e| -> Error {
            if e.is_cache_fault() {
                let what = format!("unpacking the kernel into the cache {}", cache.display());
                return Error::step(crate::error::ErrorKind::Io, what, e)
                    .with_hint("free space in the cache directory or give another with --cache");
            }
            self.blame
                .error(
                    self.field,
                    "cannot load the kernel",
                    "give a Debian linux-image-* package or a matching vmlinuz and modules directory",
                )
                .caused_by(e)
                .into()
        })?;
        self.check_loaded(&k)?;
        Ok(k)
    }

    /// The unpacked kernel is the planned one: same architecture, same release.
    fn check_loaded(&self, k: &Kernel) -> Result<()> {
        check_machine(k.machine, self.arch, &k.vmlinuz, self.field, &self.blame)?;
        if k.release != self.release {
            return Err(self
                .blame
                .error(
                    self.field,
                    format!(
                        "the kernel's release is {}, but its package or directory name says {}",
                        k.release, self.release
                    ),
                    "give a linux-image-<release> package (or a lib/modules/<release> directory) whose name is its release",
                )
                .into());
        }
        Ok(())
    }

    /// The file the manifest names as the kernel's source.
    pub fn origin(&self) -> &Path {
        match &self.input {
            KernelInput::Deb(d) => d,
            KernelInput::Parts { vmlinuz, .. } => vmlinuz,
        }
    }

    /// True when the kernel comes from a package (the manifest names the .deb).
    pub fn is_deb(&self) -> bool {
        matches!(self.input, KernelInput::Deb(_))
    }
}
