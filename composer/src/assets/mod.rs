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
pub mod uki;

use crate::cache::{Cache, KeyBuilder, Outcome};
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
/// distinct module set), each image from the step `cache` when it holds it, reported to
/// `progress`.
pub fn make(
    plan: &Plan,
    kernel: &Kernel,
    work: &Path,
    cache: &Cache,
    progress: &dyn Sink,
) -> Result<Assets> {
    let step = Task::start(progress, "squashfs", None);
    let module_layer = layers::module_layer(&plan.extensions, kernel).map_err(|e| {
        Error::step(
            ErrorKind::InvalidInput,
            "making the extension modules' layer",
            e,
        )
        .with_hint("build the extension's modules for the image's kernel")
    })?;
    let available = layers::available_files(plan, work, cache, &step)?;
    let composed = layers::squash_all(
        plan,
        module_layer.as_ref(),
        &kernel.release,
        &available,
        work,
        cache,
        &step,
    )?;
    let files = layers::files_layer(plan, work, cache, &step)?;
    for c in &composed.conflicts {
        crate::progress::note(progress, &format!("flatten: conflict: {c}"));
    }
    let detail = format!(
        "root + {} layer(s){}{}",
        composed.layers.len(),
        if composed.flattened.is_empty() {
            String::new()
        } else {
            format!(
                ", {} extension(s) flattened into the root",
                composed.flattened.len()
            )
        },
        cached_note(cache, "squashfs")
    );
    step.finish(None, &detail);
    let step = Task::start(progress, "initramfs", None);
    let platforms = initramfs_per_platform(
        plan,
        kernel,
        &composed,
        module_layer.as_ref(),
        (work, cache, files),
        &step,
    )?;
    let made = platforms
        .iter()
        .map(|p| &p.initrd)
        .collect::<std::collections::BTreeSet<_>>();
    step.finish(
        None,
        &format!(
            "{} initramfs for {} platform(s){}",
            made.len(),
            platforms.len(),
            cached_note(cache, "initramfs")
        ),
    );
    Ok(Assets {
        composed,
        module_layer,
        platforms,
    })
}

/// `" (cached)"` when every `step` so far was a hit, `" (n of m cached)"` when some were.
fn cached_note(cache: &Cache, step: &str) -> String {
    let records = cache.records();
    let steps: Vec<_> = records.iter().filter(|r| r.step == step).collect();
    let hits = steps.iter().filter(|r| r.outcome == Outcome::Hit).count();
    match hits {
        0 => String::new(),
        n if n == steps.len() => " (cached)".into(),
        n => format!(" ({n} of {} cached)", steps.len()),
    }
}

/// Where the initramfs goes: (work directory, step cache, the `files:` layer).
type InitramfsPlace<'a> = (&'a Path, &'a Cache, Option<(String, PathBuf)>);

fn initramfs_per_platform(
    plan: &Plan,
    kernel: &Kernel,
    composed: &Composed,
    module_layer: Option<&ModuleLayer>,
    (work, cache, files_layer): InitramfsPlace<'_>,
    step: &Task<'_>,
) -> Result<Vec<PlatformAssets>> {
    let layer_files: Vec<(String, PathBuf)> = composed
        .layers
        .iter()
        .map(|l| (l.image.clone(), l.path.clone()))
        .collect();
    let ext_yaml = guest_files::layers_yaml(&composed.layers)?;
    let mut sysexts = guest_files::sysext_images(&plan.extensions, composed);
    sysexts.extend(files_layer);
    let mut files = guest_files::init_files(composed, &plan.disabled, module_layer);
    files.extend(guest_files::guest_json(plan.state, &plan.files.records));
    let mut made: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut out = Vec::new();
    for pp in &plan.platforms {
        let modules = crate::plan::modules::closure(plan, pp, kernel)?;
        remember_module_sums(kernel, &modules);
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
                let name = format!("initrd-{}.img", made.len());
                // Progress from outside: the bytes the file holds as it is written.
                let task = step.sub(&name, None);
                let made_now = cache.get_or_make(
                    "initramfs",
                    &name,
                    || initramfs_key(&contents),
                    &path,
                    |out| {
                        let stats = crate::progress::watch_file(&task, out, || {
                            initramfs::write(out, &contents)
                        })
                        .map_err(Error::io("writing the initramfs", out))?;
                        Ok([("stored", stats.stored), ("compressed", stats.compressed)]
                            .map(|(k, v)| (k.to_string(), v))
                            .into())
                    },
                )?;
                let figure = |k: &str| made_now.extra.get(k).copied().unwrap_or(0);
                task.end(
                    made_now.is_hit(),
                    Some(figure("stored") + figure("compressed")),
                    &format!(
                        "for {}: {} modules, {} stored + {} compressed",
                        pp.platform.name,
                        modules.len(),
                        human(figure("stored")),
                        human(figure("compressed")),
                    ),
                );
                made.push((names, made_now.path.clone()));
                made_now.path
            }
        };
        out.push(PlatformAssets { modules, initrd });
    }
    Ok(out)
}

/// Tells the hash memo the sha256 the kernel cache recorded for each module, so the
/// initramfs's key names the modules by content from the first build on: a module unpacked
/// moments ago would otherwise be keyed by its hash, and by its stat the next time (the
/// cache's racy-file rule), and the second build would make the initramfs again. A module
/// changed since it was unpacked is caught by [`Kernel::verify_shipped`] before any output.
fn remember_module_sums(kernel: &Kernel, modules: &[ModuleRef]) {
    for m in modules {
        let path = kernel.modules_dir.join(&m.rel_path);
        if let Some(sum) = kernel.sums.get(&path) {
            let same_size = std::fs::metadata(&path).is_ok_and(|meta| meta.len() == sum.size);
            if same_size {
                // Best effort: a file that cannot be examined is keyed the usual way.
                let _ = crate::io::hash::remember(&path, &sum.sha256);
            }
        }
    }
}

/// The initramfs's key: every file it holds (by [`crate::cache::key::file_identity`]: the
/// squashfs images by their cache digests), the small files' bytes, and its settings.
fn initramfs_key(c: &initramfs::Contents<'_>) -> Result<crate::cache::Key> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::step(ErrorKind::Io, format!("reading {}", p.display()), e)
    };
    let mut k = KeyBuilder::new("initramfs");
    k.file("init", c.init).map_err(io(c.init))?;
    k.str("release", c.release);
    for m in c.modules {
        let file = c.modules_dir.join(&m.rel_path);
        k.str("module", &m.name)
            .bytes("path", m.rel_path.as_os_str().as_encoded_bytes());
        k.file("module-file", &file).map_err(io(&file))?;
    }
    k.file("rootfs", c.rootfs).map_err(io(c.rootfs))?;
    for (label, list) in [("layer", c.layers), ("image", c.images)] {
        for (name, path) in list {
            k.str(label, name);
            k.file("file", path).map_err(io(path))?;
        }
    }
    for (name, bytes) in c.files {
        k.str("name", name).bytes("bytes", bytes);
    }
    k.str("extensions.yaml", c.extensions_yaml)
        .u64("mtime", u64::from(c.mtime))
        .debug("compression", &c.compression);
    Ok(k.finish())
}
