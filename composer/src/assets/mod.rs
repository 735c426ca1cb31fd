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
    /// The files Talos layers shadow, which the guest checks (`guest.json`).
    pub shadowed: Vec<crate::assets::layers::Shadowed>,
    /// The Talos extension services the guest starts, by name; empty unless
    /// `boot_test.services` is on.
    pub services: Vec<String>,
}

/// One platform's initramfs (platforms needing the same modules share one).
pub struct PlatformAssets {
    /// The module closure, load order.
    pub modules: Vec<ModuleRef>,
    /// The initramfs file.
    pub initrd: PathBuf,
}

/// Under Secure Boot, refuses extension modules the kernel would not load
/// (see [`crate::extension::modules::check_signatures`]).
fn check_module_signatures(plan: &Plan, kernel: &Kernel) -> Result<()> {
    use crate::extension::modules::{check_signatures, kernel_signers};
    let fail = |e| {
        Error::step(
            ErrorKind::InvalidInput,
            "checking the signatures of the extension modules",
            e,
        )
        .with_hint("sign the modules with the key the kernel's own modules are signed with, or drop them from the extension")
    };
    let trusted = kernel_signers(&kernel.index, &kernel.modules_dir).map_err(fail)?;
    let exts = plan.extensions.iter().chain(&plan.disabled);
    check_signatures(exts.map(|e| (e.name.as_str(), &e.tree)), &trusted).map_err(fail)
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
    if plan.signed_modules_only {
        check_module_signatures(plan, kernel)?;
    }
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
    let shadowed = shadowed(plan, module_layer.as_ref())?;
    let services = if plan.boot_services {
        layers::services(&plan.extensions)
    } else {
        Vec::new()
    };
    let platforms = initramfs_per_platform(
        plan,
        kernel,
        &composed,
        module_layer.as_ref(),
        &shadowed,
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
        shadowed,
        services,
    })
}

/// The files Talos layers shadow, for `guest.json` (none when flattened: no layers at boot).
fn shadowed(
    plan: &Plan,
    module_layer: Option<&ModuleLayer>,
) -> Result<Vec<crate::assets::layers::Shadowed>> {
    if plan.flatten {
        return Ok(Vec::new());
    }
    let mut above: Vec<&crate::fs::tree::Tree> = plan
        .extensions
        .iter()
        .filter(|e| e.kind != crate::extension::source::Kind::Talos)
        .map(|e| &e.tree)
        .collect();
    above.push(&plan.files.tree);
    above.extend(module_layer.map(|m| &m.tree));
    crate::assets::layers::shadowed(&plan.extensions, &above)
        .map_err(|e| Error::step(ErrorKind::Io, "reading the files Talos layers shadow", e))
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
    shadowed: &[crate::assets::layers::Shadowed],
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
    files.extend(guest_files::guest_json(
        plan.state,
        &plan.files.records,
        shadowed.to_vec(),
        plan.boot_services,
    ));
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
                let name = format!("initrd-{}.img", made.len());
                let boot = (work.join(format!("initrd-{}.boot", made.len())), cache);
                // Progress from outside: the bytes the file holds as it is written.
                let task = step.sub(&name, None);
                let made_now = cache.get_or_make(
                    "initramfs",
                    &name,
                    || initramfs_key(&contents),
                    &path,
                    |out| {
                        let boot = boot_part(&contents, &name, &boot)?;
                        let stats = crate::progress::watch_file(&task, out, || {
                            initramfs::write(out, &contents, &boot)
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

/// The initramfs's compressed segment ([`initramfs::write_boot`]) through the step cache
/// (`initramfs-boot`): made when the initramfs is, kept apart because it holds none of the
/// squashfs images, so a build that changed only an extension copies it instead of
/// compressing the modules again. `fallback`: where it goes (the cache off), and the cache.
fn boot_part(
    c: &initramfs::Contents<'_>,
    name: &str,
    (fallback, cache): &(PathBuf, &Cache),
) -> Result<PathBuf> {
    let made = cache.get_or_make(
        "initramfs-boot",
        &format!("{name} (compressed part)"),
        || boot_key(c),
        fallback,
        |out| {
            let size = initramfs::write_boot(out, c)
                .map_err(Error::io("writing the initramfs's compressed part", out))?;
            Ok([("compressed".to_string(), size)].into())
        },
    )?;
    Ok(made.path)
}

/// Turns an I/O error on `p` into a step error naming it.
fn io_error(p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let p = p.to_path_buf();
    move |e| Error::step(ErrorKind::Io, format!("reading {}", p.display()), e)
}

/// The initramfs's key: its compressed segment's key, and every file of its stored segment
/// (by [`crate::cache::key::file_identity`]: the squashfs images by their cache digests).
fn initramfs_key(c: &initramfs::Contents<'_>) -> Result<crate::cache::Key> {
    let io = io_error;
    let mut k = KeyBuilder::new("initramfs");
    k.key("boot", &boot_key(c)?);
    k.file("rootfs", c.rootfs).map_err(io(c.rootfs))?;
    for (label, list) in [("layer", c.layers), ("image", c.images)] {
        for (name, path) in list {
            k.str(label, name);
            k.file("file", path).map_err(io(path))?;
        }
    }
    k.str("extensions.yaml", c.extensions_yaml)
        .u64("mtime", u64::from(c.mtime));
    Ok(k.finish())
}

/// The compressed segment's key: the init, the kernel release, each module file, the small
/// files' bytes, the mtime and the compressor.
fn boot_key(c: &initramfs::Contents<'_>) -> Result<crate::cache::Key> {
    let io = io_error;
    let mut k = KeyBuilder::new("initramfs-boot");
    k.file("init", c.init).map_err(io(c.init))?;
    k.str("release", c.release);
    for m in c.modules {
        let file = c.modules_dir.join(&m.rel_path);
        k.str("module", &m.name)
            .bytes("path", m.rel_path.as_os_str().as_encoded_bytes());
        k.file("module-file", &file).map_err(io(&file))?;
    }
    for (name, bytes) in c.files {
        k.str("name", name).bytes("bytes", bytes);
    }
    k.u64("mtime", u64::from(c.mtime))
        .debug("compression", &c.compression);
    Ok(k.finish())
}
