//! Extension kernel modules loaded by name, resolved the way modprobe does
//! through the merged root's depmod index.
//!
//! The composer lists the modules extensions ship in
//! `/etc/strata/modules.check` (in the initramfs): one module name or alias
//! per line, `#` starts a comment line. Once the root is assembled, the init
//! reads `<root>/usr/lib/modules/<uname -r>/` (else `<root>/lib/modules/...`,
//! symlinks resolved inside the root) and, per name:
//!
//! 1. looks it up in `modules.dep` (`kernel/x/y.ko: kernel/a.ko ...`, names
//!    compared with `-` as `_`); else matches it against the patterns of
//!    `modules.alias` (`alias <glob> <module>`, every matching module is
//!    loaded); else finds it in `modules.builtin` (nothing to load);
//! 2. plans the loads: for each module, first its `pre:` soft dependencies
//!    from `modules.softdep` (themselves names or aliases), then its
//!    dependencies in reverse `modules.dep` order (depmod lists the deepest
//!    last), each with their own dependencies first, then the module itself;
//!    each module at most once.
//!
//! Supported: uncompressed `.ko` files, the text index files depmod writes.
//! Not supported: `.bin` indexes, `modprobe.d` configuration (options,
//! blacklists, install commands, its own aliases and softdeps), `post:`
//! soft dependencies, symbol lookups.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use crate::modules::module_name;
use crate::rootpath;

pub use strata_proto::initramfs::MODULES_CHECK;
use strata_proto::initramfs::{is_module_name, list_entries};

/// Reading the list or the index failed, or a name cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A list entry is not a module name.
    #[error("{list} line {line}: {entry:?} is not a module name; write one module name or alias per line")]
    BadName {
        /// The list file.
        list: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The entry as written.
        entry: String,
    },
    /// The root has no index for the running kernel.
    #[error("no modules.dep in {root}/usr/lib/modules/{release} or {root}/lib/modules/{release}; run depmod for the running kernel when composing the image")]
    NoIndex {
        /// The merged root.
        root: PathBuf,
        /// `uname -r`.
        release: String,
    },
    /// The name is not in the index.
    #[error("module {name:?} is not in {dir}/modules.dep, matches no alias in modules.alias and is not built in; ship it in an extension under usr/lib/modules/<release> and run depmod")]
    NotFound {
        /// The name as listed.
        name: String,
        /// The module directory searched.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// Parses the list; `list` only names the file in errors.
pub fn parse_check_list(text: &str, list: &Path) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for (line, entry) in list_entries(text) {
        if !is_module_name(entry) {
            return Err(Error::BadName {
                list: list.to_path_buf(),
                line,
                entry: entry.to_string(),
            });
        }
        names.push(entry.to_string());
    }
    Ok(names)
}

/// Reads and parses the list; a missing list means nothing to check.
pub fn read_check_list(list: &Path) -> Result<Vec<String>, Error> {
    match std::fs::read_to_string(list) {
        Ok(text) => parse_check_list(&text, list),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Read {
            path: list.to_path_buf(),
            source,
        }),
    }
}

/// `-` and `_` are the same in module names and aliases (kmod's
/// `alias_normalize`), except inside `[...]` of a pattern.
pub fn normalize(name: &str) -> String {
    let mut depth = 0usize;
    name.chars()
        .map(|c| match c {
            '[' => {
                depth += 1;
                c
            }
            ']' => {
                depth = depth.saturating_sub(1);
                c
            }
            '-' if depth == 0 => '_',
            other => other,
        })
        .collect()
}

/// One module in `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DepEntry {
    /// Path relative to the module directory.
    path: String,
    /// Its dependencies' names, as listed (deepest last).
    deps: Vec<String>,
}

/// The depmod index of one kernel release in the merged root.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// The module directory (host path).
    pub dir: PathBuf,
    deps: HashMap<String, DepEntry>,
    aliases: Vec<(String, String)>,
    softdeps: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

/// What a name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Loadable modules (one, or several alias matches), by name.
    Modules(Vec<String>),
    /// Compiled into the kernel: nothing to load.
    Builtin(String),
}

/// One `finit_module` call of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Module name (underscores).
    pub module: String,
    /// Path relative to the module directory.
    pub path: String,
    /// Loaded only as a soft dependency (or for one): its failure to apply
    /// here (`ENODEV`) is tolerated, as modprobe does.
    pub soft: bool,
}

impl Index {
    /// Builds the index from the text of the depmod files (empty text for
    /// a missing optional file).
    pub fn parse(dir: &Path, dep: &str, alias: &str, softdep: &str, builtin: &str) -> Index {
        Index {
            dir: dir.to_path_buf(),
            deps: parse_dep(dep),
            aliases: parse_alias(alias),
            softdeps: parse_softdep(softdep),
            builtin: builtin
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| module_name(Path::new(l)))
                .collect(),
        }
    }

    /// Reads the index of kernel `release` from the merged root `root`.
    pub fn read(root: &Path, release: &str) -> Result<Index, Error> {
        let dir = find_dir(root, release)?;
        let read = |name: &str, required: bool| -> Result<String, Error> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(err) if !required && err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(Error::Read { path, source }),
            }
        };
        let dep = read("modules.dep", true)?;
        let alias = read("modules.alias", false)?;
        let softdep = read("modules.softdep", false)?;
        let builtin = read("modules.builtin", false)?;
        Ok(Index::parse(&dir, &dep, &alias, &softdep, &builtin))
    }

    /// Resolves a listed name: module, else alias, else built-in.
    pub fn resolve(&self, name: &str) -> Option<Resolution> {
        let normal = normalize(name);
        if self.deps.contains_key(&normal) {
            return Some(Resolution::Modules(vec![normal]));
        }
        let mut matches: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob_match(pattern.as_bytes(), normal.as_bytes()) && !matches.contains(module) {
                matches.push(module.clone());
            }
        }
        matches.retain(|m| self.deps.contains_key(m) || self.builtin.contains(m));
        if matches.iter().any(|m| self.deps.contains_key(m)) {
            matches.retain(|m| self.deps.contains_key(m));
            return Some(Resolution::Modules(matches));
        }
        if let Some(builtin) = matches.into_iter().next() {
            return Some(Resolution::Builtin(builtin));
        }
        self.builtin
            .contains(&normal)
            .then_some(Resolution::Builtin(normal))
    }

    /// The loads for `modules` (from [`Index::resolve`]), in order.
    pub fn plan(&self, modules: &[String]) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut seen = HashSet::new();
        for module in modules {
            self.visit(module, false, &mut seen, &mut steps);
        }
        steps
    }

    fn visit(&self, module: &str, soft: bool, seen: &mut HashSet<String>, steps: &mut Vec<Step>) {
        let Some(entry) = self.deps.get(module) else {
            return;
        };
        if !seen.insert(module.to_string()) {
            return;
        }
        for pre in self.softdeps.get(module).into_iter().flatten() {
            if let Some(Resolution::Modules(found)) = self.resolve(pre) {
                for m in found {
                    self.visit(&m, true, seen, steps);
                }
            }
        }
        for dep in entry.deps.iter().rev() {
            self.visit(dep, soft, seen, steps);
        }
        steps.push(Step {
            module: module.to_string(),
            path: entry.path.clone(),
            soft,
        });
    }
}

/// `<root>/usr/lib/modules/<release>`, else `<root>/lib/modules/<release>`:
/// the first that has a `modules.dep`.
fn find_dir(root: &Path, release: &str) -> Result<PathBuf, Error> {
    for base in ["/usr/lib/modules", "/lib/modules"] {
        let rel = Path::new(base).join(release);
        let dir = rootpath::resolve(root, &rel).map_err(|source| Error::Read {
            path: root.join(rel.strip_prefix("/").unwrap_or(&rel)),
            source,
        })?;
        if dir.join("modules.dep").is_file() {
            return Ok(dir);
        }
    }
    Err(Error::NoIndex {
        root: root.to_path_buf(),
        release: release.to_string(),
    })
}

fn parse_dep(text: &str) -> HashMap<String, DepEntry> {
    let mut deps = HashMap::new();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim();
        if path.is_empty() {
            continue;
        }
        let entry = DepEntry {
            path: path.to_string(),
            deps: rest
                .split_whitespace()
                .map(|d| module_name(Path::new(d)))
                .collect(),
        };
        deps.entry(module_name(Path::new(path))).or_insert(entry);
    }
    deps
}

fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module)) => {
                    Some((normalize(pattern), normalize(module)))
                }
                _ => None,
            }
        })
        .collect()
}

/// `softdep <module> [pre: a b] [post: c]`; only `pre:` is kept. Words
/// before any `pre:`/`post:` are ignored, as kmod does.
fn parse_softdep(text: &str) -> HashMap<String, Vec<String>> {
    let mut softdeps: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("softdep") {
            continue;
        }
        let Some(module) = words.next() else {
            continue;
        };
        let mut in_pre = false;
        let mut pre = Vec::new();
        for word in words {
            match word {
                "pre:" => in_pre = true,
                "post:" => in_pre = false,
                other if in_pre => pre.push(other.to_string()),
                _ => {}
            }
        }
        softdeps.entry(normalize(module)).or_default().extend(pre);
    }
    softdeps
}

/// fnmatch(3) without flags: `*`, `?`, `[...]` with ranges and `!`/`^`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_match(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((b'[', rest)) => match (text.split_first(), class_end(rest)) {
            (Some((&c, text_rest)), Some(end)) => {
                class_matches(&rest[..end], c) && glob_match(&rest[end + 1..], text_rest)
            }
            // An unclosed `[` is a literal.
            (Some((&c, text_rest)), None) => c == b'[' && glob_match(rest, text_rest),
            (None, _) => false,
        },
        Some((&p, rest)) => text.first() == Some(&p) && glob_match(rest, &text[1..]),
    }
}

/// Index of the `]` closing a class that starts right after `[`.
fn class_end(class: &[u8]) -> Option<usize> {
    let start = usize::from(matches!(class.first(), Some(b'!' | b'^')));
    // A `]` right at the start is a member, not the end.
    let from = start + usize::from(class.get(start) == Some(&b']'));
    class
        .get(from..)?
        .iter()
        .position(|&b| b == b']')
        .map(|at| at + from)
}

fn class_matches(class: &[u8], c: u8) -> bool {
    let (negate, members) = match class.split_first() {
        Some((b'!' | b'^', rest)) => (true, rest),
        _ => (false, class),
    };
    let mut found = false;
    let mut i = 0;
    while i < members.len() {
        if i + 2 < members.len() && members[i + 1] == b'-' {
            found |= (members[i]..=members[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= members[i] == c;
            i += 1;
        }
    }
    found != negate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    const DEP: &str = "\
kernel/drivers/net/macvtap.ko: kernel/drivers/net/macvlan.ko kernel/drivers/net/tap.ko
kernel/drivers/net/macvlan.ko:
kernel/drivers/net/tap.ko:
kernel/drivers/net/dummy.ko:
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/net/a.ko: kernel/net/b.ko kernel/net/c.ko kernel/net/d.ko
kernel/net/b.ko: kernel/net/c.ko kernel/net/d.ko
kernel/net/c.ko: kernel/net/d.ko
kernel/net/d.ko:
kernel/drivers/nvme/host/nvme-core.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias rtnl-link-dummy dummy
alias rtnl-link-macvtap macvtap
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias pci:v00008086d*sv*sd*bc01sc08i02* nvme_core
alias fs-erofs erofs
alias net-two tap
alias net-two macvlan
alias fs-ext4 ext4
";
    const SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crc32c
softdep dummy pre: no-such-thing post: tap
softdep cifs gcm
";
    const BUILTIN: &str =
        "kernel/fs/ext4/ext4.ko\nkernel/drivers/base/firmware_loader/firmware_class.ko\n";

    fn index() -> Index {
        Index::parse(Path::new("/m"), DEP, ALIAS, SOFTDEP, BUILTIN)
    }

    fn plan_of(name: &str) -> Vec<(String, bool)> {
        let idx = index();
        match idx.resolve(name) {
            Some(Resolution::Modules(m)) => idx
                .plan(&m)
                .into_iter()
                .map(|s| (s.module, s.soft))
                .collect(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn names(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(n, s)| ((*n).to_string(), *s)).collect()
    }

    #[test]
    fn dependencies_load_deepest_first_then_the_module() {
        assert_eq!(
            plan_of("macvtap"),
            names(&[("tap", false), ("macvlan", false), ("macvtap", false)])
        );
        assert_eq!(
            plan_of("a"),
            names(&[("d", false), ("c", false), ("b", false), ("a", false)])
        );
        let idx = index();
        let steps = idx.plan(&["macvtap".to_string()]);
        assert_eq!(steps[0].path, "kernel/drivers/net/tap.ko");
    }

    #[test]
    fn pre_softdeps_come_first_and_are_soft() {
        assert_eq!(
            plan_of("erofs"),
            names(&[
                ("crc32c_generic", true),
                ("libcrc32c", false),
                ("erofs", false)
            ])
        );
        // A missing softdep is skipped; post: ones are not loaded.
        assert_eq!(plan_of("dummy"), names(&[("dummy", false)]));
    }

    #[test]
    fn names_resolve_through_aliases_with_dashes_as_underscores() {
        let idx = index();
        assert_eq!(
            idx.resolve("nvme-core"),
            Some(Resolution::Modules(vec!["nvme_core".into()]))
        );
        assert_eq!(
            idx.resolve("rtnl-link-dummy"),
            Some(Resolution::Modules(vec!["dummy".into()]))
        );
        assert_eq!(
            idx.resolve("rtnl_link_dummy"),
            Some(Resolution::Modules(vec!["dummy".into()]))
        );
        assert_eq!(
            idx.resolve("pci:v00008086d00000953sv00008086sd00003702bc01sc08i02"),
            Some(Resolution::Modules(vec!["nvme_core".into()]))
        );
        assert_eq!(
            idx.resolve("net-two"),
            Some(Resolution::Modules(vec!["tap".into(), "macvlan".into()]))
        );
        assert_eq!(
            idx.resolve("fs-ext4"),
            Some(Resolution::Builtin("ext4".into()))
        );
        assert_eq!(
            idx.resolve("firmware_class"),
            Some(Resolution::Builtin("firmware_class".into()))
        );
        assert_eq!(idx.resolve("no_such_module"), None);
    }

    #[test]
    fn a_module_is_planned_once() {
        let idx = index();
        let steps = idx.plan(&["tap".into(), "macvtap".into(), "macvlan".into()]);
        let got: Vec<&str> = steps.iter().map(|s| s.module.as_str()).collect();
        assert_eq!(got, ["tap", "macvlan", "macvtap"]);
    }

    #[test]
    fn globs_follow_fnmatch() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("abc", "abc") && !m("abc", "abd") && !m("abc", "ab"));
        assert!(m("a*c", "abbbc") && m("a*", "a") && m("*", ""));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("[a-c]x", "bx") && !m("[a-c]x", "dx"));
        assert!(m("[!a-c]x", "dx") && !m("[^a-c]x", "ax"));
        assert!(m("[]]", "]") && m("[x", "[x"));
        assert!(m(
            "usb:v*p*d*dc*dsc*dp*ic03isc01ip02in*",
            "usb:v1p2d3dc0dsc0dp0ic03isc01ip02in00"
        ));
    }

    #[test]
    fn normalizing_keeps_bracket_contents() {
        assert_eq!(normalize("nvme-core"), "nvme_core");
        assert_eq!(normalize("a-[x-z]-b"), "a_[x-z]_b");
    }

    #[test]
    fn the_check_list_takes_names_and_comments() {
        let list = Path::new("/etc/strata/modules.check");
        let names =
            parse_check_list("# ext modules\n\ndummy\n  rtnl-link-macvtap  \n", list).unwrap();
        assert_eq!(names, ["dummy", "rtnl-link-macvtap"]);
        for bad in ["kernel/x.ko", "x.ko", "a b"] {
            let err = parse_check_list(&format!("ok\n{bad}\n"), list).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("/etc/strata/modules.check line 2: {bad:?} is not a module name; write one module name or alias per line")
            );
        }
        assert!(read_check_list(Path::new("/nonexistent/modules.check"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_index_is_found_under_usr_lib_or_lib() {
        let root = TestDir::new("kmod");
        let err = Index::read(&root.0, "6.1").unwrap_err();
        assert!(err.to_string().starts_with("no modules.dep in "), "{err}");
        root.file("usr/lib/modules/6.1/modules.dep", b"kernel/x.ko:\n");
        std::os::unix::fs::symlink("/usr/lib", root.0.join("lib")).unwrap();
        let idx = Index::read(&root.0, "6.1").unwrap();
        assert_eq!(idx.dir, root.0.join("usr/lib/modules/6.1"));
        assert_eq!(
            idx.resolve("x"),
            Some(Resolution::Modules(vec!["x".into()]))
        );
        let root = TestDir::new("kmod-lib");
        root.file("lib/modules/6.1/modules.dep", b"kernel/y.ko:\n");
        assert_eq!(
            Index::read(&root.0, "6.1").unwrap().dir,
            root.0.join("lib/modules/6.1")
        );
    }
}
