//! systemd system and configuration extensions (sysext/confext): extension-release files and
//! the rules `systemd-sysext`/`systemd-confext` apply before merging an image.
//!
//! Supported:
//! - the os-release file format as systemd's `parse_env_file` reads it: `KEY=VALUE` lines,
//!   `#`/`;` comment lines, single quotes (literal), double quotes (backslash escapes `"`, `\`,
//!   `` ` ``, `$`), backslash escapes in unquoted values, line continuations, trailing
//!   whitespace trimmed, quoted pieces concatenated (`'a' "b"` is `ab`) while quotes inside
//!   an unquoted value stay literal, the last duplicate key winning ([`parse_release`]);
//! - locating the release file in an image tree (`usr/lib/extension-release.d/` for sysext,
//!   `etc/extension-release.d/` for confext), including systemd's fallback scan of that
//!   directory (`_`/`+` name cut, `ENOTUNIQ` on several candidates) ([`check_tree`]);
//! - `extension_release_validate`: empty release data, `SYSEXT_SCOPE`/`CONFEXT_SCOPE`,
//!   `ARCHITECTURE`, `ID` (`_any`, `ID_LIKE`), `SYSEXT_LEVEL`/`CONFEXT_LEVEL` against
//!   `VERSION_ID`, in systemd's order ([`check`]);
//! - contents: `/usr/lib/os-release` inside a sysext (refused by systemd), top-level content
//!   outside the merged hierarchies (`/usr`, `/opt` for sysext, `/etc` for confext; ignored by
//!   systemd), ELF files for another architecture.
//!
//! Scope: strata merges extensions from its own init into the final root, so the host scope
//! is `system`; the init skips an image whose scope excludes `system`, as `systemd-sysext`
//! on the booted system would.
//!
//! Not visible here: extended attributes (`user.extension-release.strict`), image policies and
//! signatures, and the search paths the image is installed to.

use std::path::{Path, PathBuf};

use super::findings::Finding;
use super::talos::paths::under;
use super::talos::rules::{elf_arch_finding, read_text};
use crate::binary::elf_machine_for_arch;
use crate::fs::tree::{EntryKind, FileData, Tree};

/// Errors from reading the host's os-release.
#[derive(Debug, thiserror::Error)]
pub enum SysextError {
    /// The architecture name is not one strata can map to systemd's spelling.
    #[error("architecture {0:?} is unknown; hint: use amd64 or arm64")]
    Architecture(String),
}

/// System or configuration extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `systemd-sysext`: merges `/usr` and `/opt`.
    Sysext,
    /// `systemd-confext`: merges `/etc`.
    Confext,
}

impl ImageKind {
    /// `sysext` or `confext`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Sysext => "sysext",
            ImageKind::Confext => "confext",
        }
    }

    /// Directory of the release file inside the image.
    pub fn release_dir(self) -> &'static str {
        match self {
            ImageKind::Sysext => "/usr/lib/extension-release.d",
            ImageKind::Confext => "/etc/extension-release.d",
        }
    }

    /// The API level key compared with the host (`SYSEXT_LEVEL`/`CONFEXT_LEVEL`).
    pub fn level_key(self) -> &'static str {
        match self {
            ImageKind::Sysext => "SYSEXT_LEVEL",
            ImageKind::Confext => "CONFEXT_LEVEL",
        }
    }

    /// The scope key (`SYSEXT_SCOPE`/`CONFEXT_SCOPE`).
    pub fn scope_key(self) -> &'static str {
        match self {
            ImageKind::Sysext => "SYSEXT_SCOPE",
            ImageKind::Confext => "CONFEXT_SCOPE",
        }
    }

    /// Top-level directories systemd merges by default.
    pub fn hierarchies(self) -> &'static [&'static str] {
        match self {
            ImageKind::Sysext => &["usr", "opt"],
            ImageKind::Confext => &["etc"],
        }
    }

    fn tool(self) -> &'static str {
        match self {
            ImageKind::Sysext => "systemd-sysext",
            ImageKind::Confext => "systemd-confext",
        }
    }

    fn other(self) -> ImageKind {
        match self {
            ImageKind::Sysext => ImageKind::Confext,
            ImageKind::Confext => ImageKind::Sysext,
        }
    }
}

/// A parsed release file: assignments in file order plus syntax problems (1-based lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// `(key, value)` in file order; later duplicates win in [`Release::get`].
    pub entries: Vec<(String, String)>,
    /// `(line, problem)` for lines systemd ignores or reads in a surprising way.
    pub problems: Vec<(usize, String)>,
}

impl Release {
    /// The value of `key` (the last assignment, as systemd's `strv_env_pairs_get`).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` when set and not empty.
    fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }
}

/// Parser states of systemd's `parse_env_file_internal`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    PreKey,
    Key,
    PreValue,
    Value,
    ValueEscape,
    Single,
    Double,
    DoubleEscape,
    Comment,
    CommentEscape,
}

/// Parses os-release/extension-release text the way systemd does.
pub fn parse_release(text: &str) -> Release {
    let mut p = Parser::default();
    for c in text.chars() {
        p.step(c);
    }
    p.finish()
}

#[derive(Default)]
struct Parser {
    state: Option<State>,
    key: String,
    value: String,
    /// Length of `value` without unquoted trailing whitespace.
    trimmed_len: usize,
    line: usize,
    key_line: usize,
    out: Release,
}

impl Parser {
    fn step(&mut self, raw: char) {
        // systemd's NEWLINE is "\n\r": a carriage return ends a line too.
        let c = if raw == '\r' { '\n' } else { raw };
        let state = self.state.unwrap_or(State::PreKey);
        let next = match state {
            State::PreKey => self.pre_key(c),
            State::Key => self.in_key(c),
            State::PreValue => self.pre_value(c),
            State::Value => self.in_value(c),
            State::ValueEscape => self.value_escape(c),
            State::Single => self.single(c),
            State::Double => self.double(c),
            State::DoubleEscape => self.double_escape(c),
            State::Comment => match c {
                '\\' => State::CommentEscape,
                '\n' => State::PreKey,
                _ => State::Comment,
            },
            State::CommentEscape => State::Comment,
        };
        if raw == '\n' {
            self.line += 1;
        }
        self.state = Some(next);
    }

    fn pre_key(&mut self, c: char) -> State {
        match c {
            '#' | ';' => State::Comment,
            c if c.is_whitespace() => State::PreKey,
            c => {
                self.key.clear();
                self.key.push(c);
                self.key_line = self.line + 1;
                State::Key
            }
        }
    }

    fn in_key(&mut self, c: char) -> State {
        match c {
            '\n' => {
                self.problem(format!(
                    "line {:?} has no `=`; systemd ignores it",
                    self.key.trim()
                ));
                State::PreKey
            }
            '=' => {
                self.value.clear();
                self.trimmed_len = 0;
                State::PreValue
            }
            c => {
                self.key.push(c);
                State::Key
            }
        }
    }

    fn pre_value(&mut self, c: char) -> State {
        match c {
            '\n' => {
                self.push();
                State::PreKey
            }
            '\'' => State::Single,
            '"' => State::Double,
            '\\' => State::ValueEscape,
            c if c.is_whitespace() => State::PreValue,
            c => {
                self.append(c, false);
                State::Value
            }
        }
    }

    fn in_value(&mut self, c: char) -> State {
        match c {
            '\n' => {
                self.push();
                State::PreKey
            }
            '\\' => State::ValueEscape,
            c => {
                self.append(c, c.is_whitespace());
                State::Value
            }
        }
    }

    fn value_escape(&mut self, c: char) -> State {
        if c != '\n' {
            self.append(c, false);
        }
        State::Value
    }

    fn single(&mut self, c: char) -> State {
        if c == '\'' {
            return State::PreValue;
        }
        self.append(c, false);
        State::Single
    }

    fn double(&mut self, c: char) -> State {
        match c {
            '"' => State::PreValue,
            '\\' => State::DoubleEscape,
            c => {
                self.append(c, false);
                State::Double
            }
        }
    }

    fn double_escape(&mut self, c: char) -> State {
        match c {
            '"' | '\\' | '`' | '$' => self.append(c, false),
            '\n' => {}
            c => {
                self.append('\\', false);
                self.append(c, false);
            }
        }
        State::Double
    }

    /// Appends to the value; unquoted whitespace is kept only if more text follows.
    fn append(&mut self, c: char, is_trailing_ws: bool) {
        self.value.push(c);
        if !is_trailing_ws {
            self.trimmed_len = self.value.len();
        }
    }

    fn push(&mut self) {
        let key = self.key.trim().to_string();
        let value = self.value[..self.trimmed_len].to_string();
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            self.problem(format!("{key:?} is not a valid variable name"));
        }
        if self.out.entries.iter().any(|(k, _)| *k == key) {
            self.problem(format!("{key} is set more than once; the last value wins"));
        }
        self.out.entries.push((key, value));
    }

    fn problem(&mut self, message: String) {
        self.out.problems.push((self.key_line, message));
    }

    fn finish(mut self) -> Release {
        match self.state.unwrap_or(State::PreKey) {
            State::PreKey | State::Comment | State::CommentEscape => {}
            State::Key => self.problem(format!(
                "line {:?} has no `=`; systemd ignores it",
                self.key.trim()
            )),
            State::Single | State::Double | State::DoubleEscape => {
                self.problem("unterminated quote at the end of the file".into());
                self.push();
            }
            State::PreValue | State::Value | State::ValueEscape => self.push(),
        }
        self.out
    }
}

/// The host side of the match: what the base image's os-release says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRelease {
    /// `ID` (`linux` when unset, as os-release specifies).
    pub id: String,
    /// `ID_LIKE`, split at whitespace.
    pub id_like: Vec<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
    /// `SYSEXT_LEVEL`.
    pub sysext_level: Option<String>,
    /// `CONFEXT_LEVEL`.
    pub confext_level: Option<String>,
    /// Architecture in systemd's spelling (`x86-64`, `arm64`).
    pub architecture: String,
}

impl HostRelease {
    /// Reads the base rootfs' `/etc/os-release` (or `/usr/lib/os-release`) text; `arch` is
    /// `amd64`/`arm64` or already systemd's spelling.
    pub fn from_os_release(text: &str, arch: &str) -> Result<Self, SysextError> {
        let release = parse_release(text);
        let architecture =
            systemd_arch(arch).ok_or_else(|| SysextError::Architecture(arch.to_string()))?;
        let opt = |k: &str| release.non_empty(k).map(String::from);
        Ok(Self {
            id: opt("ID").unwrap_or_else(|| "linux".into()),
            id_like: release
                .get("ID_LIKE")
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            version_id: opt("VERSION_ID"),
            sysext_level: opt("SYSEXT_LEVEL"),
            confext_level: opt("CONFEXT_LEVEL"),
            architecture: architecture.to_string(),
        })
    }

    fn level(&self, kind: ImageKind) -> Option<&str> {
        match kind {
            ImageKind::Sysext => self.sysext_level.as_deref(),
            ImageKind::Confext => self.confext_level.as_deref(),
        }
    }
}

/// systemd's architecture name for a Debian/uname/systemd spelling.
pub fn systemd_arch(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" | "x86_64" | "x86-64" => "x86-64",
        "arm64" | "aarch64" => "arm64",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "ppc64el" | "ppc64le" | "ppc64-le" => "ppc64-le",
        "i386" | "x86" => "x86",
        "armhf" | "arm" => "arm",
        _ => return None,
    })
}

/// Architecture names systemd knows (`architecture_to_string`).
const SYSTEMD_ARCHES: &[&str] = &[
    "x86",
    "x86-64",
    "ppc",
    "ppc-le",
    "ppc64",
    "ppc64-le",
    "ia64",
    "parisc",
    "parisc64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "mips",
    "mips-le",
    "mips64",
    "mips64-le",
    "alpha",
    "arm",
    "arm-be",
    "arm64",
    "arm64-be",
    "sh",
    "sh64",
    "m68k",
    "tilegx",
    "cris",
    "nios2",
    "riscv32",
    "riscv64",
    "arc",
    "arc-be",
    "loongarch64",
];

/// `image_name_is_valid`: a file name without control characters, not starting with `.#`.
pub fn image_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.starts_with(".#")
        && !name.chars().any(char::is_control)
}

/// The image name cut at the first `_` or `+` (`foo_1.2_x86-64+3` → `foo`).
fn cut_name(name: &str) -> &str {
    name.split(['_', '+']).next().unwrap_or(name)
}

/// Checks one image's release file against the host, and its contents when the tree is given.
///
/// `release_file_name` is the file's name (`extension-release.NAME`), `host` the target OS
/// (without one, only what does not depend on the host is checked).
pub fn check(
    kind: ImageKind,
    image_name: &str,
    release_file_name: &str,
    release_text: &str,
    host: Option<&HostRelease>,
    tree: Option<&Tree>,
) -> Vec<Finding> {
    let label = match tree {
        Some(_) => format!("{}/{release_file_name}", kind.release_dir()),
        None => release_file_name.to_string(),
    };
    let mut out = Vec::new();
    check_names(kind, image_name, release_file_name, &label, &mut out);
    let release = parse_release(release_text);
    for (line, problem) in &release.problems {
        out.push(Finding::warning(
            label.clone(),
            "sysext.release-syntax",
            format!("line {line}: {problem}"),
            "write KEY=VALUE lines, quoting values with spaces",
        ));
    }
    if release.entries.is_empty() {
        out.push(skip(
            kind,
            &label,
            "sysext.release-empty",
            "it carries no release data".into(),
            "add at least ID=...",
        ));
    } else {
        check_scope(kind, &release, &label, &mut out);
        check_arch(kind, &release, host, &label, &mut out);
        check_identity(kind, &release, host, &label, &mut out);
        check_keys(kind, &release, &label, &mut out);
    }
    if let Some(tree) = tree {
        check_contents(kind, &release, host, tree, &mut out);
    }
    out
}

/// An error finding for a reason systemd skips the image.
fn skip(kind: ImageKind, label: &str, rule: &'static str, why: String, hint: &str) -> Finding {
    Finding::error(
        label,
        rule,
        format!("{} would skip this image: {why}", kind.tool()),
        hint,
    )
}

fn check_names(
    kind: ImageKind,
    image_name: &str,
    file_name: &str,
    label: &str,
    out: &mut Vec<Finding>,
) {
    if !image_name_ok(image_name) {
        out.push(skip(
            kind,
            label,
            "sysext.image-name",
            format!("{image_name:?} is not a valid image name"),
            "use a plain file name without control characters, not starting with .#",
        ));
    }
    let Some(suffix) = file_name.strip_prefix("extension-release.") else {
        out.push(skip(
            kind,
            label,
            "sysext.release-name",
            format!("{file_name:?} is not named extension-release.NAME"),
            "name the file extension-release.<image name>",
        ));
        return;
    };
    if suffix == image_name {
        return;
    }
    if suffix == cut_name(image_name) {
        out.push(Finding::warning(
            label,
            "sysext.release-name",
            format!(
                "release file {file_name} matches image {image_name:?} only after cutting the \
                 name at `_`/`+`, which older systemd versions do not do"
            ),
            format!("name the image {suffix} or the file extension-release.{image_name}"),
        ));
        return;
    }
    out.push(Finding::warning(
        label,
        "sysext.release-name",
        format!(
            "release file {file_name} does not match image name {image_name:?}: {} skips the \
             image unless the file has xattr user.extension-release.strict=false, which strata \
             cannot see",
            kind.tool()
        ),
        format!("rename the file to extension-release.{image_name} (or the image to {suffix})"),
    ));
}

fn check_scope(kind: ImageKind, release: &Release, label: &str, out: &mut Vec<Finding>) {
    let key = kind.scope_key();
    let Some(scope) = release.get(key) else {
        return;
    };
    if !scope.split_whitespace().any(|s| s == "system") {
        out.push(Finding::error(
            label,
            "sysext.scope",
            format!(
                "{key}={scope:?} excludes `system`: strata's init merges for the booted system \
                 and skips this image, as {} would",
                kind.tool()
            ),
            format!("add system to {key} (e.g. {key}=\"system portable\")"),
        ));
    }
}

fn check_arch(
    kind: ImageKind,
    release: &Release,
    host: Option<&HostRelease>,
    label: &str,
    out: &mut Vec<Finding>,
) {
    let arch = release.non_empty("ARCHITECTURE");
    match arch {
        None if kind == ImageKind::Sysext => out.push(Finding::warning(
            label,
            "sysext.architecture-unset",
            "no ARCHITECTURE: systemd merges the image on every architecture",
            "set ARCHITECTURE=x86-64 or arm64 (or _any if it holds no binaries)",
        )),
        None | Some("_any") => {}
        Some(a) if !SYSTEMD_ARCHES.contains(&a) => {
            let spelled = systemd_arch(a)
                .map(|s| format!("systemd spells it {s}"))
                .unwrap_or_else(|| "use systemd's spelling: x86-64, arm64, ...".into());
            out.push(skip(
                kind,
                label,
                "sysext.architecture",
                format!("ARCHITECTURE={a} is not an architecture name systemd knows"),
                &spelled,
            ));
        }
        Some(a) => {
            if let Some(host) = host.filter(|h| h.architecture != a) {
                out.push(skip(
                    kind,
                    label,
                    "sysext.architecture",
                    format!(
                        "it is for architecture {a}, the host is {}",
                        host.architecture
                    ),
                    "use the image built for the target architecture",
                ));
            }
        }
    }
}

fn check_identity(
    kind: ImageKind,
    release: &Release,
    host: Option<&HostRelease>,
    label: &str,
    out: &mut Vec<Finding>,
) {
    let Some(id) = release.non_empty("ID") else {
        out.push(skip(
            kind,
            label,
            "sysext.id",
            "it has no ID".into(),
            "add ID=<os id> (or ID=_any for images that fit every OS)",
        ));
        return;
    };
    let Some(host) = host else { return };
    if id == "_any" {
        return;
    }
    if id != host.id && !host.id_like.iter().any(|l| l == id) {
        let like = if host.id_like.is_empty() {
            String::new()
        } else {
            format!(" (like {})", host.id_like.join(" "))
        };
        out.push(skip(
            kind,
            label,
            "sysext.os-id",
            format!("it is for OS {id:?}, the host is {:?}{like}", host.id),
            "use ID=_any or the host's ID",
        ));
        return;
    }
    check_version(kind, release, host, label, out);
}

/// The version part of `extension_release_validate`, including its quirk that a host with a
/// level but no VERSION_ID accepts an image without a level.
fn check_version(
    kind: ImageKind,
    release: &Release,
    host: &HostRelease,
    label: &str,
    out: &mut Vec<Finding>,
) {
    let key = kind.level_key();
    let host_level = host.level(kind).filter(|l| !l.is_empty());
    let host_version = host.version_id.as_deref().filter(|v| !v.is_empty());
    if host_level.is_none() && host_version.is_none() {
        return;
    }
    if let (Some(hl), Some(el)) = (host_level, release.non_empty(key)) {
        if hl != el {
            out.push(skip(
                kind,
                label,
                "sysext.level",
                format!("it is for {key} {el}, the host has {key} {hl}"),
                &format!("build the image for {key}={hl}"),
            ));
        }
        return;
    }
    let Some(hv) = host_version else { return };
    match release.non_empty("VERSION_ID") {
        None => out.push(skip(
            kind,
            label,
            "sysext.version-id",
            format!("it has neither {key} nor VERSION_ID, and the host's VERSION_ID is {hv}"),
            &format!("set {key} to the host's level, VERSION_ID={hv}, or ID=_any"),
        )),
        Some(v) if v != hv => out.push(skip(
            kind,
            label,
            "sysext.version-id",
            format!("it is for VERSION_ID {v}, the host has VERSION_ID {hv}"),
            "use the image built for this OS release, or a level/_any image",
        )),
        Some(_) => {}
    }
}

fn check_keys(kind: ImageKind, release: &Release, label: &str, out: &mut Vec<Finding>) {
    if let Some(v) = release.get("EXTENSION_RELOAD_MANAGER") {
        if parse_boolean(v).is_none() {
            out.push(Finding::warning(
                label,
                "sysext.reload-manager",
                format!("EXTENSION_RELOAD_MANAGER={v:?} is not a boolean; systemd ignores it"),
                "write EXTENSION_RELOAD_MANAGER=1 (or remove it)",
            ));
        }
    }
    let other = kind.other();
    for key in [other.level_key(), other.scope_key()] {
        if release.get(key).is_some() {
            out.push(Finding::warning(
                label,
                "sysext.wrong-key",
                format!(
                    "{key} is for {}s; a {} ignores it",
                    other.as_str(),
                    kind.as_str()
                ),
                format!(
                    "use {} instead",
                    if key.ends_with("LEVEL") {
                        kind.level_key()
                    } else {
                        kind.scope_key()
                    }
                ),
            ));
        }
    }
}

/// systemd's `parse_boolean`.
pub fn parse_boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

fn check_contents(
    kind: ImageKind,
    release: &Release,
    host: Option<&HostRelease>,
    tree: &Tree,
    out: &mut Vec<Finding>,
) {
    if kind == ImageKind::Sysext && tree.get("/usr/lib/os-release").is_some() {
        out.push(Finding::error(
            "/usr/lib/os-release",
            "sysext.os-release",
            "systemd-sysext refuses an image that contains /usr/lib/os-release",
            "remove usr/lib/os-release from the image (the release file goes to \
             usr/lib/extension-release.d/)",
        ));
    }
    for (path, _) in tree.iter() {
        if path.parent() != Some(Path::new("/")) {
            continue;
        }
        let top = path.to_string_lossy();
        if !kind.hierarchies().iter().any(|h| top == format!("/{h}")) {
            out.push(Finding::warning(
                top.clone(),
                "sysext.ignored-content",
                format!(
                    "{top} is outside the merged hierarchies ({}): systemd ignores it",
                    kind.hierarchies()
                        .iter()
                        .map(|h| format!("/{h}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!(
                    "move it under {} or drop it",
                    kind.hierarchies()
                        .iter()
                        .map(|h| format!("/{h}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
    }
    let arch = release
        .non_empty("ARCHITECTURE")
        .filter(|a| *a != "_any")
        .or(host.map(|h| h.architecture.as_str()));
    if let Some(machine) = arch.and_then(elf_machine_for_arch) {
        elf_findings(tree, machine, out);
    }
}

fn elf_findings(tree: &Tree, machine: u16, out: &mut Vec<Finding>) {
    let mut listed = 0;
    for (path, entry) in tree.iter() {
        let EntryKind::File(data) = &entry.kind else {
            continue;
        };
        let text = path.to_string_lossy();
        if under(&text, "/usr/lib/firmware") || under(&text, "/lib/firmware") {
            continue;
        }
        if let Some(f) = elf_arch_finding(&text, data, machine, "sysext.elf-arch") {
            listed += 1;
            if listed <= 20 {
                out.push(f);
            }
        }
    }
    if listed > 20 {
        out.push(Finding::error(
            "/",
            "sysext.elf-arch",
            format!(
                "{} more ELF files are for another architecture",
                listed - 20
            ),
            "use the image built for the target architecture",
        ));
    }
}

/// Locates the release file in an image tree as systemd does and checks the image.
pub fn check_tree(
    kind: ImageKind,
    image_name: &str,
    tree: &Tree,
    host: Option<&HostRelease>,
) -> Vec<Finding> {
    match locate(kind, image_name, tree) {
        Ok((file_name, data)) => match read_text(data) {
            Ok(text) => check(kind, image_name, &file_name, &text, host, Some(tree)),
            Err(e) => vec![Finding::error(
                format!("{}/{file_name}", kind.release_dir()),
                "sysext.release-syntax",
                format!("cannot use the release file: {e}"),
                "write the release file as UTF-8 text",
            )],
        },
        Err(f) => {
            let mut out = vec![f];
            check_contents(kind, &Release::default(), host, tree, &mut out);
            out
        }
    }
}

/// The release file systemd would use, or the finding saying why there is none.
fn locate<'t>(
    kind: ImageKind,
    image_name: &str,
    tree: &'t Tree,
) -> Result<(String, &'t FileData), Finding> {
    let dir = PathBuf::from(kind.release_dir());
    let exact = format!("extension-release.{image_name}");
    if let Some(data) = chase(tree, &dir.join(&exact)).and_then(|p| regular_file(tree, &p)) {
        return Ok((exact, data));
    }
    let dir = chase(tree, &dir).unwrap_or(dir);
    let candidates: Vec<(String, &FileData)> = tree
        .iter()
        .filter(|(p, _)| p.parent() == Some(dir.as_path()))
        .filter_map(|(p, e)| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let suffix = name.strip_prefix("extension-release.")?;
            let EntryKind::File(data) = &e.kind else {
                return None;
            };
            image_name_ok(suffix).then_some((name, data))
        })
        .collect();
    let matching: Vec<&(String, &FileData)> = candidates
        .iter()
        .filter(|(n, _)| n["extension-release.".len()..] == *cut_name(image_name))
        .collect();
    let label = format!("{}/{exact}", kind.release_dir());
    match (matching.as_slice(), candidates.as_slice()) {
        ([one], _) => Ok((one.0.clone(), one.1)),
        ([_, _, ..], _) => Err(skip(
            kind,
            &label,
            "sysext.release-ambiguous",
            format!(
                "several release files in {} fit it (ENOTUNIQ)",
                kind.release_dir()
            ),
            "keep exactly one extension-release file",
        )),
        ([], [one]) => Ok((one.0.clone(), one.1)),
        ([], []) => Err(missing(kind, image_name, &label, tree)),
        ([], _) => Err(skip(
            kind,
            &label,
            "sysext.release-name",
            format!(
                "none of the {} release files in {} is named for {image_name:?}",
                candidates.len(),
                kind.release_dir()
            ),
            &format!("keep exactly one file, named {exact}"),
        )),
    }
}

/// Resolves symlinks in `path` inside the image, as systemd's `chase()` with the image as
/// root: absolute targets start at the image root, `..` stops there, at most 40 links.
/// `None` when a component is missing or the links loop.
pub fn chase(tree: &Tree, path: &Path) -> Option<PathBuf> {
    let mut pending: Vec<String> = components(path).into_iter().rev().collect();
    let mut done = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&name);
        match &tree.get(&next)?.kind {
            EntryKind::Symlink(target) => {
                links += 1;
                if links > 40 {
                    return None;
                }
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                pending.extend(components(target).into_iter().rev());
            }
            _ => done = next,
        }
    }
    Some(done)
}

/// Normal and `..` components of a path, as strings (`.` and `/` dropped).
fn components(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn regular_file<'t>(tree: &'t Tree, path: &Path) -> Option<&'t FileData> {
    match &tree.get(path)?.kind {
        EntryKind::File(data) => Some(data),
        _ => None,
    }
}

fn missing(kind: ImageKind, image_name: &str, label: &str, tree: &Tree) -> Finding {
    let other = kind.other();
    let elsewhere = tree
        .iter()
        .any(|(p, _)| p.parent() == Some(Path::new(other.release_dir())));
    let hint = if elsewhere {
        format!(
            "the image has a release file in {}: it is laid out as a {}; validate it as one \
             or move the file to {}/",
            other.release_dir(),
            other.as_str(),
            kind.release_dir()
        )
    } else {
        format!(
            "add {}/extension-release.{image_name} with ID=...",
            kind.release_dir()
        )
    };
    skip(
        kind,
        label,
        "sysext.release-missing",
        format!(
            "it has no {}/extension-release.{image_name}",
            kind.release_dir()
        ),
        &hint,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tree::Entry;

    fn flatcar() -> HostRelease {
        HostRelease::from_os_release(
            "NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nID_LIKE=coreos\nVERSION_ID=4230.2.0\nSYSEXT_LEVEL=1.0\n",
            "amd64",
        )
        .unwrap()
    }

    #[test]
    fn release_files_parse_like_systemd() {
        let text = "# comment\n; also comment\n\nID='flatcar'\nA=\"x \\\"q\\\" \\n \\$y\"\nB = plain value   \nC='a'b\"c\"\nG='x' \"y\"\nD=a\\ b\nE=line\\\ncontinued\nF=\nnoequals\nA=second\n";
        let r = parse_release(text);
        assert_eq!(r.get("ID"), Some("flatcar"));
        assert_eq!(r.get("A"), Some("second"));
        assert_eq!(r.entries[1].1, "x \"q\" \\n $y");
        assert_eq!(r.get("B"), Some("plain value"));
        assert_eq!(
            r.get("C"),
            Some("ab\"c\""),
            "quotes inside an unquoted value are literal"
        );
        assert_eq!(r.get("G"), Some("xy"));
        assert_eq!(r.get("D"), Some("a b"));
        assert_eq!(r.get("E"), Some("linecontinued"));
        assert_eq!(r.get("F"), Some(""));
        let problems: Vec<&str> = r.problems.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            problems,
            [
                "line \"noequals\" has no `=`; systemd ignores it",
                "A is set more than once; the last value wins"
            ]
        );
        assert_eq!((r.problems[0].0, r.problems[1].0), (13, 14));
        let r = parse_release("ID=\"open");
        assert_eq!(r.get("ID"), Some("open"));
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn host_release_reads_os_release() {
        let h = flatcar();
        assert_eq!(h.id, "flatcar");
        assert_eq!(h.id_like, ["coreos"]);
        assert_eq!(h.version_id.as_deref(), Some("4230.2.0"));
        assert_eq!(h.architecture, "x86-64");
        assert!(HostRelease::from_os_release("", "sparc").is_err());
        assert_eq!(
            HostRelease::from_os_release("", "arm64").unwrap().id,
            "linux"
        );
    }

    fn skip_rules(kind: ImageKind, text: &str, host: &HostRelease) -> Vec<&'static str> {
        check(kind, "x", "extension-release.x", text, Some(host), None)
            .into_iter()
            .filter(|f| f.is_error())
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn matching_follows_extension_release_validate() {
        let h = flatcar();
        let s = ImageKind::Sysext;
        let c = ImageKind::Confext;
        let table: &[(ImageKind, &str, &[&str])] = &[
            (s, "ID=_any\nARCHITECTURE=_any\n", &[]),
            (s, "ID=_any\nSYSEXT_SCOPE=initrd\n", &["sysext.scope"]),
            (s, "ID=_any\nSYSEXT_SCOPE=\"initrd system\"\n", &[]),
            (c, "ID=_any\nCONFEXT_SCOPE=portable\n", &["sysext.scope"]),
            (c, "ID=_any\nSYSEXT_SCOPE=portable\n", &[]),
            (s, "ID=_any\nARCHITECTURE=x86-64\nVERSION_ID=1\n", &[]),
            (s, "ID=_any\nARCHITECTURE=arm64\n", &["sysext.architecture"]),
            (s, "ID=_any\nARCHITECTURE=amd64\n", &["sysext.architecture"]),
            (s, "", &["sysext.release-empty"]),
            (s, "# only a comment\n", &["sysext.release-empty"]),
            (s, "ARCHITECTURE=x86-64\n", &["sysext.id"]),
            (s, "ID=\nARCHITECTURE=x86-64\n", &["sysext.id"]),
            (s, "ID=fedora\nARCHITECTURE=x86-64\n", &["sysext.os-id"]),
            (s, "ID=coreos\nSYSEXT_LEVEL=1.0\n", &[]),
            (s, "ID=flatcar\nSYSEXT_LEVEL=1.0\n", &[]),
            (s, "ID=flatcar\nSYSEXT_LEVEL=2.0\n", &["sysext.level"]),
            (
                s,
                "ID=flatcar\nSYSEXT_LEVEL=2.0\nVERSION_ID=4230.2.0\n",
                &["sysext.level"],
            ),
            (s, "ID=flatcar\nVERSION_ID=4230.2.0\n", &[]),
            (
                s,
                "ID=flatcar\nVERSION_ID=4799.0.0\n",
                &["sysext.version-id"],
            ),
            (s, "ID=flatcar\n", &["sysext.version-id"]),
            (
                s,
                "ID=fedora\nARCHITECTURE=arm64\n",
                &["sysext.architecture", "sysext.os-id"],
            ),
            (c, "ID=flatcar\nSYSEXT_LEVEL=1.0\n", &["sysext.version-id"]),
            (c, "ID=_any\n", &[]),
        ];
        for (kind, text, want) in table {
            assert_eq!(&skip_rules(*kind, text, &h), want, "{kind:?}: {text:?}");
        }
        let mut level_only = h.clone();
        level_only.version_id = None;
        assert_eq!(
            skip_rules(s, "ID=flatcar\n", &level_only),
            [] as [&str; 0],
            "systemd quirk"
        );
        let mut rolling = h.clone();
        rolling.version_id = None;
        rolling.sysext_level = None;
        assert_eq!(
            skip_rules(s, "ID=flatcar\nVERSION_ID=9\n", &rolling),
            [] as [&str; 0]
        );
    }

    #[test]
    fn warnings_cover_reload_manager_names_and_keys() {
        let h = flatcar();
        let warn = |kind, name: &str, file: &str, text: &str| -> Vec<(&'static str, String)> {
            check(kind, name, file, text, Some(&h), None)
                .into_iter()
                .filter(|f| !f.is_error())
                .map(|f| (f.rule, f.message))
                .collect()
        };
        let w = warn(
            ImageKind::Sysext,
            "x",
            "extension-release.x",
            "ID=_any\nARCHITECTURE=_any\nSYSEXT_SCOPE=\"system portable\"\nEXTENSION_RELOAD_MANAGER=fales\n",
        );
        assert_eq!(
            w.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            ["sysext.reload-manager"]
        );
        assert!(w[0].1.contains("\"fales\" is not a boolean"));
        let w = warn(
            ImageKind::Sysext,
            "app1",
            "extension-release.app2",
            "ID=_any\nARCHITECTURE=_any\n",
        );
        assert!(
            w[0].1.contains("user.extension-release.strict=false"),
            "{w:?}"
        );
        let w = warn(
            ImageKind::Sysext,
            "foo_1.2_x86-64",
            "extension-release.foo",
            "ID=_any\nARCHITECTURE=_any\n",
        );
        assert!(w[0].1.contains("only after cutting"), "{w:?}");
        let w = warn(
            ImageKind::Confext,
            "x",
            "extension-release.x",
            "ID=_any\nSYSEXT_LEVEL=1\n",
        );
        assert_eq!(w[0].0, "sysext.wrong-key");
        let w = warn(ImageKind::Sysext, "x", "extension-release.x", "ID=_any\n");
        assert_eq!(w[0].0, "sysext.architecture-unset");
        assert!(warn(ImageKind::Confext, "x", "extension-release.x", "ID=_any\n").is_empty());
        assert!(warn(
            ImageKind::Sysext,
            "x",
            "extension-release.x",
            "ID=_any\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n"
        )
        .is_empty());
    }

    fn image(files: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new();
        for (path, text) in files {
            t.insert(path, Entry::bytes_file(text.as_bytes().to_vec(), 0o644))
                .unwrap();
        }
        t
    }

    fn tree_rules(kind: ImageKind, name: &str, t: &Tree) -> Vec<(&'static str, bool)> {
        check_tree(kind, name, t, Some(&flatcar()))
            .into_iter()
            .map(|f| (f.rule, f.is_error()))
            .collect()
    }

    #[test]
    fn trees_locate_the_release_file_like_systemd() {
        let any = "ID=_any\nARCHITECTURE=x86-64\n";
        let rel = "/usr/lib/extension-release.d/extension-release.";
        let ok = image(&[(&format!("{rel}app"), any), ("/usr/bin/app", "x")]);
        assert_eq!(tree_rules(ImageKind::Sysext, "app", &ok), []);
        let other = image(&[(&format!("{rel}app2"), any)]);
        assert_eq!(
            tree_rules(ImageKind::Sysext, "app1", &other),
            [("sysext.release-name", false)]
        );
        let versioned = image(&[(&format!("{rel}app"), any)]);
        assert_eq!(
            tree_rules(ImageKind::Sysext, "app_1.0_x86-64", &versioned),
            [("sysext.release-name", false)]
        );
        let two = image(&[(&format!("{rel}a"), any), (&format!("{rel}b"), any)]);
        assert_eq!(
            tree_rules(ImageKind::Sysext, "c", &two),
            [("sysext.release-name", true)]
        );
        let confext_layout = image(&[
            (
                "/etc/extension-release.d/extension-release.cfg",
                "ID=_any\n",
            ),
            ("/etc/cfg.conf", "x"),
        ]);
        let f = check_tree(ImageKind::Sysext, "cfg", &confext_layout, None);
        assert_eq!(f[0].rule, "sysext.release-missing");
        assert!(f[0].hint.contains("laid out as a confext"), "{}", f[0].hint);
        assert_eq!(f[1].rule, "sysext.ignored-content");
        assert_eq!(tree_rules(ImageKind::Confext, "cfg", &confext_layout), []);
        let junk = image(&[
            (&format!("{rel}app"), any),
            ("/usr/lib/os-release", "ID=x\n"),
            ("/etc/app.conf", "x"),
            ("/var/lib/x", "x"),
        ]);
        assert_eq!(
            tree_rules(ImageKind::Sysext, "app", &junk),
            [
                ("sysext.os-release", true),
                ("sysext.ignored-content", false),
                ("sysext.ignored-content", false)
            ]
        );
    }

    #[test]
    fn release_files_are_found_through_symlinks() {
        let mut t = image(&[("/usr/share/rel/real", "ID=_any\nARCHITECTURE=x86-64\n")]);
        let dir = "/usr/lib/extension-release.d";
        t.insert(
            format!("{dir}/extension-release.app"),
            Entry::symlink("../../share/rel/real"),
        )
        .unwrap();
        assert_eq!(tree_rules(ImageKind::Sysext, "app", &t), []);
        t.insert(
            format!("{dir}/extension-release.app"),
            Entry::symlink("/usr/share/rel/real"),
        )
        .unwrap();
        assert_eq!(tree_rules(ImageKind::Sysext, "app", &t), []);
        t.insert(
            format!("{dir}/extension-release.app"),
            Entry::symlink("loop"),
        )
        .unwrap();
        t.insert(
            format!("{dir}/loop"),
            Entry::symlink("extension-release.app"),
        )
        .unwrap();
        assert_eq!(
            tree_rules(ImageKind::Sysext, "app", &t),
            [("sysext.release-missing", true)]
        );
        assert_eq!(
            chase(&t, Path::new("/usr/share/../../../usr/share/rel")),
            Some(PathBuf::from("/usr/share/rel"))
        );
    }

    #[test]
    fn elf_files_must_match_the_image_architecture() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[5] = 1;
        elf[18] = 183;
        let mut t = image(&[(
            "/usr/lib/extension-release.d/extension-release.d",
            "ID=_any\nARCHITECTURE=x86-64\n",
        )]);
        t.insert("/usr/bin/dockerd", Entry::bytes_file(elf.clone(), 0o755))
            .unwrap();
        t.insert("/usr/lib/firmware/dsp.elf", Entry::bytes_file(elf, 0o644))
            .unwrap();
        let f = check_tree(ImageKind::Sysext, "d", &t, None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].rule, f[0].path.as_str()),
            ("sysext.elf-arch", "/usr/bin/dockerd")
        );
    }
}
