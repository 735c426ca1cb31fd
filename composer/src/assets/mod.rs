//! Boot assets made from the plan and the unpacked kernel: the squashfs
//! [`layers`] of the root and the extensions, the files the guest reads
//! ([`guest_files`]), the [`initramfs`] that carries them, and the [`esp`]
//! contents (bootloader, kernel, BLS entry).
//!
//! [`make`] is the build's assets step. Everything it writes goes to the
//! build's work directory under the cache; nothing here reads the profile.

pub mod esp;
pub mod guest_files;
pub mod initramfs;
pub mod layers;

use crate::error::{Error, ErrorKind, Result};
use crate::kmod::ModuleRef;
use crate::plan::Plan;
use crate::profile::units::human;
use crate::progress::{Sink, Task};
use crate::source::kernel::Kernel;
use layers::{Composed, ModuleLayer};
use std::path::{Path, PathBuf};

/// What the assets step made.
pub struct Assets {
    /// The root squashfs and the layers.
    pub composed: Composed,
    /// The extension modules' layer, when extensions ship modules.
    pub module_layer: Option<ModuleLayer>,
    /// One entry per platform of the plan, in its order.
    pub platforms: Vec<PlatformAssets>,
}

/// One platform's initramfs (platforms needing the same modules share one).
pub struct PlatformAssets {
    /// The module closure, load order.
    pub modules: Vec<ModuleRef>,
    /// The initramfs file.
    pub initrd: PathBuf,
}

/// The assets steps: `squashfs` (module layer, squashfs images), then `initramfs` (one per
/// distinct module set), reported to `progress`.
pub fn make(plan: &Plan, kernel: &Kernel, work: &Path, progress: &dyn Sink) -> Result<Assets> {
    let step = Task::start(progress, "squashfs", None);
    let module_layer = layers::module_layer(&plan.extensions, kernel).map_err(|e| {
        Error::step(
            ErrorKind::InvalidInput,
            "making the extension modules' layer",
            e,
        )
        .with_hint("build the extension's modules for the image's kernel")
    })?;
    let available = layers::available_files(plan, work, &step)?;
    let composed = layers::squash_all(
        plan,
        module_layer.as_ref(),
        &kernel.release,
        &available,
        work,
        &step,
    )?;
    for c in &composed.conflicts {
        crate::progress::note(progress, &format!("flatten: conflict: {c}"));
    }
    let detail = format!(
        "root + {} layer(s){}",
        composed.layers.len(),
        if composed.flattened.is_empty() {
            String::new()
        } else {
            format!(
                ", {} extension(s) flattened into the root",
                composed.flattened.len()
            )
        }
    );
    step.finish(None, &detail);
    let step = Task::start(progress, "initramfs", None);
    let platforms =
        initramfs_per_platform(plan, kernel, &composed, module_layer.as_ref(), work, &step)?;
    let made = platforms
        .iter()
        .map(|p| &p.initrd)
        .collect::<std::collections::BTreeSet<_>>();
    step.finish(
        None,
        &format!(
            "{} initramfs for {} platform(s)",
            made.len(),
            platforms.len()
        ),
    );
    Ok(Assets {
        composed,
        module_layer,
        platforms,
    })
}

fn initramfs_per_platform(
    plan: &Plan,
    kernel: &Kernel,
    composed: &Composed,
    module_layer: Option<&ModuleLayer>,
    work: &Path,
    step: &Task<'_>,
) -> Result<Vec<PlatformAssets>> {
    let layer_files: Vec<(String, PathBuf)> = composed
        .layers
        .iter()
        .map(|l| (l.image.clone(), l.path.clone()))
        .collect();
    let ext_yaml = guest_files::layers_yaml(&composed.layers)?;
    let mut sysexts = guest_files::sysext_images(&plan.extensions, composed);
    sysexts.extend(layers::files_layer(plan, work, step)?);
    let mut files = guest_files::init_files(composed, &plan.disabled, module_layer);
    files.extend(guest_files::guest_json(plan.state, &plan.files.records));
    let mut made: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut out = Vec::new();
    for pp in &plan.platforms {
        let modules = crate::plan::modules::closure(plan, pp, kernel)?;
        let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
        let initrd = match made.iter().find(|(n, _)| *n == names) {
            Some((_, path)) => path.clone(),
            None => {
                let path = work.join(format!("initrd-{}.img", made.len()));
                let contents = initramfs::Contents {
                    init: &plan.init,
                    release: &kernel.release,
                    modules_dir: &kernel.modules_dir,
                    modules: &modules,
                    rootfs: &composed.rootfs,
                    layers: &layer_files,
                    images: &sysexts,
                    files: &files,
                    extensions_yaml: &ext_yaml,
                    mtime: u32::try_from(plan.epoch).unwrap_or(u32::MAX),
                    compression: plan.initramfs_compression,
                };
                // Progress from outside: the bytes the file holds as it is written.
                let task = step.sub(&format!("initrd-{}.img", made.len()), None);
                let stats = crate::progress::watch_file(&task, &path, || {
                    initramfs::write(&path, &contents)
                })
                .map_err(Error::io("writing the initramfs", &path))?;
                task.finish(
                    Some(stats.stored + stats.compressed),
                    &format!(
                        "for {}: {} modules, {} stored + {} compressed",
                        pp.platform.name,
                        modules.len(),
                        human(stats.stored),
                        human(stats.compressed)
                    ),
                );
                made.push((names, path.clone()));
                path
            }
        };
        out.push(PlatformAssets { modules, initrd });
    }
    Ok(out)
}
