//! `/proc/self/mountinfo`: what the kernel says is mounted, and the lower
//! directories of an overlay.
//!
//! Line format (proc(5)): `id parent major:minor root mount-point options
//! [optional fields...] - fstype source super-options`. Paths and options are
//! octal-escaped by the kernel (`\040` for a space, `\134` for a backslash,
//! `\054` for a comma inside an option value). An overlay's `lowerdir=` lists
//! layers top first, separated by `:`, where `\:` is a literal colon; `::`
//! (data-only layers, Linux 6.5+) yields no extra entries.
//! Not supported: `lowerdir+=`-only listings (not emitted by 6.1).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The file the checks read.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A line does not match the format.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Too few fields or no `-` separator.
    #[error("mountinfo line {line} is malformed: {text:?}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// File system type, e.g. `overlay`.
    pub fstype: String,
    /// Mount source (unescaped).
    pub source: String,
    /// Per-superblock options, split at commas and unescaped.
    pub super_options: Vec<String>,
}

/// Parses the whole file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| parse_line(line, index + 1))
        .collect()
}

fn parse_line(text: &str, line: usize) -> Result<MountEntry, Error> {
    let malformed = || Error::Malformed {
        line,
        text: text.to_string(),
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    let dash = fields
        .iter()
        .position(|field| *field == "-")
        .ok_or_else(malformed)?;
    if dash < 6 || fields.len() < dash + 3 {
        return Err(malformed());
    }
    Ok(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        fstype: String::from_utf8_lossy(&unescape(fields[dash + 1])).into_owned(),
        source: String::from_utf8_lossy(&unescape(fields[dash + 2])).into_owned(),
        super_options: fields
            .get(dash + 3)
            .map(|options| {
                options
                    .split(',')
                    .map(|option| String::from_utf8_lossy(&unescape(option)).into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Undoes the kernel's `\ooo` octal escapes; anything else is kept as is.
pub fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && is_octal_escape(&bytes[i + 1..]) {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn is_octal_escape(rest: &[u8]) -> bool {
    rest.len() >= 3 && rest[..3].iter().all(|b| (b'0'..=b'7').contains(b))
}

impl MountEntry {
    /// The value of super-option `key=`, if present.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find_map(|option| option.strip_prefix(key)?.strip_prefix('='))
    }

    /// An overlay's lower directories, top first; `None` if this is not an
    /// overlay or it lists none.
    pub fn overlay_lowerdirs(&self) -> Option<Vec<PathBuf>> {
        if self.fstype != "overlay" {
            return None;
        }
        self.option("lowerdir").map(split_lowerdir)
    }
}

/// Splits a `lowerdir=` value at unescaped colons, dropping empty entries.
pub fn split_lowerdir(value: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => current.extend(chars.next()),
            ':' => {
                if !current.is_empty() {
                    dirs.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            other => current.push(other),
        }
    }
    if !current.is_empty() {
        dirs.push(PathBuf::from(current));
    }
    dirs
}

/// The mount now visible at `mount_point`: the last one listed there, since
/// later lines are mounted on top of earlier ones.
pub fn top_mount_at<'a>(entries: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .rev()
        .find(|entry| entry.mount_point == mount_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1 1 0:2 / / rw - rootfs none rw,size=497820k
17 1 0:5 / /dev rw,nosuid relatime shared:2 - devtmpfs devtmpfs rw,size=4096k,mode=755
30 1 7:0 / /strata/rootfs ro,relatime - squashfs /dev/loop0 ro,errors=continue
31 1 7:1 / /strata/layers/0 ro,relatime - squashfs /dev/loop1 ro,errors=continue
32 1 7:2 / /strata/layers/1 ro,relatime - squashfs /dev/loop2 ro,errors=continue
33 1 0:30 / /strata/root ro,relatime - overlay overlay ro,lowerdir=/strata/layers/1:/strata/layers/0:/strata/rootfs,redirect_dir=nofollow
34 33 0:1 /extensions.yaml /strata/root/etc/extensions.yaml ro,relatime - rootfs none rw
";

    #[test]
    fn parses_fields_around_optional_tags() {
        let entries = parse(SAMPLE).unwrap();
        assert_eq!(entries.len(), 7);
        assert_eq!(entries[1].mount_point, PathBuf::from("/dev"));
        assert_eq!(entries[1].fstype, "devtmpfs");
        assert_eq!(entries[1].option("mode"), Some("755"));
        assert_eq!(entries[2].source, "/dev/loop0");
    }

    #[test]
    fn reads_overlay_lowerdirs_top_first() {
        let entries = parse(SAMPLE).unwrap();
        let overlay = top_mount_at(&entries, Path::new("/strata/root")).unwrap();
        assert_eq!(
            overlay.overlay_lowerdirs().unwrap(),
            vec![
                PathBuf::from("/strata/layers/1"),
                PathBuf::from("/strata/layers/0"),
                PathBuf::from("/strata/rootfs"),
            ]
        );
        let squash = top_mount_at(&entries, Path::new("/strata/rootfs")).unwrap();
        assert_eq!(squash.overlay_lowerdirs(), None);
    }

    #[test]
    fn the_last_mount_on_a_path_wins() {
        let text = "1 0 0:1 / /m rw - tmpfs a rw\n2 1 0:2 / /m rw - overlay b ro,lowerdir=/x:/y\n";
        let entries = parse(text).unwrap();
        assert_eq!(top_mount_at(&entries, Path::new("/m")).unwrap().source, "b");
    }

    #[test]
    fn octal_escapes_and_colon_escapes_are_undone() {
        let text = "5 1 0:9 / /with\\040space ro - overlay overlay ro,lowerdir=/a\\134:b\\054c:/d::/data\n";
        let entries = parse(text).unwrap();
        assert_eq!(entries[0].mount_point, PathBuf::from("/with space"));
        assert_eq!(
            entries[0].overlay_lowerdirs().unwrap(),
            vec![
                PathBuf::from("/a:b,c"),
                PathBuf::from("/d"),
                PathBuf::from("/data")
            ]
        );
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let err = parse("1 1 0:2 / / rw - rootfs none rw\n2 1 0:3 / /x rw\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "mountinfo line 2 is malformed: \"2 1 0:3 / /x rw\""
        );
    }

    #[test]
    fn a_lone_backslash_is_kept() {
        assert_eq!(unescape("a\\b\\12"), b"a\\b\\12".to_vec());
        assert_eq!(unescape("\\011x"), b"\tx".to_vec());
    }
}
