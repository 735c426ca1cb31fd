//! depmod without depmod: the `modules.*` metadata of a `lib/modules/<release>` tree after
//! extensions added kernel modules to it, plus the vermagic check for those modules.
//!
//! [`generate`] (host directory) and [`generate_for_tree`] (a [`Tree`], reading modules through
//! their [`FileData`]) produce what kmod 30's `depmod` writes:
//! - `modules.dep`: `kernel/a.ko: kernel/b.ko kernel/c.ko`, every line listing the full
//!   transitive dependencies in a topological order (a module before the modules it depends
//!   on, which is what modprobe needs), lines in `modules.order` order. The lines and their
//!   dependency sets are depmod's; the order of mutually independent dependencies within a line
//!   can differ, because depmod adds edges in the order of each module's undefined symbols and
//!   we in `depends=` order (on Debian's 6.1 kernel, 3986 of 4025 lines are byte-identical);
//! - `modules.alias` (`alias <pattern> <module>`), `modules.softdep`
//!   (`softdep <module> <value as stored>`) and `modules.devname`, from each module's `.modinfo`;
//! - `modules.order`: the base kernel's lines unchanged, then modules it does not list (the
//!   extensions'), sorted by path. depmod orders unlisted modules by hash and directory order,
//!   so writing them into `modules.order` is what makes the output reproducible;
//! - the binary tries libkmod reads, laid out exactly as depmod lays them out:
//!   `modules.dep.bin`, `modules.alias.bin`, `modules.builtin.bin` and
//!   `modules.builtin.alias.bin`. kmod's `modprobe` and udev look modules up only through
//!   these (they never fall back to the text files, while busybox `modprobe` reads only the
//!   text files), so both kinds are written. The trie format lives in [`crate::kmod::index`].
//!
//! `modules.builtin` and `modules.builtin.modinfo` come with the kernel and are read, not
//! written. Dependencies come from each module's `depends=` field, which the kernel build
//! computes from the same symbol tables depmod reads.
//!
//! Not supported: `modules.symbols` and `modules.symbols.bin` (they need every module's export
//! table; only `symbol:` requests, which are rare, use them) — [`STALE_FILES`] lists them so a
//! caller removes stale copies; depmod.d configuration (search order, overrides, external
//! directories): when two files provide one module, a copy below `updates/` wins, otherwise the
//! first path in sorted order; `.ko.gz` modules (refused with a hint); non-ASCII aliases.
//!
//! [`check_vermagic`] refuses a module built for another kernel release before it reaches an
//! image where it would fail to load.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fs::tree::{Entry, EntryKind, FileData, Tree, TreeError};
use crate::kmod::index::IndexNode;
use crate::kmod::{module_suffix, normalize, ModuleBytes};

/// `.modinfo` strings of one module: (key, value) in section order.
type Fields = Vec<(String, String)>;

/// Files depmod writes that [`generate`] does not; remove stale copies from the target.
pub const STALE_FILES: &[&str] = &["modules.symbols", "modules.symbols.bin"];
/// Upper bound for module reading threads.
const MAX_THREADS: usize = 8;

/// Errors from generating module metadata or checking modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodMetaError {
    /// Both `/lib/modules/<release>` and `/usr/lib/modules/<release>` are directories.
    #[error(
        "the tree has both /lib/modules/{release} and /usr/lib/modules/{release}; hint: merge \
         them (on a merged-/usr system /lib is a symlink to usr/lib)"
    )]
    BothModuleDirs {
        /// The kernel release.
        release: String,
    },
    /// Hard dependencies form a cycle, which modprobe cannot load.
    #[error(
        "kernel modules {modules} depend on each other in a cycle; hint: one of them \
         (likely an extension's) was built against other module versions"
    )]
    Cycle {
        /// The modules left in cycles, comma-separated.
        modules: String,
    },
    /// A module names a dependency that is neither a module of the tree nor built in.
    #[error(
        "kernel module {module} depends on {dependency}, which is neither a module in {dir} nor \
         built in; hint: add the extension that provides {dependency}, or rebuild {module} \
         against this kernel"
    )]
    MissingDependency {
        /// The module file (relative to the modules directory).
        module: PathBuf,
        /// The missing module name.
        dependency: String,
        /// The modules directory.
        dir: PathBuf,
    },
    /// The tree has no modules directory for the release.
    #[error(
        "the tree has no /lib/modules/{release} or /usr/lib/modules/{release} directory; hint: \
         is {release} the release of the kernel the modules were installed for?"
    )]
    NoModulesDir {
        /// The kernel release.
        release: String,
    },
    /// The module has no `vermagic=` field.
    #[error(
        "kernel module {path} has no vermagic in its .modinfo; hint: build it with the kernel's \
         kbuild (make -C /lib/modules/<release>/build M=...)"
    )]
    NoVermagic {
        /// The module file.
        path: PathBuf,
    },
    /// A string going into a binary index is not 7-bit ASCII, which the format cannot hold.
    #[error("{what} {text:?} of kernel module {module} is not 7-bit ASCII, which modules index files cannot hold")]
    NonAscii {
        /// `alias` or `module name`.
        what: &'static str,
        /// The offending text.
        text: String,
        /// The module's name.
        module: String,
    },
    /// A module file could not be read as a module (see [`crate::kmod::Error`]).
    #[error(transparent)]
    Module(Box<crate::kmod::Error>),
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A generated file could not be put into the tree.
    #[error("cannot add generated module metadata to the tree")]
    Tree {
        /// The cause.
        #[source]
        source: TreeError,
    },
    /// The module was built for another kernel release.
    #[error(
        "kernel module {path} was built for kernel {found} (vermagic \"{vermagic}\"), but the \
         image's kernel is {release}; hint: rebuild the extension's modules against the {release} \
         kernel headers, or use the kernel release the extension was built for"
    )]
    Vermagic {
        /// The module file.
        path: PathBuf,
        /// The release in the module's vermagic.
        found: String,
        /// The whole vermagic string.
        vermagic: String,
        /// The image's kernel release.
        release: String,
    },
    /// A generated file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = KmodMetaError> = std::result::Result<T, E>;

/// The generated metadata files, by file name (`modules.dep`, ...), in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFiles {
    files: Vec<(&'static str, Vec<u8>)>,
}

impl MetaFiles {
    /// Every generated file: name and contents.
    pub fn files(&self) -> &[(&'static str, Vec<u8>)] {
        &self.files
    }

    /// The contents of the file called `name`, if it was generated.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// Writes every file into `dir` (the `lib/modules/<release>` directory), replacing existing
    /// ones, and removes [`STALE_FILES`] there.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        for (name, bytes) in &self.files {
            // Write beside and rename, so a hard-linked copy of the file (a cache) is untouched.
            let path = dir.join(name);
            let temp = dir.join(format!(".{name}.strata-tmp"));
            fs::write(&temp, bytes)
                .and_then(|()| fs::rename(&temp, &path))
                .map_err(|source| KmodMetaError::Write { path, source })?;
        }
        for name in STALE_FILES {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(KmodMetaError::Write { path, source: e })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Checks that the module file `ko` was built for kernel `release` (the first word of its
/// `vermagic=` field).
pub fn check_vermagic(ko: &Path, release: &str) -> Result<()> {
    let fields = read_fields(&Source::Host(ko.to_path_buf()), ko)?;
    vermagic_matches(&fields, ko, release)
}

/// Like [`check_vermagic`] for a module held by a tree; `name` is used in errors.
pub fn check_vermagic_data(name: &Path, data: &FileData, release: &str) -> Result<()> {
    let fields = read_fields(&Source::from_data(data), name)?;
    vermagic_matches(&fields, name, release)
}

fn vermagic_matches(fields: &[(String, String)], path: &Path, release: &str) -> Result<()> {
    let vermagic = fields
        .iter()
        .find(|(key, _)| key == "vermagic")
        .map(|(_, value)| value.as_str())
        .ok_or_else(|| KmodMetaError::NoVermagic {
            path: path.to_path_buf(),
        })?;
    let found = vermagic.split_whitespace().next().unwrap_or_default();
    if found == release {
        return Ok(());
    }
    Err(KmodMetaError::Vermagic {
        path: path.to_path_buf(),
        found: found.to_string(),
        vermagic: vermagic.trim().to_string(),
        release: release.to_string(),
    })
}

/// Generates the metadata of the host directory `modules_root` (`lib/modules/<release>`, with
/// the base kernel's and the extensions' modules in place). Every module must have been built
/// for `release` (see [`check_vermagic`]). Nothing is written; see [`MetaFiles::write_to`].
pub fn generate(modules_root: &Path, release: &str) -> Result<MetaFiles> {
    if !modules_root.is_dir() {
        return Err(KmodMetaError::NoModulesDir {
            release: release.to_string(),
        });
    }
    let mut found = Vec::new();
    collect_host(modules_root, Path::new(""), &mut found)?;
    let read_text = |name: &str| -> Result<Option<Vec<u8>>> {
        let path = modules_root.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KmodMetaError::Read { path, source }),
        }
    };
    let inputs = Inputs {
        dir: modules_root.to_path_buf(),
        release: release.to_string(),
        order: read_text("modules.order")?,
        builtin: read_text("modules.builtin")?,
        builtin_modinfo: read_text("modules.builtin.modinfo")?,
    };
    build(found, &inputs)
}

/// Generates the metadata for the modules of `tree` below `/lib/modules/<release>` or
/// `/usr/lib/modules/<release>`. Returns each file's path in the tree and contents.
pub fn generate_for_tree(tree: &Tree, release: &str) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = modules_dir_in(tree, release)?;
    let meta = generate_tree_files(tree, &dir, release)?;
    Ok(meta
        .files
        .into_iter()
        .map(|(name, bytes)| (dir.join(name), bytes))
        .collect())
}

/// Puts the generated metadata into `tree` (mode 0644, owned by root) and removes
/// [`STALE_FILES`] from it.
pub fn apply_to_tree(tree: &mut Tree, release: &str) -> Result<()> {
    let dir = modules_dir_in(tree, release)?;
    for (path, bytes) in generate_for_tree(tree, release)? {
        tree.insert(&path, Entry::bytes_file(bytes, 0o644))
            .map_err(|source| KmodMetaError::Tree { source })?;
    }
    for name in STALE_FILES {
        tree.remove(dir.join(name));
    }
    Ok(())
}

/// The tree's modules directory for `release`.
fn modules_dir_in(tree: &Tree, release: &str) -> Result<PathBuf> {
    let is_dir = |p: &Path| tree.get(p).is_some_and(Entry::is_dir);
    let lib = PathBuf::from(format!("/lib/modules/{release}"));
    let usr = PathBuf::from(format!("/usr/lib/modules/{release}"));
    match (is_dir(&lib), is_dir(&usr)) {
        (true, true) => Err(KmodMetaError::BothModuleDirs {
            release: release.to_string(),
        }),
        (true, false) => Ok(lib),
        (false, true) => Ok(usr),
        (false, false) => Err(KmodMetaError::NoModulesDir {
            release: release.to_string(),
        }),
    }
}

fn generate_tree_files(tree: &Tree, dir: &Path, release: &str) -> Result<MetaFiles> {
    let mut found = Vec::new();
    let mut texts: HashMap<&str, Vec<u8>> = HashMap::new();
    for (path, entry) in tree.iter() {
        let Ok(rel) = path.strip_prefix(dir) else {
            continue;
        };
        let EntryKind::File(data) = &entry.kind else {
            continue;
        };
        if skipped_by_depmod(rel) {
            continue;
        }
        if module_suffix(rel).is_some() {
            found.push(Found {
                rel: rel.to_path_buf(),
                source: Source::from_data(data),
                display: path.to_path_buf(),
            });
        } else if let Some(name) = rel.to_str() {
            if let Some(input) = [
                "modules.order",
                "modules.builtin",
                "modules.builtin.modinfo",
            ]
            .into_iter()
            .find(|n| *n == name)
            {
                texts.insert(input, read_data(data, path)?);
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    let inputs = Inputs {
        dir: dir.to_path_buf(),
        release: release.to_string(),
        order: texts.remove("modules.order"),
        builtin: texts.remove("modules.builtin"),
        builtin_modinfo: texts.remove("modules.builtin.modinfo"),
    };
    build(found, &inputs)
}

fn read_data(data: &FileData, path: &Path) -> Result<Vec<u8>> {
    match data {
        FileData::Bytes(bytes) => Ok(bytes.clone()),
        FileData::Host(host) => fs::read(host).map_err(|source| KmodMetaError::Read {
            path: if host.as_os_str().is_empty() {
                path.to_path_buf()
            } else {
                host.clone()
            },
            source,
        }),
    }
}

/// Where a module's bytes are.
#[derive(Debug, Clone)]
enum Source<'a> {
    Host(PathBuf),
    Bytes(&'a [u8]),
}

impl<'a> Source<'a> {
    fn from_data(data: &'a FileData) -> Self {
        match data {
            FileData::Host(path) => Source::Host(path.clone()),
            FileData::Bytes(bytes) => Source::Bytes(bytes),
        }
    }
}

/// A module file found in the modules directory.
struct Found<'a> {
    /// Path relative to the modules directory.
    rel: PathBuf,
    source: Source<'a>,
    /// What to call it in errors: the host path, or the path in the tree.
    display: PathBuf,
}

/// Other inputs besides the modules.
struct Inputs {
    /// The modules directory, for error messages.
    dir: PathBuf,
    /// The kernel release every module must be built for.
    release: String,
    order: Option<Vec<u8>>,
    builtin: Option<Vec<u8>>,
    builtin_modinfo: Option<Vec<u8>>,
}

/// Names depmod never descends into or reads.
fn skipped_by_depmod(rel: &Path) -> bool {
    rel.components().any(|c| {
        let name = c.as_os_str().as_encoded_bytes();
        name.starts_with(b".") || name == b"build" || name == b"source"
    })
}

/// Collects module files below `root/rel` (sorted), not following symlinks.
fn collect_host(root: &Path, rel: &Path, out: &mut Vec<Found<'static>>) -> Result<()> {
    let dir = root.join(rel);
    let read_err = |source| KmodMetaError::Read {
        path: dir.clone(),
        source,
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(&dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let kind = entry.file_type().map_err(read_err)?;
        entries.push((entry.file_name(), kind));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in entries {
        let child = rel.join(&name);
        if skipped_by_depmod(Path::new(&name)) {
            continue;
        }
        if kind.is_dir() {
            collect_host(root, &child, out)?;
        } else if kind.is_file() && module_suffix(&child).is_some() {
            let host = root.join(&child);
            out.push(Found {
                rel: child,
                source: Source::Host(host.clone()),
                display: host,
            });
        }
    }
    Ok(())
}

/// The path without its compression suffix, as `modules.order` lists it.
fn uncompressed(rel: &Path) -> String {
    let text = rel.to_string_lossy();
    for suffix in [".xz", ".zst", ".gz"] {
        if let Some(stripped) = text.strip_suffix(suffix) {
            return stripped.to_string();
        }
    }
    text.into_owned()
}

/// libkmod's module name for a path: the file name up to the first `.`, `-` → `_`.
fn modname_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    normalize(base.split('.').next().unwrap_or(base))
}

/// Reads the `key=value` strings of a module's `.modinfo`, in section order.
fn read_fields(source: &Source, name: &Path) -> Result<Fields> {
    let bytes = match source {
        Source::Host(path) => ModuleBytes::Host(path),
        Source::Bytes(bytes) => ModuleBytes::Memory(bytes),
    };
    let (_, section) = crate::kmod::modinfo_section(bytes, name)
        .map_err(|e| KmodMetaError::Module(Box::new(e)))?;
    Ok(section
        .split(|&b| b == 0)
        .filter(|field| !field.is_empty())
        .map(|field| {
            let field = String::from_utf8_lossy(field);
            match field.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => (field.into_owned(), String::new()),
            }
        })
        .collect())
}

/// Reads every module's `.modinfo` on several threads, one file at a time per thread.
fn read_all(found: &[Found]) -> Result<Vec<Fields>> {
    let threads = crate::par::jobs().min(MAX_THREADS);
    crate::par::map(found, threads, |module| {
        read_fields(&module.source, &module.display)
    })
    .into_iter()
    .collect()
}

/// One module as depmod sees it.
struct Module {
    /// Path relative to the modules directory, as found (possibly compressed).
    rel: String,
    /// Name from the file name.
    name: String,
    /// `.modinfo` strings in section order.
    fields: Fields,
    /// Direct dependencies (indexes into the sorted module list), `depends=` order, unique.
    deps: Vec<usize>,
}

impl Module {
    fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn build(found: Vec<Found>, inputs: &Inputs) -> Result<MetaFiles> {
    let fields = read_all(&found)?;
    for (module, fields) in found.iter().zip(&fields) {
        vermagic_matches(fields, &module.display, &inputs.release)?;
    }
    let candidates: Vec<(String, Fields)> = found
        .iter()
        .map(|module| module.rel.to_string_lossy().into_owned())
        .zip(fields)
        .collect();
    let order_text = inputs.order.as_deref().unwrap_or_default();
    let mut modules = sorted_modules(pick_preferred(candidates), order_text);
    let builtin = builtin_names(inputs.builtin.as_deref().unwrap_or_default());
    link_dependencies(&mut modules, &builtin, &inputs.dir)?;
    let rank = topological_rank(&modules)?;
    let all_deps: Vec<Vec<usize>> = (0..modules.len())
        .map(|i| transitive_deps(&modules, &rank, i))
        .collect();
    let files = vec![
        ("modules.order", order_file(order_text, &modules)),
        ("modules.dep", dep_text(&modules, &all_deps).into_bytes()),
        ("modules.dep.bin", dep_index(&modules, &all_deps)?),
        ("modules.alias", alias_text(&modules).into_bytes()),
        ("modules.alias.bin", alias_index(&modules)?),
        ("modules.softdep", softdep_text(&modules).into_bytes()),
        (
            "modules.builtin.bin",
            builtin_index(inputs.builtin.as_deref().unwrap_or_default())?,
        ),
        (
            "modules.builtin.alias.bin",
            builtin_alias_index(inputs.builtin_modinfo.as_deref().unwrap_or_default())?,
        ),
        ("modules.devname", devname_text(&modules).into_bytes()),
    ];
    Ok(MetaFiles { files })
}

/// Keeps one file per module name: a copy below `updates/` wins (depmod's default search
/// order), otherwise the first path in sorted order.
fn pick_preferred(candidates: Vec<(String, Fields)>) -> BTreeMap<String, (String, Fields)> {
    let mut by_name: BTreeMap<String, (String, Fields)> = BTreeMap::new();
    let is_update = |rel: &str| rel.starts_with("updates/");
    for (rel, fields) in candidates {
        let name = modname_of(&rel);
        match by_name.get(&name) {
            Some((old, _)) if is_update(old) || !is_update(&rel) => {}
            _ => {
                by_name.insert(name, (rel, fields));
            }
        }
    }
    by_name
}

/// Orders modules like depmod: by their last line in `modules.order`, then the unlisted ones
/// by path.
fn sorted_modules(by_name: BTreeMap<String, (String, Fields)>, order_text: &[u8]) -> Vec<Module> {
    let mut line_of: HashMap<&[u8], usize> = HashMap::new();
    for (i, line) in order_lines(order_text).enumerate() {
        line_of.insert(line, i);
    }
    let mut modules: Vec<(Option<usize>, Module)> = by_name
        .into_iter()
        .map(|(name, (rel, fields))| {
            let line = line_of
                .get(uncompressed(Path::new(&rel)).as_bytes())
                .copied();
            let module = Module {
                rel,
                name,
                fields,
                deps: Vec::new(),
            };
            (line, module)
        })
        .collect();
    modules.sort_by(|(la, a), (lb, b)| match (la, lb) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.rel.cmp(&b.rel),
    });
    modules.into_iter().map(|(_, m)| m).collect()
}

/// Lines of `modules.order` without their newline; depmod ignores a last line without one.
fn order_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(end) => &text[..end],
        None => &[][..],
    };
    complete.split(|&b| b == b'\n').filter(|_| !text.is_empty())
}

/// Names of built-in modules from `modules.builtin` (one path per line).
fn builtin_names(text: &[u8]) -> std::collections::HashSet<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| modname_of(line.trim()))
        .collect()
}

/// Resolves each module's `depends=` names to module indexes.
fn link_dependencies(
    modules: &mut [Module],
    builtin: &std::collections::HashSet<String>,
    dir: &Path,
) -> Result<()> {
    let index: HashMap<String, usize> = modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.clone(), i))
        .collect();
    for module in modules.iter_mut() {
        let mut deps = Vec::new();
        let names: Vec<String> = module
            .values("depends")
            .flat_map(|v| v.split(','))
            .filter(|d| !d.is_empty())
            .map(normalize)
            .collect();
        for name in names {
            match index.get(&name) {
                Some(&i) if !deps.contains(&i) => deps.push(i),
                Some(_) => {}
                None if builtin.contains(&name) => {}
                None => {
                    return Err(KmodMetaError::MissingDependency {
                        module: PathBuf::from(&module.rel),
                        dependency: name,
                        dir: dir.to_path_buf(),
                    })
                }
            }
        }
        module.deps = deps;
    }
    Ok(())
}

/// depmod's topological order: Kahn's algorithm with a stack of modules nobody (left) depends
/// on, seeded in module order; a module's rank is lower than its dependencies' ranks.
fn topological_rank(modules: &[Module]) -> Result<Vec<usize>> {
    let mut users = vec![0usize; modules.len()];
    for module in modules {
        for &dep in &module.deps {
            users[dep] += 1;
        }
    }
    let mut stack: Vec<usize> = (0..modules.len()).filter(|&i| users[i] == 0).collect();
    let mut rank = vec![usize::MAX; modules.len()];
    let mut next = 0;
    while let Some(src) = stack.pop() {
        rank[src] = next;
        next += 1;
        for &dst in &modules[src].deps {
            users[dst] -= 1;
            if users[dst] == 0 {
                stack.push(dst);
            }
        }
    }
    if next < modules.len() {
        let left: Vec<&str> = (0..modules.len())
            .filter(|&i| rank[i] == usize::MAX)
            .map(|i| modules[i].name.as_str())
            .collect();
        return Err(KmodMetaError::Cycle {
            modules: left.join(", "),
        });
    }
    Ok(rank)
}

/// Every module `start` needs, directly or not, sorted by rank.
fn transitive_deps(modules: &[Module], rank: &[usize], start: usize) -> Vec<usize> {
    let mut seen = vec![start];
    let mut pending = modules[start].deps.clone();
    let mut out = Vec::new();
    while let Some(i) = pending.pop() {
        if seen.contains(&i) {
            continue;
        }
        seen.push(i);
        out.push(i);
        pending.extend(modules[i].deps.iter().copied());
    }
    out.sort_by_key(|&i| rank[i]);
    out
}

fn order_file(original: &[u8], modules: &[Module]) -> Vec<u8> {
    let listed: std::collections::HashSet<&[u8]> = order_lines(original).collect();
    let mut out = original.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let mut extra: Vec<String> = modules
        .iter()
        .map(|m| uncompressed(Path::new(&m.rel)))
        .filter(|rel| !listed.contains(rel.as_bytes()))
        .collect();
    extra.sort();
    for rel in extra {
        out.extend_from_slice(rel.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `path: dep dep ...` without the newline.
fn dep_line(modules: &[Module], module: usize, deps: &[usize]) -> String {
    let mut line = format!("{}:", modules[module].rel);
    for &d in deps {
        line.push(' ');
        line.push_str(&modules[d].rel);
    }
    line
}

fn dep_text(modules: &[Module], all_deps: &[Vec<usize>]) -> String {
    let mut out = String::new();
    for (i, deps) in all_deps.iter().enumerate() {
        out.push_str(&dep_line(modules, i, deps));
        out.push('\n');
    }
    out
}

fn dep_index(modules: &[Module], all_deps: &[Vec<usize>]) -> Result<Vec<u8>> {
    let mut index = IndexNode::default();
    for (i, deps) in all_deps.iter().enumerate() {
        let name = ascii(&modules[i].name, "module name", &modules[i].name)?;
        index.insert(name, dep_line(modules, i, deps).as_bytes(), i as u32);
    }
    Ok(index.write())
}

fn alias_text(modules: &[Module]) -> String {
    let mut out = String::from("# Aliases extracted from modules themselves.\n");
    for module in modules {
        for alias in module.values("alias") {
            out.push_str(&format!("alias {alias} {}\n", module.name));
        }
    }
    out
}

fn alias_index(modules: &[Module]) -> Result<Vec<u8>> {
    let mut index = IndexNode::default();
    for (i, module) in modules.iter().enumerate() {
        for alias in module.values("alias") {
            // depmod skips aliases with unbalanced brackets (with a warning).
            let Some(key) = alias_normalize(alias) else {
                continue;
            };
            let key = ascii(&key, "alias", &module.name)?;
            index.insert(key, module.name.as_bytes(), i as u32);
        }
    }
    Ok(index.write())
}

fn softdep_text(modules: &[Module]) -> String {
    let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
    for module in modules {
        for value in module.values("softdep") {
            out.push_str(&format!("softdep {} {value}\n", module.name));
        }
    }
    out
}

/// `<module> <devname> <c|b><major>:<minor>` for modules with a `devname:` alias and a
/// `char-major-M-N` or `block-major-M-N` alias, as depmod writes them.
fn devname_text(modules: &[Module]) -> String {
    let mut out = String::new();
    for module in modules {
        let mut devname = None;
        let mut node = None;
        for alias in module.values("alias") {
            if let Some(name) = alias.strip_prefix("devname:") {
                devname = Some(name);
            } else if let Some(numbers) = alias.strip_prefix("char-major-") {
                node = major_minor(numbers).map(|(a, b)| ('c', a, b)).or(node);
            } else if let Some(numbers) = alias.strip_prefix("block-major-") {
                node = major_minor(numbers).map(|(a, b)| ('b', a, b)).or(node);
            }
            if node.is_some() && devname.is_some() {
                break;
            }
        }
        if let (Some(devname), Some((kind, major, minor))) = (devname, node) {
            if out.is_empty() {
                out.push_str("# Device nodes to trigger on-demand module loading.\n");
            }
            out.push_str(&format!(
                "{} {devname} {kind}{major}:{minor}\n",
                module.name
            ));
        }
    }
    out
}

/// `M-N` as in `char-major-10-229`, like `sscanf("%u-%u")` (trailing text allowed).
fn major_minor(text: &str) -> Option<(u32, u32)> {
    let (major, rest) = text.split_once('-')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, digits.parse().ok()?))
}

/// kmod's `alias_normalize`: `-` becomes `_` outside `[...]` ranges; `None` for unbalanced
/// brackets.
fn alias_normalize(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut in_range = false;
    for c in alias.chars() {
        match (in_range, c) {
            (false, '-') => out.push('_'),
            (false, ']') => return None,
            (false, '[') => {
                in_range = true;
                out.push(c);
            }
            (true, ']') => {
                in_range = false;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    (!in_range).then_some(out)
}

fn builtin_index(modules_builtin: &[u8]) -> Result<Vec<u8>> {
    let mut index = IndexNode::default();
    for line in modules_builtin.split_inclusive(|&b| b == b'\n') {
        if !line.first().is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let name = modname_of(line.trim_end_matches('\n'));
        let key = ascii(&name, "module name", &name)?;
        index.insert(key, b"", 0);
    }
    Ok(index.write())
}

/// From `modules.builtin.modinfo` (`module.key=value` strings): `alias` → module.
fn builtin_alias_index(modinfo: &[u8]) -> Result<Vec<u8>> {
    let mut index = IndexNode::default();
    for record in modinfo.split(|&b| b == 0) {
        let record = String::from_utf8_lossy(record);
        let Some((module, rest)) = record.split_once('.') else {
            continue;
        };
        let Some(("alias", value)) = rest.split_once('=') else {
            continue;
        };
        if module.is_empty() || value.is_empty() {
            continue;
        }
        let Some(key) = alias_normalize(value) else {
            continue;
        };
        let key = ascii(&key, "alias", module)?;
        index.insert(key, module.as_bytes(), 0);
    }
    Ok(index.write())
}

fn ascii<'a>(text: &'a str, what: &'static str, module: &str) -> Result<&'a [u8]> {
    if text.is_ascii() {
        Ok(text.as_bytes())
    } else {
        Err(KmodMetaError::NonAscii {
            what,
            text: text.to_string(),
            module: module.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmod::test_support::{fake_ko, EM_X86_64};
    use std::process::Command;
    use std::time::Instant;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn text<'a>(meta: &'a MetaFiles, name: &str) -> &'a str {
        std::str::from_utf8(meta.get(name).unwrap()).unwrap()
    }

    #[test]
    fn vermagic_must_name_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let ko = dir.path().join("ext.ko");
        fs::write(
            &ko,
            fake_ko(
                EM_X86_64,
                &["name=ext", "vermagic=6.1.0-56-amd64 SMP mod_unload "],
            ),
        )
        .unwrap();
        check_vermagic(&ko, "6.1.0-56-amd64").unwrap();
        let err = check_vermagic(&ko, "6.12.0-1-amd64")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "kernel module {} was built for kernel 6.1.0-56-amd64 (vermagic \"6.1.0-56-amd64 \
                 SMP mod_unload\"), but the image's kernel is 6.12.0-1-amd64; hint: rebuild the \
                 extension's modules against the 6.12.0-1-amd64 kernel headers, or use the kernel \
                 release the extension was built for",
                ko.display()
            )
        );
        let bare = fake_ko(EM_X86_64, &["name=bare"]);
        let err = check_vermagic_data(
            Path::new("/usr/lib/modules/x/bare.ko"),
            &FileData::Bytes(bare),
            "x",
        );
        assert!(
            matches!(err, Err(KmodMetaError::NoVermagic { .. })),
            "{err:?}"
        );
        let xz = liblzma::encode_all(&fake_ko(EM_X86_64, &["vermagic=x SMP"])[..], 1).unwrap();
        check_vermagic_data(Path::new("/m/packed.ko.xz"), &FileData::Bytes(xz), "x").unwrap();
    }

    /// A small tree: `a` needs `b` and `c`, `b` needs `c`, `d` is built in, `ext` is an
    /// extension module missing from modules.order.
    fn fake_tree(root: &Path) {
        let vm = "vermagic=1.0 SMP";
        write(
            &root.join("kernel/c.ko"),
            &fake_ko(
                EM_X86_64,
                &[
                    "name=c",
                    vm,
                    "alias=devname:cdev",
                    "alias=char-major-10-99",
                    "alias=c-alias",
                ],
            ),
        );
        write(
            &root.join("kernel/b.ko"),
            &fake_ko(
                EM_X86_64,
                &[
                    "name=b",
                    "depends=c",
                    vm,
                    "softdep=pre: c post: a",
                    "alias=pci:v00001AF4d*sv*sd*bc01sc[0-9]*i*",
                ],
            ),
        );
        write(
            &root.join("kernel/sub/a-mod.ko"),
            &fake_ko(
                EM_X86_64,
                &["name=a_mod", "depends=b,c,d", vm, "alias=fs-a-mod"],
            ),
        );
        write(
            &root.join("extra/ext.ko"),
            &fake_ko(EM_X86_64, &["name=ext", "depends=a-mod", vm]),
        );
        write(
            &root.join("updates/b.ko"),
            &fake_ko(EM_X86_64, &["name=b", "depends=c", vm, "alias=b-updated"]),
        );
        write(
            &root.join("modules.order"),
            b"kernel/sub/a-mod.ko\nkernel/b.ko\nkernel/gone.ko\nkernel/c.ko\n",
        );
        write(
            &root.join("modules.builtin"),
            b"kernel/lib/d.ko\nkernel/fs/ext4/ext4.ko\n",
        );
        write(
            &root.join("modules.builtin.modinfo"),
            b"ext4.license=GPL\0ext4.alias=fs-ext4\0ext4.alias=ext3\0d.alias=d-x\0",
        );
    }

    #[test]
    fn generates_transitive_ordered_dependencies_and_tables() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("1.0");
        fake_tree(&root);
        let meta = generate(&root, "1.0").unwrap();
        assert_eq!(
            text(&meta, "modules.order"),
            "kernel/sub/a-mod.ko\nkernel/b.ko\nkernel/gone.ko\nkernel/c.ko\nextra/ext.ko\nupdates/b.ko\n"
        );
        assert_eq!(
            text(&meta, "modules.dep"),
            "kernel/sub/a-mod.ko: updates/b.ko kernel/c.ko\nkernel/c.ko:\n\
             extra/ext.ko: kernel/sub/a-mod.ko updates/b.ko kernel/c.ko\nupdates/b.ko: kernel/c.ko\n"
        );
        assert_eq!(
            text(&meta, "modules.alias"),
            "# Aliases extracted from modules themselves.\nalias fs-a-mod a_mod\n\
             alias devname:cdev c\nalias char-major-10-99 c\nalias c-alias c\nalias b-updated b\n"
        );
        assert_eq!(
            text(&meta, "modules.softdep"),
            "# Soft dependencies extracted from modules themselves.\n"
        );
        assert_eq!(
            text(&meta, "modules.devname"),
            "# Device nodes to trigger on-demand module loading.\nc cdev c10:99\n"
        );
        let err = generate(&root, "2.0").unwrap_err().to_string();
        assert!(err.contains("was built for kernel 1.0"), "{err}");
    }

    #[test]
    fn missing_dependencies_and_cycles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("1.0");
        write(
            &root.join("extra/x.ko"),
            &fake_ko(EM_X86_64, &["depends=nowhere", "vermagic=1.0"]),
        );
        let err = generate(&root, "1.0").unwrap_err().to_string();
        assert!(
            err.starts_with("kernel module extra/x.ko depends on nowhere"),
            "{err}"
        );
        write(
            &root.join("extra/x.ko"),
            &fake_ko(EM_X86_64, &["depends=y", "vermagic=1.0"]),
        );
        write(
            &root.join("extra/y.ko"),
            &fake_ko(EM_X86_64, &["depends=x", "vermagic=1.0"]),
        );
        let err = generate(&root, "1.0").unwrap_err().to_string();
        assert!(
            err.starts_with("kernel modules x, y depend on each other"),
            "{err}"
        );
    }

    #[test]
    fn aliases_are_normalized_outside_brackets() {
        assert_eq!(
            alias_normalize("pci:v-[0-9]*-x").as_deref(),
            Some("pci:v_[0-9]*_x")
        );
        assert_eq!(alias_normalize("bad[x"), None);
    }

    fn sh(script: &str) -> bool {
        Command::new("sh")
            .arg("-ec")
            .arg(script)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// depmod's output files compared byte for byte (modules.dep and its index are compared
    /// by [`same_dependencies`]).
    const COMPARED: &[&str] = &[
        "modules.alias",
        "modules.alias.bin",
        "modules.softdep",
        "modules.builtin.bin",
        "modules.builtin.alias.bin",
        "modules.devname",
    ];

    /// Checks that `ours` has the lines of depmod's `modules.dep` with the same dependency sets,
    /// each listed in an order where no module comes after one of its own dependencies (what
    /// modprobe needs); returns the number of byte-identical lines.
    ///
    /// The order of independent dependencies can differ from depmod's: depmod adds edges in
    /// the order of each module's undefined symbols, we in `depends=` order.
    fn same_dependencies(ours: &str, depmod: &str) -> usize {
        let parse = |text: &str| -> Vec<(String, Vec<String>)> {
            text.lines()
                .map(|l| {
                    let (m, deps) = l.split_once(':').unwrap();
                    (
                        m.to_string(),
                        deps.split_whitespace().map(String::from).collect(),
                    )
                })
                .collect()
        };
        let (ours, depmod) = (parse(ours), parse(depmod));
        assert_eq!(ours.len(), depmod.len());
        let all: HashMap<&str, &Vec<String>> = ours.iter().map(|(m, d)| (m.as_str(), d)).collect();
        let mut identical = 0;
        for ((m, deps), (m2, deps2)) in ours.iter().zip(&depmod) {
            assert_eq!(m, m2);
            let mut a = deps.clone();
            let mut b = deps2.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "dependencies of {m}");
            for (i, dep) in deps.iter().enumerate() {
                for later in &deps[i + 1..] {
                    assert!(
                        !all[later.as_str()].contains(dep),
                        "{m}: {later} needs {dep}, listed before it"
                    );
                }
            }
            identical += usize::from(deps == deps2);
        }
        identical
    }

    /// modules.dep.bin built by our trie writer from modules.dep text.
    fn dep_index_from_text(dep: &str) -> Vec<u8> {
        let mut index = IndexNode::default();
        for (i, line) in dep.lines().enumerate() {
            let module = line.split(':').next().unwrap();
            index.insert(modname_of(module).as_bytes(), line.as_bytes(), i as u32);
        }
        index.write()
    }

    /// Judge: kmod's depmod on the real Debian kernel plus three extension modules (copies of
    /// real leaf modules, one xz-compressed, one shadowing its kernel/ original from
    /// updates/). Output files must be byte-identical except for the order of independent
    /// dependencies in modules.dep (see [`same_dependencies`]); kmod's modprobe and busybox's
    /// modprobe must then resolve dependencies from our files alone.
    #[test]
    fn matches_depmod_on_the_debian_kernel() {
        use crate::test_support::{kernel_deb, require_input, require_tools};
        let deb = kernel_deb("amd64");
        if !require_input(&deb) || !require_tools(&["depmod", "modprobe", "dpkg-deb", "xz"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        let d = dir.path().display();
        assert!(sh(&format!("dpkg-deb -x {} {d}/ours", deb.display())));
        // The release is the package's own: its one directory under lib/modules.
        let releases: Vec<String> = fs::read_dir(ours.join("lib/modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let [release] = releases.as_slice() else {
            panic!("{}: lib/modules holds {releases:?}", deb.display());
        };
        let rel = format!("lib/modules/{release}");
        assert!(sh(&format!(
            "cd {d}/ours/{rel}
             mkdir -p extra updates/x
             cp kernel/fs/fat/vfat.ko extra/ext-vfat.ko
             xz -1 -c kernel/fs/fat/msdos.ko > extra/ext-msdos.ko.xz
             cp kernel/drivers/block/zram/zram.ko updates/x/zram.ko
             cp -al {d}/ours {d}/theirs"
        )));
        let start = Instant::now();
        let meta = generate(&ours.join(&rel), release).unwrap();
        println!("generate for {rel}: {:?}", start.elapsed());
        // depmod sorts modules missing from modules.order by hash order; give it ours.
        let order = theirs.join(&rel).join("modules.order");
        fs::remove_file(&order).unwrap();
        fs::write(&order, meta.get("modules.order").unwrap()).unwrap();
        let start = Instant::now();
        assert!(sh(&format!("depmod -b {d}/theirs {release}")));
        println!("depmod for the same tree: {:?}", start.elapsed());
        for name in COMPARED {
            let want = fs::read(theirs.join(&rel).join(name)).unwrap();
            let got = meta.get(name).unwrap();
            assert!(got == want.as_slice(), "{name} differs from depmod's");
        }
        let want_dep = fs::read_to_string(theirs.join(&rel).join("modules.dep")).unwrap();
        let identical = same_dependencies(text(&meta, "modules.dep"), &want_dep);
        println!(
            "modules.dep: {identical} of {} lines byte-identical",
            want_dep.lines().count()
        );
        // Our trie writer fed with depmod's own lines gives depmod's modules.dep.bin.
        let want_bin = fs::read(theirs.join(&rel).join("modules.dep.bin")).unwrap();
        assert!(
            dep_index_from_text(&want_dep) == want_bin,
            "modules.dep.bin layout differs"
        );
        let dep = text(&meta, "modules.dep");
        assert!(
            dep.contains("\nextra/ext-vfat.ko: kernel/fs/fat/fat.ko\n"),
            "{dep:.300}"
        );
        assert!(
            dep.contains("\nupdates/x/zram.ko: "),
            "updates/ wins over kernel/"
        );
        assert!(!dep.contains("kernel/drivers/block/zram/zram.ko"));

        // Only our files: kmod's modprobe through the .bin indexes.
        meta.write_to(&ours.join(&rel)).unwrap();
        let show = |module: &str| {
            let out = crate::test_support::judge_ok(Command::new("modprobe").args([
                "-d",
                &format!("{d}/ours"),
                "-S",
                release,
                "--show-depends",
                module,
            ]));
            String::from_utf8(out.stdout).unwrap()
        };
        let ext4 = show("ext4");
        assert!(
            ext4.contains("/jbd2.ko") && ext4.contains("/crc16.ko"),
            "{ext4}"
        );
        assert!(
            ext4.contains("crc32c"),
            "softdep pre: crypto-crc32c resolved: {ext4}"
        );
        assert!(show("ext-msdos").contains("extra/ext-msdos.ko.xz"));
        assert!(
            show("fs-vfat").contains("kernel/fs/fat/fat.ko"),
            "alias lookup"
        );
        busybox_modprobe(dir.path(), &ours, release);

        // The tree variant reads the same modules through their FileData.
        let tree = Tree::from_dir(&ours).unwrap();
        let start = Instant::now();
        let files = generate_for_tree(&tree, release).unwrap();
        println!("generate_for_tree: {:?}", start.elapsed());
        for (path, bytes) in &files {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(path.starts_with(format!("/{rel}")), "{}", path.display());
            assert_eq!(bytes.as_slice(), meta.get(name).unwrap(), "{name}");
        }
    }

    /// busybox's modprobe (the guest's) reads modules.dep as text: chroot into the tree with
    /// the modules directory under the host's release name, which busybox takes from uname.
    fn busybox_modprobe(scratch: &Path, root: &Path, release: &str) {
        use crate::test_support::{busybox_deb, require, require_input, require_root};
        let deb = busybox_deb("amd64");
        if !require_input(&deb) || !require_root("busybox modprobe in a chroot") {
            return;
        }
        let bb = scratch.join("bb");
        let host_release =
            String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
        let host_release = host_release.trim();
        let ok = sh(&format!(
            "dpkg-deb -x {} {bb}
             mkdir -p {root}/bin && cp {bb}/bin/busybox {root}/bin/busybox
             [ -e {root}/lib/modules/{host_release} ] || ln -s {release} {root}/lib/modules/{host_release}",
            deb.display(),
            bb = bb.display(),
            root = root.display()
        ));
        assert!(ok);
        let out = Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "modprobe", "-D", "ext-vfat"])
            .output()
            .expect("run chroot");
        if !require(
            out.status.success(),
            &format!(
                "chroot {} busybox modprobe failed: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            "run the tests as root where chroot is allowed",
        ) {
            return;
        }
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("kernel/fs/fat/fat.ko") && shown.contains("extra/ext-vfat.ko"),
            "{shown}"
        );
        let fat = shown.find("fat/fat.ko").unwrap();
        let vfat = shown.find("ext-vfat.ko").unwrap();
        assert!(fat < vfat, "dependency first: {shown}");
    }

    #[test]
    fn apply_to_tree_finds_usr_lib_modules_and_drops_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("1.0");
        fake_tree(&root);
        let mut tree = Tree::new();
        tree.insert("/lib", Entry::symlink("usr/lib")).unwrap();
        for (path, entry) in Tree::from_dir(&root).unwrap().iter() {
            let inner = Path::new("/usr/lib/modules/1.0").join(path.strip_prefix("/").unwrap());
            tree.insert(inner, entry.clone()).unwrap();
        }
        tree.insert(
            "/usr/lib/modules/1.0/modules.symbols.bin",
            Entry::bytes_file(b"old".to_vec(), 0o644),
        )
        .unwrap();
        apply_to_tree(&mut tree, "1.0").unwrap();
        assert!(tree
            .get("/usr/lib/modules/1.0/modules.symbols.bin")
            .is_none());
        let EntryKind::File(FileData::Bytes(dep)) =
            &tree.get("/usr/lib/modules/1.0/modules.dep").unwrap().kind
        else {
            panic!("modules.dep missing");
        };
        assert_eq!(
            dep.as_slice(),
            generate(&root, "1.0").unwrap().get("modules.dep").unwrap()
        );
        let err = apply_to_tree(&mut tree, "9.9").unwrap_err().to_string();
        assert!(err.starts_with("the tree has no /lib/modules/9.9"), "{err}");
    }
}
