//! One build, from profile to artefacts, in numbered steps:
//!
//! 1. read the profile and its platform; check every input exists and is
//!    for the right architecture (nothing is written before this passes);
//! 2. kernel: unpack the .deb into the cache (once), resolve the module closure;
//! 3. squashfs images of the root and of each extension (in parallel);
//! 4. the initramfs (stored segment + compressed segment);
//! 5. the ESP contents and the disk layout (a fixed ESP size that is too
//!    small fails here, before the output directory is touched);
//! 6. the disk image, written to a temporary file in the output directory
//!    and renamed into place only when complete;
//! 7. `manifest.json`.
//!
//! Intermediate files live in a temporary directory under the cache and
//! vanish with it, whatever happens.

use crate::arch::Arch;
use crate::assets::esp;
use crate::assets::initramfs;
use crate::disk;
use crate::error::{Error, Result};
use crate::extension;
use crate::extension::source::{self, Resolved};
use crate::format::output;
use crate::format::{self, Format, OutputKind};
use crate::fs::squashfs::{self, SquashCompression, SquashOptions};
use crate::fs::tree::{Entry, EntryKind, FileData, Tree};
use crate::kmod::ModuleRef;
use crate::manifest::{self, Manifest};
use crate::plan::binaries;
use crate::profile::platform::{self, PartitionKind, Platform};
use crate::profile::units::Size;
use crate::profile::ExtensionSpec;
use crate::profile::{self, LoadedProfile, SquashCompressor};
use crate::source::kernel::{self, Kernel};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Modules every initramfs carries: disk and CD controllers of the platforms
/// strata targets, and the filesystems the init mounts.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "ahci",
    "sd_mod",
    "sr_mod",
    "cdrom",
    "isofs",
    "loop",
    "squashfs",
    "erofs",
    "overlay",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// What `strata build` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The profile file.
    pub profile: PathBuf,
    /// Output directory; `out/<name>` when absent.
    pub out_dir: Option<PathBuf>,
    /// Cache root; `$XDG_CACHE_HOME/strata` when absent.
    pub cache_dir: Option<PathBuf>,
    /// Overrides the profile's `arch`.
    pub arch: Option<Arch>,
    /// Overrides where the guest init comes from.
    pub init: Option<PathBuf>,
    /// Build from the cache alone: no registry is contacted.
    pub offline: bool,
    /// SOURCE_DATE_EPOCH, when set: wins over the profile's `epoch`.
    pub source_date_epoch: Option<u64>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The output directory.
    pub out_dir: PathBuf,
    /// The manifest written there.
    pub manifest: Manifest,
    /// Wall time of each step.
    pub steps: Vec<(&'static str, Duration)>,
}

/// The default cache root: `$XDG_CACHE_HOME/strata`, else `~/.cache/strata`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("strata");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("strata")
}

/// Everything a build reads, resolved and checked.
struct Inputs {
    lp: LoadedProfile,
    /// Each platform with the outputs it gets.
    platforms: Vec<(Platform, Vec<OutputKind>)>,
    kernel_deb: Option<PathBuf>,
    kernel_parts: Option<(PathBuf, PathBuf)>,
    rootfs: RootSource,
    extensions: Vec<Resolved>,
    /// Extensions with `enabled: false`: shipped, not activated.
    disabled: Vec<Resolved>,
    /// Holds unpacked extension contents until the build ends.
    _ext_scratch: tempfile::TempDir,
    bootloader: PathBuf,
    init: PathBuf,
    epoch: u64,
    seed: Vec<u8>,
}

enum RootSource {
    Dir(PathBuf),
    Tar(PathBuf),
    Squashfs(PathBuf),
}

/// One platform's share of a build, planned before anything is written.
struct PlatformPlan {
    platform: Platform,
    outputs: Vec<OutputKind>,
    modules: Vec<ModuleRef>,
    cmdline: String,
    esp_files: Vec<crate::fs::fat::FatFile>,
    layout: disk::Layout,
}

/// Runs a whole build. `progress` receives one line per step.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<BuildReport> {
    let mut steps = Vec::new();
    let timed = |name: &'static str, t: Instant, steps: &mut Vec<(&'static str, Duration)>| {
        steps.push((name, t.elapsed()))
    };

    let t = Instant::now();
    let inputs = resolve_inputs(opts, progress)?;
    let arch = inputs.lp.profile.arch;
    let name = inputs.lp.profile.name.clone();
    let platform_names: Vec<&str> = inputs
        .platforms
        .iter()
        .map(|(p, _)| p.name.as_str())
        .collect();
    progress(&format!(
        "[1/7] profile {} ({arch}, platform {})",
        inputs.lp.path.display(),
        platform_names.join(", ")
    ));
    timed("inputs", t, &mut steps);

    let cache = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let t = Instant::now();
    let kernel = load_kernel(&inputs, &cache)?;
    progress(&format!("[2/7] kernel {}", kernel.release));
    timed("kernel", t, &mut steps);

    std::fs::create_dir_all(cache.join("tmp")).map_err(Error::io("creating", cache.join("tmp")))?;
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(cache.join("tmp"))
        .map_err(Error::io("creating a work directory in", &cache))?;

    let module_layer =
        crate::assets::layers::module_layer(&inputs.extensions, &kernel).map_err(|m| -> Error {
            inputs
                .lp
                .error(
                    "extensions",
                    m,
                    "build the extension's modules for the image's kernel",
                )
                .into()
        })?;
    let t = Instant::now();
    let composed = squash_all(
        &inputs,
        module_layer.as_ref(),
        &kernel.release,
        work.path(),
        progress,
    )?;
    let rootfs_sqsh = composed.rootfs.clone();
    let layers: Vec<(String, PathBuf)> = composed
        .layers
        .iter()
        .map(|l| (l.image.clone(), l.path.clone()))
        .collect();
    progress(&format!(
        "[3/7] squashfs: root + {} layer(s){}",
        layers.len(),
        if composed.flattened.is_empty() {
            String::new()
        } else {
            format!(
                ", {} extension(s) flattened into the root",
                composed.flattened.len()
            )
        }
    ));
    timed("squashfs", t, &mut steps);

    // Steps 4-5 for every platform before anything is written: a platform
    // whose ESP does not fit must fail before another platform's outputs land.
    let t = Instant::now();
    let ext_yaml = extensions_yaml(&composed.layers)?;
    let sysexts = sysext_images(&inputs.extensions, &composed);
    let extra_files = init_files(&composed, &inputs.disabled, module_layer.as_ref())?;
    let mut initrds: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut plans = Vec::new();
    for (platform, outputs) in &inputs.platforms {
        let modules = module_closure(&inputs.lp, platform, &kernel)?;
        let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
        // Platforms that need the same modules share one initramfs.
        let initrd = match initrds.iter().find(|(n, _)| *n == names) {
            Some((_, path)) => path.clone(),
            None => {
                let path = work.path().join(format!("initrd-{}.img", initrds.len()));
                let contents = initramfs::Contents {
                    init: &inputs.init,
                    release: &kernel.release,
                    modules_dir: &kernel.modules_dir,
                    modules: &modules,
                    rootfs: &rootfs_sqsh,
                    layers: &layers,
                    images: &sysexts,
                    files: &extra_files,
                    extensions_yaml: &ext_yaml,
                    mtime: u32::try_from(inputs.epoch).unwrap_or(u32::MAX),
                    compression: inputs.lp.profile.initramfs.compression,
                };
                let stats = initramfs::write(&path, &contents)
                    .map_err(Error::io("writing the initramfs", &path))?;
                progress(&format!(
                    "[4/7] initramfs for {}: {} modules, {} stored + {} compressed",
                    platform.name,
                    modules.len(),
                    crate::profile::units::human(stats.stored),
                    crate::profile::units::human(stats.compressed)
                ));
                initrds.push((names, path.clone()));
                path
            }
        };
        plans.push(plan_platform(
            &inputs, &kernel, platform, outputs, modules, &initrd,
        )?);
    }
    for plan in &plans {
        progress(&format!(
            "[5/7] {}: disk {} (ESP {}), outputs {}",
            plan.platform.name,
            crate::profile::units::human(plan.layout.size),
            crate::profile::units::human(
                plan.layout
                    .partitions
                    .iter()
                    .find(|p| p.kind == PartitionKind::Esp)
                    .map(|p| p.size)
                    .unwrap_or(0)
            ),
            plan.outputs
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    timed("initramfs+layout", t, &mut steps);

    // Step 6: disks and their conversions, all into temporary files.
    let t = Instant::now();
    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(&name));
    let mut out = OutDir::open(&out_dir)?;
    let mut pending = Vec::new();
    for plan in &plans {
        pending.push(write_platform(&inputs, plan, &mut out, work.path())?);
    }
    // Every output exists: rename them all into place.
    let mut manifest = Manifest::read(&out_dir).ok();
    for (plan, files) in plans.iter().zip(pending) {
        let mut finals: Vec<(OutputKind, PathBuf)> = Vec::new();
        for (kind, file_name, tmp) in files {
            let path = out_dir.join(&file_name);
            tmp.persist(&path)
                .map_err(|e| Error::io("renaming into place", &path)(e.error))?;
            progress(&format!("[6/7] wrote {}", path.display()));
            finals.push((kind, path));
        }
        let mut this_build = make_build(&inputs, plan, &kernel, (&rootfs_sqsh, &layers), &finals)?;
        this_build.extensions = extension_entries(&inputs.extensions, &composed);
        this_build
            .extensions
            .extend(disabled_entries(&inputs.disabled));
        this_build.ext_modules = module_layer
            .as_ref()
            .map(|m| m.names.clone())
            .unwrap_or_default();
        manifest = Some(Manifest::merge(manifest, &name, this_build));
    }
    timed("outputs", t, &mut steps);

    let t = Instant::now();
    let manifest = manifest.ok_or_else(|| Error::step("manifest", "no platform was built"))?;
    let mtmp = out.temp_file()?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::step("manifest", e))?;
    std::fs::write(mtmp.path(), [json.as_slice(), b"\n"].concat())
        .map_err(Error::io("writing", mtmp.path()))?;
    let mpath = out_dir.join(manifest::FILE_NAME);
    mtmp.persist(&mpath)
        .map_err(|e| Error::io("renaming into place", &mpath)(e.error))?;
    progress(&format!("[7/7] wrote {}", mpath.display()));
    timed("manifest", t, &mut steps);
    out.keep();
    Ok(BuildReport {
        out_dir,
        manifest,
        steps,
    })
}

/// Steps 4-5 for one platform: command line, ESP contents and size, layout.
fn plan_platform(
    inputs: &Inputs,
    kernel: &Kernel,
    platform: &Platform,
    outputs: &[OutputKind],
    modules: Vec<ModuleRef>,
    initrd: &Path,
) -> Result<PlatformPlan> {
    let arch = inputs.lp.profile.arch;
    let name = &inputs.lp.profile.name;
    let cmdline = kernel_cmdline(&inputs.lp, platform);
    let entry = esp::BootEntry {
        id: format!("strata-{name}"),
        title: format!(
            "{} {} ({name})",
            inputs.lp.profile.os.id, inputs.lp.profile.os.version
        ),
        version: kernel.release.clone(),
        cmdline: cmdline.clone(),
    };
    let esp_files = esp::files(arch, &inputs.bootloader, &kernel.vmlinuz, initrd, &entry);
    let requested_esp = inputs
        .lp
        .profile
        .disk
        .map(|d| d.esp_size)
        .unwrap_or_default();
    let esp_size = esp::size(&esp_files, requested_esp).map_err(|e| match e {
        esp::EspError::TooSmall { .. } => inputs
            .lp
            .error(
                "disk.esp_size",
                e.to_string(),
                "remove `esp_size` (auto) or raise it to at least the size named",
            )
            .into(),
        other => Error::step("ESP", other),
    })?;
    let layout = plan_disk(inputs, platform, esp_size)?;
    Ok(PlatformPlan {
        platform: platform.clone(),
        outputs: outputs.to_vec(),
        modules,
        cmdline,
        esp_files,
        layout,
    })
}

/// Step 6 for one platform: the raw disk, then every conversion of it, each
/// in a temporary file of the output directory.
fn write_platform(
    inputs: &Inputs,
    plan: &PlatformPlan,
    out: &mut OutDir,
    work: &Path,
) -> Result<Vec<(OutputKind, String, tempfile::NamedTempFile)>> {
    let arch = inputs.lp.profile.arch;
    let raw_tmp = out.temp_file()?;
    write_disk(
        raw_tmp.path(),
        &plan.layout,
        &plan.esp_files,
        &esp::fat_options(&inputs.seed, inputs.epoch),
    )?;
    let esp_part = plan
        .layout
        .partitions
        .iter()
        .find(|p| p.kind == PartitionKind::Esp)
        .ok_or_else(|| Error::step("disk", "the layout has no EFI system partition"))?;
    let converted: Vec<OutputKind> = plan
        .outputs
        .iter()
        .copied()
        .filter(|k| !is_plain_raw(k))
        .collect();
    let ctx = output::Context {
        raw: raw_tmp.path(),
        esp: (esp_part.offset, esp_part.size),
        guids: (plan.layout.guid, esp_part.guid),
        arch,
        name: &inputs.lp.profile.name,
        platform: &plan.platform.name,
        epoch: inputs.epoch,
        seed: &inputs.seed,
        work,
        out_dir: &out.path,
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut files: Vec<(OutputKind, String, tempfile::NamedTempFile)> =
        output::write_all(&ctx, &converted, workers)?
            .into_iter()
            .map(|w| (w.kind, w.file_name, w.tmp))
            .collect();
    if let Some(raw_kind) = plan.outputs.iter().find(|k| is_plain_raw(k)) {
        files.insert(
            0,
            (
                *raw_kind,
                raw_kind.file_name(&plan.platform.name, arch.debian()),
                raw_tmp,
            ),
        );
    }
    Ok(files)
}

/// Step 1: everything is read and checked here, before any write.
fn resolve_inputs(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<Inputs> {
    let lp = profile::load(&opts.profile, opts.arch)?;
    let platforms = platform::for_profile(&lp)?;
    let p = &lp.profile;
    let deb_hint = "download it with `make kernel` (apt-get download linux-image-<arch>'s linux-image-* dependency)";
    let kernel_deb = p
        .kernel
        .deb
        .as_deref()
        .map(|d| lp.existing("kernel.deb", d, false, deb_hint))
        .transpose()?;
    let kernel_parts = match (&p.kernel.vmlinuz, &p.kernel.modules_dir) {
        (Some(v), Some(m)) => Some((
            lp.existing(
                "kernel.vmlinuz",
                v,
                false,
                "give the path of a kernel image",
            )?,
            lp.existing(
                "kernel.modules_dir",
                m,
                true,
                "give the kernel's lib/modules/<release> directory",
            )?,
        )),
        _ => None,
    };
    let r = &p.rootfs;
    let root_hint = "build it with `make rootfs`, or fix the path";
    let rootfs = match (&r.dir, &r.tar, &r.squashfs) {
        (Some(d), _, _) => RootSource::Dir(lp.existing("rootfs.dir", d, true, root_hint)?),
        (_, Some(t), _) => RootSource::Tar(lp.existing("rootfs.tar", t, false, root_hint)?),
        (_, _, Some(s)) => {
            RootSource::Squashfs(lp.existing("rootfs.squashfs", s, false, root_hint)?)
        }
        _ => {
            return Err(lp
                .error(
                    "rootfs",
                    "no root filesystem given",
                    "add `dir`, `tar` or `squashfs`",
                )
                .into())
        }
    };
    let cache_root = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    std::fs::create_dir_all(cache_root.join("tmp"))
        .map_err(Error::io("creating", cache_root.join("tmp")))?;
    let ext_scratch = tempfile::Builder::new()
        .prefix("ext-")
        .tempdir_in(cache_root.join("tmp"))
        .map_err(Error::io("creating a work directory in", &cache_root))?;
    let (extensions, disabled): (Vec<Resolved>, Vec<Resolved>) =
        read_extensions(&lp, opts, &rootfs, ext_scratch.path(), progress)?
            .into_iter()
            .partition(|e| e.enabled);
    let platforms = platforms
        .into_iter()
        .map(|pf| parse_outputs(&lp, &pf).map(|o| (pf, o)))
        .collect::<Result<Vec<_>>>()?;
    let bootloader =
        binaries::find_bootloader(p.arch, p.bootloader.as_deref().map(|b| lp.resolve(b)))?;
    let init = binaries::find_init(
        p.arch,
        opts.init
            .clone()
            .or_else(|| p.init.as_deref().map(|i| lp.resolve(i))),
    )?;
    binaries::check_init(&init, p.arch)?;
    let epoch = opts.source_date_epoch.or(p.epoch).unwrap_or(0);
    let seed = Sha256::new()
        .chain_update(lp.source.as_bytes())
        .chain_update(p.arch.debian())
        .finalize()
        .to_vec();
    Ok(Inputs {
        lp,
        platforms,
        kernel_deb,
        kernel_parts,
        rootfs,
        extensions,
        disabled,
        _ext_scratch: ext_scratch,
        bootloader,
        init,
        epoch,
        seed,
    })
}

/// Reads every extension from its source and validates it; the findings are
/// printed, and any error stops the build before anything is written.
fn read_extensions(
    lp: &LoadedProfile,
    opts: &BuildOptions,
    rootfs: &RootSource,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Resolved>> {
    let p = &lp.profile;
    let cache_root = opts.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let cache = crate::source::oci::Cache::new(&cache_root);
    let pull = crate::source::oci::PullOptions {
        insecure_registries: p.registries.insecure.clone(),
        offline: opts.offline,
        ..Default::default()
    };
    let host = host_release(rootfs, p.arch, scratch);
    let env = source::Env {
        arch: p.arch.debian(),
        os_version: &p.os.version,
        host: host.as_ref(),
        pull: &pull,
        cache: &cache,
        scratch,
    };
    let mut out: Vec<Resolved> = Vec::new();
    for (i, spec) in p.extensions.iter().enumerate() {
        let (field, mut r) = resolve_one(lp, i, spec, &env)?;
        r.enabled = spec.enabled;
        if let Some(prev) = out
            .iter()
            .position(|e| e.name == r.name && e.kind == r.kind)
        {
            return Err(lp
                .error(
                    &field,
                    format!(
                        "extension `{}` is listed twice (also extensions[{prev}])",
                        r.name
                    ),
                    "keep one of them",
                )
                .into());
        }
        out.push(r);
    }
    let reports: Vec<_> = out.iter().map(|r| r.report.clone()).collect();
    if reports.iter().any(|r| !r.findings.is_empty()) {
        for line in crate::extension::findings::render_table(&reports).lines() {
            progress(line);
        }
    }
    if reports.iter().any(|r| r.has_errors()) {
        return Err(lp
            .error(
                "extensions",
                format!("extension validation failed:\n{}", crate::extension::findings::render_table(&reports)),
                "fix the extensions named above (or extend `allow_paths`); `strata ext validate` shows the same table",
            )
            .into());
    }
    Ok(out)
}

/// One `extensions[i]` entry, resolved; returns the field to blame.
fn resolve_one(
    lp: &LoadedProfile,
    i: usize,
    spec: &ExtensionSpec,
    env: &source::Env<'_>,
) -> Result<(String, Resolved)> {
    let fail = |field: &str, m: String| -> Error {
        lp.error(field, m, "fix the source, or remove the extension")
            .into()
    };
    let arch = env.arch;
    if let Some(d) = &spec.dir {
        let field = format!("extensions[{i}].dir");
        let dir = lp.existing(&field, d, true, "fix the path, or remove the extension")?;
        let r = source::from_dir(&dir, &spec.allow_paths, env).map_err(|m| fail(&field, m))?;
        return Ok((field, r));
    }
    if let Some(img) = &spec.image {
        let field = format!("extensions[{i}].image");
        let reference =
            crate::source::oci::Reference::parse(img).map_err(|e| fail(&field, e.to_string()))?;
        let image = crate::source::oci::pull(&reference, arch, env.pull, env.cache)
            .map_err(|e| fail(&field, e.to_string()))?;
        let r = source::from_image(image, &spec.allow_paths, env).map_err(|m| fail(&field, m))?;
        return Ok((field, r));
    }
    if let Some(l) = &spec.oci_layout {
        let field = format!("extensions[{i}].oci_layout");
        let dir = lp.existing(&field, l, true, "give an OCI image-layout directory")?;
        let image = crate::source::oci::layout::read_image(&dir, spec.reference.as_deref(), arch)
            .map_err(|e| fail(&field, e.to_string()))?;
        let r = source::from_image(image, &spec.allow_paths, env).map_err(|m| fail(&field, m))?;
        return Ok((field, r));
    }
    if let Some(a) = &spec.docker_archive {
        let field = format!("extensions[{i}].docker_archive");
        let path = lp.existing(&field, a, false, "give a `docker save` tarball")?;
        let image = crate::source::oci::archive::read_archive(
            &path,
            spec.reference.as_deref(),
            arch,
            env.scratch,
        )
        .map_err(|e| fail(&field, e.to_string()))?;
        let r = source::from_image(image, &spec.allow_paths, env).map_err(|m| fail(&field, m))?;
        return Ok((field, r));
    }
    let (key, path, kind) = match (&spec.sysext, &spec.confext) {
        (Some(p), _) => ("sysext", p, source::Kind::Sysext),
        (_, Some(p)) => ("confext", p, source::Kind::Confext),
        _ => return Err(fail(&format!("extensions[{i}]"), "no source given".into())),
    };
    let field = format!("extensions[{i}].{key}");
    let path = lp.existing(&field, path, false, "give a .raw image")?;
    let r = source::from_raw(&path, kind, env).map_err(|m| fail(&field, m))?;
    Ok((field, r))
}

/// The base's os-release, which sysext/confext images are matched against.
fn host_release(
    rootfs: &RootSource,
    arch: Arch,
    scratch: &Path,
) -> Option<crate::extension::sysext::HostRelease> {
    let text = match rootfs {
        RootSource::Dir(d) => ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok()),
        RootSource::Tar(t) => Tree::from_tar(t).ok().and_then(|tree| os_release_of(&tree)),
        RootSource::Squashfs(s) => crate::fs::squashfs_read::read_in(s, scratch)
            .ok()
            .and_then(|tree| os_release_of(&tree)),
    }?;
    crate::extension::sysext::HostRelease::from_os_release(&text, arch.debian()).ok()
}

fn os_release_of(tree: &Tree) -> Option<String> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|f| source::read_text(tree, Path::new(f)).ok())
}

/// Parses the requested outputs (the profile's, else the platform's) up front.
fn parse_outputs(lp: &LoadedProfile, platform: &Platform) -> Result<Vec<OutputKind>> {
    let (names, from_profile) = match &lp.profile.outputs {
        Some(list) => (list.clone(), true),
        None => (platform.outputs.clone(), false),
    };
    let mut kinds = output::requested(&names).map_err(|(i, m)| -> Error {
        if from_profile {
            lp.error(
                &format!("outputs[{i}]"),
                m,
                format!("use one of: {}", format::NAMES),
            )
            .into()
        } else {
            platform::platform_error(&platform.name, "outputs", m).into()
        }
    })?;
    if let Some(bytes) = lp.profile.qcow2_cluster_size {
        if !(512..=(2 << 20)).contains(&bytes) || !bytes.is_power_of_two() {
            return Err(lp
                .error(
                    "qcow2_cluster_size",
                    format!("{bytes} is not a power of two between 512 B and 2 MiB"),
                    "use e.g. 64 KiB (the default) or 8 KiB",
                )
                .into());
        }
        for k in kinds.iter_mut().filter(|k| k.format == Format::Qcow2) {
            k.qcow2_cluster_bits = bytes.trailing_zeros();
        }
    }
    if kinds.is_empty() {
        return Err(lp
            .error(
                "outputs",
                "no outputs requested",
                "name at least one format, e.g. `outputs: [raw]`",
            )
            .into());
    }
    Ok(kinds)
}

fn is_plain_raw(k: &OutputKind) -> bool {
    k.format == Format::Raw && k.wrap.is_none()
}

/// Step 2a: the kernel, from the cache when this .deb was unpacked before.
fn load_kernel(inputs: &Inputs, cache: &Path) -> Result<Kernel> {
    if let Some(deb) = &inputs.kernel_deb {
        let info = crate::source::deb::read_control(deb).map_err(|e| -> Error {
            inputs
                .lp
                .error(
                    "kernel.deb",
                    e.to_string(),
                    "give a Debian linux-image-* package",
                )
                .into()
        })?;
        let want = inputs.lp.profile.arch.debian();
        if info.architecture != want {
            return Err(inputs
                .lp
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
    }
    let k = match (&inputs.kernel_deb, &inputs.kernel_parts) {
        (Some(deb), _) => kernel::from_deb(deb, cache),
        (None, Some((v, m))) => kernel::from_parts(v, m),
        (None, None) => {
            return Err(inputs
                .lp
                .error(
                    "kernel",
                    "no kernel given",
                    "add `deb`, or `vmlinuz` with `modules_dir`",
                )
                .into())
        }
    }
    .map_err(|e| -> Error {
        let field = if inputs.kernel_deb.is_some() {
            "kernel.deb"
        } else {
            "kernel.vmlinuz"
        };
        inputs
            .lp
            .error(
                field,
                e.to_string(),
                "give a Debian linux-image-* package or a matching vmlinuz and modules directory",
            )
            .into()
    })?;
    if k.machine != inputs.lp.profile.arch {
        let field = if inputs.kernel_deb.is_some() {
            "kernel.deb"
        } else {
            "kernel.vmlinuz"
        };
        return Err(inputs
            .lp
            .error(
                field,
                format!(
                    "the kernel {} is built for {}, but the profile's arch is {}",
                    k.vmlinuz.display(),
                    k.machine,
                    inputs.lp.profile.arch
                ),
                "use the linux-image package of the profile's arch",
            )
            .into());
    }
    Ok(k)
}

/// Step 2b: default modules plus the profile's, with their dependencies.
fn module_closure(
    lp: &LoadedProfile,
    platform: &Platform,
    kernel: &Kernel,
) -> Result<Vec<ModuleRef>> {
    let mut wanted: Vec<String> = DEFAULT_MODULES.iter().map(|s| s.to_string()).collect();
    wanted.extend(platform.modules.get(lp.profile.arch));
    wanted.extend(lp.profile.kernel.modules.iter().cloned());
    kernel.index.closure(&wanted).map_err(|e| {
        lp.error(
            "kernel.modules",
            e.to_string(),
            "check the module name (`ls lib/modules/<release>/kernel`), or remove it",
        )
        .into()
    })
}

fn squash_options(lp: &LoadedProfile, epoch: u64) -> SquashOptions {
    SquashOptions {
        compression: match lp.profile.rootfs.compression {
            SquashCompressor::Zstd => SquashCompression::Zstd { level: 15 },
            SquashCompressor::Xz => SquashCompression::Xz,
        },
        block_size: 128 * 1024,
        mtime: u32::try_from(epoch).unwrap_or(u32::MAX),
    }
}

/// A Talos-style layer in the initramfs.
struct Layer {
    /// File name in the initramfs (`00-hello.sqsh`).
    image: String,
    /// The squashfs.
    path: PathBuf,
    /// Extension name.
    name: String,
    /// Extension version.
    version: String,
    /// Metadata for `extensions.yaml`.
    metadata: serde_norway::Value,
}

/// What step 3 made.
struct Composed {
    /// The root squashfs (flattened: with every extension inside).
    rootfs: PathBuf,
    /// Talos layers, lowest first (none when flattened).
    layers: Vec<Layer>,
    /// Flattened extensions and the file the guest checks for each.
    flattened: Vec<crate::assets::layers::Flattened>,
}

/// Step 3: the root and the extension layers (two threads), or one flattened root.
fn squash_all(
    inputs: &Inputs,
    modules: Option<&crate::assets::layers::ModuleLayer>,
    release: &str,
    work: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Composed> {
    let opts = squash_options(&inputs.lp, inputs.epoch);
    let root_out = work.join("rootfs.sqsh");
    for ext in inputs.extensions.iter().chain(&inputs.disabled) {
        binaries::check_tree_arch(
            &ext.tree,
            inputs.lp.profile.arch,
            &format!("extension `{}`", ext.name),
            Path::new(&ext.origin),
        )?;
    }
    let available = available_files(inputs, work, &opts)?;
    if inputs.lp.profile.flatten {
        let mut root = root_tree(inputs, work)?;
        add_available(&mut root, &available)?;
        let (tree, flattened, conflicts) =
            crate::assets::layers::flatten_all(root, &inputs.extensions, modules).map_err(
                |m| -> Error {
                    inputs
                        .lp
                        .error("flatten", m, "see docs/extensions.md")
                        .into()
                },
            )?;
        for c in &conflicts {
            progress(&format!("flatten: conflict: {c}"));
        }
        if !conflicts.is_empty() && inputs.lp.profile.conflicts == profile::ConflictPolicy::Error {
            return Err(inputs
                .lp
                .error(
                    "conflicts",
                    format!(
                        "{} path(s) provided by more than one extension:\n  {}",
                        conflicts.len(),
                        conflicts.join("\n  ")
                    ),
                    "remove the duplicates, or set `conflicts: warn`",
                )
                .into());
        }
        write_squashfs(&tree, &root_out, &opts)?;
        return Ok(Composed {
            rootfs: root_out,
            layers: Vec::new(),
            flattened,
        });
    }
    std::thread::scope(|s| {
        let root = s.spawn(|| squash_root(inputs, &root_out, &opts, &available));
        let mut layers: Vec<Layer> = Vec::new();
        for ext in inputs
            .extensions
            .iter()
            .filter(|e| e.kind == source::Kind::Talos)
        {
            let image = extension::layer_image_name(layers.len(), &ext.name);
            let path = work.join(&image);
            write_squashfs(&ext.tree, &path, &opts)?;
            layers.push(Layer {
                image,
                path,
                name: ext.name.clone(),
                version: ext.version.clone(),
                metadata: ext.metadata.clone(),
            });
        }
        if let Some(m) = modules {
            // As Talos does: a layer holding the regenerated module metadata, on top.
            let image = extension::layer_image_name(layers.len(), "modules.dep");
            let path = work.join(&image);
            write_squashfs(&m.tree, &path, &opts)?;
            let metadata: serde_norway::Value = serde_norway::from_str(&format!(
                "name: modules.dep\nversion: \"{release}\"\nauthor: strata\ndescription: kernel module metadata for the extensions' modules\n"
            ))
            .map_err(|e| Error::step("modules layer", e))?;
            layers.push(Layer {
                image,
                path,
                name: "modules.dep".into(),
                version: release.into(),
                metadata,
            });
        }
        let root_path = root
            .join()
            .map_err(|_| Error::step("root squashfs", "the worker thread panicked"))??;
        Ok(Composed {
            rootfs: root_path,
            layers,
            flattened: Vec::new(),
        })
    })
}

/// The root filesystem as a tree (for flattening).
fn root_tree(inputs: &Inputs, work: &Path) -> Result<Tree> {
    let mut tree =
        match &inputs.rootfs {
            RootSource::Dir(d) => Tree::from_dir(d)
                .map_err(|e| Error::step("root", format!("{}: {e}", d.display())))?,
            RootSource::Tar(t) => Tree::from_tar(t)
                .map_err(|e| Error::step("root", format!("{}: {e}", t.display())))?,
            RootSource::Squashfs(s) => crate::fs::squashfs_read::read_in(s, work)
                .map_err(|e| Error::step("root", format!("{}: {e}", s.display())))?,
        };
    binaries::check_tree_arch(
        &tree,
        inputs.lp.profile.arch,
        "root filesystem",
        root_origin(inputs),
    )?;
    ensure_extensions_yaml(&mut tree)?;
    Ok(tree)
}

/// Images of `enabled: false` extensions, as (path in the root, file):
/// Talos ones squashed like a layer, sysext/confext images as they are.
fn available_files(
    inputs: &Inputs,
    work: &Path,
    opts: &SquashOptions,
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in &inputs.disabled {
        let file = match &e.raw_image {
            Some(raw) => raw.clone(),
            None => {
                let p = work.join(format!("available-{}.sqsh", e.name));
                write_squashfs(&e.tree, &p, opts)?;
                p
            }
        };
        out.push((e.available_path(), file));
    }
    if !out.is_empty()
        && matches!(inputs.rootfs, RootSource::Squashfs(_))
        && !inputs.lp.profile.flatten
    {
        return Err(inputs
            .lp
            .error("rootfs.squashfs", "`enabled: false` extensions are shipped inside the root filesystem, which a prebuilt squashfs cannot take", "give the root as `dir` or `tar`, or use `flatten: true`")
            .into());
    }
    Ok(out)
}

fn add_available(tree: &mut Tree, files: &[(String, PathBuf)]) -> Result<()> {
    for (path, file) in files {
        tree.insert(
            path,
            Entry {
                kind: EntryKind::File(FileData::Host(file.clone())),
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
        )
        .map_err(|e| Error::step("root squashfs", format!("adding {path}: {e}")))?;
    }
    Ok(())
}

/// The init bind-mounts /extensions.yaml here, so the file must exist in the root.
fn ensure_extensions_yaml(tree: &mut Tree) -> Result<()> {
    if tree.get("/etc/extensions.yaml").is_none() {
        tree.insert(
            "/etc/extensions.yaml",
            Entry {
                kind: EntryKind::File(FileData::Bytes(Vec::new())),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        )
        .map_err(|e| Error::step("root squashfs", format!("adding /etc/extensions.yaml: {e}")))?;
    }
    Ok(())
}

fn squash_root(
    inputs: &Inputs,
    out: &Path,
    opts: &SquashOptions,
    available: &[(String, PathBuf)],
) -> Result<PathBuf> {
    let mut tree = match &inputs.rootfs {
        RootSource::Dir(d) => Tree::from_dir(d)
            .map_err(|e| Error::step("root squashfs", format!("{}: {e}", d.display())))?,
        RootSource::Tar(t) => Tree::from_tar(t)
            .map_err(|e| Error::step("root squashfs", format!("{}: {e}", t.display())))?,
        RootSource::Squashfs(s) => {
            squashfs::inspect(s).map_err(|e| -> Error {
                inputs
                    .lp
                    .error("rootfs.squashfs", e.to_string(), "give a squashfs v4 image")
                    .into()
            })?;
            return Ok(s.clone());
        }
    };
    binaries::check_tree_arch(
        &tree,
        inputs.lp.profile.arch,
        "root filesystem",
        root_origin(inputs),
    )?;
    add_available(&mut tree, available)?;
    ensure_extensions_yaml(&mut tree)?;
    write_squashfs(&tree, out, opts)?;
    Ok(out.to_path_buf())
}

fn root_origin(inputs: &Inputs) -> &Path {
    match &inputs.rootfs {
        RootSource::Dir(p) | RootSource::Tar(p) | RootSource::Squashfs(p) => p,
    }
}

fn write_squashfs(tree: &Tree, out: &Path, opts: &SquashOptions) -> Result<()> {
    squashfs::write_file(tree, out, opts)
        .map_err(|e| Error::step("squashfs", format!("{}: {e}", out.display())))?;
    Ok(())
}

/// `extensions.yaml` in Talos' format: `layers: [{image, metadata}]`, lowest first.
/// The manifest's extension list: Talos layers with their image names (the
/// module layer included), sysext/confext images as they sit in the
/// initramfs, and flattened extensions.
fn extension_entries(exts: &[Resolved], c: &Composed) -> Vec<manifest::Extension> {
    let mut out = Vec::new();
    for e in exts {
        let flattened = c
            .flattened
            .iter()
            .any(|f| f.name == e.name && f.kind == e.kind);
        let image = match (e.kind, flattened) {
            (_, true) => String::new(),
            (source::Kind::Talos, false) => c
                .layers
                .iter()
                .find(|l| l.name == e.name)
                .map(|l| l.image.clone())
                .unwrap_or_default(),
            (k, false) => crate::assets::guest_files::image_name(k, &e.name).unwrap_or_default(),
        };
        out.push(manifest::Extension {
            name: e.name.clone(),
            version: e.version.clone(),
            image,
            kind: e.kind,
            flattened,
            disabled: false,
        });
    }
    if let Some(m) = c.layers.iter().find(|l| l.name == "modules.dep") {
        out.push(manifest::Extension {
            name: m.name.clone(),
            version: m.version.clone(),
            image: m.image.clone(),
            kind: strata_proto::ExtensionKind::Talos,
            flattened: false,
            disabled: false,
        });
    }
    out
}

/// Manifest entries of the extensions shipped but not activated.
fn disabled_entries(disabled: &[Resolved]) -> Vec<manifest::Extension> {
    disabled
        .iter()
        .map(|e| manifest::Extension {
            name: e.name.clone(),
            version: e.version.clone(),
            image: e.available_path(),
            kind: e.kind,
            flattened: false,
            disabled: true,
        })
        .collect()
}

/// sysext/confext images for the initramfs (layered mode): (path in the archive, file).
fn sysext_images(exts: &[Resolved], c: &Composed) -> Vec<(String, PathBuf)> {
    if !c.flattened.is_empty() {
        return Vec::new();
    }
    exts.iter()
        .filter_map(|e| {
            let name = crate::assets::guest_files::image_name(e.kind, &e.name)?;
            Some((name, e.raw_image.clone()?))
        })
        .collect()
}

/// `extensions.yaml` in Talos' format: `layers: [{image, metadata}]`, lowest first.
fn extensions_yaml(layers: &[Layer]) -> Result<String> {
    crate::assets::guest_files::extensions_yaml(layers.iter().map(|l| (&*l.image, &l.metadata)))
        .map_err(|e| Error::step("extensions.yaml", e))
}

/// Files the init reads from `/etc/strata`: `modules.check` (extension
/// modules to load by name) and `extensions.json` (flattened and disabled extensions).
fn init_files(
    c: &Composed,
    disabled: &[Resolved],
    modules: Option<&crate::assets::layers::ModuleLayer>,
) -> Result<Vec<(String, Vec<u8>)>> {
    use crate::assets::guest_files;
    let disabled = disabled
        .iter()
        .map(|e| guest_files::disabled(e.kind, &e.name, &e.version, e.available_path()))
        .collect();
    let modules = modules.map(|m| guest_files::modules_check(&m.names));
    Ok(modules
        .into_iter()
        .chain(guest_files::extensions_json(&c.flattened, disabled))
        .collect())
}

/// The platform's arguments, then strata's, then the profile's (so the profile wins).
pub fn kernel_cmdline(lp: &LoadedProfile, platform: &Platform) -> String {
    let mut args: Vec<String> = platform.args(lp.profile.arch).to_vec();
    args.push(format!("strata.platform={}", platform.name));
    args.extend(lp.profile.kernel.args.iter().cloned());
    args.join(" ")
}

/// Step 5: the partition plan, with GUIDs from the profile.
fn plan_disk(inputs: &Inputs, platform: &Platform, esp_size: u64) -> Result<disk::Layout> {
    let parts = &platform.disk.partitions;
    let sizes: Vec<Option<u64>> = parts
        .iter()
        .map(|p| (p.kind == PartitionKind::Esp).then_some(esp_size))
        .collect();
    let disk_size = inputs
        .lp
        .profile
        .disk
        .map(|d| d.size)
        .filter(|s| *s != Size::Auto)
        .unwrap_or(platform.disk.size);
    disk::plan(parts, &sizes, disk_size, &inputs.seed).map_err(|e| {
        inputs
            .lp
            .error(
                "disk.size",
                e.to_string(),
                "raise `disk.size` or leave it `auto`",
            )
            .into()
    })
}

/// Step 6: GPT, then the ESP written in place through a window on the file.
fn write_disk(
    path: &Path,
    layout: &disk::Layout,
    esp_files: &[crate::fs::fat::FatFile],
    fat: &crate::fs::fat::FatOptions,
) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("opening", path))?;
    disk::write_gpt(&mut file, layout)
        .map_err(Error::io("writing the partition table to", path))?;
    for p in &layout.partitions {
        if p.kind == PartitionKind::Esp {
            let mut win = crate::io::Window::new(&mut file, p.offset, p.size);
            crate::fs::fat::write(&mut win, p.size, esp_files, fat)
                .map_err(|e| Error::step("ESP", e))?;
        }
    }
    file.sync_all().map_err(Error::io("syncing", path))?;
    Ok(())
}

fn make_build(
    inputs: &Inputs,
    plan: &PlatformPlan,
    kernel: &Kernel,
    (rootfs_sqsh, layers): (&Path, &[(String, PathBuf)]),
    finals: &[(OutputKind, PathBuf)],
) -> Result<manifest::Build> {
    let p = &inputs.lp.profile;
    let sha = |path: &Path| crate::io::hash::file_sha256(path).map_err(Error::io("hashing", path));
    let mut ins = vec![manifest::Input {
        role: "kernel".into(),
        source: inputs
            .kernel_deb
            .clone()
            .unwrap_or_else(|| kernel.vmlinuz.clone())
            .display()
            .to_string(),
        sha256: kernel.source_digest.clone(),
    }];
    let root_src = match &inputs.rootfs {
        RootSource::Dir(d) | RootSource::Tar(d) | RootSource::Squashfs(d) => {
            d.display().to_string()
        }
    };
    ins.push(manifest::Input {
        role: "rootfs".into(),
        source: root_src,
        sha256: sha(rootfs_sqsh)?,
    });
    let mut talos_layers = layers.iter();
    for e in &inputs.extensions {
        // A layer's digest is that of the squashfs built from it; a sysext's, of its image.
        let sha256 = match (&e.raw_image, e.kind) {
            (Some(raw), _) => sha(raw)?,
            (None, _) => match talos_layers.next() {
                Some((_, path)) => sha(path)?,
                None => String::new(),
            },
        };
        ins.push(manifest::Input {
            role: format!("extension ({})", e.kind.as_str()),
            source: match &e.digest {
                Some(d) if !e.origin.contains(d.as_str()) => format!("{} ({d})", e.origin),
                _ => e.origin.clone(),
            },
            sha256,
        });
    }
    ins.push(manifest::Input {
        role: "bootloader".into(),
        source: inputs.bootloader.display().to_string(),
        sha256: sha(&inputs.bootloader)?,
    });
    ins.push(manifest::Input {
        role: "init".into(),
        source: inputs.init.display().to_string(),
        sha256: sha(&inputs.init)?,
    });

    Ok(manifest::Build {
        arch: p.arch.to_string(),
        platform: plan.platform.name.clone(),
        os: manifest::Os {
            id: p.os.id.clone(),
            version: p.os.version.clone(),
        },
        cmdline: plan.cmdline.clone(),
        kernel_release: kernel.release.clone(),
        inputs: ins,
        extensions: Vec::new(),
        modules: plan.modules.iter().map(|m| m.name.clone()).collect(),
        ext_modules: Vec::new(),
        boot_test: manifest::BootTest {
            media: plan.platform.boot_test.media.get(p.arch),
            memory_mib: plan.platform.boot_test.memory_mib,
        },
        epoch: inputs.epoch,
        outputs: finals
            .iter()
            .map(|(kind, path)| -> Result<manifest::Output> {
                Ok(manifest::Output {
                    file: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    format: kind.to_string(),
                    size: std::fs::metadata(path)
                        .map_err(Error::io("reading", path))?
                        .len(),
                    sha256: sha(path)?,
                    media: (kind.format == Format::Iso).then(|| "cdrom".to_string()),
                })
            })
            .collect::<Result<Vec<_>>>()?,
    })
}

/// The output directory: created on demand, removed again if the build fails
/// and the directory was ours; temporary files in it vanish on drop.
struct OutDir {
    path: PathBuf,
    created: bool,
    keep: bool,
}

impl OutDir {
    fn open(path: &Path) -> Result<OutDir> {
        let created = !path.exists();
        std::fs::create_dir_all(path).map_err(Error::io("creating", path))?;
        Ok(OutDir {
            path: path.to_path_buf(),
            created,
            keep: false,
        })
    }

    fn temp_file(&mut self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".strata-")
            .suffix(".tmp")
            .tempfile_in(&self.path)
            .map_err(Error::io("creating a file in", &self.path))
    }

    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.keep && self.created {
            // Only an empty directory is removed: nothing of the user's is ever deleted.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
