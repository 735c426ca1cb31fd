//! The kernel an image boots: image file, release, modules tree and module
//! index, taken from a Debian `linux-image-*` package (cached by digest) or
//! from a user-given `vmlinuz` and `lib/modules/<release>` directory.
//!
//! Supported images: x86_64 bzImage ("HdrS" at 0x202; its embedded release
//! string is checked against the modules), arm64 Image ("ARM\x64" at 0x38,
//! with or without the EFI stub), and any PE image whose COFF machine is
//! x86_64 or arm64 (e.g. an arm64 EFI zboot image). Not supported: other
//! architectures and gzip-compressed `Image.gz` (refused with a hint).
//!
//! Every module must match the image's machine and have the release as the
//! first word of its `vermagic`, so a mismatched pair fails at build time
//! instead of at boot.
//!
//! Cache layout: `<cache_root>/kernels/<sha256 of the .deb>/` holds
//! `boot/vmlinuz-<release>`, `lib/modules/<release>/` (or
//! `usr/lib/modules/<release>/` for merged-/usr packages) with the tree's
//! files other than modules, `modules.pack` (every module's bytes, one after
//! another: 4,000 files cost their file system far more than their bytes, see
//! [`deb::Take::Pack`]) and `kernel.json` (release, paths, machine, the module
//! index, so warm runs skip the scan, and where each module lies in the pack).
//! A build writes the modules it reads out of the pack, into the tree where
//! they would have been unpacked ([`Kernel::unpack`]). An entry is built in a `.partial-*` directory beside it and renamed
//! into place, so after a crash it either exists complete or not at all (the
//! files are not fsynced: power loss is not covered). A crashed run may
//! leave a `.partial-*` directory behind; it is never read and safe to delete.
//!
//! `kernel.json` also records the size and sha256 of every unpacked file and
//! packed module. A cache entry whose files (or pack) no longer have their
//! recorded sizes, or whose image no longer hashes to its sum, is discarded and unpacked again, so a
//! file truncated by a full disk or a crash is never used; the modules an
//! image ships are hashed against their sums before the image is written
//! ([`Kernel::verify_shipped`]), so a modified module is refused too.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::deb;
use crate::arch::Arch;
use crate::kmod::{self, ModuleIndex};

/// Bumped whenever `kernel.json` or the index changes shape, so old cache
/// entries are rebuilt instead of misread.
const CACHE_FORMAT: u32 = 3;

/// Name of the metadata file that completes a cache entry.
const CACHE_META: &str = "kernel.json";

/// Bytes of the image needed for detection: the bzImage release string
/// lives at `kernel_version + 0x200`, and `kernel_version` is a u16.
const IMAGE_HEAD: u64 = 0x1_0200 + 256;

/// Errors from loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cache directory or file could not be written or replaced.
    #[error("cannot write the kernel cache at {}; hint: check that the cache directory is writable", path.display())]
    Cache {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading or extracting the package failed.
    #[error(transparent)]
    Deb(#[from] deb::Error),
    /// The image file could not be read.
    #[error("cannot read kernel image {}", path.display())]
    Image {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The bzImage's release string disagrees with the modules directory.
    #[error(
        "{} is kernel release {image_release} but the modules directory is for {release}; hint: pass the lib/modules directory that belongs to this kernel",
        path.display()
    )]
    ImageRelease {
        /// The file concerned.
        path: PathBuf,
        /// The release the image reports.
        image_release: String,
        /// The modules directory's release.
        release: String,
    },
    /// A file of the kernel cache no longer matches what was unpacked.
    #[error(
        "{} in the kernel cache is damaged: {what} is {actual}, it was {expected} when unpacked; \
         hint: the entry was removed, run the build again to unpack the package afresh",
        path.display()
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// `its size` or `its sha256`.
        what: &'static str,
        /// What was recorded.
        expected: String,
        /// What was found.
        actual: String,
    },
    /// Scanning or reading modules failed.
    #[error(transparent)]
    Modules(#[from] kmod::Error),
    /// A module is built for another architecture than the image.
    #[error(
        "{} is built for ELF machine {found} but the kernel image is {machine} (ELF machine {}); hint: use the modules of the same architecture as the kernel",
        module.display(),
        machine.elf_machine()
    )]
    ModuleMachine {
        /// The module file.
        module: PathBuf,
        /// The module's ELF `e_machine`.
        found: u16,
        /// The image's architecture.
        machine: Arch,
    },
    /// A module's vermagic names another kernel release.
    #[error(
        "{} has vermagic {vermagic:?} but the modules directory is named {release}; hint: the directory must be named after the kernel release the modules were built for",
        module.display()
    )]
    ModuleRelease {
        /// The module file.
        module: PathBuf,
        /// The module's vermagic.
        vermagic: String,
        /// The modules directory's release.
        release: String,
    },
    /// A file could not be hashed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not a kernel image we recognise.
    #[error("{} is not a recognised kernel image: {problem}; hint: {hint}", path.display())]
    UnknownImage {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
        /// A suggestion for the fix.
        hint: &'static str,
    },
    /// The package holds no kernel image, or several.
    #[error(
        "{} holds {} kernel images (boot/vmlinuz-*: {found:?}), expected exactly one; hint: pass a linux-image-<release> package, not a meta or headers package",
        deb.display(),
        found.len()
    )]
    VmlinuzCount {
        /// The package file.
        deb: PathBuf,
        /// The images found (may be empty).
        found: Vec<String>,
    },
}

impl Error {
    /// Whether the cache, not the kernel given, is at fault: it cannot be written (full disk,
    /// permissions, read-only) or was damaged. Such errors must not blame the profile's kernel
    /// field.
    pub fn is_cache_fault(&self) -> bool {
        let cache_side = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::StorageFull
                    | io::ErrorKind::QuotaExceeded
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::ReadOnlyFilesystem
            )
        };
        match self {
            Error::Cache { .. } | Error::Damaged { .. } => true,
            Error::Deb(deb::Error::Unpack { source, .. }) => cache_side(source),
            _ => false,
        }
    }
}

/// Result of this module's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kernel ready to be put into an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The bootable image (`vmlinuz-<release>`).
    pub vmlinuz: PathBuf,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `lib/modules/<release>` of this kernel.
    pub modules_dir: PathBuf,
    /// Index of the modules below `modules_dir`.
    pub index: ModuleIndex,
    /// Hex SHA-256 of the `.deb`, or of `vmlinuz` for a user-given kernel.
    pub source_digest: String,
    /// The architecture the image runs on.
    pub machine: Arch,
    /// Size and sha256 of every file of a cache entry (absolute paths), packed modules
    /// included; empty for a user-given kernel, whose files strata did not write.
    pub sums: BTreeMap<PathBuf, FileSum>,
    /// The cache entry's modules, kept in its pack ([`PACK`]) until a build needs them as
    /// files ([`Kernel::unpack`]): where each (by absolute path) starts there. Empty for a
    /// user-given kernel.
    pub packed: BTreeMap<PathBuf, u64>,
    /// The cache entry's pack (unused by a user-given kernel).
    pub pack: PathBuf,
}

/// A file's size and hex sha256, as unpacked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub size: u64,
    /// Hex sha256.
    pub sha256: String,
}

impl Kernel {
    /// Writes the modules `rel_paths` (below `modules_dir`) as files, out of the cache entry's
    /// pack: the few dozen a build reads of the 4,000 the package holds. A module whose file
    /// exists with its size is left as it is ([`verify_shipped`](Self::verify_shipped) hashes
    /// what ships); one that does not is written to a temporary file and renamed into place,
    /// so two builds sharing the cache write the same bytes and neither sees half a file.
    /// Nothing to do for a user-given kernel, whose modules are files.
    pub fn unpack<'a>(&self, rel_paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
        let mut pack = None;
        for rel in rel_paths {
            let path = self.modules_dir.join(rel);
            let (Some(&at), Some(sum)) = (self.packed.get(&path), self.sums.get(&path)) else {
                continue;
            };
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == sum.size) {
                continue;
            }
            if pack.is_none() {
                pack = Some(File::open(&self.pack).map_err(|source| Error::Read {
                    path: self.pack.clone(),
                    source,
                })?);
            }
            let from = pack.as_ref().expect("opened above");
            unpack_one(from, &self.pack, at, sum.size, &path)?;
        }
        Ok(())
    }

    /// Hashes the modules an image ships (`rel_paths` below the modules directory) against
    /// the sums recorded at unpack time. A damaged file discards the whole cache entry, so
    /// the next build unpacks it again. Does nothing for a user-given kernel.
    pub fn verify_shipped<'a>(&self, rel_paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
        for rel in rel_paths {
            let path = self.modules_dir.join(rel);
            if let Some(sum) = self.sums.get(&path) {
                if let Err(e) = check_sum(&path, sum, true) {
                    if let Some(entry) = self
                        .modules_dir
                        .ancestors()
                        .find(|a| a.join(CACHE_META).is_file())
                    {
                        discard(entry)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Copies `size` bytes of the pack `from` (at `pack`) at `at` into a new file at `path`.
fn unpack_one(from: &File, pack: &Path, at: u64, size: u64, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|source| cache_error(parent, source))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpacking-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(parent)
        .map_err(|source| cache_error(parent, source))?;
    let read_error = |source| Error::Read {
        path: pack.to_path_buf(),
        source,
    };
    let pack_len = from.metadata().map_err(read_error)?.len();
    if pack_len < at + size {
        return Err(Error::Damaged {
            path: pack.to_path_buf(),
            what: "its size",
            expected: format!("at least {} bytes", at + size),
            actual: format!("{pack_len} bytes"),
        });
    }
    // A file system that keeps runs of zeros as holes may have made some in the pack: they
    // stay holes, inside the length set here.
    tmp.as_file()
        .set_len(size)
        .map_err(|source| cache_error(tmp.path(), source))?;
    crate::io::sparse::copy_data(from, at, size, tmp.as_file(), 0).map_err(read_error)?;
    tmp.persist(path).map_err(|e| cache_error(path, e.error))?;
    Ok(())
}

/// Checks `path` against `sum`: always its size, its sha256 when `hash`.
fn check_sum(path: &Path, sum: &FileSum, hash: bool) -> Result<()> {
    let damaged = |what, expected: String, actual: String| Error::Damaged {
        path: path.to_path_buf(),
        what,
        expected,
        actual,
    };
    let size = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Err(damaged("its type", "a file".into(), "not a file".into())),
        Err(e) => return Err(damaged("its state", "present".into(), e.to_string())),
    };
    if size != sum.size {
        return Err(damaged(
            "its size",
            format!("{} bytes", sum.size),
            format!("{size} bytes"),
        ));
    }
    if hash {
        let actual = sha256_file(path)?;
        if actual != sum.sha256 {
            return Err(damaged("its sha256", sum.sha256.clone(), actual));
        }
    }
    Ok(())
}

/// The cache entry's `kernel.json`; paths are relative to the entry.
#[derive(Serialize, Deserialize)]
struct CacheMeta {
    format: u32,
    release: String,
    vmlinuz: PathBuf,
    modules_dir: PathBuf,
    /// Written as the first cache format spelled it (`X86_64`, `Aarch64`), so entries
    /// made before [`Arch`] was shared stay valid.
    #[serde(with = "cached_machine")]
    machine: Arch,
    index: ModuleIndex,
    /// Every unpacked file (relative to the entry): size and sha256.
    files: BTreeMap<PathBuf, FileSum>,
    /// Every packed module (relative to the entry, where [`Kernel::unpack`] writes it): where
    /// it starts in [`PACK`], its size and sha256.
    packed: BTreeMap<PathBuf, Packed>,
}

/// A module in the cache entry's pack.
#[derive(Serialize, Deserialize)]
struct Packed {
    at: u64,
    #[serde(flatten)]
    sum: FileSum,
}

/// The cache entry's pack: every module's bytes, one after another ([`deb::Take::Pack`]).
const PACK: &str = "modules.pack";

/// The cache's spelling of a kernel's architecture.
mod cached_machine {
    use super::Arch;
    use serde::{Deserialize, Deserializer, Serializer};

    const NAMES: [(Arch, &str); 2] = [(Arch::Amd64, "X86_64"), (Arch::Arm64, "Aarch64")];

    pub fn serialize<S: Serializer>(arch: &Arch, s: S) -> Result<S::Ok, S::Error> {
        let name = NAMES.iter().find(|(a, _)| a == arch).map(|(_, n)| *n);
        s.serialize_str(name.unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(a, _)| *a)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown machine {name:?}")))
    }
}

impl CacheMeta {
    fn into_kernel(self, entry: &Path, source_digest: String) -> Kernel {
        let modules_dir = entry.join(&self.modules_dir);
        let mut index = self.index;
        index.set_dir(&modules_dir);
        let packed = self
            .packed
            .iter()
            .map(|(rel, p)| (entry.join(rel), p.at))
            .collect();
        let packed_sums = self.packed.into_iter().map(|(rel, p)| (rel, p.sum));
        Kernel {
            vmlinuz: entry.join(&self.vmlinuz),
            release: self.release,
            modules_dir,
            index,
            source_digest,
            machine: self.machine,
            sums: self
                .files
                .into_iter()
                .chain(packed_sums)
                .map(|(rel, sum)| (entry.join(rel), sum))
                .collect(),
            packed,
            pack: entry.join(PACK),
        }
    }
}

/// Loads the kernel from a Debian package, extracting and indexing it
/// into `cache_root/kernels/<sha256>/` on first use and reusing that
/// entry afterwards.
pub fn from_deb(deb: &Path, cache_root: &Path) -> Result<Kernel> {
    let digest = sha256_file(deb)?;
    let kernels = cache_root.join("kernels");
    fs::create_dir_all(&kernels).map_err(|source| cache_error(&kernels, source))?;
    let entry = kernels.join(&digest);
    if let Some(meta) = load_cached(&entry)? {
        return Ok(meta.into_kernel(&entry, digest));
    }
    let partial = tempfile::Builder::new()
        .prefix(&crate::signals::temp_prefix(".partial-"))
        .tempdir_in(&kernels)
        .map_err(|source| cache_error(&kernels, source))?;
    let meta = populate(deb, partial.path())?;
    commit(partial, &entry)?;
    Ok(meta.into_kernel(&entry, digest))
}

/// Uses a kernel the user provides: `vmlinuz` and its
/// `lib/modules/<release>` directory, whose name is the release. The
/// modules are scanned every time (nothing is cached).
pub fn from_parts(vmlinuz: &Path, modules_dir: &Path) -> Result<Kernel> {
    let (machine, image_release) = inspect_image(vmlinuz)?;
    let index = ModuleIndex::scan(modules_dir)?;
    let release = index.release().to_string();
    check_consistency(vmlinuz, image_release, machine, &index)?;
    Ok(Kernel {
        vmlinuz: vmlinuz.to_path_buf(),
        release,
        modules_dir: modules_dir.to_path_buf(),
        index,
        source_digest: sha256_file(vmlinuz)?,
        machine,
        sums: BTreeMap::new(),
        packed: BTreeMap::new(),
        pack: PathBuf::new(),
    })
}

fn cache_error(path: &Path, source: io::Error) -> Error {
    Error::Cache {
        path: path.to_path_buf(),
        source,
    }
}

/// Hex SHA-256 of a file, read in 1 MiB pieces.
fn sha256_file(path: &Path) -> Result<String> {
    let read_error = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    crate::io::hash::file_sha256(path).map_err(read_error)
}

/// Returns the entry's metadata if the entry is complete and current.
/// Anything else found there (from an older format, or edited by hand) is
/// removed so the caller can rebuild it.
fn load_cached(entry: &Path) -> Result<Option<CacheMeta>> {
    let meta_path = entry.join(CACHE_META);
    let bytes = match fs::read(&meta_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !entry.exists() => return Ok(None),
        Err(_) => return discard(entry),
    };
    match serde_json::from_slice::<CacheMeta>(&bytes) {
        Ok(meta)
            if meta.format == CACHE_FORMAT
                && entry.join(&meta.modules_dir).is_dir()
                && intact(entry, &meta) =>
        {
            Ok(Some(meta))
        }
        _ => discard(entry),
    }
}

/// Whether every recorded file still has its size, the pack the length of its modules, and
/// the image its sha256 (cheap: a few stats and one hash of a few MiB; the shipped modules are
/// hashed later).
fn intact(entry: &Path, meta: &CacheMeta) -> bool {
    let pack_len = meta.packed.values().map(|p| p.at + p.sum.size).max();
    let pack = FileSum {
        size: pack_len.unwrap_or(0),
        sha256: String::new(),
    };
    meta.files.contains_key(&meta.vmlinuz)
        && check_sum(&entry.join(PACK), &pack, false).is_ok()
        && meta.files.iter().all(|(rel, sum)| {
            let path = entry.join(rel);
            check_sum(&path, sum, *rel == meta.vmlinuz).is_ok()
        })
}

fn discard(entry: &Path) -> Result<Option<CacheMeta>> {
    match fs::remove_dir_all(entry) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(cache_error(entry, source)),
    }
}

/// Members of a kernel package we keep: the image and the modules tree.
fn wanted(member: &Path) -> bool {
    let Some(path) = member.to_str() else {
        return false;
    };
    let under = |dir: &str| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let is_image = path
        .strip_prefix("boot/vmlinuz-")
        .is_some_and(|release| !release.is_empty() && !release.contains('/'));
    is_image || under("lib/modules") || under("usr/lib/modules")
}

/// What the kernel cache keeps of a package's member: the image and the files of the modules
/// tree as themselves, but the modules in the pack ([`deb::Take::Pack`]), and none of the
/// tree's directories (a module written as a file later gets its parents then).
fn take(member: &Path, dir: bool) -> deb::Take {
    if !wanted(member) {
        deb::Take::Skip
    } else if member.starts_with("boot") {
        deb::Take::Unpack
    } else if dir {
        deb::Take::Skip
    } else if kmod::module_suffix(member).is_some() {
        deb::Take::Pack
    } else {
        deb::Take::Unpack
    }
}

/// Extracts and indexes the package into `dir` and writes `kernel.json`.
fn populate(deb_path: &Path, dir: &Path) -> Result<CacheMeta> {
    // Of the package's 400-odd MB, a build reads back the few dozen modules it ships: each
    // module's `.modinfo` is read on its way into the pack, and the pack's pages are handed
    // back a little later, for the next modules to reuse (see `crate::io::pages`).
    let pack_path = dir.join(PACK);
    let mut pack =
        deb::Pack::create(&pack_path).map_err(|source| cache_error(&pack_path, source))?;
    let seen = std::cell::RefCell::new(Seen {
        infos: Vec::new(),
        trail: crate::io::pages::Trailing::new(UNPACK_TRAIL),
        pack: &pack_path,
    });
    let extracted = deb::extract_packing(
        deb_path,
        dir,
        &mut pack,
        take,
        |path| seen.borrow_mut().written(path),
        |path, data, at| seen.borrow_mut().packed(path, data, at),
    )?;
    let Seen { infos, trail, .. } = seen.into_inner();
    drop(pack);
    let images: Vec<&PathBuf> = extracted
        .iter()
        .map(|w| &w.rel)
        .filter(|p| p.starts_with("boot"))
        .collect();
    let [image] = images.as_slice() else {
        return Err(Error::VmlinuzCount {
            deb: deb_path.to_path_buf(),
            found: images.iter().map(|p| p.display().to_string()).collect(),
        });
    };
    let vmlinuz = (*image).clone();
    let release = vmlinuz
        .to_string_lossy()
        .trim_start_matches("boot/vmlinuz-")
        .to_string();
    let modules_dir = modules_dir_of(dir, &release, &extracted)?;
    let (machine, image_release) = inspect_image(&dir.join(&vmlinuz))?;
    let index = index_of(&dir.join(&modules_dir), infos)?;
    check_consistency(&dir.join(&vmlinuz), image_release, machine, &index)?;
    let (files, packed) = sums_of(dir, &extracted)?;
    let meta = CacheMeta {
        format: CACHE_FORMAT,
        release,
        vmlinuz,
        modules_dir,
        machine,
        index,
        files,
        packed,
    };
    write_meta(dir, &meta)?;
    trail.finish();
    Ok(meta)
}

/// What the kernel cache's unpack learns of each module on its way out of the package.
struct Seen<'a> {
    /// Each module's information, by the path it has (or would have) below the entry.
    infos: Vec<(PathBuf, kmod::Result<kmod::ModInfo>)>,
    trail: crate::io::pages::Trailing,
    pack: &'a Path,
}

impl Seen<'_> {
    /// A file written as itself (the image, the tree's other files, a module too large to
    /// pack).
    fn written(&mut self, path: &Path) {
        if kmod::module_suffix(path).is_some() {
            self.infos.push((path.to_path_buf(), kmod::modinfo(path)));
        }
        self.trail.push(path);
    }

    /// A module packed at `at`: its information is read from its bytes, still in memory.
    fn packed(&mut self, path: &Path, data: &[u8], at: u64) {
        self.infos
            .push((path.to_path_buf(), kmod::modinfo_of(data, path)));
        self.trail.push_part(self.pack, at, data.len() as u64);
    }
}

/// The index of the modules below `modules_dir` among `infos` (full paths, each with its
/// information or the error reading it; the first error in path order fails).
fn index_of(
    modules_dir: &Path,
    mut infos: Vec<(PathBuf, kmod::Result<kmod::ModInfo>)>,
) -> Result<ModuleIndex> {
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let mut modules = Vec::with_capacity(infos.len());
    for (path, info) in infos {
        if let Ok(rel) = path.strip_prefix(modules_dir) {
            modules.push((rel.to_path_buf(), info?));
        }
    }
    Ok(ModuleIndex::of(modules_dir, modules)?)
}

/// How far behind the unpack the kernel cache's pages are handed back: at 150 MB/s of
/// unpacking, 0.4 s, by when the disk has written them.
const UNPACK_TRAIL: u64 = 64 << 20;

/// Size and sha256 of each regular file among `extracted` (paths relative to `dir`): those
/// the extraction hashed on the way out of the package, and a hard link's file read back (the
/// package holds its bytes once, under the name it links to). The files written as themselves,
/// then the packed ones with where they start in the pack.
#[allow(clippy::type_complexity)]
fn sums_of(
    dir: &Path,
    extracted: &[deb::Written],
) -> Result<(BTreeMap<PathBuf, FileSum>, BTreeMap<PathBuf, Packed>)> {
    let mut sums = BTreeMap::new();
    let mut packed = BTreeMap::new();
    for w in extracted {
        let (size, sha256) = match &w.sum {
            Some(sum) => sum.clone(),
            None => {
                let path = dir.join(&w.rel);
                let read_error = |source| Error::Read {
                    path: path.clone(),
                    source,
                };
                if !fs::symlink_metadata(&path).map_err(read_error)?.is_file() {
                    continue;
                }
                let (sha256, size) = File::open(&path)
                    .and_then(|mut f| crate::io::hash::reader_sha256(&mut f))
                    .map_err(read_error)?;
                (size, sha256)
            }
        };
        let sum = FileSum { size, sha256 };
        if let Some(at) = w.packed_at {
            packed.insert(w.rel.clone(), Packed { at, sum });
        } else {
            sums.insert(w.rel.clone(), sum);
        }
    }
    Ok((sums, packed))
}

/// The package's modules directory (classic or merged-/usr layout, by where its members
/// were), created if the package holds none or only packed modules there; a kernel without
/// modules gets an empty one, so every request for a module fails with a clear "not in
/// <dir>" error.
fn modules_dir_of(dir: &Path, release: &str, extracted: &[deb::Written]) -> Result<PathBuf> {
    let classic = Path::new("lib/modules").join(release);
    let merged = Path::new("usr/lib/modules").join(release);
    let has = |d: &Path| extracted.iter().any(|w| w.rel.starts_with(d));
    let chosen = if has(&merged) && !has(&classic) {
        merged
    } else {
        classic
    };
    fs::create_dir_all(dir.join(&chosen)).map_err(|source| cache_error(dir, source))?;
    Ok(chosen)
}

fn write_meta(dir: &Path, meta: &CacheMeta) -> Result<()> {
    let path = dir.join(CACHE_META);
    let file = File::create(&path).map_err(|source| cache_error(&path, source))?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer(&mut out, meta)
        .map_err(io::Error::from)
        .and_then(|()| out.flush())
        .map_err(|source| cache_error(&path, source))
}

/// Renames the finished entry into place. If another process finished the
/// same digest first, its entry is equivalent and ours is dropped.
fn commit(partial: tempfile::TempDir, entry: &Path) -> Result<()> {
    match fs::rename(partial.path(), entry) {
        Ok(()) => {
            // The directory now lives at `entry`; only forget the guard.
            let _moved = partial.keep();
            Ok(())
        }
        Err(_) if entry.join(CACHE_META).is_file() => Ok(()),
        Err(source) => Err(cache_error(entry, source)),
    }
}

/// The architecture a kernel image is built for, read from its header: the
/// plan checks it before anything is unpacked or copied.
pub fn detect_machine(vmlinuz: &Path) -> Result<Arch> {
    Ok(inspect_image(vmlinuz)?.0)
}

/// Reads the image header: the machine, and for a bzImage the release
/// string it embeds.
fn inspect_image(path: &Path) -> Result<(Arch, Option<String>)> {
    let image_error = |source| Error::Image {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(IMAGE_HEAD).read_to_end(&mut head))
        .map_err(image_error)?;
    let machine = machine_of(&head).map_err(|(problem, hint)| Error::UnknownImage {
        path: path.to_path_buf(),
        problem,
        hint,
    })?;
    let release = (machine == Arch::Amd64)
        .then(|| bzimage_release(&head))
        .flatten();
    Ok((machine, release))
}

/// Identifies the architecture from the boot protocol magics (x86 boot
/// protocol, arm64 booting.rst) or, failing those, the PE header.
fn machine_of(head: &[u8]) -> Result<Arch, (&'static str, &'static str)> {
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return Ok(Arch::Amd64);
    }
    if head.get(0x38..0x3c) == Some(b"ARM\x64") {
        return Ok(Arch::Arm64);
    }
    if head.starts_with(b"MZ") {
        return pe_machine(head);
    }
    if head.starts_with(b"\x1f\x8b") {
        return Err((
            "it is gzip-compressed (Image.gz)",
            "decompress it with `gunzip` or use the EFI-stub image from the linux-image package",
        ));
    }
    Err((
        "no x86 bzImage, arm64 Image or PE header",
        "pass the vmlinuz file from /boot of the kernel package",
    ))
}

/// The machine of an EFI-stub kernel, through the one PE reader.
fn pe_machine(head: &[u8]) -> Result<Arch, (&'static str, &'static str)> {
    let Some(machine) = crate::binary::pe_machine(head) else {
        return Err((
            "an MZ file without a PE header",
            "pass the vmlinuz file from /boot of the kernel package",
        ));
    };
    Arch::from_pe_machine(machine).ok_or((
        "a PE image for an unsupported machine",
        "strata supports x86_64 and arm64 kernels",
    ))
}

/// The first word of the bzImage's version string (`kernel_version` at
/// 0x20e points to it, relative to 0x200), e.g. `6.1.0-56-amd64`.
fn bzimage_release(head: &[u8]) -> Option<String> {
    let pointer = u16::from_le_bytes([*head.get(0x20e)?, *head.get(0x20f)?]);
    if pointer == 0 {
        return None;
    }
    let text = head.get(usize::from(pointer) + 0x200..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    std::str::from_utf8(&text[..end])
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Refuses an image and modules tree that cannot work together.
fn check_consistency(
    image: &Path,
    image_release: Option<String>,
    machine: Arch,
    index: &ModuleIndex,
) -> Result<()> {
    let release = index.release();
    if let Some(found) = image_release.filter(|found| found != release) {
        return Err(Error::ImageRelease {
            path: image.to_path_buf(),
            image_release: found,
            release: release.to_string(),
        });
    }
    for (_, module) in index.modules() {
        let path = || index.dir().join(&module.rel_path);
        if module.info.elf_machine != machine.elf_machine() {
            return Err(Error::ModuleMachine {
                module: path(),
                found: module.info.elf_machine,
                machine,
            });
        }
        let vermagic = module.info.vermagic.as_deref().unwrap_or_default();
        if !vermagic.is_empty() && vermagic.split_whitespace().next() != Some(release) {
            return Err(Error::ModuleRelease {
                module: path(),
                vermagic: vermagic.to_string(),
                release: release.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::deb::test_support::{self as debs, Compression, Member};
    use super::*;
    use crate::kmod::test_support::{fake_ko, EM_X86_64};
    use std::collections::{BTreeMap, BTreeSet};

    /// Cache entries written before the shared `Arch` still load, and new ones are spelled
    /// the same way.
    #[test]
    fn cached_machines_keep_their_first_spelling() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Meta {
            #[serde(with = "cached_machine")]
            machine: Arch,
        }
        for (arch, json) in [
            (Arch::Amd64, r#"{"machine":"X86_64"}"#),
            (Arch::Arm64, r#"{"machine":"Aarch64"}"#),
        ] {
            assert_eq!(
                serde_json::to_string(&Meta { machine: arch }).unwrap(),
                json
            );
            assert_eq!(serde_json::from_str::<Meta>(json).unwrap().machine, arch);
        }
        let err = serde_json::from_str::<Meta>(r#"{"machine":"amd64"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown machine \"amd64\""),
            "{err}"
        );
    }
    use std::process::Command;
    use std::time::Instant;

    const EM_AARCH64: u16 = 183;

    /// A fake bzImage: "HdrS" and a version string "<release> (test)".
    fn fake_bzimage(release: &str) -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x400u16.to_le_bytes());
        let version = format!("{release} (test) #1 SMP\0");
        image[0x600..0x600 + version.len()].copy_from_slice(version.as_bytes());
        image
    }

    /// A fake arm64 Image with the EFI stub's "MZ" and a PE header.
    fn fake_arm64_image() -> Vec<u8> {
        let mut image = vec![0u8; 0x1000];
        image[..2].copy_from_slice(b"MZ");
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        image[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        image[0x40..0x46].copy_from_slice(b"PE\0\0\x64\xaa");
        image
    }

    fn ko(name: &str, depends: &str, release: &str) -> Vec<u8> {
        let fields = [
            format!("name={name}"),
            format!("depends={depends}"),
            format!("vermagic={release} SMP mod_unload"),
        ];
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        fake_ko(EM_X86_64, &fields)
    }

    /// Writes a fake linux-image package with three modules below `prefix`.
    fn fake_kernel_deb(path: &Path, prefix: &str, images: &[&str]) {
        let release = "1.0-test";
        let image = fake_bzimage(release);
        let cdrom = ko("cdrom", "", release);
        let isofs = ko("isofs", "cdrom", release);
        let sr = ko("sr_mod", "cdrom,scsi_mod", release);
        let dir = |rel: &str| format!("./{prefix}lib/modules/{release}/{rel}");
        let paths = [
            dir(""),
            dir("kernel/"),
            dir("kernel/cdrom.ko"),
            dir("kernel/isofs.ko"),
            dir("kernel/sr_mod.ko"),
            dir("modules.builtin"),
        ];
        let mut members = vec![Member::Dir("./", 0o755), Member::Dir("./boot/", 0o755)];
        let image_paths: Vec<String> = images
            .iter()
            .map(|r| format!("./boot/vmlinuz-{r}"))
            .collect();
        for p in &image_paths {
            members.push(Member::File(p, 0o644, &image));
        }
        members.extend([
            Member::File("./boot/config-1.0-test", 0o644, b"CONFIG_X=y\n"),
            Member::Dir(&paths[0], 0o755),
            Member::Dir(&paths[1], 0o755),
            Member::File(&paths[2], 0o644, &cdrom),
            Member::File(&paths[3], 0o644, &isofs),
            Member::File(&paths[4], 0o644, &sr),
            Member::File(&paths[5], 0o644, b"kernel/drivers/scsi/scsi_mod.ko\n"),
            Member::Dir("./usr/", 0o755),
            Member::File("./usr/share-other", 0o644, b"not extracted"),
        ]);
        debs::deb(
            path,
            &debs::control("linux-image-test", "amd64"),
            &members,
            Compression::XzBlocks,
        );
    }

    fn no_partials(kernels: &Path) -> bool {
        fs::read_dir(kernels).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".partial-")
        })
    }

    #[test]
    fn from_deb_extracts_indexes_and_reuses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("k.deb");
        fake_kernel_deb(&deb, "", &["1.0-test"]);
        let cache = dir.path().join("cache");
        let cold = from_deb(&deb, &cache).unwrap();
        assert_eq!(cold.release, "1.0-test");
        assert_eq!(cold.machine, Arch::Amd64);
        assert_eq!(cold.source_digest, sha256_file(&deb).unwrap());
        let entry = cache.join("kernels").join(&cold.source_digest);
        assert_eq!(cold.vmlinuz, entry.join("boot/vmlinuz-1.0-test"));
        assert_eq!(cold.modules_dir, entry.join("lib/modules/1.0-test"));
        assert_eq!(cold.index.dir(), cold.modules_dir);
        assert!(!entry.join("boot/config-1.0-test").exists());
        assert!(!entry.join("usr").exists());
        assert!(no_partials(&cache.join("kernels")));
        let closure = cold
            .index
            .closure(&["sr_mod".into(), "isofs".into()])
            .unwrap();
        let names: Vec<&str> = closure.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["cdrom", "sr_mod", "isofs"]);

        // A warm load comes from kernel.json, not a new unpack.
        let stamp = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
        let written = stamp(&entry.join(CACHE_META));
        let warm = from_deb(&deb, &cache).unwrap();
        assert_eq!(warm, cold);
        assert_eq!(stamp(&entry.join(CACHE_META)), written);

        // The modules are packed, and written as files when a build asks for them.
        let isofs = cold.modules_dir.join("kernel/isofs.ko");
        assert!(!isofs.exists() && entry.join(PACK).is_file());
        assert!(cold.modules_dir.join("modules.builtin").is_file());
        cold.unpack([Path::new("kernel/isofs.ko")]).unwrap();
        assert_eq!(fs::read(&isofs).unwrap(), ko("isofs", "cdrom", "1.0-test"));
        assert!(!cold.modules_dir.join("kernel/cdrom.ko").exists());

        // A damaged entry is rebuilt.
        fs::write(entry.join(CACHE_META), b"{").unwrap();
        let rebuilt = from_deb(&deb, &cache).unwrap();
        assert_eq!(rebuilt, cold);
        assert!(
            !isofs.exists(),
            "a rebuilt entry starts with its modules packed"
        );
    }

    /// The unpacked package leaves the page cache (a build reads back only the modules it
    /// ships; see `crate::io::pages`), and its files keep their bytes.
    #[test]
    fn an_unpacked_kernel_leaves_the_page_cache() {
        let dir = crate::io::pages::droppable_tempdir();
        let deb = dir.path().join("k.deb");
        fake_kernel_deb(&deb, "", &["1.0-test"]);
        let kernel = from_deb(&deb, &dir.path().join("cache")).unwrap();
        let module = kernel.modules_dir.join("kernel/isofs.ko");
        for file in [&kernel.vmlinuz, &kernel.pack] {
            assert_eq!(
                crate::io::pages::resident_pages(file),
                0,
                "{}",
                file.display()
            );
        }
        kernel.unpack([Path::new("kernel/isofs.ko")]).unwrap();
        assert_eq!(
            fs::read(&module).unwrap(),
            ko("isofs", "cdrom", "1.0-test"),
            "the module reads back whole"
        );
    }

    #[test]
    fn a_truncated_or_missing_cache_file_is_unpacked_again() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("k.deb");
        fake_kernel_deb(&deb, "", &["1.0-test"]);
        let cache = dir.path().join("cache");
        let cold = from_deb(&deb, &cache).unwrap();
        let whole = fs::read(&cold.vmlinuz).unwrap();
        fs::write(&cold.vmlinuz, &whole[..100]).unwrap();
        assert_eq!(from_deb(&deb, &cache).unwrap(), cold);
        assert_eq!(fs::read(&cold.vmlinuz).unwrap(), whole);
        // Same size, other bytes: the image is hashed on every load.
        let mut flipped = whole.clone();
        flipped[0x700] ^= 1;
        fs::write(&cold.vmlinuz, &flipped).unwrap();
        from_deb(&deb, &cache).unwrap();
        assert_eq!(fs::read(&cold.vmlinuz).unwrap(), whole);
        // A pack cut short is unpacked again.
        let pack = fs::read(&cold.pack).unwrap();
        fs::write(&cold.pack, &pack[..pack.len() - 1]).unwrap();
        from_deb(&deb, &cache).unwrap();
        assert_eq!(fs::read(&cold.pack).unwrap(), pack);
        // A module written out of it and cut short, or removed, is written again.
        let isofs = cold.modules_dir.join("kernel/isofs.ko");
        let rel = [Path::new("kernel/isofs.ko")];
        cold.unpack(rel).unwrap();
        let whole = fs::read(&isofs).unwrap();
        fs::write(&isofs, &whole[..10]).unwrap();
        cold.unpack(rel).unwrap();
        assert_eq!(fs::read(&isofs).unwrap(), whole);
        fs::remove_file(&isofs).unwrap();
        cold.unpack(rel).unwrap();
        assert_eq!(fs::read(&isofs).unwrap(), whole);
    }

    #[test]
    fn a_modified_module_is_refused_before_it_is_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("k.deb");
        fake_kernel_deb(&deb, "", &["1.0-test"]);
        let cache = dir.path().join("cache");
        let kernel = from_deb(&deb, &cache).unwrap();
        let shipped = [Path::new("kernel/cdrom.ko"), Path::new("kernel/isofs.ko")];
        kernel.unpack(shipped).unwrap();
        kernel.verify_shipped(shipped).unwrap();
        let isofs = kernel.modules_dir.join("kernel/isofs.ko");
        let mut bytes = fs::read(&isofs).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&isofs, &bytes).unwrap();
        let err = kernel.verify_shipped(shipped).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Damaged {
                    what: "its sha256",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("isofs.ko in the kernel cache is damaged"),
            "{msg}"
        );
        assert!(!kernel.modules_dir.exists(), "the damaged entry was kept");
        let again = from_deb(&deb, &cache).unwrap();
        again.unpack(shipped).unwrap();
        again.verify_shipped(shipped).unwrap();

        // So is a module whose bytes changed in the pack, once written out of it.
        let mut pack = fs::read(&again.pack).unwrap();
        let at = again.packed[&again.modules_dir.join("kernel/isofs.ko")] as usize;
        pack[at + 1] ^= 0xff;
        fs::write(&again.pack, &pack).unwrap();
        fs::remove_dir_all(again.modules_dir.join("kernel")).unwrap();
        again.unpack(shipped).unwrap();
        assert!(again.verify_shipped(shipped).is_err());
    }

    #[test]
    fn from_deb_supports_merged_usr_packages() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("k.deb");
        fake_kernel_deb(&deb, "usr/", &["1.0-test"]);
        let kernel = from_deb(&deb, dir.path()).unwrap();
        assert!(kernel.modules_dir.ends_with("usr/lib/modules/1.0-test"));
        assert_eq!(kernel.index.len(), 3);
    }

    #[test]
    fn from_deb_needs_exactly_one_image() {
        let dir = tempfile::tempdir().unwrap();
        for images in [&[][..], &["1.0-test", "1.0-other"][..]] {
            let deb = dir.path().join("k.deb");
            fake_kernel_deb(&deb, "", images);
            let err = from_deb(&deb, &dir.path().join("cache")).unwrap_err();
            assert!(
                matches!(&err, Error::VmlinuzCount { found, .. } if found.len() == images.len())
            );
            assert!(err.to_string().contains("k.deb"), "{err}");
            assert!(no_partials(&dir.path().join("cache/kernels")));
        }
    }

    #[test]
    fn detects_machines_from_headers() {
        assert_eq!(machine_of(&fake_bzimage("x")), Ok(Arch::Amd64));
        assert_eq!(
            bzimage_release(&fake_bzimage("6.1.0-56-amd64")).as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(machine_of(&fake_arm64_image()), Ok(Arch::Arm64));
        let mut zboot = fake_arm64_image();
        zboot[0x38..0x3c].copy_from_slice(b"zimg");
        assert_eq!(machine_of(&zboot), Ok(Arch::Arm64));
        zboot[0x44..0x46].copy_from_slice(&0x8664u16.to_le_bytes());
        assert_eq!(machine_of(&zboot), Ok(Arch::Amd64));
        zboot[0x44..0x46].copy_from_slice(&0x14cu16.to_le_bytes());
        assert!(machine_of(&zboot).is_err());
        assert!(machine_of(b"\x1f\x8b\x08\0")
            .unwrap_err()
            .0
            .contains("gzip"));
        assert!(machine_of(b"MZ").is_err());
        assert!(machine_of(b"").is_err());
    }

    /// Writes `vmlinuz` and `modules/<release>/kernel/m.ko` under `dir`.
    fn parts(
        dir: &Path,
        image: &[u8],
        release: &str,
        machine: u16,
        vermagic: &str,
    ) -> (PathBuf, PathBuf) {
        let vmlinuz = dir.join("vmlinuz");
        fs::write(&vmlinuz, image).unwrap();
        let modules = dir.join("modules").join(release);
        fs::create_dir_all(modules.join("kernel")).unwrap();
        let vermagic = format!("vermagic={vermagic}");
        fs::write(
            modules.join("kernel/m.ko"),
            fake_ko(machine, &["name=m", &vermagic]),
        )
        .unwrap();
        (vmlinuz, modules)
    }

    #[test]
    fn from_parts_accepts_a_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (vmlinuz, modules) = parts(
            dir.path(),
            &fake_bzimage("2.0"),
            "2.0",
            EM_X86_64,
            "2.0 SMP",
        );
        let kernel = from_parts(&vmlinuz, &modules).unwrap();
        assert_eq!(kernel.release, "2.0");
        assert_eq!(kernel.source_digest, sha256_file(&vmlinuz).unwrap());
        assert_eq!(kernel.index.len(), 1);
    }

    #[test]
    fn from_parts_refuses_mismatched_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let (vmlinuz, modules) =
            parts(dir.path(), &fake_arm64_image(), "2.0", EM_X86_64, "2.0 SMP");
        let err = from_parts(&vmlinuz, &modules).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ModuleMachine {
                    found: 62,
                    machine: Arch::Arm64,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("m.ko"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let (vmlinuz, modules) = parts(
            dir.path(),
            &fake_arm64_image(),
            "2.0",
            EM_AARCH64,
            "2.1 SMP",
        );
        let err = from_parts(&vmlinuz, &modules).unwrap_err();
        assert!(matches!(err, Error::ModuleRelease { .. }), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let (vmlinuz, modules) = parts(dir.path(), &fake_bzimage("3.0"), "2.0", EM_X86_64, "2.0");
        let err = from_parts(&vmlinuz, &modules).unwrap_err();
        assert!(
            matches!(&err, Error::ImageRelease { image_release, .. } if image_release == "3.0"),
            "{err}"
        );

        let err = from_parts(&dir.path().join("nope"), &modules).unwrap_err();
        assert!(matches!(err, Error::Image { .. }), "{err}");
        fs::write(dir.path().join("junk"), b"junk").unwrap();
        let err = from_parts(&dir.path().join("junk"), &modules).unwrap_err();
        assert!(
            err.to_string().contains("not a recognised kernel image"),
            "{err}"
        );
    }

    // ---- Real Debian packages (`make test-inputs`; see crate::test_support) ----
    use crate::test_support;

    const REQUEST: &str = "virtio_pci virtio_blk virtio_scsi nvme ahci sd_mod sr_mod cdrom isofs loop squashfs overlay vfat nls_cp437 nls_ascii";

    /// Debian's current kernel package for `arch` (the release is read from it).
    fn real_deb(arch: &str) -> Option<PathBuf> {
        let path = test_support::kernel_deb(arch);
        test_support::require_input(&path).then_some(path)
    }

    fn request() -> Vec<String> {
        REQUEST.split_whitespace().map(String::from).collect()
    }

    /// Runs `depmod -b` on the extracted tree and returns modules.dep as
    /// module → set of (transitive) dependency names.
    fn depmod_deps(kernel: &Kernel) -> Option<BTreeMap<String, BTreeSet<String>>> {
        // modules_dir is <base>/lib/modules/<release>.
        let base = kernel.modules_dir.ancestors().nth(3).unwrap();
        if !test_support::require_tool("depmod") {
            return None;
        }
        let status = Command::new("depmod")
            .arg("-b")
            .arg(base)
            .arg(&kernel.release)
            .status()
            .expect("run depmod");
        assert!(status.success(), "depmod failed: {status}");
        let text = fs::read_to_string(kernel.modules_dir.join("modules.dep")).unwrap();
        let name = |p: &str| {
            kmod::normalize(
                Path::new(p)
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .trim_end_matches(".ko"),
            )
        };
        Some(
            text.lines()
                .map(|line| {
                    let (module, deps) = line.split_once(':').unwrap();
                    (name(module), deps.split_whitespace().map(name).collect())
                })
                .collect(),
        )
    }

    /// Our hard-dependency closure of one module (no softdeps).
    fn hard_deps(index: &ModuleIndex, name: &str, out: &mut BTreeSet<String>) {
        for dep in &index.get(name).unwrap().info.depends {
            if index.get(dep).is_some() && out.insert(dep.clone()) {
                hard_deps(index, dep, out);
            }
        }
    }

    /// Judges the whole index and a closure against depmod: every module's
    /// transitive dependencies must equal modules.dep's, and the closure must
    /// be exactly the requests, their modules.dep entries and softdeps.
    fn judge_with_depmod(kernel: &Kernel, closure: &[kmod::ModuleRef]) {
        let Some(depmod) = depmod_deps(kernel) else {
            return;
        };
        assert_eq!(depmod.len(), kernel.index.len());
        for (name, _) in kernel.index.modules() {
            let mut ours = BTreeSet::new();
            hard_deps(&kernel.index, name, &mut ours);
            assert_eq!(&ours, &depmod[name], "dependencies of {name}");
        }
        let position: BTreeMap<&str, usize> = closure
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let mut expected = BTreeSet::new();
        for module in closure {
            for dep in &depmod[&module.name] {
                assert!(
                    position[dep.as_str()] < position[module.name.as_str()],
                    "{dep} after {}",
                    module.name
                );
            }
            let info = &kernel.index.get(&module.name).unwrap().info;
            let is_requested = request().iter().any(|r| kmod::normalize(r) == module.name);
            let is_softdep = closure.iter().any(|m| {
                let pre = &kernel.index.get(&m.name).unwrap().info.softdep_pre;
                pre.contains(&module.name)
                    || info
                        .aliases
                        .iter()
                        .any(|a| pre.contains(&kmod::normalize(a)))
            });
            if is_requested || is_softdep {
                expected.insert(module.name.clone());
                expected.extend(depmod[&module.name].iter().cloned());
            }
        }
        let ours: BTreeSet<String> = closure.iter().map(|m| m.name.clone()).collect();
        assert_eq!(ours, expected);
    }

    /// Judges direct dependencies of the closure's modules with `modinfo`.
    fn judge_with_modinfo(kernel: &Kernel, closure: &[kmod::ModuleRef]) {
        if !test_support::require_tool("modinfo") {
            return;
        }
        for module in closure {
            let path = kernel.modules_dir.join(&module.rel_path);
            let out = crate::test_support::judge_ok(
                Command::new("modinfo").args(["-F", "depends"]).arg(&path),
            );
            let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .trim()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(kmod::normalize)
                .collect();
            assert_eq!(
                kernel.index.get(&module.name).unwrap().info.depends,
                theirs,
                "{}",
                module.name
            );
        }
    }

    /// Writes every packed module of `kernel` as a file (for the judges, which read the tree).
    fn unpack_all(kernel: &Kernel) {
        let rels = kernel
            .packed
            .keys()
            .filter_map(|p| p.strip_prefix(&kernel.modules_dir).ok());
        kernel.unpack(rels).unwrap();
    }

    fn real_kernel_closure(deb: &Path, machine: Arch) {
        let cache = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let cold = from_deb(deb, cache.path()).unwrap();
        let cold_time = start.elapsed();
        let start = Instant::now();
        let warm = from_deb(deb, cache.path()).unwrap();
        let warm_time = start.elapsed();
        assert_eq!(warm, cold);
        assert_eq!(cold.machine, machine);
        let start = Instant::now();
        unpack_all(&cold);
        let rescanned = ModuleIndex::scan(&cold.modules_dir).unwrap();
        let scan_time = start.elapsed();
        assert_eq!(rescanned, cold.index);
        let start = Instant::now();
        let digest = sha256_file(deb).unwrap();
        let hash_time = start.elapsed();
        assert_eq!(digest, cold.source_digest);

        let closure = cold.index.closure(&request()).unwrap();
        eprintln!(
            "{}: release {}, {} modules, {} builtin-skipped requests; cold {:.2?}, warm {:.2?} (sha256 {:.2?}), scan alone {:.2?}",
            deb.display(),
            cold.release,
            cold.index.len(),
            request().iter().filter(|r| cold.index.is_builtin(r)).count(),
            cold_time,
            warm_time,
            hash_time,
            scan_time
        );
        for module in &closure {
            eprintln!("  {:<14} {}", module.name, module.rel_path.display());
        }
        judge_with_modinfo(&cold, &closure);
        judge_with_depmod(&cold, &closure);
    }

    #[test]
    fn real_amd64_kernel_package() {
        if let Some(deb) = real_deb("amd64") {
            real_kernel_closure(&deb, Arch::Amd64);
        }
    }

    #[test]
    fn real_arm64_kernel_package() {
        if let Some(deb) = real_deb("arm64") {
            real_kernel_closure(&deb, Arch::Arm64);
        }
    }
}
