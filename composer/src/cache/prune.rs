//! `strata cache`: what the step cache and the digest memo hold, pruning both by last use
//! and by size, and a full verification.

use super::{discard, lock, memo, verify, Check, Key, Meta, META};
use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One entry as `strata cache` lists it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata; `None` when unreadable (such an entry is never used, and pruned first).
    pub meta: Option<Meta>,
    /// Bytes on disk (data and metadata, allocated blocks).
    pub bytes: u64,
    /// Last use.
    pub used: SystemTime,
}

/// Every entry under `<root>/steps`, least recently used first.
pub fn list(root: &Path) -> Result<Vec<Listed>> {
    let steps = root.join("steps");
    let rd = match fs::read_dir(&steps) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("reading", &steps)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(Error::io("reading", &steps))?;
        let name = entry.file_name();
        if Key::parse(&name.to_string_lossy()).is_none() {
            continue;
        }
        let dir = entry.path();
        let meta = fs::read(dir.join(META))
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
        let mut bytes = 0;
        let mut used = SystemTime::UNIX_EPOCH;
        for f in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata() {
                // What the file takes on disk: a sparse disk image takes less than its length.
                bytes += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
                if f.file_name() == META {
                    used = m.modified().unwrap_or(used);
                }
            }
        }
        out.push(Listed {
            dir,
            meta,
            bytes,
            used,
        });
    }
    out.sort_by_key(|l| (l.meta.is_some(), l.used));
    Ok(out)
}

/// What a prune or a verification removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries removed.
    pub removed: usize,
    /// Their bytes.
    pub freed: u64,
    /// Entries kept.
    pub kept: usize,
    /// Their bytes.
    pub kept_bytes: u64,
    /// The digest memo after a prune (records kept, its bytes, records dropped).
    pub memo: memo::Tally,
}

/// Removes the entries unused for longer than `older_than`, then the least recently used
/// until at most `max_size` bytes are left (unreadable entries go first). The digest memo
/// first loses the records of files gone or changed and, with `older_than`, those not used
/// within it; its bytes count toward `max_size`, and it is removed whole only if the limit
/// is still exceeded when no entry is left (`--max-size 0` clears everything). Refused
/// while a build holds the cache, whose entries it may be reading and whose memo it writes.
pub fn prune(
    root: &Path,
    older_than: Option<Duration>,
    max_size: Option<u64>,
    now: SystemTime,
) -> Result<Pruned> {
    let _lock = exclusive(root)?;
    let memo_at = root.join(memo::FILE);
    let mut kept_memo =
        memo::prune(root, older_than, false, now).map_err(Error::io("pruning", &memo_at))?;
    let entries = list(root)?;
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum::<u64>() + kept_memo.bytes;
    let mut r = Pruned::default();
    for e in entries {
        let age = now.duration_since(e.used).unwrap_or_default();
        let too_old = older_than.is_some_and(|limit| age > limit);
        let too_big = max_size.is_some_and(|limit| total > limit);
        if e.meta.is_none() || too_old || too_big {
            discard(&e.dir)?;
            total -= e.bytes;
            r.removed += 1;
            r.freed += e.bytes;
        } else {
            r.kept += 1;
            r.kept_bytes += e.bytes;
        }
    }
    if max_size.is_some_and(|limit| total > limit) {
        let dropped = kept_memo.dropped;
        kept_memo = memo::prune(root, None, true, now).map_err(Error::io("removing", &memo_at))?;
        kept_memo.dropped += dropped;
    }
    r.memo = kept_memo;
    Ok(r)
}

/// Hashes every entry in full and removes those that do not match their metadata.
pub fn verify_all(root: &Path) -> Result<Pruned> {
    let _lock = exclusive(root)?;
    let mut r = Pruned::default();
    for e in list(root)? {
        let key = e
            .dir
            .file_name()
            .and_then(|n| Key::parse(&n.to_string_lossy()));
        match key.map(|k| verify(&e.dir, &k, true)) {
            Some(Check::Good(_)) => {
                r.kept += 1;
                r.kept_bytes += e.bytes;
            }
            _ => {
                discard(&e.dir)?;
                r.removed += 1;
                r.freed += e.bytes;
            }
        }
    }
    Ok(r)
}

/// The exclusive lock on `steps/.lock`, or an error naming the reason.
fn exclusive(root: &Path) -> Result<Option<fs::File>> {
    let steps = root.join("steps");
    if !root.is_dir() {
        return Ok(None);
    }
    // A cache with a memo but no `steps/` (removed by hand) still needs the lock a build
    // would take.
    fs::create_dir_all(&steps).map_err(Error::io("creating", &steps))?;
    match lock(&steps, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(Error::step(
            crate::error::ErrorKind::Io,
            format!("locking the step cache {}", steps.display()),
            "a build is using it",
        )
        .with_hint("run it again when the build is done")),
        Err(e) => Err(Error::io("locking", steps.join(".lock"))(e)),
    }
}

/// `strata cache show`: one line per entry (step, name, size, last use, key), least
/// recently used first, their total, the digest memo's records and size, and the sum.
pub fn show(root: &Path, now: SystemTime) -> Result<String> {
    use crate::profile::units::human;
    let entries = list(root)?;
    let mut out = String::new();
    for e in &entries {
        let age = ago(now.duration_since(e.used).unwrap_or_default());
        let key = e.dir.file_name().unwrap_or_default().to_string_lossy();
        let (step, name) = match &e.meta {
            Some(m) => (m.step.as_str(), m.name.as_str()),
            None => ("?", "(unreadable: pruned first)"),
        };
        out.push_str(&format!(
            "{step:<10} {name:<28} {:>10}  used {age:>8} ago  {}\n",
            human(e.bytes),
            &key[..12.min(key.len())]
        ));
    }
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    out.push_str(&format!(
        "{}: {} entries, {}\n",
        root.join("steps").display(),
        entries.len(),
        human(total)
    ));
    let memo = memo::tally(root);
    out.push_str(&format!(
        "{}: {} file digests, {}\ntotal: {}\n",
        root.join(memo::FILE).display(),
        memo.records,
        human(memo.bytes),
        human(total + memo.bytes)
    ));
    Ok(out)
}

/// One line for what a prune or verification did.
pub fn summary(p: &Pruned) -> String {
    use crate::profile::units::human;
    let mut line = format!(
        "removed {} entries ({}), kept {} ({})",
        p.removed,
        human(p.freed),
        p.kept,
        human(p.kept_bytes)
    );
    if p.memo != memo::Tally::default() {
        line.push_str(&format!(
            "; digest memo: dropped {} records, kept {} ({})",
            p.memo.dropped,
            p.memo.records,
            human(p.memo.bytes)
        ));
    }
    line
}

/// `42 s`, `5 min`, `3 h`, `2 d`.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Parses an age: a number with `s`, `m`, `h`, `d` or `w` (`7d`, `12h`).
pub fn parse_age(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not an age; write e.g. `7d`, `12h` or `30m`"))?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use s, m, h, d or w"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("age `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Cache, KeyBuilder};
    use std::collections::BTreeMap;

    fn fill(root: &Path, sizes: &[usize]) -> Vec<Key> {
        let c = Cache::open(root, true).unwrap();
        let mut keys = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let mut k = KeyBuilder::new("test");
            k.u64("i", i as u64);
            let k = k.finish();
            c.get_or_make(
                "test",
                &format!("e{i}"),
                || Ok(k.clone()),
                Path::new("/x"),
                |p| {
                    fs::write(p, vec![0u8; *n]).map_err(Error::io("writing", p))?;
                    Ok(BTreeMap::new())
                },
            )
            .unwrap();
            // Distinct last-use times, oldest first.
            let meta = root.join("steps").join(k.as_str()).join(META);
            let f = fs::OpenOptions::new().append(true).open(meta).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000 * (i as u64 + 1)))
                .unwrap();
            keys.push(k);
        }
        keys
    }

    fn left(root: &Path) -> Vec<String> {
        list(root)
            .unwrap()
            .into_iter()
            .map(|l| l.meta.unwrap().name)
            .collect()
    }

    #[test]
    fn prune_by_age_removes_what_was_not_used_since() {
        let root = tempfile::tempdir().unwrap();
        fill(root.path(), &[10, 10, 10]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(3500);
        let r = prune(root.path(), Some(Duration::from_secs(1000)), None, now).unwrap();
        assert_eq!((r.removed, r.kept), (2, 1));
        assert_eq!(left(root.path()), ["e2"]);
    }

    #[test]
    fn prune_by_size_removes_the_least_recently_used() {
        let root = tempfile::tempdir().unwrap();
        fill(root.path(), &[4000, 4000, 4000]);
        let total: u64 = list(root.path()).unwrap().iter().map(|l| l.bytes).sum();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5000);
        let r = prune(root.path(), None, Some(total - 1), now).unwrap();
        assert_eq!(r.removed, 1);
        assert_eq!(left(root.path()), ["e1", "e2"]);
        let r = prune(root.path(), None, Some(0), now).unwrap();
        assert_eq!((r.removed, r.kept, r.kept_bytes), (2, 0, 0));
    }

    #[test]
    fn a_running_build_blocks_a_prune() {
        let root = tempfile::tempdir().unwrap();
        fill(root.path(), &[1]);
        let build = Cache::open(root.path(), true).unwrap();
        assert!(prune(root.path(), None, Some(0), SystemTime::now()).is_err());
        drop(build);
        assert_eq!(
            prune(root.path(), None, Some(0), SystemTime::now())
                .unwrap()
                .removed,
            1
        );
    }

    #[test]
    fn verify_all_removes_damaged_entries() {
        let root = tempfile::tempdir().unwrap();
        let keys = fill(root.path(), &[100, 100]);
        let data = root
            .path()
            .join("steps")
            .join(keys[0].as_str())
            .join("data");
        fs::write(&data, vec![1u8; 100]).unwrap();
        let r = verify_all(root.path()).unwrap();
        assert_eq!((r.removed, r.kept), (1, 1));
        assert_eq!(left(root.path()), ["e1"]);
    }

    #[test]
    fn show_lists_every_entry_and_the_total() {
        let root = tempfile::tempdir().unwrap();
        fill(root.path(), &[10, 20]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2000 + 7200);
        let text = show(root.path(), now).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("test       e0 "), "{text}");
        assert!(lines[0].contains("used      2 h ago"), "{text}");
        assert!(lines[2].contains(": 2 entries, "), "{text}");
        // The memo the test's cache wrote (if any) and the sum are reported too.
        assert!(lines[3].contains("digests: ") && lines[3].contains(" file digests, "));
        assert!(lines[4].starts_with("total: "), "{text}");
    }

    /// The memo counts in the listing and in a size limit; an age prune trims it, a
    /// prune to zero removes it, and a running build blocks both.
    #[test]
    fn prune_trims_and_clears_the_digest_memo() {
        let root = tempfile::tempdir().unwrap();
        fill(root.path(), &[10]);
        let (fresh, stale) = (root.path().join("fresh"), root.path().join("stale"));
        fs::write(&fresh, "f").unwrap();
        fs::write(&stale, "s").unwrap();
        memo::write_records(root.path(), &[(&fresh, 9000), (&stale, 1000)]);
        let text = show(root.path(), SystemTime::UNIX_EPOCH).unwrap();
        assert!(text.contains(": 2 file digests, "), "{text}");

        let build = Cache::open(root.path(), true).unwrap();
        let before = fs::read(root.path().join(memo::FILE)).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(9500);
        assert!(prune(root.path(), Some(Duration::from_secs(3600)), None, now).is_err());
        assert_eq!(fs::read(root.path().join(memo::FILE)).unwrap(), before);
        drop(build);
        // The build wrote the memo back only if it added a record: rewrite ours.
        memo::write_records(root.path(), &[(&fresh, 9000), (&stale, 1000)]);

        let r = prune(root.path(), Some(Duration::from_secs(3600)), None, now).unwrap();
        assert_eq!((r.memo.records, r.memo.dropped), (1, 1));
        assert_eq!(r.removed, 1, "the entry was last used at 1000 s");
        assert!(summary(&r).contains("digest memo: dropped 1 records, kept 1"));
        // Within the limit with the memo counted: nothing goes.
        let r = prune(root.path(), None, Some(1 << 20), now).unwrap();
        assert_eq!((r.memo.records, r.memo.dropped), (1, 0));
        let r = prune(root.path(), None, Some(0), now).unwrap();
        assert_eq!((r.memo.records, r.memo.bytes, r.memo.dropped), (0, 0, 1));
        assert!(!root.path().join(memo::FILE).exists());
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(5400));
        assert!(parse_age("7").is_err());
        assert!(parse_age("d").is_err());
    }
}
