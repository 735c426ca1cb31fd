//! Kernel modules: read each module's `.modinfo`, index a
//! `lib/modules/<release>` tree, and compute the modules a request needs, in
//! load order, without depmod or modprobe.
//!
//! Why `.modinfo`: Debian's kernel packages ship no `modules.dep` (postinst
//! runs depmod), and strata runs no external tools, so dependencies come from
//! the `depends=` and `softdep=` strings the kernel build stores in every
//! module (the same data depmod reads). Names are normalised with `-` → `_`,
//! as the kernel does.
//!
//! Supported: ELF32/ELF64 modules of either byte order, stored as `.ko`,
//! `.ko.xz` or `.ko.zst`; `modules.builtin` (built-in modules are never
//! listed); `softdep` `pre:` modules, found by name or by exact alias and
//! skipped when absent; dependency cycles (broken deterministically).
//! Not supported: `.ko.gz` (refused with a hint), modalias wildcard matching
//! (requests and softdeps match aliases literally), `softdep` `post:` modules
//! in the closure (they are parsed but modprobe loads them after the module,
//! so nothing depends on them), and depmod.conf search orders beyond
//! "`updates/` wins over other copies of a module".

pub mod depmod;
pub mod index;
pub mod signature;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::io::decompress::Format;
use object::elf::{FileHeader32, FileHeader64};
use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, FileKind, ReadCache, ReadRef, StringTable};
use serde::{Deserialize, Serialize};

/// Upper bound for scan threads; more would only contend on the disk.
const MAX_SCAN_THREADS: usize = 8;

/// Errors from reading modules and resolving their dependencies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A compressed module could not be decompressed.
    #[error("cannot decompress kernel module {}", path.display())]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The module file is not an ELF file we can read.
    #[error("{} is not a valid ELF kernel module ({reason}); hint: is the file truncated?", path.display())]
    Elf {
        /// The module file.
        path: PathBuf,
        /// What the ELF reader objected to.
        reason: String,
    },
    /// The index JSON could not be written or read back.
    #[error("cannot (de)serialise the module index of {}; hint: delete the kernel cache entry to rebuild it", dir.display())]
    Json {
        /// The modules directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A module lists a dependency that is neither a module nor built in.
    #[error(
        "kernel module {module} depends on {dependency}, which is neither in {} nor built in; hint: the modules tree is incomplete, re-extract the kernel package",
        dir.display()
    )]
    MissingDependency {
        /// The module that declares the dependency.
        module: String,
        /// The missing dependency's name.
        dependency: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// The module has no `.modinfo` section.
    #[error("{} has no .modinfo section; hint: is it a kernel module built for Linux?", path.display())]
    NoModinfo {
        /// The module file.
        path: PathBuf,
    },
    /// The modules directory is missing or not a directory.
    #[error("{} is not a directory; hint: pass the kernel's lib/modules/<release> directory", dir.display())]
    NotADirectory {
        /// The modules directory.
        dir: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The module file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A requested module does not exist in the tree.
    #[error(
        "kernel module {name} is not in {} (nor built in); hint: {hint}",
        dir.display()
    )]
    UnknownModule {
        /// The requested (normalised) name.
        name: String,
        /// The modules directory.
        dir: PathBuf,
        /// A suggestion for the fix.
        hint: String,
    },
    /// The module is compressed with a method we have no decoder for.
    #[error(
        "{} is compressed with an unsupported method; hint: only .ko, .ko.xz and .ko.zst \
         modules are supported (recompress .ko.gz modules with xz)",
        path.display()
    )]
    UnsupportedCompression {
        /// The module file.
        path: PathBuf,
    },
}

/// Result of this module's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a module's `.modinfo` section says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModInfo {
    /// Normalised module name (`name=`, else the file name).
    pub name: String,
    /// Normalised hard dependencies (`depends=`), in the module's order.
    pub depends: Vec<String>,
    /// Normalised `softdep` `pre:` names (modules or aliases).
    pub softdep_pre: Vec<String>,
    /// Normalised `softdep` `post:` names; not part of closures.
    pub softdep_post: Vec<String>,
    /// `alias=` values, verbatim.
    pub aliases: Vec<String>,
    /// `vermagic=` (release first, then flags), if present.
    pub vermagic: Option<String>,
    /// ELF `e_machine` (62 = x86_64, 183 = aarch64).
    pub elf_machine: u16,
}

/// A module picked by [`ModuleIndex::closure`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// Normalised module name.
    pub name: String,
    /// Path relative to the modules directory (e.g. `kernel/fs/fat/vfat.ko`).
    pub rel_path: PathBuf,
}

/// A module file and what its `.modinfo` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedModule {
    /// Path relative to the modules directory.
    pub rel_path: PathBuf,
    /// Its parsed `.modinfo`.
    pub info: ModInfo,
}

/// Every module of one `lib/modules/<release>` tree, by normalised name, plus
/// the names and aliases of built-in modules. Serialisable so the kernel
/// cache can skip the scan; the directory itself is not stored, so a cache
/// can move.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleIndex {
    release: String,
    modules: BTreeMap<String, IndexedModule>,
    builtin: BTreeSet<String>,
    builtin_aliases: BTreeSet<String>,
    #[serde(skip)]
    dir: PathBuf,
}

/// The kernel's name normalisation: `-` and `_` are the same in module names.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads the `.modinfo` section and ELF machine of one module file.
pub fn modinfo(path: &Path) -> Result<ModInfo> {
    let (machine, section) = modinfo_section(ModuleBytes::Host(path), path)?;
    let stem = file_stem(path);
    Ok(parse_modinfo(&section, machine, &stem))
}

/// [`modinfo`] of a module held in memory, named by `path` (its name falls back to the
/// file's stem).
pub fn modinfo_of(data: &[u8], path: &Path) -> Result<ModInfo> {
    let (machine, section) = modinfo_section(ModuleBytes::Memory(data), path)?;
    Ok(parse_modinfo(&section, machine, &file_stem(path)))
}

/// Where a module's bytes are: a host file, or memory (a module held by a tree).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ModuleBytes<'a> {
    /// A host file; a plain `.ko` is read only where the ELF headers and `.modinfo` are.
    Host(&'a Path),
    /// The whole file in memory.
    Memory(&'a [u8]),
}

/// The ELF machine and a copy of `.modinfo` of module `name`, whose suffix says how it is
/// compressed (as for libkmod). The one module reader of the index scan and of depmod.
pub(crate) fn modinfo_section(bytes: ModuleBytes<'_>, name: &Path) -> Result<(u16, Vec<u8>)> {
    let format = module_format(name)?;
    match (format, bytes) {
        (Format::Plain, ModuleBytes::Host(path)) => {
            let file = File::open(path).map_err(|source| read_error(path, source))?;
            // Reads only the ELF header, section table and `.modinfo`.
            read_elf(&ReadCache::new(file), name)
        }
        (Format::Plain, ModuleBytes::Memory(data)) => read_elf(data, name),
        (_, ModuleBytes::Host(path)) => {
            let file = File::open(path).map_err(|source| read_error(path, source))?;
            read_elf(decompress(file, format, name)?.as_slice(), name)
        }
        (_, ModuleBytes::Memory(data)) => {
            read_elf(decompress(data, format, name)?.as_slice(), name)
        }
    }
}

/// The whole module `name`, decompressed as its suffix says: what the
/// signature reader needs when the trailer sits inside a compressed file.
pub(crate) fn whole_module(bytes: ModuleBytes<'_>, name: &Path) -> Result<Vec<u8>> {
    let format = module_format(name)?;
    match (format, bytes) {
        (Format::Plain, ModuleBytes::Host(path)) => {
            fs::read(path).map_err(|source| read_error(path, source))
        }
        (Format::Plain, ModuleBytes::Memory(data)) => Ok(data.to_vec()),
        (_, ModuleBytes::Host(path)) => {
            let file = File::open(path).map_err(|source| read_error(path, source))?;
            decompress(file, format, name)
        }
        (_, ModuleBytes::Memory(data)) => decompress(data, format, name),
    }
}

/// How module `name` is compressed, from its suffix (as for libkmod).
fn module_format(name: &Path) -> Result<Format> {
    match module_suffix(name) {
        Some(".ko") => Ok(Format::Plain),
        Some(".ko.xz") => Ok(Format::Xz),
        Some(".ko.zst") => Ok(Format::Zstd),
        _ => Err(Error::UnsupportedCompression {
            path: name.to_path_buf(),
        }),
    }
}

fn read_error(path: &Path, source: io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The module suffix of a file name, if it looks like a module at all (`.ko.gz` included,
/// so that callers can refuse it by name).
pub(crate) fn module_suffix(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .into_iter()
        .find(|suffix| name.ends_with(suffix))
}

/// The module name a file implies when `.modinfo` has no `name=`.
fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let stem = name.split(".ko").next().unwrap_or_default();
    normalize(stem)
}

/// The whole decompressed module: `.modinfo` may sit anywhere in it.
fn decompress(r: impl io::Read, format: Format, name: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    crate::io::decompress::decoder(format, r)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|source| Error::Decompress {
            path: name.to_path_buf(),
            source,
        })?;
    Ok(out)
}

/// Returns the ELF machine and a copy of the `.modinfo` bytes.
fn read_elf<'d, R: ReadRef<'d>>(data: R, path: &Path) -> Result<(u16, Vec<u8>)> {
    match elf_modinfo_section(data).map_err(|reason| Error::Elf {
        path: path.to_path_buf(),
        reason,
    })? {
        (machine, Some(section)) => Ok((machine, section.to_vec())),
        (_, None) => Err(Error::NoModinfo {
            path: path.to_path_buf(),
        }),
    }
}

/// The ELF machine and the `.modinfo` section of a module (32- or 64-bit),
/// if it has one; the error is a reason for the caller to attach a path to.
/// Shared with [`depmod`], which reads modules the same way.
pub fn elf_modinfo_section<'d, R: ReadRef<'d>>(
    data: R,
) -> std::result::Result<(u16, Option<&'d [u8]>), String> {
    match FileKind::parse(data).map_err(|e| e.to_string())? {
        FileKind::Elf64 => elf_modinfo::<FileHeader64<Endianness>, R>(data),
        FileKind::Elf32 => elf_modinfo::<FileHeader32<Endianness>, R>(data),
        other => Err(format!("file kind {other:?}")),
    }
}

/// Reads the section headers and their name table in one piece each, then
/// `.modinfo`: on a file, that is four reads. (`object::File` would also
/// parse the symbol table, and name lookups through `ReadCache` cost one
/// read per section name.)
fn elf_modinfo<'d, Elf, R>(data: R) -> Result<(u16, Option<&'d [u8]>), String>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'d>,
{
    let text = |e: object::Error| e.to_string();
    let header = Elf::parse(data).map_err(text)?;
    let endian = header.endian().map_err(text)?;
    let machine = header.e_machine(endian).0;
    let sections = header.section_headers(endian, data).map_err(text)?;
    if sections.is_empty() {
        return Ok((machine, None));
    }
    let shstrndx = header.shstrndx(endian, data).map_err(text)?;
    let names = usize::try_from(shstrndx)
        .ok()
        .and_then(|i| sections.get(i))
        .ok_or("e_shstrndx is out of range")?
        .data(endian, data)
        .map_err(text)?;
    let strings = StringTable::new(names, 0, names.len() as u64);
    for section in sections {
        if section.name(endian, strings) == Ok(b".modinfo".as_slice()) {
            return Ok((machine, Some(section.data(endian, data).map_err(text)?)));
        }
    }
    Ok((machine, None))
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
fn parse_modinfo(section: &[u8], elf_machine: u16, fallback_name: &str) -> ModInfo {
    let mut info = ModInfo {
        elf_machine,
        ..ModInfo::default()
    };
    let mut name = None;
    for field in section.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let field = String::from_utf8_lossy(field);
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => name = Some(normalize(value)),
            "depends" => info
                .depends
                .extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "softdep" => parse_softdep(value, &mut info),
            "alias" => info.aliases.push(value.to_string()),
            "vermagic" => info.vermagic = Some(value.to_string()),
            _ => {}
        }
    }
    info.name = name.unwrap_or_else(|| fallback_name.to_string());
    info
}

/// `softdep=pre: a b post: c`: words after `pre:` or `post:` belong to that
/// list until the next marker.
fn parse_softdep(value: &str, info: &mut ModInfo) {
    let mut target: Option<&mut Vec<String>> = None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => target = Some(&mut info.softdep_pre),
            "post:" => target = Some(&mut info.softdep_post),
            _ => {
                if let Some(list) = target.as_deref_mut() {
                    list.push(normalize(word));
                }
            }
        }
    }
}

impl ModuleIndex {
    /// Indexes every module below `modules_dir` (`lib/modules/<release>`),
    /// reading `.modinfo` on all cores, plus `modules.builtin` if present.
    pub fn scan(modules_dir: &Path) -> Result<Self> {
        if !modules_dir.is_dir() {
            return Err(Error::NotADirectory {
                dir: modules_dir.to_path_buf(),
            });
        }
        let mut files = Vec::new();
        collect_modules(modules_dir, Path::new(""), &mut files)?;
        let infos = parse_all(modules_dir, &files)?;
        Self::of(modules_dir, files.into_iter().zip(infos).collect())
    }

    /// The index of `modules` (paths below `modules_dir`, each with its information), plus
    /// `modules.builtin` and `modules.builtin.modinfo` if `modules_dir` holds them: for a tree
    /// whose modules are not files there (the kernel cache packs them into one, reading each
    /// module's information on its way in; see `source/kernel.rs`).
    pub fn of(modules_dir: &Path, mut modules: Vec<(PathBuf, ModInfo)>) -> Result<Self> {
        modules.sort_by(|a, b| a.0.cmp(&b.0));
        let mut index = BTreeMap::new();
        for (rel_path, info) in modules {
            insert_preferred(&mut index, IndexedModule { rel_path, info });
        }
        Ok(ModuleIndex {
            release: dir_name(modules_dir),
            modules: index,
            builtin: read_builtin(modules_dir)?,
            builtin_aliases: read_builtin_aliases(modules_dir)?,
            dir: modules_dir.to_path_buf(),
        })
    }

    /// Reads an index written by [`ModuleIndex::to_json`] for the tree at `dir`.
    pub fn from_json(json: &[u8], dir: &Path) -> Result<Self> {
        let mut index: Self = serde_json::from_slice(json).map_err(|source| Error::Json {
            dir: dir.to_path_buf(),
            source,
        })?;
        index.dir = dir.to_path_buf();
        Ok(index)
    }

    /// Serialises the index (without its directory) as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::Json {
            dir: self.dir.clone(),
            source,
        })
    }

    /// Points the index at the tree's current location (after a move).
    pub fn set_dir(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
    }

    /// The modules directory this index describes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The release, i.e. the modules directory's name.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Looks a module up by (not necessarily normalised) name.
    pub fn get(&self, name: &str) -> Option<&IndexedModule> {
        self.modules.get(&normalize(name))
    }

    /// All modules, sorted by name.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &IndexedModule)> {
        self.modules.iter().map(|(name, m)| (name.as_str(), m))
    }

    /// Number of module files indexed.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// True if the tree holds no modules.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Whether `name` is a module built into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Every module needed to load `requested` (names or exact aliases),
    /// dependencies before dependents. Requests that name a built-in module,
    /// or only an alias of one (e.g. `fs-ext4`), need nothing and are left
    /// out, as are built-in dependencies; the
    /// order is a depth-first post-order over the requests as given, each
    /// module's `softdep` `pre:` modules first, then its `depends=` in order.
    pub fn closure(&self, requested: &[String]) -> Result<Vec<ModuleRef>> {
        let mut walk = Walk {
            index: self,
            aliases: None,
            state: HashMap::new(),
            order: Vec::new(),
        };
        for request in requested {
            let name = normalize(request.trim());
            if self.builtin.contains(&name) {
                continue;
            }
            let targets = walk.resolve(&name);
            if targets.is_empty() && self.builtin_aliases.contains(&name) {
                continue;
            }
            if targets.is_empty() {
                return Err(self.unknown(&name));
            }
            for target in targets {
                walk.visit(&target)?;
            }
        }
        Ok(walk
            .order
            .into_iter()
            .map(|name| ModuleRef {
                rel_path: self.modules[&name].rel_path.clone(),
                name,
            })
            .collect())
    }

    /// The error for an unknown request, suggesting similar names.
    fn unknown(&self, name: &str) -> Error {
        let squash = |s: &str| s.replace('_', "");
        let wanted = squash(name);
        let similar: Vec<&str> = self
            .modules
            .keys()
            .filter(|m| {
                let m = squash(m);
                m.contains(&wanted) || (m.len() >= 3 && wanted.contains(&m))
            })
            .map(String::as_str)
            .take(5)
            .collect();
        let hint = if similar.is_empty() {
            format!(
                "check the name with `ls {}/kernel` or remove it from kernel.modules",
                self.dir.display()
            )
        } else {
            format!(
                "did you mean {}? otherwise remove it from kernel.modules",
                similar.join(", ")
            )
        };
        Error::UnknownModule {
            name: name.to_string(),
            dir: self.dir.clone(),
            hint,
        }
    }
}

/// Visit state of the depth-first walk; `Active` marks the current path, so
/// a cycle is cut where it closes instead of recursing forever.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Active,
    Done,
}

struct Walk<'a> {
    index: &'a ModuleIndex,
    /// normalised alias → module names, built on first use (most requests
    /// are names).
    aliases: Option<HashMap<String, Vec<&'a str>>>,
    state: HashMap<String, Mark>,
    order: Vec<String>,
}

impl<'a> Walk<'a> {
    /// A name if it is a module, else all modules with that exact alias
    /// (modprobe loads every match), sorted; empty if neither.
    fn resolve(&mut self, name: &str) -> Vec<String> {
        if self.index.modules.contains_key(name) {
            return vec![name.to_string()];
        }
        let index = self.index;
        let aliases = self.aliases.get_or_insert_with(|| alias_map(index));
        let mut found: Vec<String> = aliases
            .get(name)
            .map(|names| names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        found.sort();
        found.dedup();
        found
    }

    fn visit(&mut self, name: &str) -> Result<()> {
        if self.state.contains_key(name) {
            return Ok(());
        }
        self.state.insert(name.to_string(), Mark::Active);
        let index = self.index;
        let info = &index.modules[name].info;
        for soft in &info.softdep_pre {
            // Absent softdeps are fine: modprobe ignores them too.
            for target in self.resolve(soft) {
                self.visit(&target)?;
            }
        }
        for dep in &info.depends {
            if index.modules.contains_key(dep) {
                self.visit(dep)?;
            } else if !index.builtin.contains(dep) {
                return Err(Error::MissingDependency {
                    module: name.to_string(),
                    dependency: dep.clone(),
                    dir: index.dir.clone(),
                });
            }
        }
        self.state.insert(name.to_string(), Mark::Done);
        self.order.push(name.to_string());
        Ok(())
    }
}

/// Aliases are normalised like names, since requests and softdeps are.
fn alias_map(index: &ModuleIndex) -> HashMap<String, Vec<&str>> {
    let mut map: HashMap<String, Vec<&str>> = HashMap::new();
    for (name, module) in &index.modules {
        for alias in &module.info.aliases {
            map.entry(normalize(alias)).or_default().push(name.as_str());
        }
    }
    map
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Collects module files below `root/rel`, not following symlinks (Debian's
/// `build` and `source` links point into headers packages).
fn collect_modules(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(|source| read_error(&dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| read_error(&dir, source))?;
        let kind = entry
            .file_type()
            .map_err(|source| read_error(&entry.path(), source))?;
        let child = rel.join(entry.file_name());
        if kind.is_dir() {
            collect_modules(root, &child, out)?;
        } else if kind.is_file() && module_suffix(&child).is_some() {
            out.push(child);
        }
    }
    Ok(())
}

/// Reads `.modinfo` of every file on all cores. Work is handed out one file at a time, so a
/// thread that hits large modules does not hold the others up.
fn parse_all(root: &Path, files: &[PathBuf]) -> Result<Vec<ModInfo>> {
    let threads = crate::par::jobs().min(MAX_SCAN_THREADS);
    crate::par::map(files, threads, |rel| modinfo(&root.join(rel)))
        .into_iter()
        .collect()
}

/// Keeps one module per name: a copy under `updates/` wins (depmod's default
/// search order), otherwise the first path in sorted order.
fn insert_preferred(modules: &mut BTreeMap<String, IndexedModule>, module: IndexedModule) {
    let is_update = |m: &IndexedModule| m.rel_path.starts_with("updates");
    match modules.get(&module.info.name) {
        Some(old) if is_update(old) || !is_update(&module) => {}
        _ => {
            modules.insert(module.info.name.clone(), module);
        }
    }
}

/// Names of built-in modules from `modules.builtin` (one path per line, e.g.
/// `kernel/fs/ext4/ext4.ko`); a tree without the file has none.
fn read_builtin(dir: &Path) -> Result<BTreeSet<String>> {
    let path = dir.join("modules.builtin");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(read_error(&path, source)),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| file_stem(Path::new(line)))
        .collect())
}

/// Normalised aliases of built-in modules, from the `<module>.alias=<alias>`
/// strings of `modules.builtin.modinfo`; a tree without the file has none.
fn read_builtin_aliases(dir: &Path) -> Result<BTreeSet<String>> {
    let path = dir.join("modules.builtin.modinfo");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(read_error(&path, source)),
    };
    Ok(bytes
        .split(|&b| b == 0)
        .filter_map(|field| std::str::from_utf8(field).ok())
        .filter_map(|field| field.split_once(".alias="))
        .map(|(_, alias)| normalize(alias))
        .collect())
}

/// Builders for fake modules, shared with the other modules' tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// x86_64 `e_machine`.
    pub(crate) const EM_X86_64: u16 = 62;

    /// A minimal little-endian ELF64 relocatable file whose only content is
    /// a `.modinfo` section holding `fields` — enough for depmod, modinfo
    /// and our reader.
    pub(crate) fn fake_ko(machine: u16, fields: &[&str]) -> Vec<u8> {
        let mut info = Vec::new();
        for field in fields {
            info.extend_from_slice(field.as_bytes());
            info.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let info_off = 64;
        let shstr_off = info_off + info.len();
        let sh_off = (shstr_off + shstrtab.len()).next_multiple_of(8);
        let mut out = vec![0u8; sh_off + 3 * 64];
        out[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        put(&mut out, 16, &1u16.to_le_bytes()); // ET_REL
        put(&mut out, 18, &machine.to_le_bytes());
        put(&mut out, 20, &1u32.to_le_bytes());
        put(&mut out, 40, &(sh_off as u64).to_le_bytes());
        put(&mut out, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut out, 58, &64u16.to_le_bytes()); // e_shentsize
        put(&mut out, 60, &3u16.to_le_bytes()); // e_shnum
        put(&mut out, 62, &2u16.to_le_bytes()); // e_shstrndx
        put(&mut out, info_off, &info);
        put(&mut out, shstr_off, shstrtab);
        section(&mut out, sh_off + 64, 1, 1, 2, info_off, info.len());
        section(&mut out, sh_off + 128, 10, 3, 0, shstr_off, shstrtab.len());
        out
    }

    fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
        out[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn section(
        out: &mut [u8],
        at: usize,
        name: u32,
        kind: u32,
        flags: u64,
        off: usize,
        size: usize,
    ) {
        put(out, at, &name.to_le_bytes());
        put(out, at + 4, &kind.to_le_bytes());
        put(out, at + 8, &flags.to_le_bytes());
        put(out, at + 24, &(off as u64).to_le_bytes());
        put(out, at + 32, &(size as u64).to_le_bytes());
        put(out, at + 48, &1u64.to_le_bytes()); // sh_addralign
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{fake_ko, EM_X86_64};
    use super::*;
    use std::process::Command;

    fn info(name: &str, depends: &[&str], pre: &[&str], aliases: &[&str]) -> ModInfo {
        ModInfo {
            name: name.into(),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            softdep_pre: pre.iter().map(|s| s.to_string()).collect(),
            softdep_post: vec![],
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            vermagic: Some("1.0 SMP".into()),
            elf_machine: EM_X86_64,
        }
    }

    fn index(modules: Vec<ModInfo>, builtin: &[&str]) -> ModuleIndex {
        ModuleIndex {
            release: "1.0".into(),
            modules: modules
                .into_iter()
                .map(|info| {
                    let rel_path = PathBuf::from(format!("kernel/{}.ko", info.name));
                    (info.name.clone(), IndexedModule { rel_path, info })
                })
                .collect(),
            builtin: builtin.iter().map(|s| s.to_string()).collect(),
            builtin_aliases: ["fs_btrfs".to_string()].into(),
            dir: PathBuf::from("/m/1.0"),
        }
    }

    fn names(refs: &[ModuleRef]) -> Vec<&str> {
        refs.iter().map(|r| r.name.as_str()).collect()
    }

    fn req(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn sample() -> ModuleIndex {
        index(
            vec![
                info("sr_mod", &["scsi_mod", "cdrom", "scsi_common"], &[], &[]),
                info("scsi_mod", &["scsi_common"], &[], &[]),
                info("scsi_common", &[], &[], &[]),
                info("cdrom", &[], &[], &[]),
                info("isofs", &["cdrom"], &[], &["fs-iso9660"]),
                info("ext4", &["jbd2", "crc16"], &["crc32c"], &["fs-ext4"]),
                info("jbd2", &[], &[], &[]),
                info("crc32c_generic", &[], &[], &["crc32c", "crypto-crc32c"]),
                info("crc32c_intel", &[], &[], &["crc32c"]),
                info(
                    "virtio_blk",
                    &["virtio", "virtio_ring"],
                    &["absent_mod"],
                    &[],
                ),
                info("a", &["b"], &[], &[]),
                info("b", &[], &["a"], &[]),
            ],
            &["crc16", "virtio", "virtio_ring", "loop"],
        )
    }

    #[test]
    fn dependencies_come_before_dependents() {
        let closure = sample().closure(&req(&["sr_mod", "isofs"])).unwrap();
        assert_eq!(
            names(&closure),
            ["scsi_common", "scsi_mod", "cdrom", "sr_mod", "isofs"]
        );
        assert_eq!(closure[3].rel_path, Path::new("kernel/sr_mod.ko"));
    }

    #[test]
    fn builtins_are_skipped_and_names_normalised() {
        let closure = sample()
            .closure(&req(&["loop", "virtio-blk", "virtio_blk", "fs-btrfs"]))
            .unwrap();
        assert_eq!(names(&closure), ["virtio_blk"]);
    }

    #[test]
    fn softdep_pre_resolves_aliases_and_comes_first() {
        let closure = sample().closure(&req(&["ext4"])).unwrap();
        assert_eq!(
            names(&closure),
            ["crc32c_generic", "crc32c_intel", "jbd2", "ext4"]
        );
    }

    #[test]
    fn requests_may_be_exact_aliases() {
        let closure = sample().closure(&req(&["fs-iso9660"])).unwrap();
        assert_eq!(names(&closure), ["cdrom", "isofs"]);
    }

    #[test]
    fn cycles_terminate_deterministically() {
        let closure = sample().closure(&req(&["a"])).unwrap();
        assert_eq!(names(&closure), ["b", "a"]);
        let closure = sample().closure(&req(&["b"])).unwrap();
        assert_eq!(names(&closure), ["a", "b"]);
    }

    #[test]
    fn unknown_module_is_named_with_a_hint() {
        let err = sample().closure(&req(&["cdrom", "nosuch"])).unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, Error::UnknownModule { name, .. } if name == "nosuch"));
        assert!(
            text.contains("/m/1.0") && text.contains("kernel.modules"),
            "{text}"
        );
        let err = sample().closure(&req(&["srmod"])).unwrap_err();
        assert!(err.to_string().contains("did you mean sr_mod?"), "{err}");
    }

    #[test]
    fn missing_hard_dependency_is_an_error() {
        let broken = index(vec![info("x", &["gone"], &[], &[])], &[]);
        let err = broken.closure(&req(&["x"])).unwrap_err();
        assert!(
            matches!(&err, Error::MissingDependency { module, dependency, .. } if module == "x" && dependency == "gone"),
            "{err}"
        );
    }

    #[test]
    fn parses_modinfo_fields() {
        let section = b"license=GPL\0name=nvme\0softdep=pre: crc-x pre-b post: post_a\0\0\
            depends=nvme-core,\0alias=pci:v*\0alias=nvme-x\0vermagic=6.1 SMP\0\0\0";
        let info = parse_modinfo(section, 62, "fallback");
        assert_eq!(info.name, "nvme");
        assert_eq!(info.depends, ["nvme_core"]);
        assert_eq!(info.softdep_pre, ["crc_x", "pre_b"]);
        assert_eq!(info.softdep_post, ["post_a"]);
        assert_eq!(info.aliases, ["pci:v*", "nvme-x"]);
        assert_eq!(info.vermagic.as_deref(), Some("6.1 SMP"));
        assert_eq!(parse_modinfo(b"depends=\0", 62, "my_mod").name, "my_mod");
        assert!(parse_modinfo(b"depends=\0", 62, "m").depends.is_empty());
    }

    /// Writes a fake tree: `kernel/<dir>/<name>.ko` per entry.
    fn fake_tree(root: &Path, mods: &[(&str, &[&str])]) {
        for (path, fields) in mods {
            let file = root.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, fake_ko(EM_X86_64, fields)).unwrap();
        }
    }

    #[test]
    fn scans_a_tree_and_round_trips_json() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("1.0");
        fake_tree(
            &root,
            &[
                (
                    "kernel/fs/isofs/isofs.ko",
                    &[
                        "name=isofs",
                        "depends=cdrom",
                        "alias=fs-iso9660",
                        "vermagic=1.0 SMP",
                    ],
                ),
                ("kernel/drivers/cdrom/cdrom.ko", &["name=cdrom", "depends="]),
                ("kernel/drivers/nvme/nvme-core.ko", &["depends="]),
                ("kernel/old/dup.ko", &["name=dup"]),
                ("updates/dup.ko", &["name=dup"]),
            ],
        );
        let xz = liblzma::encode_all(&fake_ko(EM_X86_64, &["name=packed"])[..], 1).unwrap();
        fs::write(root.join("kernel/packed.ko.xz"), xz).unwrap();
        let zst = zstd::encode_all(&fake_ko(EM_X86_64, &["name=zpacked"])[..], 1).unwrap();
        fs::write(root.join("kernel/zpacked.ko.zst"), zst).unwrap();
        fs::write(
            root.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/lib/crc-t10dif.ko\n",
        )
        .unwrap();
        fs::write(
            root.join("modules.builtin.modinfo"),
            b"ext4.license=GPL\0ext4.alias=fs-ext4\0ext4.alias=ext3\0",
        )
        .unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("build")).unwrap();

        let index = ModuleIndex::scan(&root).unwrap();
        assert_eq!(index.release(), "1.0");
        assert_eq!(index.len(), 6);
        assert_eq!(
            index.get("nvme-core").unwrap().rel_path,
            Path::new("kernel/drivers/nvme/nvme-core.ko")
        );
        assert_eq!(
            index.get("dup").unwrap().rel_path,
            Path::new("updates/dup.ko")
        );
        assert_eq!(index.get("packed").unwrap().info.elf_machine, EM_X86_64);
        assert!(index.get("zpacked").is_some());
        assert!(index.is_builtin("crc_t10dif") && index.is_builtin("ext4"));
        let closure = index
            .closure(&req(&["isofs", "ext4", "fs-ext4", "ext3"]))
            .unwrap();
        assert_eq!(names(&closure), ["cdrom", "isofs"]);

        let json = index.to_json().unwrap();
        let back = ModuleIndex::from_json(&json, &root).unwrap();
        assert_eq!(back, index);
    }

    #[test]
    fn refuses_gzip_modules_and_non_elf_files() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("x.ko.gz");
        fs::write(&gz, b"\x1f\x8b").unwrap();
        assert!(matches!(
            modinfo(&gz),
            Err(Error::UnsupportedCompression { .. })
        ));
        let junk = dir.path().join("junk.ko");
        fs::write(&junk, b"not an elf").unwrap();
        let err = modinfo(&junk).unwrap_err();
        assert!(matches!(err, Error::Elf { .. }), "{err}");
        assert!(err.to_string().contains("junk.ko"));
        let bare = dir.path().join("bare.ko");
        let mut elf = fake_ko(EM_X86_64, &[]);
        elf[64 + 2] = b'X'; // the section is now `.Xodinfo`
        fs::write(&bare, elf).unwrap();
        assert!(matches!(modinfo(&bare), Err(Error::NoModinfo { .. })));
        let missing = ModuleIndex::scan(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, Error::NotADirectory { .. }));
    }

    /// Judge: the host's modinfo must read our fake modules the same way,
    /// or the fakes used by the other tests prove nothing.
    #[test]
    fn host_modinfo_reads_fake_modules() {
        if !crate::test_support::require_tool("modinfo") {
            return;
        }
        let out = Command::new("modinfo").arg("--version").output().unwrap();
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.ko");
        let fields = [
            "name=fake",
            "depends=a-b,c",
            "softdep=pre: d",
            "vermagic=1.0 SMP",
        ];
        fs::write(&path, fake_ko(EM_X86_64, &fields)).unwrap();
        let field = |f: &str| {
            let out =
                crate::test_support::judge_ok(Command::new("modinfo").args(["-F", f]).arg(&path));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(field("depends"), "a-b,c");
        assert_eq!(field("name"), "fake");
        let ours = modinfo(&path).unwrap();
        assert_eq!(ours.depends, ["a_b", "c"]);
        assert_eq!(ours.softdep_pre, ["d"]);
    }
}
