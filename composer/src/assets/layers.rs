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

use crate::extension::source::{Kind, Resolved};
use crate::fs::tree::{Entry, EntryKind, FileData, Tree};
use crate::source::kernel::Kernel;
use std::path::{Path, PathBuf};

/// The module layer and the names the guest must load.
pub struct ModuleLayer {
    /// Base dependencies + regenerated metadata, rooted like a root filesystem.
    pub tree: Tree,
    /// Extension module names, for `/etc/strata/modules.check`.
    pub names: Vec<String>,
}

/// Finds the `.ko` files extensions ship; checks their release and vermagic;
/// builds the module layer. `None` when no extension ships a module.
pub fn module_layer(exts: &[Resolved], kernel: &Kernel) -> Result<Option<ModuleLayer>, String> {
    let release = &kernel.release;
    let mut ext_modules: Vec<(PathBuf, Entry)> = Vec::new();
    for e in exts {
        for (path, entry) in e.tree.iter() {
            let Some(rel) = module_rel_path(path) else {
                continue;
            };
            let (rel_release, rest) = rel;
            if !matches!(entry.kind, EntryKind::File(_)) || !is_module(path) {
                continue;
            }
            if rel_release != *release {
                return Err(format!(
                    "extension `{}` ships {} for kernel {rel_release}, but the image's kernel is {release}",
                    e.name,
                    path.display()
                ));
            }
            if let EntryKind::File(data) = &entry.kind {
                crate::kmod::depmod::check_vermagic_data(path, data, release)
                    .map_err(|err| format!("extension `{}`: {err}", e.name))?;
            }
            ext_modules.push((rest, entry.clone()));
        }
    }
    if ext_modules.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = ext_modules.iter().map(|(p, _)| module_name(p)).collect();
    // Base modules the extension modules need: their `depends=`, closed over the kernel's index.
    let mut wanted: Vec<String> = Vec::new();
    for (rel, entry) in &ext_modules {
        let deps = module_depends(entry).map_err(|err| format!("{}: {err}", rel.display()))?;
        wanted.extend(deps.into_iter().filter(|d| !names.contains(d)));
    }
    wanted.sort();
    wanted.dedup();
    let base = kernel.index.closure(&wanted).map_err(|e| e.to_string())?;
    let root = PathBuf::from("/usr/lib/modules").join(release);
    let mut layer = Tree::new();
    for m in &base {
        layer
            .insert(
                root.join(&m.rel_path),
                Entry::host_file(kernel.modules_dir.join(&m.rel_path), 0o644),
            )
            .map_err(|e| e.to_string())?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let p = kernel.modules_dir.join(f);
        if p.is_file() {
            layer
                .insert(root.join(f), Entry::host_file(p, 0o644))
                .map_err(|e| e.to_string())?;
        }
    }
    // Metadata covers base dependencies and extension modules alike.
    let mut all = layer.clone();
    for (rel, entry) in &ext_modules {
        all.insert(root.join(rel), entry.clone())
            .map_err(|e| e.to_string())?;
    }
    for (path, bytes) in
        crate::kmod::depmod::generate_for_tree(&all, release).map_err(|e| e.to_string())?
    {
        layer
            .insert(path, Entry::bytes_file(bytes, 0o644))
            .map_err(|e| e.to_string())?;
    }
    layer.all_root();
    Ok(Some(ModuleLayer { tree: layer, names }))
}

/// `(release, path below the release dir)` for a path under `/usr/lib/modules/<r>/` or `/lib/modules/<r>/`.
fn module_rel_path(path: &Path) -> Option<(String, PathBuf)> {
    let rest = path
        .strip_prefix("/usr/lib/modules")
        .or_else(|_| path.strip_prefix("/lib/modules"))
        .ok()?;
    let mut parts = rest.components();
    let release = parts.next()?.as_os_str().to_string_lossy().into_owned();
    let below: PathBuf = parts.collect();
    (!below.as_os_str().is_empty()).then_some((release, below))
}

fn is_module(path: &Path) -> bool {
    let n = path.to_string_lossy();
    n.ends_with(".ko") || n.ends_with(".ko.xz") || n.ends_with(".ko.zst")
}

fn module_name(rel: &Path) -> String {
    let f = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = [".ko.xz", ".ko.zst", ".ko"]
        .iter()
        .find_map(|s| f.strip_suffix(s))
        .unwrap_or(&f)
        .to_string();
    crate::kmod::normalize(&stem)
}

/// `depends=` of a module given as tree data.
fn module_depends(entry: &Entry) -> Result<Vec<String>, String> {
    let EntryKind::File(data) = &entry.kind else {
        return Ok(Vec::new());
    };
    let path = match data {
        FileData::Host(p) => p.clone(),
        FileData::Bytes(b) => {
            let tmp = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
            std::fs::write(tmp.path(), b).map_err(|e| e.to_string())?;
            let info = crate::kmod::modinfo(tmp.path()).map_err(|e| e.to_string())?;
            return Ok(info.depends);
        }
    };
    Ok(crate::kmod::modinfo(&path)
        .map_err(|e| e.to_string())?
        .depends)
}

/// The file the guest checks for a flattened extension, and the entry of
/// `/etc/strata/extensions.json`'s `flattened` list (the guest's contract types).
pub use strata_proto::initramfs::{Flattened, Probe};

/// The layer an extension contributes when flattening: Talos over the whole
/// root, sysext over /usr and /opt, confext over /etc (what systemd merges).
pub fn flatten_layer(e: &Resolved) -> Result<Tree, String> {
    let keep: &[&str] = match e.kind {
        Kind::Talos => return Ok(e.tree.clone()),
        Kind::Sysext => &["/usr", "/opt"],
        Kind::Confext => &["/etc"],
    };
    let mut out = Tree::new();
    for (path, entry) in e.tree.iter() {
        if keep.iter().any(|k| path.starts_with(k)) {
            out.insert(path, entry.clone())
                .map_err(|err| err.to_string())?;
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
) -> Result<(Tree, Vec<Flattened>, Vec<String>), String> {
    let mut layers: Vec<(String, Tree)> = Vec::new();
    for e in exts {
        layers.push((e.name.clone(), flatten_layer(e)?));
    }
    if let Some(m) = modules {
        layers.push(("modules.dep".into(), m.tree.clone()));
    }
    let (mut tree, report) =
        crate::fs::flatten::flatten(root, &layers).map_err(|e| e.to_string())?;
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
        let probe = find_probe(&tree, layer).ok_or_else(|| {
            format!(
                "extension `{}` left no file of its own in the flattened root",
                e.name
            )
        })?;
        probes.push(Flattened {
            name: e.name.clone(),
            version: e.version.clone(),
            kind: e.kind,
            probe,
        });
    }
    Ok((tree, probes, conflicts))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_are_recognised() {
        assert_eq!(
            module_rel_path(Path::new(
                "/usr/lib/modules/6.1.0-56-amd64/kernel/drivers/net/dummy.ko"
            )),
            Some((
                "6.1.0-56-amd64".into(),
                PathBuf::from("kernel/drivers/net/dummy.ko")
            ))
        );
        assert_eq!(
            module_rel_path(Path::new("/usr/lib/modules-load.d/x.conf")),
            None
        );
        assert_eq!(module_name(Path::new("kernel/a/tcp-bbr.ko.xz")), "tcp_bbr");
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
