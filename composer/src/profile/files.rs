//! The profile's `state:` and `files:` sections, as written. Their checks
//! against the root and the host live in `plan/files.rs`.

use serde::Deserialize;

pub use strata_proto::initramfs::StateMode;

/// One entry of `files:`: configuration the image ships on top of the root
/// and every extension.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the booted system.
    pub path: String,
    /// `file` (default), `dir` or `symlink`.
    #[serde(default, rename = "type")]
    pub kind: FileType,
    /// A file's content, as text.
    #[serde(default)]
    pub content: Option<String>,
    /// A file's content, from this host file (relative to the profile).
    #[serde(default)]
    pub source: Option<String>,
    /// A symlink's target.
    #[serde(default)]
    pub target: Option<String>,
    /// Permission bits as an octal string (`"0644"`); 0644 for files,
    /// 0755 for directories when absent.
    #[serde(default)]
    pub mode: Option<ModeText>,
    /// `uid:gid`, or `user[:group]` names from the root's /etc/passwd and
    /// /etc/group; `0:0` when absent.
    #[serde(default)]
    pub owner: Option<String>,
}

/// `type:` of a `files:` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// A regular file (`content:` or `source:`).
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link (`target:`).
    Symlink,
}

/// A mode as the user wrote it; the plan parses and checks it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ModeText {
    /// `"0644"`, `"0o644"`, `"644"`.
    Text(String),
    /// A YAML number: refused (YAML reads `0644` as decimal 644 or as
    /// octal depending on the parser), with the fix.
    Number(i64),
}
