//! The digest memo: a file's sha256, remembered across builds by its stat.
//!
//! Step keys name every input file by its contents ([`super::key::file_identity`]), so a key
//! is the same on every machine and after every checkout. Hashing a 200 MB root on every
//! build would alone exceed the one-second budget of a build that changed nothing, so the
//! digest of each file hashed is kept in `<cache>/digests`, under the file's device and inode
//! and tied to its size, modification time and change time (ns): a later build stats the
//! file, and only a file whose stat moved is read again. A change time cannot be set back
//! from user space, so a rewrite that restores the modification time (`touch -r`, `tar`,
//! `rsync -t`) is still seen.
//!
//! As in git's "racy" rule, a file whose times are less than [`RACY_SECS`] old is hashed
//! but not remembered: timestamps are only as fine as the kernel's clock tick, so two writes
//! of the same size within one tick would share a stat.
//!
//! The memo is loaded when the cache is opened and written back, through a temporary file
//! and a rename, when the build ends ([`save`]). Two builds ending together each write the
//! records they know and the last rename wins: the other's new records are lost and those
//! files are hashed again next time, nothing worse. A record only ever saves a read, never
//! decides a key on its own: a file whose stat does not match is hashed.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// A file changed this recently (seconds) is hashed but not remembered.
pub const RACY_SECS: i64 = 2;

/// The memo's file name in the cache directory.
pub const FILE: &str = "digests";

/// First line of the file; another header (an older or newer format) is ignored.
const HEADER: &str = "strata-digests 1";

/// Records beyond this many are dropped at [`save`], those not used by this build first.
const MAX_RECORDS: usize = 1 << 18;

/// What a digest is tied to: size, modification and change time in ns.
type Stamp = (u64, i128, i128);

/// One remembered digest.
struct Record {
    stamp: Stamp,
    sha256: String,
    /// Looked up or added by this process.
    used: bool,
}

/// The memo: (device, inode) -> record; `dirty` when a record was added since the load.
#[derive(Default)]
struct Memo {
    records: HashMap<(u64, u64), Record>,
    dirty: bool,
}

static MEMO: Mutex<Option<Memo>> = Mutex::new(None);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (
        m.len(),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec()),
    )
}

/// The hex sha256 of the file at `path`: remembered if its stat has not moved, else read
/// (and remembered unless it changed in the last [`RACY_SECS`]).
pub fn sha256(path: &Path) -> io::Result<String> {
    let m = std::fs::metadata(path)?;
    let (id, st) = ((m.dev(), m.ino()), stamp(&m));
    {
        let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = memo.get_or_insert_with(Memo::default).records.get_mut(&id) {
            if r.stamp == st {
                r.used = true;
                return Ok(r.sha256.clone());
            }
        }
    }
    let sha = crate::io::hash::file_sha256(path)?;
    // The file must not have moved while it was read, and must be old enough to trust.
    let after = std::fs::metadata(path)?;
    if stamp(&after) == st && !racy(&after) {
        let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
        let memo = memo.get_or_insert_with(Memo::default);
        memo.records.insert(
            id,
            Record {
                stamp: st,
                sha256: sha.clone(),
                used: true,
            },
        );
        memo.dirty = true;
    }
    Ok(sha)
}

/// Whether `m`'s modification or change time is less than [`RACY_SECS`] old (or ahead).
fn racy(m: &std::fs::Metadata) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    now - m.mtime().max(m.ctime()) < RACY_SECS
}

/// Adds the records of `<root>/digests` to the memo (a missing or unreadable file adds
/// none: the memo only saves reads).
pub fn load(root: &Path) {
    let Ok(f) = std::fs::File::open(root.join(FILE)) else {
        return;
    };
    let mut lines = io::BufReader::new(f).lines();
    if !matches!(lines.next(), Some(Ok(h)) if h == HEADER) {
        return;
    }
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let memo = memo.get_or_insert_with(Memo::default);
    for line in lines.map_while(|l| l.ok()) {
        if let Some((id, record)) = parse(&line) {
            memo.records.entry(id).or_insert(record);
        }
    }
}

/// One line: `dev ino size mtime_ns ctime_ns sha256`.
fn parse(line: &str) -> Option<((u64, u64), Record)> {
    let mut f = line.split(' ');
    let mut num = || f.next()?.parse::<i128>().ok();
    let (dev, ino, size, mtime, ctime) = (num()?, num()?, num()?, num()?, num()?);
    let sha256 = f.next()?;
    let hex = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || f.next().is_some() {
        return None;
    }
    let id = (u64::try_from(dev).ok()?, u64::try_from(ino).ok()?);
    let stamp = (u64::try_from(size).ok()?, mtime, ctime);
    let used = false;
    Some((
        id,
        Record {
            stamp,
            sha256: sha256.to_string(),
            used,
        },
    ))
}

/// Writes the memo to `<root>/digests` if this build added a record: through a temporary
/// file and a rename, so a reader never sees half of it.
pub fn save(root: &Path) -> io::Result<()> {
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let Some(memo) = memo.as_mut().filter(|m| m.dirty) else {
        return Ok(());
    };
    let mut ids: Vec<_> = memo.records.iter().map(|(id, r)| (!r.used, *id)).collect();
    ids.sort_unstable();
    ids.truncate(MAX_RECORDS);
    let path = root.join(FILE);
    let mut tmp = tempfile::NamedTempFile::new_in(root)?;
    {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        writeln!(w, "{HEADER}")?;
        for (_, id) in &ids {
            let r = &memo.records[id];
            let (size, mtime, ctime) = r.stamp;
            writeln!(w, "{} {} {size} {mtime} {ctime} {}", id.0, id.1, r.sha256)?;
        }
        w.flush()?;
    }
    tmp.persist(&path).map_err(|e| e.error)?;
    memo.dirty = false;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets the file's times `secs` seconds back (mtime; ctime moves to now, so the file
    /// counts as racy unless the test waits): here the modification time is what is set.
    fn age(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        f.set_modified(t).unwrap();
    }

    #[test]
    fn a_remembered_digest_survives_a_reload_and_a_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (f, g) = (dir.path().join("f"), dir.path().join("g"));
        std::fs::write(&f, b"abc").unwrap();
        std::fs::write(&g, b"xyz").unwrap();
        let abc = crate::io::hash::bytes_sha256(b"abc");
        // Just written: hashed, right, and not remembered.
        assert_eq!(sha256(&f).unwrap(), abc);
        assert!(!std::fs::read_to_string(dir.path().join(FILE)).is_ok_and(|t| t.contains(&abc)));
        // Once old enough, remembered and written out.
        age(&f, 60);
        age(&g, 60);
        std::thread::sleep(std::time::Duration::from_secs(RACY_SECS as u64 + 1));
        assert_eq!(sha256(&f).unwrap(), abc);
        save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.starts_with(HEADER) && text.contains(&abc), "{text}");
        // A record whose stat matches is believed without reading the file.
        let m = std::fs::metadata(&g).unwrap();
        let (size, mtime, ctime) = stamp(&m);
        let fake = "b".repeat(64);
        let line = format!("{} {} {size} {mtime} {ctime} {fake}", m.dev(), m.ino());
        std::fs::write(dir.path().join(FILE), format!("{HEADER}\n{line}\n")).unwrap();
        load(dir.path());
        assert_eq!(sha256(&g).unwrap(), fake);
        // A changed file of the same size, its mtime set back: the ctime moved.
        std::fs::write(&f, b"abd").unwrap();
        age(&f, 60);
        load(dir.path());
        assert_eq!(sha256(&f).unwrap(), crate::io::hash::bytes_sha256(b"abd"));
    }

    #[test]
    fn garbled_lines_are_ignored() {
        assert!(parse("1 2 3 4 5 nothex").is_none());
        assert!(parse("1 2 3 4").is_none());
        assert!(parse(&format!("1 2 3 4 5 {} extra", "a".repeat(64))).is_none());
        let (id, r) = parse(&format!("1 2 3 -4 5 {}", "a".repeat(64))).unwrap();
        assert_eq!((id, r.stamp), ((1, 2), (3, -4, 5)));
    }
}
