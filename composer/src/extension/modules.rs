//! Kernel modules that extensions ship: an extension may put `.ko` files
//! under `/usr/lib/modules/<release>/` (or `/lib/modules/…`), and each must be
//! built for the image's kernel — its directory and its vermagic name the
//! release. The plan checks them before the kernel is unpacked; the assets
//! step builds the module layer from the same list
//! ([`crate::assets::layers::module_layer`]).

use crate::extension::source::Resolved;
use crate::fs::tree::{Entry, EntryKind, FileData, Tree};
use crate::kmod::signature::Signature;
use crate::kmod::ModuleBytes;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Why an extension's modules do not fit the image's kernel.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// An extension ships a module under another kernel's directory.
    #[error("extension `{ext}` ships {} for kernel {found}, but the image's kernel is {release}", path.display())]
    Release {
        /// The extension.
        ext: String,
        /// The module's path in it.
        path: PathBuf,
        /// The release directory it sits in.
        found: String,
        /// The image's kernel release.
        release: String,
    },
    /// A module's signature could not be read.
    #[error("cannot read the signature of kernel module {}", path.display())]
    SignatureRead {
        /// The module (in the extension, or in the kernel's tree).
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: crate::kmod::signature::Error,
    },
    /// Under Secure Boot, an extension ships a module the kernel will refuse.
    #[error("extension `{ext}` ships kernel module {} {problem}; under Secure Boot the kernel locks down and will not load it; options: sign the module with a key the kernel trusts ({trusted}), or drop it from the extension (or build without `secure_boot:`)", path.display())]
    Untrusted {
        /// The extension.
        ext: String,
        /// The module's path in it.
        path: PathBuf,
        /// What is wrong: unsigned, or signed by whom.
        problem: String,
        /// The signers the kernel's own modules carry.
        trusted: String,
    },
    /// An extension module's vermagic names another kernel.
    #[error("extension `{ext}` ships a module for another kernel")]
    Vermagic {
        /// The extension.
        ext: String,
        /// The module reader's finding.
        #[source]
        source: crate::kmod::depmod::KmodMetaError,
    },
}

/// The `.ko` files extensions ship, each checked against `release` (its
/// directory and its vermagic): what the plan runs before the kernel is
/// unpacked. Returns them as (path below the release directory, entry).
pub fn extension_modules(
    exts: &[Resolved],
    release: &str,
) -> Result<Vec<(PathBuf, Entry)>, ModuleError> {
    let mut ext_modules: Vec<(PathBuf, Entry)> = Vec::new();
    for e in exts {
        for (path, entry) in e.tree.iter() {
            let Some((rel_release, rest)) = module_rel_path(path) else {
                continue;
            };
            if !matches!(entry.kind, EntryKind::File(_)) || !is_module(path) {
                continue;
            }
            if rel_release != *release {
                return Err(ModuleError::Release {
                    ext: e.name.clone(),
                    path: path.to_path_buf(),
                    found: rel_release,
                    release: release.to_string(),
                });
            }
            if let EntryKind::File(data) = &entry.kind {
                crate::kmod::depmod::check_vermagic_data(path, data, release).map_err(
                    |source| ModuleError::Vermagic {
                        ext: e.name.clone(),
                        source,
                    },
                )?;
            }
            ext_modules.push((rest, entry.clone()));
        }
    }
    Ok(ext_modules)
}

/// How many of the kernel's own modules are read to learn its signing key.
const KERNEL_SIGNER_SAMPLE: usize = 32;

/// The kernel's own modules (paths below its modules directory) that [`kernel_signers`]
/// reads: the first of the index, at most [`KERNEL_SIGNER_SAMPLE`].
pub fn signer_sample(index: &crate::kmod::ModuleIndex) -> impl Iterator<Item = &Path> {
    index
        .modules()
        .take(KERNEL_SIGNER_SAMPLE)
        .map(|(_, m)| m.rel_path.as_path())
}

/// The keys the kernel trusts for modules, as far as compose time can see:
/// the signers of its own modules (Debian signs each kernel build's modules
/// with a key generated for that build and built into the kernel's
/// `.builtin_trusted_keys`). Read from the first modules of the index (they
/// all carry the same signer), at most [`KERNEL_SIGNER_SAMPLE`].
pub fn kernel_signers(
    index: &crate::kmod::ModuleIndex,
    modules_dir: &Path,
) -> Result<BTreeSet<crate::kmod::signature::Signer>, ModuleError> {
    let mut signers = BTreeSet::new();
    for rel in signer_sample(index) {
        let path = modules_dir.join(rel);
        if let Signature::Signed(s) = crate::kmod::signature::read(ModuleBytes::Host(&path), &path)
            .map_err(|source| ModuleError::SignatureRead {
                path: path.clone(),
                source,
            })?
        {
            signers.insert(s);
        }
    }
    Ok(signers)
}

/// Refuses, for an image booted under Secure Boot, any module an extension
/// ships that is unsigned or signed by none of `trusted` (see
/// [`kernel_signers`]). A key enrolled at run time (MOK) is invisible here,
/// so a module signed by one is refused too. When `trusted` is empty (the
/// kernel's own modules are unsigned) only "signed at all" is checked.
pub fn check_signatures<'a>(
    exts: impl IntoIterator<Item = (&'a str, &'a Tree)>,
    trusted: &BTreeSet<crate::kmod::signature::Signer>,
) -> Result<(), ModuleError> {
    let trusted_text = if trusted.is_empty() {
        "the kernel's own modules carry no signature to compare with".to_string()
    } else {
        trusted
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (ext, tree) in exts {
        for (path, entry) in tree.iter() {
            let EntryKind::File(data) = &entry.kind else {
                continue;
            };
            if module_rel_path(path).is_none() || !is_module(path) {
                continue;
            }
            let bytes = match data {
                FileData::Host(p) => ModuleBytes::Host(p),
                FileData::Bytes(b) => ModuleBytes::Memory(b),
            };
            let sig = crate::kmod::signature::read(bytes, path).map_err(|source| {
                ModuleError::SignatureRead {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            let problem = match sig {
                Signature::Signed(s) if trusted.is_empty() || trusted.contains(&s) => continue,
                Signature::Signed(s) => format!("signed by {s}, a key the kernel does not trust"),
                Signature::Unsigned => "without a signature".to_string(),
                Signature::Unusable(why) => {
                    format!("with a signature the kernel cannot use ({why})")
                }
            };
            return Err(ModuleError::Untrusted {
                ext: ext.to_string(),
                path: path.to_path_buf(),
                problem,
                trusted: trusted_text,
            });
        }
    }
    Ok(())
}

/// The names the guest loads for `modules` (as [`extension_modules`] returns them).
pub fn module_names(modules: &[(PathBuf, Entry)]) -> Vec<String> {
    modules.iter().map(|(p, _)| module_name(p)).collect()
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

/// Whether a path is a kernel module file, as the kernel build names them.
fn is_module(path: &Path) -> bool {
    let n = path.to_string_lossy();
    n.ends_with(".ko") || n.ends_with(".ko.xz") || n.ends_with(".ko.zst")
}

/// The name modprobe knows a module by (`-` normalised to `_`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_are_recognised() {
        assert_eq!(
            module_rel_path(Path::new(
                "/usr/lib/modules/6.1.0-test-amd64/kernel/drivers/net/dummy.ko"
            )),
            Some((
                "6.1.0-test-amd64".into(),
                PathBuf::from("kernel/drivers/net/dummy.ko")
            ))
        );
        assert_eq!(
            module_rel_path(Path::new("/usr/lib/modules-load.d/x.conf")),
            None
        );
        assert_eq!(module_name(Path::new("kernel/a/tcp-bbr.ko.xz")), "tcp_bbr");
    }

    /// Debian's own dummy.ko passes against its kernel's signer; the same
    /// module stripped of its signature, or checked against another signer,
    /// is refused with the extension, the module and the options named.
    #[test]
    fn secure_boot_refuses_unsigned_and_foreign_modules() {
        use crate::kmod::signature::{parse, Signer};
        let root = crate::test_support::workspace_root().join("build/ext-dummy-amd64/rootfs");
        let host = crate::test_support::ext_dummy_module();
        if !crate::test_support::require_input(&host) {
            return;
        }
        let rel = host.strip_prefix(&root).unwrap().to_str().unwrap();
        let signed = std::fs::read(&host).unwrap();
        let Signature::Signed(debian) = parse(&signed) else {
            panic!("Debian's dummy.ko is not signed")
        };
        let tree_of = |entry: Entry| {
            let mut t = Tree::new();
            t.insert(Path::new("/").join(rel), entry).unwrap();
            t
        };
        let good = tree_of(Entry::host_file(host.clone(), 0o644));
        let trusted = BTreeSet::from([debian.clone()]);
        check_signatures([("dummy", &good)], &trusted).unwrap();
        // Nothing to compare with: signed at all is enough.
        check_signatures([("dummy", &good)], &BTreeSet::new()).unwrap();

        let info_at = signed.len() - crate::kmod::signature::MAGIC.len() - 12;
        let sig_len = u32::from_be_bytes(signed[info_at + 8..info_at + 12].try_into().unwrap());
        let stripped = signed[..info_at - sig_len as usize].to_vec();
        let bad = tree_of(Entry::bytes_file(stripped, 0o644));
        let e = check_signatures([("dummy", &good), ("net-extras", &bad)], &trusted)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extension `net-extras`"), "{e}");
        assert!(e.contains(rel) && e.contains("without a signature"), "{e}");
        assert!(
            e.contains("sign the module") && e.contains("drop it"),
            "{e}"
        );
        assert!(e.contains("Build time autogenerated kernel key"), "{e}");

        let other = BTreeSet::from([Signer::KeyId(vec![1, 2, 3])]);
        let e = check_signatures([("dummy", &good)], &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a key the kernel does not trust"), "{e}");
    }

    /// The signer learnt from Debian's kernel package is the one its own
    /// dummy.ko (the extension input) carries: what makes that module
    /// acceptable under Secure Boot.
    #[test]
    fn the_kernels_signer_is_read_from_its_modules() {
        use crate::test_support::{ext_dummy_module, kernel_deb, require_input, require_tools};
        let deb = kernel_deb("amd64");
        let dummy = ext_dummy_module();
        if !require_input(&deb) || !require_input(&dummy) || !require_tools(&["dpkg-deb", "tar"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Only the network drivers: enough modules, a fraction of the package.
        let cmd = format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards './lib/modules/*/kernel/drivers/net/*.ko'",
            deb.display(),
            dir.path().display()
        );
        let ok = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .status()
            .unwrap();
        assert!(ok.success(), "{cmd}");
        let release_dir = std::fs::read_dir(dir.path().join("lib/modules"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let index = crate::kmod::ModuleIndex::scan(&release_dir).unwrap();
        assert!(!index.is_empty());
        let signers = kernel_signers(&index, &release_dir).unwrap();
        let Signature::Signed(own) = crate::kmod::signature::parse(&std::fs::read(&dummy).unwrap())
        else {
            panic!("dummy.ko is not signed")
        };
        if index.release() == "6.1.0-57-amd64" {
            assert_eq!(signers, BTreeSet::from([own]));
        } else {
            // Another kernel build has another build key.
            assert_eq!(signers.len(), 1, "{signers:?}");
            assert!(!signers.contains(&own));
        }
    }
}
