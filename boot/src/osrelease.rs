//! os-release(5) files: the merged root's `/etc/os-release` (or
//! `/usr/lib/os-release`) and the extension-release files of sysext and
//! confext images, which share the format.
//!
//! Format, as systemd's env-file parser reads it: one `KEY=VALUE` per line;
//! blank lines and lines starting with `#` or `;` are skipped; whitespace
//! around the key and before the value is ignored; the value may mix
//! unquoted text (where `\x` stands for `x` and trailing whitespace is
//! dropped), `'single-quoted'` text (literal) and `"double-quoted"` text
//! (where `\"`, `\\`, `` \` `` and `\$` are escapes). A key given twice
//! keeps its last value, as `strv_env_pairs_get()` does.
//! Not supported: line continuations with a trailing backslash, `export`.

use std::io;
use std::path::{Path, PathBuf};

use crate::rootpath;

/// Reading an os-release file failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither location exists in the tree.
    #[error("{root} has no os-release file (/etc/os-release or /usr/lib/os-release); the root file system must ship one for system extensions to be checked against it")]
    Missing {
        /// The tree searched.
        root: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: io::Error,
    },
}

/// The parsed `KEY=VALUE` pairs of one file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pairs: Vec<(String, String)>,
}

impl Release {
    /// Parses the text of an os-release or extension-release file.
    pub fn parse(text: &str) -> Release {
        let pairs = text.lines().filter_map(parse_line).collect();
        Release { pairs }
    }

    /// Builds one from literal pairs (tests, callers with known values).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Release {
        Release {
            pairs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    /// The last value given for `key`, possibly empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` when it is set and not empty (systemd's `isempty`).
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// True when the file carried no pairs at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

fn parse_line(line: &str) -> Option<(String, String)> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with(['#', ';']) {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    if !is_valid_key(key) {
        return None;
    }
    Some((key.to_string(), unquote(value.trim_start())))
}

/// Environment variable names: letters, digits and `_`, not starting with a digit.
fn is_valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Undoes shell-style quoting; trailing unquoted whitespace is dropped.
fn unquote(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    // Length of `out` up to the last character that must be kept.
    let mut keep = 0;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                out.extend(chars.by_ref().take_while(|&q| q != '\''));
                keep = out.len();
            }
            '"' => {
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '`' | '$')) => out.push(e),
                            Some(other) => {
                                out.push('\\');
                                out.push(other);
                            }
                            None => out.push('\\'),
                        },
                        other => out.push(other),
                    }
                }
                keep = out.len();
            }
            '\\' => {
                out.extend(chars.next());
                keep = out.len();
            }
            other => {
                out.push(other);
                if !other.is_whitespace() {
                    keep = out.len();
                }
            }
        }
    }
    out.truncate(keep);
    out
}

/// Reads `path` as an os-release-format file.
pub fn read(path: &Path) -> Result<Release, Error> {
    std::fs::read_to_string(path)
        .map(|text| Release::parse(&text))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads the os-release of the tree at `root`: `/etc/os-release`, else
/// `/usr/lib/os-release`, symlinks resolved inside the tree. Returns the
/// file used (host path) and its contents.
pub fn read_root(root: &Path) -> Result<(PathBuf, Release), Error> {
    for candidate in ["/etc/os-release", "/usr/lib/os-release"] {
        let path = rootpath::resolve(root, Path::new(candidate)).map_err(|source| Error::Read {
            path: root.join(&candidate[1..]),
            source,
        })?;
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok((path, Release::parse(&text))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Read { path, source }),
        }
    }
    Err(Error::Missing {
        root: root.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::TestDir;

    #[test]
    fn reads_quoted_and_unquoted_values_like_systemd() {
        let text = r#"
# comment
; also a comment
NAME="Debian GNU/Linux"
ID=debian
  VERSION_ID = '12'
ID_LIKE="ubuntu \"x\" \$y \n"
PLAIN=a\ b   
MIXED=a'b c'"d"  
EMPTY=
bad-key=1
1BAD=2
no equals sign
ID=override
"#;
        let rel = Release::parse(text);
        assert_eq!(rel.get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(rel.get("ID"), Some("override"));
        assert_eq!(rel.get("VERSION_ID"), Some("12"));
        assert_eq!(rel.get("ID_LIKE"), Some("ubuntu \"x\" $y \\n"));
        assert_eq!(rel.get("PLAIN"), Some("a b"));
        assert_eq!(rel.get("MIXED"), Some("ab cd"));
        assert_eq!(rel.get("EMPTY"), Some(""));
        assert_eq!(rel.non_empty("EMPTY"), None);
        assert_eq!(rel.get("bad-key"), None);
        assert_eq!(rel.get("1BAD"), None);
        assert!(!rel.is_empty());
        assert!(Release::parse("# nothing\n\n").is_empty());
    }

    #[test]
    fn quoted_trailing_spaces_are_kept() {
        assert_eq!(Release::parse("A='x  '  \n").get("A"), Some("x  "));
        assert_eq!(Release::parse("A=x\\   \n").get("A"), Some("x "));
    }

    #[test]
    fn the_root_file_falls_back_to_usr_lib_and_follows_links_inside() {
        let dir = TestDir::new("osrel");
        dir.file("usr/lib/os-release", b"ID=base\n").dir("etc");
        let (path, rel) = read_root(&dir.0).unwrap();
        assert_eq!(path, dir.0.join("usr/lib/os-release"));
        assert_eq!(rel.get("ID"), Some("base"));
        std::os::unix::fs::symlink("/usr/lib/os-release", dir.0.join("etc/os-release")).unwrap();
        let (path, _) = read_root(&dir.0).unwrap();
        assert_eq!(path, dir.0.join("usr/lib/os-release"));
        std::fs::remove_file(dir.0.join("etc/os-release")).unwrap();
        dir.file("etc/os-release", b"ID=etc\n");
        assert_eq!(read_root(&dir.0).unwrap().1.get("ID"), Some("etc"));
    }

    #[test]
    fn a_root_without_os_release_is_named() {
        let dir = TestDir::new("osrel-none");
        let err = read_root(&dir.0).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("{} has no os-release file", dir.0.display())));
    }
}
