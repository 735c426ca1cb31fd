//! From profile to [`Plan`]: every path found, every file read and checked.
//!
//! Order: platforms and outputs, the kernel (control member only), the
//! root filesystem (read into a tree, ELF architecture checked), the
//! extensions (read, validated, architecture and module vermagic checked),
//! then the guest init and the bootloader. The first write of a build —
//! the scratch directory under the cache — comes only after the root has
//! been read, so a broken root leaves the cache untouched.

use super::{binaries, kernel, Blame, Options, Plan, PlatformPlan, RootPlan};
use crate::error::{Error, Result};
use crate::extension::source::{self, Kind, Resolved};
use crate::format::{self, Format, OutputKind};
use crate::fs::squashfs::{SquashCompression, SquashOptions};
use crate::fs::tree::Tree;
use crate::profile::platform::{self, Platform};
use crate::profile::units::Size;
use crate::profile::{
    self, ExtensionSource, ExtensionSpec, LoadedProfile, RootSource, SquashCompressor,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Reads the profile and resolves and checks everything it names.
/// Extension findings go to `progress`; nothing is written to the output
/// directory, and the cache only receives a scratch directory (removed with
/// the plan) and, for `image:` extensions, the pulled blobs.
pub fn plan(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Plan> {
    let lp = profile::load(&opts.profile, opts.arch)?;
    let blame = Blame::of(&lp);
    let p = &lp.profile;
    let platforms = platforms(&lp, &blame)?;
    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(&p.name));
    let kernel = kernel::resolve(&lp, &blame)?;
    let (root_kind, root_path) = root_path(&lp, &blame)?;
    check_out_dir(&lp, &blame, &out_dir)?;
    let mut root_tree = read_root_tree(root_kind, &root_path, &blame)?;
    if let Some(tree) = &root_tree {
        binaries::check_tree_arch(tree, p.arch, "root filesystem", &root_path)?;
    }
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(super::default_cache_dir);
    let scratch = scratch_dir(&cache, opts.dry_run)?;
    if root_kind == "squashfs" {
        // Every table and block, not only the superblock: the image is shipped as it is.
        crate::fs::squashfs_read::verify(&root_path).map_err(|e| -> Error {
            blame
                .error(
                    "rootfs.squashfs",
                    "not a usable squashfs image",
                    "give a squashfs v4 image",
                )
                .caused_by(e)
                .into()
        })?;
        if p.flatten {
            let tree = crate::fs::squashfs_read::read_in(&root_path, scratch.path()).map_err(
                |e| -> Error {
                    blame
                        .error(
                            "rootfs.squashfs",
                            "cannot read the image",
                            "give a squashfs v4 image",
                        )
                        .caused_by(e)
                        .into()
                },
            )?;
            binaries::check_tree_arch(&tree, p.arch, "root filesystem", &root_path)?;
            root_tree = Some(tree);
        }
    }
    let files = super::files::resolve(&lp, &blame, root_tree.as_ref())?;
    let root_release = root_os_release(root_tree.as_ref(), &root_path, scratch.path());
    check_os(&lp, &blame, root_kind, root_release.as_ref())?;
    let trust = super::trust::resolve(&lp, &blame, root_release.as_ref().map(|(_, t)| t.as_str()))?;
    // Under Secure Boot the kernel locks down: every extension module must
    // carry a signature it trusts (checked when the modules are gathered).
    let signed_modules_only = trust.as_ref().is_some_and(|t| t.secure_boot.is_some());
    let host = root_release.and_then(|(_, text)| {
        crate::extension::sysext::HostRelease::from_os_release(&text, p.arch.debian()).ok()
    });
    let (extensions, disabled): (Vec<Resolved>, Vec<Resolved>) = read_extensions(
        &lp,
        &blame,
        opts,
        &cache,
        host.as_ref(),
        scratch.path(),
        progress,
    )?
    .into_iter()
    .partition(|e| e.enabled);
    for ext in extensions.iter().chain(&disabled) {
        binaries::check_tree_arch(
            &ext.tree,
            p.arch,
            &format!("extension `{}`", ext.name),
            Path::new(&ext.origin),
        )?;
    }
    if !disabled.is_empty() && root_kind == "squashfs" && !p.flatten {
        return Err(blame
            .error("rootfs.squashfs", "`enabled: false` extensions are shipped inside the root filesystem, which a prebuilt squashfs cannot take", "give the root as `dir` or `tar`, or use `flatten: true`")
            .into());
    }
    let ext_modules = crate::extension::modules::extension_modules(&extensions, &kernel.release)
        .map(|m| crate::extension::modules::module_names(&m))
        .map_err(|e| -> Error {
            blame
                .error(
                    "extensions",
                    "an extension module does not fit the kernel",
                    "build the extension's modules for the image's kernel",
                )
                .caused_by(e)
                .into()
        })?;
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
    let disk_size = p.disk.map(|d| d.size).filter(|s| *s != Size::Auto);
    let platforms = platforms
        .into_iter()
        .map(|pf| -> Result<PlatformPlan> {
            let outputs = parse_outputs(&lp, &blame, &pf)?;
            let cmdline = super::cmdline::cmdline(&pf, p.arch, &p.kernel.args);
            super::cmdline::check_length(&cmdline).map_err(|m| -> Error {
                blame
                    .error(
                        "kernel.args",
                        format!(
                            "{m}; `kernel.args` adds {} bytes",
                            kernel_args_len(&p.kernel.args)
                        ),
                        "shorten `kernel.args`, or move settings into files of the image",
                    )
                    .into()
            })?;
            let mut modules = super::modules::wanted(pf.modules.get(p.arch), &p.kernel.modules);
            if p.state == crate::profile::files::StateMode::Persistent {
                // The init mounts the state partition as ext2 through the ext4 driver.
                modules.push("ext4".into());
            }
            if trust.as_ref().is_some_and(|t| t.secure_boot.is_some()) {
                // The init reads the SecureBoot variable through efivarfs, a module in Debian.
                modules.push("efivarfs".into());
            }
            Ok(PlatformPlan {
                modules,
                cmdline,
                disk_size: disk_size.unwrap_or(pf.disk.size),
                outputs,
                platform: pf,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    super::files::check_state(&lp, &blame, &platforms)?;
    Ok(Plan {
        profile: lp.path.clone(),
        name: p.name.clone(),
        arch: p.arch,
        os: (p.os.id.clone(), p.os.version.clone()),
        kernel,
        root: RootPlan {
            kind: root_kind,
            path: root_path,
            tree: root_tree,
        },
        extensions,
        disabled,
        ext_modules,
        files,
        state: p.state,
        flatten: p.flatten,
        boot_services: p.boot_test.services.unwrap_or_else(|| {
            platforms
                .iter()
                .any(|pp: &PlatformPlan| pp.platform.boot_test.services)
        }),
        conflicts: p.conflicts,
        platforms,
        bootloader,
        init,
        epoch,
        seed,
        squash: SquashOptions {
            compression: match p.rootfs.compression {
                SquashCompressor::Zstd => SquashCompression::Zstd { level: 15 },
                SquashCompressor::Xz => SquashCompression::Xz,
            },
            block_size: 128 * 1024,
            mtime: u32::try_from(epoch).unwrap_or(u32::MAX),
        },
        initramfs_compression: p.initramfs.compression,
        trust,
        esp_size: p.disk.map(|d| d.esp_size).unwrap_or_default(),
        signed_modules_only,
        cache,
        out_dir,
        names: super::InputNames {
            profile_dir: lp.dir.clone(),
            init_in_profile: opts.init.is_none() && p.init.is_some(),
            bootloader_in_profile: p.bootloader.is_some(),
        },
        blame,
        _scratch: Some(scratch),
    })
}

/// What `kernel.args` adds to the command line: each argument and its space.
fn kernel_args_len(args: &[String]) -> usize {
    args.iter().map(|a| a.len() + 1).sum()
}

/// The scratch directory for unpacked contents: under the cache, so large
/// extensions do not fill a small /tmp.
fn scratch_dir(cache: &Path, dry_run: bool) -> Result<tempfile::TempDir> {
    if dry_run {
        return tempfile::Builder::new()
            .prefix("strata-plan-")
            .tempdir()
            .map_err(Error::io(
                "creating a work directory in",
                std::env::temp_dir(),
            ));
    }
    let tmp = cache.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
    tempfile::Builder::new()
        .prefix(&crate::signals::temp_prefix("ext-"))
        .tempdir_in(&tmp)
        .map_err(Error::io("creating a work directory in", cache))
}

/// The platforms a profile names, each loaded once.
fn platforms(lp: &LoadedProfile, blame: &Blame) -> Result<Vec<Platform>> {
    let p = &lp.profile;
    let names = p.platform.names();
    let mut out: Vec<Platform> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let field = if p.platform.is_list() {
            format!("platform[{i}]")
        } else {
            "platform".to_string()
        };
        let platform = platform::load(name).map_err(|e| -> Error {
            match e {
                platform::PlatformError::Unknown { .. } => blame
                    .error(
                        &field,
                        e.to_string(),
                        "pick a platform from `strata platforms`",
                    )
                    .into(),
                other => crate::error::Error::step(
                    crate::error::ErrorKind::InvalidInput,
                    "loading a built-in platform",
                    other,
                ),
            }
        })?;
        if out.iter().any(|o| o.name == platform.name) {
            return Err(blame
                .error(
                    &field,
                    format!("platform `{name}` is listed twice"),
                    "keep one",
                )
                .into());
        }
        out.push(platform);
    }
    if out.is_empty() {
        return Err(blame
            .error("platform", "no platform given", "e.g. `platform: metal`")
            .into());
    }
    Ok(out)
}

fn root_path(lp: &LoadedProfile, blame: &Blame) -> Result<(&'static str, PathBuf)> {
    let hint = "build it with `make rootfs`, or fix the path";
    let (key, p) = lp.profile.rootfs.source.key_and_path();
    let dir = matches!(lp.profile.rootfs.source, RootSource::Dir(_));
    let path = blame.existing(lp, &format!("rootfs.{key}"), p, dir, hint)?;
    if dir {
        if let Some(why) = live_system(&path) {
            return Err(blame
                .error(
                    "rootfs.dir",
                    format!("{} is {why}: strata would walk into the host's kernel filesystems", path.display()),
                    "give a directory that holds only the root filesystem to compose (e.g. made by debootstrap or `make rootfs`), never a running system's root",
                )
                .into());
        }
    }
    Ok((key, path))
}

/// Why `dir` is a running system's root rather than a tree to compose:
/// it is `/`, or a kernel filesystem (procfs, sysfs, devtmpfs) is mounted
/// on its `proc`, `sys` or `dev`. `None` for an ordinary tree.
fn live_system(dir: &Path) -> Option<String> {
    const KERNEL_FS: [(&str, i64); 3] = [
        ("proc", 0x9fa0),     // PROC_SUPER_MAGIC
        ("sys", 0x6265_6572), // SYSFS_MAGIC
        ("dev", 0x1373),      // DEVTMPFS (DEVFS_SUPER_MAGIC)
    ];
    let real = std::fs::canonicalize(dir).ok()?;
    if real == Path::new("/") {
        return Some("the host's root directory".into());
    }
    KERNEL_FS.iter().find_map(|(name, magic)| {
        let sub = real.join(name);
        (fs_type(&sub)? == *magic)
            .then(|| format!("a live system's root (`{name}` is a mounted kernel filesystem)"))
    })
}

/// The `statfs` type of the filesystem `path` is on; `None` when it cannot be read.
#[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
fn fs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// Refuses an output directory inside an input tree (`rootfs.dir`, an
/// extension's `dir` or `oci_layout`): the build's artefacts would be read
/// into the next image. Both paths are compared after resolving symlinks;
/// the output directory need not exist yet.
fn check_out_dir(lp: &LoadedProfile, blame: &Blame, out: &Path) -> Result<()> {
    let out_real = real_path(out);
    let mut trees: Vec<(String, &str)> = Vec::new();
    if let RootSource::Dir(d) = &lp.profile.rootfs.source {
        trees.push(("rootfs.dir".into(), d.as_str()));
    }
    for (i, e) in lp.profile.extensions.iter().enumerate() {
        match &e.source {
            ExtensionSource::Dir(d) => trees.push((format!("extensions[{i}].dir"), d.as_str())),
            ExtensionSource::OciLayout { path, .. } => {
                trees.push((format!("extensions[{i}].oci_layout"), path.as_str()))
            }
            _ => {}
        }
    }
    for (field, p) in trees {
        let tree = lp.resolve(p);
        let Ok(tree_real) = std::fs::canonicalize(&tree) else {
            continue; // a missing input is reported where it is read
        };
        if out_real.starts_with(&tree_real) {
            return Err(blame
                .error(
                    &field,
                    format!(
                        "the output directory {} is inside {} (`{field}`): the artefacts would be read into the next build's image",
                        out.display(),
                        tree.display()
                    ),
                    "pass `--out` a directory outside every input tree",
                )
                .into());
        }
    }
    Ok(())
}

/// `path` with symlinks resolved as far as it exists; the rest appended.
fn real_path(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            return missing.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Reads a `dir` or `tar` root into a tree (a corrupt archive fails here,
/// with the tar reader's reason as the cause); `None` for a squashfs.
fn read_root_tree(kind: &str, path: &Path, blame: &Blame) -> Result<Option<Tree>> {
    let read = match kind {
        "dir" => Tree::from_dir(path),
        "tar" => Tree::from_tar(path),
        _ => return Ok(None),
    };
    read.map(Some).map_err(|e| -> Error {
        let what = if kind == "tar" {
            "cannot read the root filesystem archive"
        } else {
            "cannot read the root filesystem directory"
        };
        blame
            .error(
                &format!("rootfs.{kind}"),
                what,
                "give a readable tar (plain, xz or zstd) or directory; `tar -tf` shows where it breaks",
            )
            .caused_by(e)
            .into()
    })
}

/// The root's os-release, as the guest finds it: `/etc/os-release`, else
/// `/usr/lib/os-release`, symlinks followed inside the root (never out of
/// it onto the host). `(path in the root, text)`; `None` when there is none.
fn root_os_release(tree: Option<&Tree>, path: &Path, scratch: &Path) -> Option<(String, String)> {
    match tree {
        Some(tree) => os_release_of(tree),
        None => crate::fs::squashfs_read::read_in(path, scratch)
            .ok()
            .and_then(|tree| os_release_of(&tree)),
    }
}

fn os_release_of(tree: &Tree) -> Option<(String, String)> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|f| {
            let real = crate::extension::sysext::chase(tree, Path::new(f))?;
            let text = source::read_text(tree, &real).ok()?;
            Some((f.to_string(), text))
        })
}

/// The profile's `os:` against the root's os-release, decided as the guest
/// decides (`strata_proto::osrelease`): an `ID` or `VERSION_ID` the root
/// sets must equal the profile's, and a root without os-release is refused
/// when a sysext or confext needs it, because the guest refuses to merge
/// them then (systemd-sysext's rule). Nothing is skipped in silence.
fn check_os(
    lp: &LoadedProfile,
    blame: &Blame,
    root_kind: &str,
    release: Option<&(String, String)>,
) -> Result<()> {
    let os = &lp.profile.os;
    let Some((file, text)) = release else {
        let needs = lp.profile.extensions.iter().position(|e| {
            matches!(
                e.source,
                ExtensionSource::Sysext(_) | ExtensionSource::Confext(_)
            )
        });
        return match needs {
            Some(i) => Err(blame
                .error(
                    &format!("rootfs.{root_kind}"),
                    format!(
                        "the root filesystem has no os-release (/etc/os-release or /usr/lib/os-release); extensions[{i}] is a sysext/confext image, which is checked against it here and which the guest refuses to merge without it"
                    ),
                    format!(
                        "add /usr/lib/os-release to the root filesystem with `ID={}` and `VERSION_ID={}` (the profile's `os:`)",
                        os.id, os.version
                    ),
                )
                .into()),
            None => Ok(()),
        };
    };
    let release = strata_proto::osrelease::Release::parse(text);
    for (key, field, want) in [
        ("ID", "os.id", &os.id),
        ("VERSION_ID", "os.version", &os.version),
    ] {
        if let Some(root) = release.non_empty(key).filter(|v| *v != want.as_str()) {
            // The root is untrusted: its value is shown escaped.
            let root = root.escape_debug();
            return Err(blame
                .error(
                    field,
                    format!(
                        "the profile says `{field}: {want}`, but the root filesystem's {file} says {key}={root}"
                    ),
                    format!(
                        "set `{field}: {root}` in the profile, or give a root filesystem whose {file} says {key}={want}"
                    ),
                )
                .into());
        }
    }
    Ok(())
}

/// Reads every extension from its source and validates it; the findings are
/// printed, and any error stops the build before anything is written.
fn read_extensions(
    lp: &LoadedProfile,
    blame: &Blame,
    opts: &Options,
    cache_root: &Path,
    host: Option<&crate::extension::sysext::HostRelease>,
    scratch: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Resolved>> {
    let p = &lp.profile;
    // A dry run pulls into a store under the scratch directory, which vanishes with it.
    let cache = if opts.dry_run && !opts.offline {
        crate::source::oci::Cache::new(scratch.join("oci-cache"))
    } else {
        crate::source::oci::Cache::new(cache_root)
    };
    let pull = crate::source::oci::PullOptions {
        insecure_registries: p.registries.insecure.clone(),
        offline: opts.offline,
        ..Default::default()
    };
    let env = source::Env {
        arch: p.arch.debian(),
        os_version: &p.os.version,
        host,
        pull: &pull,
        cache: &cache,
        scratch,
    };
    let mut out: Vec<Resolved> = Vec::new();
    for (i, spec) in p.extensions.iter().enumerate() {
        let field = format!("extensions[{i}].{}", spec.source.key());
        let mut r = resolve_one(lp, blame, &field, spec, &env)?;
        r.enabled = spec.enabled;
        if let Some(prev) = out
            .iter()
            .position(|e| e.name == r.name && e.kind == r.kind)
        {
            return Err(blame
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
        return Err(blame
            .error(
                "extensions",
                format!("extension validation failed:\n{}", crate::extension::findings::render_table(&reports)),
                "fix the extensions named above (or extend `allow_paths`); `strata ext validate` shows the same table",
            )
            .into());
    }
    Ok(out)
}

/// One `extensions[i]` entry, read from its source; `field` is blamed.
fn resolve_one(
    lp: &LoadedProfile,
    blame: &Blame,
    field: &str,
    spec: &ExtensionSpec,
    env: &source::Env<'_>,
) -> Result<Resolved> {
    let bad = |e: source::SourceError| -> Error {
        blame
            .error(
                field,
                "cannot use the extension",
                "fix the source, or remove the extension",
            )
            .caused_by(e)
            .into()
    };
    let unreadable = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| -> Error {
        blame
            .error(
                field,
                format!("cannot read the {what}"),
                "fix the source, or remove the extension",
            )
            .caused_by(e)
            .into()
    };
    let arch = env.arch;
    let allow = &spec.allow_paths;
    match &spec.source {
        ExtensionSource::Dir(d) => {
            let dir =
                blame.existing(lp, field, d, true, "fix the path, or remove the extension")?;
            source::from_dir(&dir, allow, env).map_err(bad)
        }
        ExtensionSource::Image(img) => {
            let reference = crate::source::oci::Reference::parse(img).map_err(|e| -> Error {
                blame
                    .error(
                        field,
                        "not an image reference",
                        "write `host/repo:tag` or `host/repo@sha256:…`",
                    )
                    .caused_by(e)
                    .into()
            })?;
            let image =
                crate::source::oci::pull(&reference, arch, env.pull, env.cache).map_err(|e| {
                    blame.source_failed(
                    field,
                    format!("cannot pull {img}"),
                    "check the registry and the reference (or drop --offline after pulling once)",
                    e,
                )
                })?;
            source::from_image(image, allow, env).map_err(bad)
        }
        ExtensionSource::OciLayout { path, reference } => {
            let dir =
                blame.existing(lp, field, path, true, "give an OCI image-layout directory")?;
            let image = crate::source::oci::layout::read_image(&dir, reference.as_deref(), arch)
                .map_err(|e| unreadable("OCI image layout", Box::new(e)))?;
            source::from_image(image, allow, env).map_err(bad)
        }
        ExtensionSource::DockerArchive { path, reference } => {
            let file = blame.existing(lp, field, path, false, "give a `docker save` tarball")?;
            let image = crate::source::oci::archive::read_archive(
                &file,
                reference.as_deref(),
                arch,
                env.scratch,
            )
            .map_err(|e| unreadable("docker archive", Box::new(e)))?;
            source::from_image(image, allow, env).map_err(bad)
        }
        ExtensionSource::Sysext(p) | ExtensionSource::Confext(p) => {
            let kind = if matches!(spec.source, ExtensionSource::Sysext(_)) {
                Kind::Sysext
            } else {
                Kind::Confext
            };
            let path = blame.existing(lp, field, p, false, "give a .raw image")?;
            source::from_raw(&path, kind, env).map_err(bad)
        }
    }
}

/// Parses the requested outputs (the profile's, else the platform's) up front.
fn parse_outputs(
    lp: &LoadedProfile,
    blame: &Blame,
    platform: &Platform,
) -> Result<Vec<OutputKind>> {
    let (names, from_profile) = match &lp.profile.outputs {
        Some(list) => (list.clone(), true),
        None => (platform.outputs.clone(), false),
    };
    let mut kinds = crate::format::requested(&names).map_err(|(i, m)| -> Error {
        if from_profile {
            blame
                .error(
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
            return Err(blame
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
        return Err(blame
            .error(
                "outputs",
                "no outputs requested",
                "name at least one format, e.g. `outputs: [raw]`",
            )
            .into());
    }
    Ok(kinds)
}
