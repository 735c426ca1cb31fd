//! What goes on top of the root filesystem, beyond the extensions' own
//! layers: the kernel-module layer and flattening.
//!
//! **Extension kernel modules.** An extension may ship `.ko` files under
//! `/usr/lib/modules/<release>/` (or `/lib/modules/…`). Each must be built
//! for the image's kernel (its vermagic names the release). Debian ships no
//! `modules.dep`, and the root filesystem need not hold the kernel's modules,
//! so strata makes one more layer, as Talos does with its `modules.dep`
//! layer. It holds the base modules the extension modules depend on (copied
//! from the kernel package) and depmod-compatible metadata (`modules.dep`,
//! `.alias`, `.softdep`, … and their binary indexes) for base plus extension
//! modules, regenerated natively. The guest then loads the extension modules
//! by name (`/etc/strata/modules.check`).
//!
//! **Flatten.** With `flatten: true`, the layers are applied to the root
//! tree at build time with overlayfs semantics (`flatten.rs`): Talos
//! extensions over the whole root, sysext images over `/usr` and `/opt`,
//! confext images over `/etc`, and then the module layer. One squashfs
//! results, and no overlay is needed at boot. For each extension the guest
//! checks one file it provided (a probe with its sha256).
//!
//! **sysext/confext images.** A bare squashfs or erofs image ships as it is: the guest mounts
//! the very bytes that were published. A GPT disk image (DDI) does not: its file system is one
//! partition, and a `usr` partition's file system is the extension's `/usr`, which the guest
//! (like any loop mount) would put at `/`. So strata writes the tree it read and checked from
//! that partition ([`Resolved::tree`], already moved below `/usr`) as a squashfs of its own
//! and ships that ([`Composed::ddi_images`]); the guest mounts it like any bare image. A
//! disabled DDI is placed in the root whole, for systemd-sysext to dissect on the booted
//! system.

use std::collections::BTreeMap;

use crate::cache::{Cache, KeyBuilder, Product};
use crate::error::{Error, ErrorKind, Result};
use crate::extension::modules::{extension_modules, module_names, ModuleError};
use crate::extension::source::{Kind, Resolved};
use crate::fs::squashfs::SquashOptions;
use crate::fs::tree::{Entry, EntryKind, FileData, Tree};
use crate::plan::Plan;
use crate::profile::units::human;
use crate::progress::Task;
use crate::source::kernel::Kernel;
use std::path::{Path, PathBuf};

/// Why the module layer or the flattened root could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An extension module does not fit the kernel.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// A module's `.modinfo` could not be read.
    #[error("cannot read the module information of {}", path.display())]
    ModInfo {
        /// The module.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::error::Cause,
    },
    /// A base module an extension module depends on is not in the kernel.
    #[error("the extension modules' dependencies are not all in the kernel")]
    Closure(#[source] crate::kmod::Error),
    /// The base modules could not be written out of the kernel cache's pack.
    #[error("cannot unpack the kernel's modules")]
    Unpack(#[source] crate::source::kernel::Error),
    /// The regenerated module metadata could not be made.
    #[error("cannot generate the module metadata")]
    Depmod(#[source] crate::kmod::depmod::KmodMetaError),
    /// A path could not be placed in a tree.
    #[error(transparent)]
    Tree(#[from] crate::fs::tree::TreeError),
    /// The layers could not be applied to the root.
    #[error("cannot flatten the extensions into the root")]
    Flatten(#[source] crate::fs::flatten::FlattenError),
    /// A flattened extension left nothing the guest could check.
    #[error("extension `{0}` left no file of its own in the flattened root")]
    NoProbe(String),
}

/// The module layer and the names the guest must load.
pub struct ModuleLayer {
    /// Base dependencies + regenerated metadata, rooted like a root filesystem.
    pub tree: Tree,
    /// Extension module names, for `/etc/strata/modules.check`.
    pub names: Vec<String>,
}

/// Builds the module layer from the kernel: the base modules extension
/// modules depend on, and regenerated metadata. `None` when no extension
/// ships a module.
pub fn module_layer(
    exts: &[Resolved],
    kernel: &Kernel,
) -> std::result::Result<Option<ModuleLayer>, LayerError> {
    let release = &kernel.release;
    let ext_modules = extension_modules(exts, release)?;
    if ext_modules.is_empty() {
        return Ok(None);
    }
    let names = module_names(&ext_modules);
    // Base modules the extension modules need: their `depends=`, closed over the kernel's index.
    let mut wanted: Vec<String> = Vec::new();
    for (rel, entry) in &ext_modules {
        let deps = module_depends(entry).map_err(|source| LayerError::ModInfo {
            path: rel.clone(),
            source,
        })?;
        wanted.extend(deps.into_iter().filter(|d| !names.contains(d)));
    }
    wanted.sort();
    wanted.dedup();
    let base = kernel.index.closure(&wanted).map_err(LayerError::Closure)?;
    kernel
        .unpack(base.iter().map(|m| m.rel_path.as_path()))
        .map_err(LayerError::Unpack)?;
    let root = PathBuf::from("/usr/lib/modules").join(release);
    let mut layer = Tree::new();
    for m in &base {
        layer.insert(
            root.join(&m.rel_path),
            Entry::host_file(kernel.modules_dir.join(&m.rel_path), 0o644),
        )?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let p = kernel.modules_dir.join(f);
        if p.is_file() {
            layer.insert(root.join(f), Entry::host_file(p, 0o644))?;
        }
    }
    // Metadata covers base dependencies and extension modules alike.
    let mut all = layer.clone();
    for (rel, entry) in &ext_modules {
        all.insert(root.join(rel), entry.clone())?;
    }
    for (path, bytes) in
        crate::kmod::depmod::generate_for_tree(&all, release).map_err(LayerError::Depmod)?
    {
        layer.insert(path, Entry::bytes_file(bytes, 0o644))?;
    }
    layer.all_root();
    Ok(Some(ModuleLayer { tree: layer, names }))
}

/// `depends=` of a module given as tree data.
fn module_depends(entry: &Entry) -> std::result::Result<Vec<String>, crate::error::Cause> {
    let EntryKind::File(data) = &entry.kind else {
        return Ok(Vec::new());
    };
    let path = match data {
        FileData::Host(p) => p.clone(),
        FileData::Bytes(b) => {
            let tmp = tempfile::NamedTempFile::new()?;
            std::fs::write(tmp.path(), b)?;
            let info = crate::kmod::modinfo(tmp.path())?;
            return Ok(info.depends);
        }
    };
    Ok(crate::kmod::modinfo(&path)?.depends)
}

/// The file the guest checks for a flattened extension, and the entry of
/// `/etc/strata/extensions.json`'s `flattened` list (the guest's contract types).
pub use strata_proto::initramfs::{Flattened, Probe, Shadowed};

/// The layer an extension contributes when flattening: Talos over the whole
/// root, sysext over /usr and /opt, confext over /etc (what systemd merges).
pub fn flatten_layer(e: &Resolved) -> std::result::Result<Tree, LayerError> {
    let keep: &[&str] = match e.kind {
        Kind::Talos => return Ok(e.tree.clone()),
        Kind::Sysext => &["/usr", "/opt"],
        Kind::Confext => &["/etc"],
    };
    let mut out = Tree::new();
    for (path, entry) in e.tree.iter() {
        if keep.iter().any(|k| path.starts_with(k)) {
            out.insert(path, entry.clone())?;
        }
    }
    out.share_scratch(&e.tree);
    Ok(out)
}

/// Flattens the layers onto `root`; returns the tree, the probes, and the conflicts as lines.
pub fn flatten_all(
    root: Tree,
    exts: &[Resolved],
    modules: Option<&ModuleLayer>,
) -> std::result::Result<(Tree, Vec<Flattened>, Vec<String>), LayerError> {
    let mut layers: Vec<(String, Tree)> = Vec::new();
    for e in exts {
        layers.push((e.name.clone(), flatten_layer(e)?));
    }
    if let Some(m) = modules {
        layers.push(("modules.dep".into(), m.tree.clone()));
    }
    let (mut tree, report) =
        crate::fs::flatten::flatten(root, &layers).map_err(LayerError::Flatten)?;
    for (_, l) in &layers {
        tree.share_scratch(l);
    }
    let conflicts = report
        .conflicts
        .iter()
        .map(|c| {
            format!(
                "{} provided by {} ({:?})",
                c.path.display(),
                c.layers.join(", "),
                c.kind
            )
        })
        .collect();
    let mut probes = Vec::new();
    for (e, (_, layer)) in exts.iter().zip(&layers) {
        let probe = find_probe(&tree, layer).ok_or_else(|| LayerError::NoProbe(e.name.clone()))?;
        probes.push(Flattened {
            name: e.name.clone(),
            version: e.version.clone(),
            kind: e.kind,
            probe,
        });
    }
    Ok((tree, probes, conflicts))
}

/// The regular files more than one Talos extension of `exts` ships, in path order, each with
/// the layers that ship it (lowest first) and the digest of the upper copy, which the merged
/// root must show (`guest.json`'s `shadowed`). Paths any tree of `above` also has are left out:
/// those layers (sysext, confext, the module layer, the profile's files) sit over every Talos
/// layer, so the Talos order does not decide what shows there.
pub fn shadowed(exts: &[Resolved], above: &[&Tree]) -> std::io::Result<Vec<Shadowed>> {
    let talos: Vec<&Resolved> = exts.iter().filter(|e| e.kind == Kind::Talos).collect();
    let mut by_path: BTreeMap<&Path, Vec<(&str, &FileData)>> = BTreeMap::new();
    for e in &talos {
        for (path, entry) in e.tree.iter() {
            if let EntryKind::File(data) = &entry.kind {
                by_path.entry(path).or_default().push((&e.name, data));
            }
        }
    }
    let mut out = Vec::new();
    for (path, shippers) in by_path {
        if shippers.len() < 2 || above.iter().any(|t| t.get(path).is_some()) {
            continue;
        }
        // A later layer that ships something else there (a directory, a link) hides the file.
        let (upper, data) = shippers[shippers.len() - 1];
        let last_talos = talos.iter().rev().find(|e| e.tree.get(path).is_some());
        if last_talos.is_some_and(|e| e.name != upper) {
            continue;
        }
        out.push(Shadowed {
            path: path.display().to_string(),
            layers: shippers.iter().map(|(name, _)| name.to_string()).collect(),
            sha256: sha256(data)?,
        });
    }
    Ok(out)
}

/// The names of the Talos extension services the guest starts (`boot_test.services`): one
/// per `*.yaml` file in `/usr/local/etc/containers` of the Talos layers (the upper layer's
/// copy where several ship the same file), named as the guest reports it: the spec's `name`,
/// or the file's stem when that cannot be read. Sorted and without repeats.
pub fn services(exts: &[Resolved]) -> Vec<String> {
    use crate::extension::talos::{rules, service};
    let mut specs: BTreeMap<&Path, &FileData> = BTreeMap::new();
    for e in exts.iter().filter(|e| e.kind == Kind::Talos) {
        for (path, entry) in e.tree.iter() {
            let is_spec = path.parent() == Some(Path::new(rules::SERVICES_DIR))
                && path.extension().is_some_and(|x| x == "yaml");
            if let (true, EntryKind::File(data)) = (is_spec, &entry.kind) {
                specs.insert(path, data);
            }
        }
    }
    let mut names: Vec<String> = specs
        .into_iter()
        .map(|(path, data)| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let named = rules::read_text(data).ok().and_then(|text| {
                let file = service::ServiceFile {
                    label: path.display().to_string(),
                    file_name: stem.clone() + ".yaml",
                    text,
                };
                service::check_service(&file).0.map(|s| s.name)
            });
            named.filter(|n| !n.is_empty()).unwrap_or(stem)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The first regular file (sorted) of `layer` whose content survived into `tree`.
fn find_probe(tree: &Tree, layer: &Tree) -> Option<Probe> {
    for (path, entry) in layer.iter() {
        let EntryKind::File(data) = &entry.kind else {
            continue;
        };
        let Some(Entry {
            kind: EntryKind::File(final_data),
            ..
        }) = tree.get(path)
        else {
            continue;
        };
        let (a, b) = (sha256(data).ok()?, sha256(final_data).ok()?);
        if a == b {
            return Some(Probe {
                path: path.display().to_string(),
                sha256: a,
            });
        }
    }
    None
}

fn sha256(data: &FileData) -> std::io::Result<String> {
    match data {
        FileData::Bytes(b) => Ok(crate::io::hash::bytes_sha256(b)),
        FileData::Host(p) => crate::io::hash::file_sha256(p),
    }
}

/// A Talos-style layer in the initramfs: one squashfs, listed in `extensions.yaml`.
pub struct Layer {
    /// File name in the initramfs (`00-hello.sqsh`).
    pub image: String,
    /// The squashfs.
    pub path: PathBuf,
    /// Extension name.
    pub name: String,
    /// Extension version.
    pub version: String,
    /// Metadata for `extensions.yaml`.
    pub metadata: serde_norway::Value,
}

/// The squashfs images of a build: the root, and the layers over it.
pub struct Composed {
    /// The root squashfs (flattened: with every extension inside).
    pub rootfs: PathBuf,
    /// Talos layers, lowest first (none when flattened); the module layer last.
    pub layers: Vec<Layer>,
    /// Flattened extensions and the file the guest checks for each.
    pub flattened: Vec<Flattened>,
    /// Flatten conflicts, one line each.
    pub conflicts: Vec<String>,
    /// The squashfs written for each enabled DDI extension, by kind and name (layered only).
    pub ddi_images: Vec<(Kind, String, PathBuf)>,
}

impl Composed {
    /// The file the initramfs carries for sysext/confext `e`: the squashfs strata wrote for a
    /// DDI, else the image as it was given.
    pub fn image_file(&self, e: &Resolved) -> Option<PathBuf> {
        if e.partition.is_some() {
            let (_, _, file) = self
                .ddi_images
                .iter()
                .find(|(kind, name, _)| *kind == e.kind && *name == e.name)?;
            return Some(file.clone());
        }
        e.raw_image.clone()
    }
}

/// Writes the one root of a flattened build, with everything inside: the root tree, the
/// extensions and the module layer (which needs the kernel), and `available`, the images of
/// `enabled: false` extensions. The image is a sub-step of `step`.
pub fn squash_flattened(
    plan: &Plan,
    modules: Option<&ModuleLayer>,
    available: &[(String, PathBuf)],
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
) -> Result<Composed> {
    let mut root = root_tree(plan)?;
    add_available(&mut root, available)?;
    let (tree, flattened, conflicts) =
        flatten_all(root, &plan.extensions, modules).map_err(|e| match e {
            LayerError::NoProbe(_) => plan.flatten_refused(e.to_string()),
            other => Error::step(ErrorKind::InvalidInput, "flattening the extensions", other),
        })?;
    plan.check_conflicts(&conflicts)?;
    let mut sources = root_sources(plan)?;
    sources.extend(plan.extensions.iter().flat_map(ext_sources));
    let root_out = work.join("rootfs.sqsh");
    let rootfs = squash(cache, step, &tree, &sources, &root_out, &plan.squash)?.path;
    Ok(Composed {
        rootfs,
        layers: Vec::new(),
        flattened,
        conflicts,
        ddi_images: Vec::new(),
    })
}

/// Set when the build failed elsewhere: no further image is started (the ones being written
/// finish, their cache entries complete). Checked between images.
pub type Halt = std::sync::atomic::AtomicBool;

/// Writes the images of a layered build that do not need the kernel: the root (on its own
/// thread, with `available`, the images of `enabled: false` extensions), each Talos layer and
/// each DDI's squashfs. The module layer comes later ([`add_module_layer`]). Each image is a
/// sub-step of `step`; none is started once `halt` is set, and then the result is `None`
/// (the step that set it reports its own error).
pub fn squash_layered(
    plan: &Plan,
    available: &[(String, PathBuf)],
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
    halt: &Halt,
) -> Result<Option<Composed>> {
    let root_out = work.join("rootfs.sqsh");
    let halted = || halt.load(std::sync::atomic::Ordering::SeqCst);
    let mut planned = layer_list(plan, None, work)?;
    std::thread::scope(|s| {
        let root = s.spawn(|| squash_root(plan, &root_out, available, cache, step));
        let talos = plan.extensions.iter().filter(|e| e.kind == Kind::Talos);
        for (layer, e) in planned.iter_mut().zip(talos) {
            if halted() {
                return Ok(None);
            }
            let sources = ext_sources(e);
            layer.path = squash(cache, step, &e.tree, &sources, &layer.path, &plan.squash)?.path;
        }
        if halted() {
            return Ok(None);
        }
        let ddi_images = squash_ddis(plan, work, cache, step)?;
        let root_path = root.join().map_err(|_| {
            Error::step(
                ErrorKind::Io,
                "writing the root squashfs",
                "the worker thread panicked",
            )
        })??;
        Ok(Some(Composed {
            rootfs: root_path,
            layers: planned,
            flattened: Vec::new(),
            conflicts: Vec::new(),
            ddi_images,
        }))
    })
}

/// Writes the module layer of a layered build and puts it on top of `composed`'s layers, as
/// [`layer_list`] places it, with the kernel `release` in its metadata.
pub fn add_module_layer(
    composed: &mut Composed,
    modules: &ModuleLayer,
    release: &str,
    (plan, work, cache): (&Plan, &Path, &Cache),
    step: &Task<'_>,
) -> Result<()> {
    let Some(mut layer) = layer_list(plan, Some(release), work)?.pop() else {
        return Ok(());
    };
    layer.path = squash(cache, step, &modules.tree, &[], &layer.path, &plan.squash)?.path;
    composed.layers.push(layer);
    Ok(())
}

/// Writes the tree of each enabled DDI extension as a squashfs in `work` (see the module
/// documentation): (kind, extension name, file).
fn squash_ddis(
    plan: &Plan,
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
) -> Result<Vec<(Kind, String, PathBuf)>> {
    let mut out = Vec::new();
    for e in plan.extensions.iter().filter(|e| e.partition.is_some()) {
        let file = work.join(format!("ddi-{}-{}.sqsh", e.kind.as_str(), e.name));
        let file = squash(cache, step, &e.tree, &ext_sources(e), &file, &plan.squash)?.path;
        out.push((e.kind, e.name.clone(), file));
    }
    Ok(out)
}

/// The layers of a layered (not flattened) build, lowest first: each Talos
/// extension, then — when `module_release` is given — the module layer,
/// as Talos does: regenerated module metadata, on top. Paths are in `work`.
pub fn layer_list(plan: &Plan, module_release: Option<&str>, work: &Path) -> Result<Vec<Layer>> {
    let mut layers: Vec<Layer> = Vec::new();
    if plan.flatten {
        return Ok(layers);
    }
    for ext in plan.extensions.iter().filter(|e| e.kind == Kind::Talos) {
        let image = crate::extension::layer_image_name(layers.len(), &ext.name);
        layers.push(Layer {
            path: work.join(&image),
            image,
            name: ext.name.clone(),
            version: ext.version.clone(),
            metadata: ext.metadata.clone(),
        });
    }
    if let Some(release) = module_release {
        let image = crate::extension::layer_image_name(layers.len(), "modules.dep");
        let metadata: serde_norway::Value = serde_norway::from_str(&format!(
            "name: modules.dep\nversion: \"{release}\"\nauthor: strata\ndescription: kernel module metadata for the extensions' modules\n"
        ))
        .map_err(|e| Error::step(ErrorKind::Io, "writing the modules layer's metadata", e))?;
        layers.push(Layer {
            path: work.join(&image),
            image,
            name: "modules.dep".into(),
            version: release.into(),
            metadata,
        });
    }
    Ok(layers)
}

/// The root filesystem as a tree (for flattening): the plan read it.
fn root_tree(plan: &Plan) -> Result<Tree> {
    let mut tree = plan.root.tree.clone().ok_or_else(|| {
        Error::step(
            ErrorKind::InvalidInput,
            "flattening",
            "the plan holds no root tree",
        )
    })?;
    ensure_extensions_yaml(&mut tree)?;
    Ok(tree)
}

fn squash_root(
    plan: &Plan,
    out: &Path,
    available: &[(String, PathBuf)],
    cache: &Cache,
    step: &Task<'_>,
) -> Result<PathBuf> {
    let Some(tree) = &plan.root.tree else {
        // A prebuilt squashfs, checked by the plan, shipped as it is.
        return Ok(plan.root.path.clone());
    };
    let mut tree = tree.clone();
    add_available(&mut tree, available)?;
    ensure_extensions_yaml(&mut tree)?;
    Ok(squash(cache, step, &tree, &root_sources(plan)?, out, &plan.squash)?.path)
}

/// What the root's extracted contents come from, for its key: the archive a `tar` or
/// `squashfs` root was read from (a `dir` root's files are keyed one by one).
fn root_sources(plan: &Plan) -> Result<Vec<String>> {
    if plan
        .root
        .tree
        .as_ref()
        .is_none_or(|t| t.scratch_dirs().next().is_none())
    {
        return Ok(Vec::new());
    }
    let id = crate::cache::key::file_identity(&plan.root.path)
        .map_err(Error::io("reading", &plan.root.path))?;
    Ok(vec![format!("{}:{id}", plan.root.kind)])
}

/// What an extension's extracted contents come from: its image or file digest.
fn ext_sources(e: &Resolved) -> Vec<String> {
    e.digest.iter().cloned().collect()
}

/// The profile's `files:` as a squashfs (`files.sqsh` in `work`), as
/// (name in the initramfs, file); none without files.
pub fn files_layer(
    plan: &Plan,
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
) -> Result<Option<(String, PathBuf)>> {
    if plan.files.is_empty() {
        return Ok(None);
    }
    let path = work.join("files.sqsh");
    let path = squash(cache, step, &plan.files.tree, &[], &path, &plan.squash)?.path;
    let name = strata_proto::initramfs::archive_name(strata_proto::initramfs::FILES_IMAGE);
    Ok(Some((name.to_string(), path)))
}

/// Images of `enabled: false` extensions, as (path in the root, file):
/// Talos ones squashed like a layer, sysext/confext images as they are.
pub fn available_files(
    plan: &Plan,
    work: &Path,
    cache: &Cache,
    step: &Task<'_>,
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in &plan.disabled {
        let file = match &e.raw_image {
            Some(raw) => raw.clone(),
            None => {
                let p = work.join(format!("available-{}.sqsh", e.name));
                squash(cache, step, &e.tree, &ext_sources(e), &p, &plan.squash)?.path
            }
        };
        out.push((e.available_path(), file));
    }
    Ok(out)
}

fn add_available(tree: &mut Tree, files: &[(String, PathBuf)]) -> Result<()> {
    for (path, file) in files {
        tree.insert(path, Entry::host_file(file.clone(), 0o444))
            .map_err(|e| {
                Error::step(
                    ErrorKind::InvalidInput,
                    format!("adding {path} to the root"),
                    e,
                )
            })?;
    }
    Ok(())
}

/// The init bind-mounts /extensions.yaml here, so the file must exist in the root.
fn ensure_extensions_yaml(tree: &mut Tree) -> Result<()> {
    if tree.get("/etc/extensions.yaml").is_none() {
        tree.insert("/etc/extensions.yaml", Entry::bytes_file(Vec::new(), 0o644))
            .map_err(|e| {
                Error::step(
                    ErrorKind::InvalidInput,
                    "adding /etc/extensions.yaml to the root",
                    e,
                )
            })?;
    }
    Ok(())
}

/// The squashfs of `tree` from the step cache, or written now (to `out` when the cache is
/// off), as a sub-step of `step` named after its file. Its key: the tree
/// ([`KeyBuilder::tree`] with `sources`) and the options.
fn squash(
    cache: &Cache,
    step: &Task<'_>,
    tree: &Tree,
    sources: &[String],
    out: &Path,
    opts: &SquashOptions,
) -> Result<Product> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let content = content_bytes(tree);
    let task = step.sub(&name, Some(content));
    let key = || {
        let mut k = KeyBuilder::new("squashfs");
        k.tree("tree", tree, sources)
            .map_err(|e| Error::step(ErrorKind::Io, format!("reading the files of {name}"), e))?;
        Ok(k.debug("options", opts).finish())
    };
    let product = cache.get_or_make("squashfs", &name, key, out, |path| {
        let bytes = write_squashfs(tree, path, opts, &task)?;
        Ok([("bytes".to_string(), bytes)].into())
    })?;
    let bytes = product.extra.get("bytes").copied().unwrap_or(0);
    let detail = format!("{} of files into {}", human(content), human(bytes));
    task.end(product.is_hit(), Some(bytes), &detail);
    Ok(product)
}

/// Writes one image, reporting the file content read out of the tree to `task`; returns the
/// image's size.
fn write_squashfs(tree: &Tree, out: &Path, opts: &SquashOptions, task: &Task<'_>) -> Result<u64> {
    let stats = crate::fs::squashfs::write_file_metered(tree, out, opts, task).map_err(|e| {
        Error::step(
            ErrorKind::Io,
            format!("writing the squashfs {}", out.display()),
            e,
        )
    })?;
    Ok(stats.bytes)
}

/// Bytes of file content in `tree` (what writing it reads). A host file that cannot be
/// examined counts 0 here; writing the image reports it.
pub fn content_bytes(tree: &Tree) -> u64 {
    tree.iter()
        .map(|(_, e)| match &e.kind {
            EntryKind::File(FileData::Bytes(b)) => b.len() as u64,
            EntryKind::File(FileData::Host(p)) => std::fs::metadata(p).map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_an_image_reads_exactly_the_content_bytes_it_announced() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("big");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&host, &data).unwrap();
        let mut tree = Tree::new();
        tree.insert("/usr/big", Entry::host_file(&host, 0o644))
            .unwrap();
        // Identical content is stored once, but still read to find that out.
        tree.insert("/usr/same", Entry::host_file(&host, 0o644))
            .unwrap();
        tree.insert("/etc/small", Entry::bytes_file(b"hello".to_vec(), 0o644))
            .unwrap();
        tree.insert("/usr/link", Entry::symlink("big")).unwrap();
        assert_eq!(content_bytes(&tree), 600_005);
        let read = AtomicU64::new(0);
        let out = dir.path().join("img.sqsh");
        crate::fs::squashfs::write_file_metered(&tree, &out, &SquashOptions::default(), &read)
            .unwrap();
        assert_eq!(read.load(Ordering::Relaxed), 600_005);
    }

    /// A Talos (or other kind) extension named `name` holding `files` (path, content).
    fn ext(kind: Kind, name: &str, files: &[(&str, &str)]) -> Resolved {
        let mut tree = Tree::new();
        for (path, content) in files {
            tree.insert(path, Entry::bytes_file(content.as_bytes().to_vec(), 0o644))
                .unwrap();
        }
        Resolved {
            kind,
            name: name.into(),
            version: "1".into(),
            metadata: serde_norway::Value::Null,
            tree,
            raw_image: None,
            partition: None,
            origin: name.into(),
            digest: None,
            report: crate::extension::findings::Report::new(name, "talos"),
            enabled: true,
        }
    }

    #[test]
    fn services_are_named_as_the_guest_reports_them() {
        let spec =
            |name: &str| format!("name: {name}\ncontainer:\n  entrypoint: ./run\nrestart: never\n");
        let (first, two, one, sys) = (spec("first"), spec("two"), spec("one"), spec("sys"));
        let exts = [
            ext(
                Kind::Talos,
                "a",
                &[
                    ("/usr/local/etc/containers/one.yaml", &first),
                    ("/usr/local/etc/containers/two.yaml", &two),
                    ("/usr/local/etc/containers/notes.txt", "not a spec"),
                    ("/usr/local/etc/containers/broken.yaml", "[: not yaml"),
                ],
            ),
            // The upper copy of one.yaml decides its name.
            ext(
                Kind::Talos,
                "b",
                &[("/usr/local/etc/containers/one.yaml", &one)],
            ),
            // Not a Talos layer: the guest starts Talos extension services only.
            ext(
                Kind::Sysext,
                "s",
                &[("/usr/local/etc/containers/sys.yaml", &sys)],
            ),
        ];
        assert_eq!(services(&exts), ["broken", "one", "two"]);
        assert!(services(&exts[2..]).is_empty());
    }

    #[test]
    fn shadowed_files_name_every_layer_and_the_upper_copy() {
        let exts = [
            ext(
                Kind::Talos,
                "a",
                &[("/usr/x", "a"), ("/usr/y", "a"), ("/usr/a", "a")],
            ),
            ext(Kind::Talos, "b", &[("/usr/x", "b"), ("/usr/z", "b")]),
            ext(
                Kind::Talos,
                "c",
                &[("/usr/x", "c"), ("/usr/y", "c"), ("/usr/z", "c")],
            ),
            // A sysext over /usr/z: what shows there is not the Talos layers' business.
            ext(Kind::Sysext, "s", &[("/usr/z", "s")]),
        ];
        let above = [&exts[3].tree];
        let got = shadowed(&exts, &above).unwrap();
        let digest = |t: &str| crate::io::hash::bytes_sha256(t.as_bytes());
        assert_eq!(
            got,
            [
                Shadowed {
                    path: "/usr/x".into(),
                    layers: vec!["a".into(), "b".into(), "c".into()],
                    sha256: digest("c"),
                },
                Shadowed {
                    path: "/usr/y".into(),
                    layers: vec!["a".into(), "c".into()],
                    sha256: digest("c"),
                },
            ]
        );
        // A later layer with a directory where a lower one has the file: nothing to compare.
        let mut dir_over = ext(Kind::Talos, "d", &[]);
        dir_over.tree.insert("/usr/x", Entry::dir(0o755)).unwrap();
        let exts = [
            ext(Kind::Talos, "a", &[("/usr/x", "a")]),
            ext(Kind::Talos, "b", &[("/usr/x", "b")]),
            dir_over,
        ];
        assert!(shadowed(&exts, &[]).unwrap().is_empty());
    }

    #[test]
    fn probes_skip_files_a_later_layer_replaced() {
        let mut layer = Tree::new();
        layer
            .insert("/usr/a", Entry::bytes_file(b"old".to_vec(), 0o644))
            .unwrap();
        layer
            .insert("/usr/b", Entry::bytes_file(b"mine".to_vec(), 0o644))
            .unwrap();
        let mut tree = Tree::new();
        tree.insert("/usr/a", Entry::bytes_file(b"new".to_vec(), 0o644))
            .unwrap();
        tree.insert("/usr/b", Entry::bytes_file(b"mine".to_vec(), 0o644))
            .unwrap();
        assert_eq!(find_probe(&tree, &layer).unwrap().path, "/usr/b");
    }
}
