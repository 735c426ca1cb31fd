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
    use crate::extension::modules::{check_signatures, kernel_signers, signer_sample};
    let fail = |e| {
        Error::step(
            ErrorKind::InvalidInput,
            "checking the signatures of the extension modules",
            e,
        )
        .with_hint("sign the modules with the key the kernel's own modules are signed with, or drop them from the extension")
    };
    kernel
        .unpack(signer_sample(&kernel.index))
        .map_err(|e| Error::step(ErrorKind::Io, "unpacking the kernel's modules", e))?;
    let trusted = kernel_signers(&kernel.index, &kernel.modules_dir).map_err(fail)?;
    let exts = plan.extensions.iter().chain(&plan.disabled);
    check_signatures(exts.map(|e| (e.name.as_str(), &e.tree)), &trusted).map_err(fail)
}

/// The initramfs work done before the images exist (layered builds): the files Talos layers
/// shadow, and for each platform its module closure and its compressed part.
struct Early {
    shadowed: Vec<crate::assets::layers::Shadowed>,
    boots: Vec<(Vec<ModuleRef>, PathBuf)>,
}

/// The assets steps, run alongside the `kernel` step: `squashfs` (the squashfs images), then
/// `initramfs` (one per distinct module set), each image from the step `cache` when it holds
/// it, reported to `progress`.
///
/// `load_kernel` (the kernel step) runs on its own thread while the images that do not need
/// the kernel are written (the root, the Talos layers, the DDI images, the `files:` layer);
/// that thread then checks the extension modules' signatures and makes the module layer, and
/// for a layered build one more thread makes each platform's module closure and initramfs
/// compressed part (`initramfs/<name> (compressed part)` sub-steps), still while the images
/// are written. The module layer's image (or, flattened, the one root, which holds
/// everything) is written when the kernel is there. Errors are reported as a one-thread build
/// met them: a kernel, module or signature error first, then the images', then the
/// initramfs's; a failure on either side stops the other from starting more work.
pub fn make(
    plan: &Plan,
    load_kernel: impl FnOnce() -> Result<Kernel> + Send,
    work: &Path,
    cache: &Cache,
    progress: &dyn Sink,
) -> Result<(Kernel, Assets)> {
    let kernel_cell = std::sync::OnceLock::new();
    let layer_cell = std::sync::OnceLock::new();
    let halt = layers::Halt::new(false);
    let (kernel, layer, halt) = (&kernel_cell, &layer_cell, &halt);
    let stop = || halt.store(true, std::sync::atomic::Ordering::SeqCst);
    let step = Task::start(progress, "squashfs", None);
    let made = std::thread::scope(|s| {
        let kernel_side = s.spawn(move || {
            let (k, m) = match kernel_side(plan, load_kernel) {
                Ok((k, m)) => (kernel.get_or_init(|| k), layer.get_or_init(|| m)),
                Err(e) => {
                    stop();
                    return Err(e);
                }
            };
            if plan.flatten || halt.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok((k, m, None));
            }
            let early = s.spawn(move || {
                let r = early_initramfs(plan, k, m.as_ref(), work, cache, progress);
                if r.is_err() {
                    stop();
                }
                r
            });
            Ok((k, m, Some(early)))
        });
        let images = images_without_kernel(plan, work, cache, &step, halt);
        if images.is_err() {
            stop();
        }
        let joined = kernel_side.join();
        let (kernel, module_layer, early) =
            joined.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Early>>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        let Some(images) = images? else {
            // Stopped by the initramfs's early part, which failed: its error is reported.
            let failed = early.map(join).and_then(Result::err);
            return Err(failed.unwrap_or_else(|| {
                Error::step(
                    ErrorKind::Io,
                    "writing the squashfs images",
                    "stopped, yet no other step failed",
                )
            }));
        };
        let composed = with_kernel_images(
            plan,
            images,
            (kernel, module_layer.as_ref()),
            (work, cache),
            &step,
        )?;
        for c in &composed.0.conflicts {
            crate::progress::note(progress, &format!("flatten: conflict: {c}"));
        }
        step.finish(None, &squashfs_detail(&composed.0, cache));
        let step = Task::start(progress, "initramfs", None);
        let early = early.map(join);
        let assets = initramfs_step(
            plan,
            kernel,
            composed,
            (module_layer, early.transpose()?),
            (work, cache),
            &step,
        )?;
        step.finish(None, &initramfs_detail(&assets, cache));
        release_images(&assets.composed);
        Ok::<_, Error>(assets)
    })?;
    let (Some(kernel), Some(module_layer)) = (kernel_cell.into_inner(), layer_cell.into_inner())
    else {
        return Err(Error::step(
            ErrorKind::Io,
            "loading the kernel",
            "the kernel's thread left no kernel",
        ));
    };
    Ok((
        kernel,
        Assets {
            module_layer,
            ..made
        },
    ))
}

/// Hands back the page cache of the squashfs images: every initramfs holds them now, and
/// nothing else reads them (see [`crate::io::pages`]).
fn release_images(c: &Composed) {
    let mut paths = vec![c.rootfs.clone()];
    paths.extend(c.layers.iter().map(|l| l.path.clone()));
    paths.extend(c.ddi_images.iter().map(|(_, _, p)| p.clone()));
    crate::io::pages::release(&paths);
}

/// The kernel's thread (see [`make`]): the kernel, the signature check, the module layer.
fn kernel_side(
    plan: &Plan,
    load_kernel: impl FnOnce() -> Result<Kernel>,
) -> Result<(Kernel, Option<ModuleLayer>)> {
    let kernel = load_kernel()?;
    if plan.signed_modules_only {
        check_module_signatures(plan, &kernel)?;
    }
    let module_layer = layers::module_layer(&plan.extensions, &kernel).map_err(|e| {
        Error::step(
            ErrorKind::InvalidInput,
            "making the extension modules' layer",
            e,
        )
        .with_hint("build the extension's modules for the image's kernel")
    })?;
    Ok((kernel, module_layer))
}

/// The images that need the kernel, once the others are written: the module layer's (layered)
/// or the one root and then the `files:` layer (flattened). Returns the composed images and
/// the `files:` layer.
fn with_kernel_images(
    plan: &Plan,
    (available, composed, files): Images,
    (kernel, module_layer): (&Kernel, Option<&ModuleLayer>),
    (work, cache): (&Path, &Cache),
    step: &Task<'_>,
) -> Result<(Composed, Option<(String, PathBuf)>)> {
    match composed {
        Some(mut composed) => {
            if let Some(m) = module_layer {
                let place = (plan, work, cache);
                layers::add_module_layer(&mut composed, m, &kernel.release, place, step)?;
            }
            Ok((composed, files))
        }
        None => {
            let composed =
                layers::squash_flattened(plan, module_layer, &available, work, cache, step)?;
            Ok((composed, layers::files_layer(plan, work, cache, step)?))
        }
    }
}

/// The squashfs step's line: the images and how many came from the cache.
fn squashfs_detail(composed: &Composed, cache: &Cache) -> String {
    format!(
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
    )
}

/// The initramfs step's line.
fn initramfs_detail(assets: &Assets, cache: &Cache) -> String {
    let made = assets
        .platforms
        .iter()
        .map(|p| &p.initrd)
        .collect::<std::collections::BTreeSet<_>>();
    format!(
        "{} initramfs for {} platform(s){}",
        made.len(),
        assets.platforms.len(),
        cached_note(cache, "initramfs")
    )
}

/// The initramfs step after the images: the early part when it was made (else the files
/// Talos layers shadow and the closures now), then each initramfs. The module layer is
/// left out of the result (the caller owns it).
fn initramfs_step(
    plan: &Plan,
    kernel: &Kernel,
    (composed, files): (Composed, Option<(String, PathBuf)>),
    (module_layer, early): (&Option<ModuleLayer>, Option<Early>),
    (work, cache): (&Path, &Cache),
    step: &Task<'_>,
) -> Result<Assets> {
    let (shadowed, boots) = match early {
        Some(Early { shadowed, boots }) => (shadowed, Some(boots)),
        None => (shadowed(plan, module_layer.as_ref())?, None),
    };
    let services = if plan.boot_services {
        layers::services(&plan.extensions)
    } else {
        Vec::new()
    };
    let platforms = initramfs_per_platform(
        plan,
        kernel,
        &composed,
        (module_layer.as_ref(), boots),
        &shadowed,
        (work, cache, files),
        step,
    )?;
    Ok(Assets {
        composed,
        module_layer: None,
        platforms,
        shadowed,
        services,
    })
}

/// What the images thread made: the images of `enabled: false` extensions, the layered
/// build's images (none when flattening: the root needs the kernel's module layer), and the
/// `files:` layer (made later when flattening, after the root, as a one-thread build did).
type Images = (
    Vec<(String, PathBuf)>,
    Option<Composed>,
    Option<(String, PathBuf)>,
);

/// The images that do not need the kernel (see [`make`]); none is started once `halt` is set,
/// and then the result is `None`: the thread that set it failed and reports its error.
fn images_without_kernel(
    plan: &Plan,
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
    halt: &layers::Halt,
) -> Result<Option<Images>> {
    let available = layers::available_files(plan, work, cache, step)?;
    if plan.flatten {
        return Ok(Some((available, None, None)));
    }
    let Some(composed) = layers::squash_layered(plan, &available, work, cache, step, halt)? else {
        return Ok(None);
    };
    if halt.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    let files = layers::files_layer(plan, work, cache, step)?;
    Ok(Some((available, Some(composed), files)))
}

/// The initramfs work of a layered build that needs no image (see [`Early`]): its small files
/// do not name the images, so its compressed part is made while the images are written.
fn early_initramfs(
    plan: &Plan,
    kernel: &Kernel,
    module_layer: Option<&ModuleLayer>,
    work: &Path,
    cache: &Cache,
    progress: &dyn Sink,
) -> Result<Early> {
    let shadowed = shadowed(plan, module_layer)?;
    let files = small_files(plan, &[], module_layer, &shadowed);
    let mut made: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut boots = Vec::new();
    for pp in &plan.platforms {
        let modules = crate::plan::modules::closure(plan, pp, kernel)?;
        let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
        let boot = match made.iter().find(|(n, _)| *n == names) {
            Some((_, path)) => path.clone(),
            None => {
                let name = format!("initrd-{}.img", made.len());
                let contents = boot_contents(plan, kernel, &modules, &files);
                let task = Task::start(
                    progress,
                    format!("initramfs/{name} (compressed part)"),
                    None,
                );
                let fallback = (work.join(format!("initrd-{}.boot", made.len())), cache);
                let made_now = boot_part(&contents, &name, &fallback)?;
                let size = made_now.extra.get("compressed").copied();
                let detail = format!("for {}: {} modules", pp.platform.name, modules.len());
                task.end(made_now.is_hit(), size, &detail);
                let path = made_now.path;
                made.push((names, path.clone()));
                path
            }
        };
        boots.push((modules, boot));
    }
    Ok(Early { shadowed, boots })
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

/// The initramfs's contents that its compressed part reads (the stored segment's fields are
/// left empty: [`initramfs::write_boot`] and [`boot_key`] do not read them).
fn boot_contents<'a>(
    plan: &'a Plan,
    kernel: &'a Kernel,
    modules: &'a [ModuleRef],
    files: &'a [(String, Vec<u8>)],
) -> initramfs::Contents<'a> {
    initramfs::Contents {
        init: &plan.init,
        release: &kernel.release,
        modules_dir: &kernel.modules_dir,
        modules,
        rootfs: Path::new(""),
        layers: &[],
        images: &[],
        files,
        extensions_yaml: "",
        mtime: u32::try_from(plan.epoch).unwrap_or(u32::MAX),
        compression: plan.initramfs_compression,
    }
}

/// The small files the init reads (`modules.check`, `extensions.json`, `guest.json`).
fn small_files(
    plan: &Plan,
    flattened: &[crate::assets::layers::Flattened],
    module_layer: Option<&ModuleLayer>,
    shadowed: &[crate::assets::layers::Shadowed],
) -> Vec<(String, Vec<u8>)> {
    let mut files = guest_files::init_files(flattened, &plan.disabled, module_layer);
    files.extend(guest_files::guest_json(
        plan.state,
        &plan.files.records,
        shadowed.to_vec(),
        plan.boot_services,
    ));
    files
}

/// The module layer, and each platform's module closure and compressed part when they were
/// made early (see [`Early`]).
type ModulesPlace<'a> = (
    Option<&'a ModuleLayer>,
    Option<Vec<(Vec<ModuleRef>, PathBuf)>>,
);

fn initramfs_per_platform(
    plan: &Plan,
    kernel: &Kernel,
    composed: &Composed,
    (module_layer, boots): ModulesPlace<'_>,
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
    let files = small_files(plan, &composed.flattened, module_layer, shadowed);
    let mut boots = boots.map(Vec::into_iter);
    let mut made: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut out = Vec::new();
    for pp in &plan.platforms {
        let (modules, early_boot) = match boots.as_mut().and_then(Iterator::next) {
            Some((modules, boot)) => (modules, Some(boot)),
            None => (crate::plan::modules::closure(plan, pp, kernel)?, None),
        };
        let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
        let initrd = match made.iter().find(|(n, _)| *n == names) {
            Some((_, path)) => path.clone(),
            None => {
                let path = work.join(format!("initrd-{}.img", made.len()));
                let contents = initramfs::Contents {
                    rootfs: &composed.rootfs,
                    layers: &layer_files,
                    images: &sysexts,
                    extensions_yaml: &ext_yaml,
                    ..boot_contents(plan, kernel, &modules, &files)
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
                        let boot = match early_boot {
                            Some(made) => made,
                            None => boot_part(&contents, &name, &boot)?.path,
                        };
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
) -> Result<crate::cache::Product> {
    cache.get_or_make(
        "initramfs-boot",
        &format!("{name} (compressed part)"),
        || boot_key(c),
        fallback,
        |out| {
            let size = initramfs::write_boot(out, c)
                .map_err(Error::io("writing the initramfs's compressed part", out))?;
            Ok([("compressed".to_string(), size)].into())
        },
    )
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
/// files' bytes, the mtime and the compressor's settings.
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
        .debug("compression", &initramfs::compression(c.compression, 1));
    Ok(k.finish())
}
