//! systemd system and configuration extensions (sysext/confext), as the composer reports on
//! them: the rules `systemd-sysext`/`systemd-confext` apply before merging an image, rendered
//! as findings.
//!
//! The rules, the release file parser, the release file fallback and the in-image `chase()` are
//! [`strata_proto::extrelease`], [`strata_proto::osrelease`] and [`strata_proto::rootpath`]:
//! the guest init decides with the same code whether it merges the image, so what `strata ext
//! validate` accepts is what the booted image merges. This module adds what only a composer
//! can say before the image ships:
//! - warnings systemd would not refuse on: release file syntax problems, a release file named
//!   after the image only after the `_`/`+` cut or not at all (the xattr that would allow it is
//!   not visible here), an unset `ARCHITECTURE`, keys of the other class, a non-boolean
//!   `EXTENSION_RELOAD_MANAGER`;
//! - contents: `/usr/lib/os-release` inside a sysext (refused by systemd), top-level content
//!   outside the merged hierarchies (`/usr`, `/opt` for sysext, `/etc` for confext; ignored by
//!   systemd), ELF programs for another architecture (the shared rule of
//!   [`crate::extension::arch`]; foreign ELF data such as QEMU's firmware is only noted);
//! - what could not be checked: without a host OS the `ID`/`VERSION_ID`/level rules, without
//!   a target architecture `ARCHITECTURE` and the ELF programs — each a "not checked" row
//!   naming what to give.
//!
//! Scope: strata merges extensions from its own init into the final root, so the host scope
//! is `system`; the init skips an image whose scope excludes `system`, as `systemd-sysext`
//! on the booted system would.
//!
//! Not visible here: extended attributes (`user.extension-release.strict`), image policies and
//! signatures, and the search paths the image is installed to.

use std::path::{Path, PathBuf};

use strata_proto::extrelease::{self as rules, Candidate, Mismatch, Pick, Strict};
use strata_proto::extrelease::{is_valid_image_name, parse_boolean};
pub use strata_proto::extrelease::{systemd_arch, Host as HostRelease};
use strata_proto::osrelease::Release;
use strata_proto::rootpath::{self, Node};

use super::arch::elf_finding;
use super::findings::{Finding, Severity};
use super::talos::rules::read_text;
use crate::binary::elf_machine_for_arch;
use crate::fs::tree::{EntryKind, FileData, Tree};

/// System or configuration extension: the systemd class of an extension kind.
pub type ImageKind = strata_proto::extrelease::Class;

/// What an image is checked against: the host OS and the target architecture, each when
/// known.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// The base's os-release (ID, VERSION_ID, levels, and its architecture).
    pub host: Option<&'a HostRelease>,
    /// The target architecture in systemd's spelling (`x86-64`, `arm64`); the host's when
    /// `None`.
    pub arch: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// The target of a build: the host and its architecture.
    pub fn of_host(host: Option<&'a HostRelease>) -> Self {
        Target { host, arch: None }
    }

    /// The target architecture in systemd's spelling, when known.
    pub fn architecture(&self) -> Option<&'a str> {
        self.arch.or_else(|| {
            self.host
                .map(|h| h.architecture.as_str())
                .filter(|a| !a.is_empty())
        })
    }
}

/// Checks one image's release file against the target, and its contents when the tree is
/// given.
///
/// `release_file_name` is the file's name (`extension-release.NAME`); without a host or an
/// architecture in `target`, the checks that need them are reported as not checked.
pub fn check(
    kind: ImageKind,
    image_name: &str,
    release_file_name: &str,
    release_text: &str,
    target: &Target<'_>,
    tree: Option<&Tree>,
) -> Vec<Finding> {
    let host = target.host;
    let label = match tree {
        Some(_) => format!("{}/{release_file_name}", kind.release_dir()),
        None => release_file_name.to_string(),
    };
    let mut out = Vec::new();
    check_names(kind, image_name, release_file_name, &label, &mut out);
    let release = Release::parse(release_text);
    for (line, problem) in &release.problems {
        out.push(Finding::warning(
            label.clone(),
            "sysext.release-syntax",
            format!("line {line}: {problem}"),
            "write KEY=VALUE lines, quoting values with spaces",
        ));
    }
    if release.is_empty() {
        out.push(refusal(kind, &label, Mismatch::Empty));
    } else {
        let unset = release.non_empty("ARCHITECTURE").is_none();
        if kind == ImageKind::Sysext && unset {
            out.push(Finding::warning(
                &label,
                "sysext.architecture-unset",
                "no ARCHITECTURE: systemd merges the image on every architecture",
                "set ARCHITECTURE=x86-64 or arm64 (or _any if it holds no binaries)",
            ));
        }
        // Each rule on its own, so one report names every reason; the guest stops at the first.
        let broken = [
            rules::check_scope(kind, &release),
            rules::check_architecture(&release, target.architecture()),
            rules::check_identity(kind, host, &release),
        ];
        for m in broken.into_iter().filter_map(Result::err) {
            out.push(refusal(kind, &label, m));
        }
        check_keys(kind, &release, &label, &mut out);
        unchecked(kind, &release, target, &label, &mut out);
    }
    if let Some(tree) = tree {
        check_contents(kind, &release, target, tree, &mut out);
    }
    out
}

/// "Not checked" findings for the release rules that had nothing to compare with.
fn unchecked(
    kind: ImageKind,
    release: &Release,
    target: &Target<'_>,
    label: &str,
    out: &mut Vec<Finding>,
) {
    if target.host.is_none() && release.non_empty("ID").is_some_and(|id| id != "_any") {
        out.push(Finding::not_checked(
            label,
            "sysext.os-id",
            format!(
                "ID, VERSION_ID and {} were not checked: no host os-release",
                kind.level_key()
            ),
            "give the base system's os-release (`--os-release FILE`, or --os-id and --os-version)",
        ));
    }
    let arch = release.non_empty("ARCHITECTURE").filter(|a| *a != "_any");
    if let (Some(arch), None) = (arch, target.architecture()) {
        out.push(Finding::not_checked(
            label,
            "sysext.architecture",
            format!("ARCHITECTURE={arch} was not compared with a target: no architecture"),
            "give the target architecture (`--arch amd64` or `--arch arm64`)",
        ));
    }
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

/// The finding for a broken rule: the rule id, what systemd does, and the fix.
fn refusal(kind: ImageKind, label: &str, m: Mismatch) -> Finding {
    match m {
        Mismatch::Empty => skip(
            kind,
            label,
            "sysext.release-empty",
            "it carries no release data".into(),
            "add at least ID=...",
        ),
        Mismatch::Scope { key, scope } => Finding::error(
            label,
            "sysext.scope",
            format!(
                "{key}={scope:?} excludes `system`: strata's init merges for the booted system \
                 and skips this image, as {} would",
                kind.tool()
            ),
            format!("add system to {key} (e.g. {key}=\"system portable\")"),
        ),
        Mismatch::UnknownArchitecture { image } => {
            let spelled = systemd_arch(&image)
                .map(|s| format!("systemd spells it {s}"))
                .unwrap_or_else(|| "use systemd's spelling: x86-64, arm64, ...".into());
            skip(
                kind,
                label,
                "sysext.architecture",
                format!("ARCHITECTURE={image} is not an architecture name systemd knows"),
                &spelled,
            )
        }
        Mismatch::Architecture { image, host } => skip(
            kind,
            label,
            "sysext.architecture",
            format!("it is for architecture {image}, the host is {host}"),
            "use the image built for the target architecture",
        ),
        Mismatch::NoId => skip(
            kind,
            label,
            "sysext.id",
            "it has no ID".into(),
            "add ID=<os id> (or ID=_any for images that fit every OS)",
        ),
        Mismatch::HostId => skip(
            kind,
            label,
            "sysext.os-id",
            "the base's os-release sets no ID, and systemd merges no extension then".into(),
            "set ID in the base root file system's os-release",
        ),
        Mismatch::Id { image, host, like } => {
            let like = if like.is_empty() {
                String::new()
            } else {
                format!(" (like {})", like.join(" "))
            };
            skip(
                kind,
                label,
                "sysext.os-id",
                format!("it is for OS {image:?}, the host is {host:?}{like}"),
                "use ID=_any or the host's ID",
            )
        }
        Mismatch::Level { key, image, host } => skip(
            kind,
            label,
            "sysext.level",
            format!("it is for {key} {image}, the host has {key} {host}"),
            &format!("build the image for {key}={host}"),
        ),
        Mismatch::NoVersionId { key, host } => skip(
            kind,
            label,
            "sysext.version-id",
            format!("it has neither {key} nor VERSION_ID, and the host's VERSION_ID is {host}"),
            &format!("set {key} to the host's level, VERSION_ID={host}, or ID=_any"),
        ),
        Mismatch::VersionId { image, host } => skip(
            kind,
            label,
            "sysext.version-id",
            format!("it is for VERSION_ID {image}, the host has VERSION_ID {host}"),
            "use the image built for this OS release, or a level/_any image",
        ),
    }
}

fn check_names(
    kind: ImageKind,
    image_name: &str,
    file_name: &str,
    label: &str,
    out: &mut Vec<Finding>,
) {
    if !is_valid_image_name(image_name) {
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
    if suffix == rules::base_name(image_name) {
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

fn check_contents(
    kind: ImageKind,
    release: &Release,
    target: &Target<'_>,
    tree: &Tree,
    out: &mut Vec<Finding>,
) {
    for forbidden in rules::forbidden_content(kind) {
        if chase(tree, Path::new(forbidden)).is_none() {
            continue;
        }
        out.push(Finding::error(
            *forbidden,
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
        .or(target.architecture());
    match arch.and_then(elf_machine_for_arch) {
        Some(machine) => elf_findings(tree, machine, out),
        None => out.push(Finding::not_checked(
            "/",
            "sysext.elf-arch",
            "the architecture of ELF programs was not checked: neither the image's \
             ARCHITECTURE nor a target names one",
            "give the target architecture (`--arch amd64` or `--arch arm64`)",
        )),
    }
}

/// At most this many findings of each severity of the ELF rule are listed.
const MAX_ELF_LISTED: usize = 20;

fn elf_findings(tree: &Tree, machine: u16, out: &mut Vec<Finding>) {
    let mut found: Vec<Finding> = Vec::new();
    for (path, entry) in tree.iter() {
        let EntryKind::File(data) = &entry.kind else {
            continue;
        };
        let text = path.to_string_lossy();
        if let Some(f) = elf_finding(&text, &text, data, machine, "sysext.elf-arch") {
            found.push(f);
        }
    }
    for severity in [Severity::Error, Severity::Info] {
        let of: Vec<&Finding> = found.iter().filter(|f| f.severity == severity).collect();
        out.extend(of.iter().take(MAX_ELF_LISTED).map(|f| (*f).clone()));
        if of.len() > MAX_ELF_LISTED {
            let more = of.len() - MAX_ELF_LISTED;
            out.push(Finding::new(
                severity,
                "/",
                of[0].rule,
                format!("{more} more ELF files like these for another architecture"),
                of[0].hint.clone(),
            ));
        }
    }
}

/// Locates the release file in an image tree as systemd does and checks the image against
/// `host` and its architecture (the build's view).
pub fn check_tree(
    kind: ImageKind,
    image_name: &str,
    tree: &Tree,
    host: Option<&HostRelease>,
) -> Vec<Finding> {
    check_tree_for(kind, image_name, tree, &Target::of_host(host))
}

/// [`check_tree`] against a target whose host or architecture may be unknown
/// (`strata ext validate`).
pub fn check_tree_for(
    kind: ImageKind,
    image_name: &str,
    tree: &Tree,
    target: &Target<'_>,
) -> Vec<Finding> {
    match locate(kind, image_name, tree) {
        Ok((file_name, data)) => match read_text(data) {
            Ok(text) => check(kind, image_name, &file_name, &text, target, Some(tree)),
            Err(e) => vec![Finding::error(
                format!("{}/{file_name}", kind.release_dir()),
                "sysext.release-syntax",
                format!("cannot use the release file: {e}"),
                "write the release file as UTF-8 text",
            )],
        },
        Err(f) => {
            let mut out = vec![f];
            check_contents(kind, &Release::default(), target, tree, &mut out);
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
    let files: Vec<(String, &FileData)> = tree
        .iter()
        .filter(|(p, _)| p.parent() == Some(dir.as_path()))
        .filter_map(|(p, e)| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let EntryKind::File(data) = &e.kind else {
                return None;
            };
            name.starts_with("extension-release.")
                .then_some((name, data))
        })
        .collect();
    // Images held in memory carry no xattrs: whether a file may apply under another
    // name is for the booted system to see.
    let candidates: Vec<Candidate> = files
        .iter()
        .map(|(file_name, _)| Candidate {
            file_name: file_name.clone(),
            strict: Strict::Unknown,
        })
        .collect();
    let data_of = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, d)| *d);
    let label = format!("{}/{exact}", kind.release_dir());
    match rules::pick_release_file(image_name, &candidates) {
        Pick::Found(name) | Pick::Unverified(name) => match data_of(&name) {
            Some(data) => Ok((name, data)),
            None => Err(missing(kind, image_name, &label, tree)),
        },
        Pick::NotUnique(_) => Err(skip(
            kind,
            &label,
            "sysext.release-ambiguous",
            format!(
                "several release files in {} fit it (ENOTUNIQ)",
                kind.release_dir()
            ),
            "keep exactly one extension-release file",
        )),
        Pick::Missing { candidates: 0 } => Err(missing(kind, image_name, &label, tree)),
        Pick::Missing { candidates } => Err(skip(
            kind,
            &label,
            "sysext.release-name",
            format!(
                "none of the {candidates} release files in {} is named for {image_name:?}",
                kind.release_dir()
            ),
            &format!("keep exactly one file, named {exact}"),
        )),
    }
}

/// Resolves symlinks in `path` inside the image, as systemd's `chase()` with the image as
/// root (the guest's walk: [`strata_proto::rootpath::chase`]). `None` when a component is
/// missing or the links loop.
pub fn chase(tree: &Tree, path: &Path) -> Option<PathBuf> {
    let lookup = |p: &Path| {
        Ok::<_, std::convert::Infallible>(match tree.get(p).map(|e| &e.kind) {
            None => Node::Missing,
            Some(EntryKind::Symlink(target)) => Node::Symlink(target.clone()),
            Some(_) => Node::Other,
        })
    };
    rootpath::chase(path, lookup)
        .ok()
        .filter(|c| c.complete)
        .map(|c| c.path)
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
    fn host_release_reads_os_release() {
        let h = flatcar();
        assert_eq!(h.id, "flatcar");
        assert_eq!(h.id_like, ["coreos"]);
        assert_eq!(h.version_id.as_deref(), Some("4230.2.0"));
        assert_eq!(h.architecture, "x86-64");
        assert!(HostRelease::from_os_release("", "sparc").is_err());
        // systemd merges nothing for a base without ID (the guest refuses every image).
        let bare = HostRelease::from_os_release("", "arm64").unwrap();
        assert_eq!(bare.id, "");
        assert_eq!(
            skip_rules(ImageKind::Sysext, "ID=_any\n", &bare),
            ["sysext.os-id"]
        );
    }

    /// Compose-time validation and the guest's merge decision on one table: the composer
    /// reports no refusal exactly when the guest's rules (`strata_proto::extrelease::validate`,
    /// what the init calls with the merged root's os-release) accept the image.
    #[test]
    fn the_composer_accepts_exactly_what_the_guest_merges() {
        let hosts = [
            flatcar(),
            HostRelease::from_os_release("ID=debian\nVERSION_ID=12\n", "arm64").unwrap(),
            HostRelease::from_os_release("ID=arch\n", "amd64").unwrap(),
            HostRelease::from_os_release("VERSION_ID=1\n", "amd64").unwrap(),
        ];
        let releases = [
            "",
            "# nothing\n",
            "bad-key=1\n",
            "ID=_any\n",
            "ID=_any\nARCHITECTURE=arm64\n",
            "ID=_any\nARCHITECTURE=x86-64\n",
            "ID=_any\nARCHITECTURE=x86_64\n",
            "ID=_any\nSYSEXT_SCOPE=initrd\n",
            "ID=_any\nCONFEXT_SCOPE=\"initrd system\"\n",
            "ID=\n",
            "ID=flatcar\nSYSEXT_LEVEL=1.0\n",
            "ID=flatcar\nSYSEXT_LEVEL=2.0\nVERSION_ID=4230.2.0\n",
            "ID=coreos\nVERSION_ID=4230.2.0\n",
            "ID=flatcar\n",
            "ID=debian\nVERSION_ID=12\n",
            "ID=debian\nVERSION_ID='11'\n",
            "ID=\"debian\" VERSION_ID=12\n",
            "ID=arch\nARCHITECTURE=_any\n",
            "ID=linux\n",
            "ID=debian\nVERSION_ID=1\\\n2\n",
        ];
        let mut both = [0, 0];
        for host in &hosts {
            for kind in [ImageKind::Sysext, ImageKind::Confext] {
                for text in releases {
                    let composer = skip_rules(kind, text, host).is_empty();
                    let release = strata_proto::osrelease::Release::parse(text);
                    let guest = strata_proto::extrelease::validate(kind, host, &release).is_ok();
                    assert_eq!(composer, guest, "{kind:?} {text:?} on {host:?}");
                    both[usize::from(guest)] += 1;
                }
            }
        }
        assert!(
            both[0] > 10 && both[1] > 10,
            "the table must exercise both outcomes: {both:?}"
        );
    }

    fn skip_rules(kind: ImageKind, text: &str, host: &HostRelease) -> Vec<&'static str> {
        check(
            kind,
            "x",
            "extension-release.x",
            text,
            &Target::of_host(Some(host)),
            None,
        )
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
            check(kind, name, file, text, &Target::of_host(Some(&h)), None)
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
        elf[16] = 2;
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
        let got: Vec<(&str, &str, bool)> = f
            .iter()
            .filter(|f| f.severity != Severity::NotChecked)
            .map(|f| (f.rule, f.path.as_str(), f.is_error()))
            .collect();
        assert_eq!(
            got,
            [
                ("sysext.elf-arch", "/usr/bin/dockerd", true),
                ("content.foreign-elf", "/usr/lib/firmware/dsp.elf", false),
            ]
        );
    }

    #[test]
    fn unchecked_rules_are_named_with_the_option_that_enables_them() {
        let t = image(&[(
            "/usr/lib/extension-release.d/extension-release.d",
            "ID=fedora\nARCHITECTURE=arm64\n",
        )]);
        let f = check_tree_for(ImageKind::Sysext, "d", &t, &Target::default());
        let unchecked: Vec<(&str, &str)> = f
            .iter()
            .filter(|f| f.severity == Severity::NotChecked)
            .map(|f| (f.rule, f.hint.as_str()))
            .collect();
        assert_eq!(unchecked.len(), 2, "{f:?}");
        assert!(unchecked[0].1.contains("--os-release"), "{unchecked:?}");
        assert!(unchecked[1].1.contains("--arch"), "{unchecked:?}");
        // `--arch` alone judges ARCHITECTURE.
        let amd64 = Target {
            host: None,
            arch: Some("x86-64"),
        };
        let f = check_tree_for(ImageKind::Sysext, "d", &t, &amd64);
        assert!(
            f.iter()
                .any(|f| f.rule == "sysext.architecture" && f.is_error()),
            "{f:?}"
        );
    }
}
