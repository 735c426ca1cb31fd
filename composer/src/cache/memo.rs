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
//!
//! Each record also holds the file's path and its last use (seconds), for `strata cache
//! prune` ([`prune`]): it drops the records of files that are gone or changed (they can never
//! match again) and those not used within the age limit, and removes the memo on a full
//! clear. It runs under the step cache's exclusive lock, which no build holds (a build holds
//! the shared lock from opening the cache until its memo is saved), and writes through a
//! temporary file and a rename as [`save`] does: no reader ever sees half a memo.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A file changed this recently (seconds) is hashed but not remembered.
pub const RACY_SECS: i64 = 2;

/// A record's last use is written back once it is this old (seconds): last uses are
/// known to the hour, and a build that changed nothing rewrites the memo at most hourly.
const REFRESH_SECS: u64 = 3600;

/// The memo's file name in the cache directory.
pub const FILE: &str = "digests";

/// First line of the file; another header (an older or newer format) is ignored.
const HEADER: &str = "strata-digests 2";

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
    /// Last use, seconds since the epoch, as of the load (a used record's is now).
    used_at: u64,
    /// Where the file was last seen, absolute; empty when unknown (a path with a newline).
    path: PathBuf,
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
        let memo = memo.get_or_insert_with(Memo::default);
        if let Some(r) = memo.records.get_mut(&id).filter(|r| r.stamp == st) {
            r.used = true;
            if r.path != path {
                r.path = absolute(path);
            }
            // A last use older than the hour is written back, so a prune by age keeps what
            // builds that changed nothing still use; newer ones spare such a build the write.
            let stale = r.used_at + REFRESH_SECS < secs(SystemTime::now());
            let sha = r.sha256.clone();
            memo.dirty |= stale;
            return Ok(sha);
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
                used_at: 0,
                path: absolute(path),
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

/// `path` made absolute, for a prune run from another directory; empty if it holds a
/// newline (a record is one line).
fn absolute(path: &Path) -> PathBuf {
    if path.as_os_str().as_bytes().contains(&b'\n') {
        return PathBuf::new();
    }
    std::path::absolute(path).unwrap_or_default()
}

/// Seconds since the epoch.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Adds the records of `<root>/digests` to the memo (a missing or unreadable file adds
/// none: the memo only saves reads).
pub fn load(root: &Path) {
    let Some(records) = read(root) else {
        return;
    };
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let memo = memo.get_or_insert_with(Memo::default);
    for (id, record) in records {
        memo.records.entry(id).or_insert(record);
    }
}

/// The records of `<root>/digests`; `None` if it is missing or has another header.
fn read(root: &Path) -> Option<Vec<((u64, u64), Record)>> {
    let f = std::fs::File::open(root.join(FILE)).ok()?;
    let mut lines = io::BufReader::new(f).split(b'\n');
    if !matches!(lines.next(), Some(Ok(h)) if h == HEADER.as_bytes()) {
        return None;
    }
    Some(
        lines
            .map_while(|l| l.ok())
            .filter_map(|l| parse(&l))
            .collect(),
    )
}

/// One line: `dev ino size mtime_ns ctime_ns sha256 used_s path` (the path is the rest of
/// the line, any bytes but a newline).
fn parse(line: &[u8]) -> Option<((u64, u64), Record)> {
    let mut f = line.splitn(8, |b| *b == b' ');
    let mut field = || std::str::from_utf8(f.next()?).ok();
    let mut num = || field()?.parse::<i128>().ok();
    let (dev, ino, size, mtime, ctime) = (num()?, num()?, num()?, num()?, num()?);
    let sha256 = field()?.to_string();
    let used_at = field()?.parse::<u64>().ok()?;
    let path = PathBuf::from(OsStr::from_bytes(f.next()?));
    let hex = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(path.as_os_str().is_empty() || path.is_absolute()) {
        return None;
    }
    let id = (u64::try_from(dev).ok()?, u64::try_from(ino).ok()?);
    let stamp = (u64::try_from(size).ok()?, mtime, ctime);
    let used = false;
    Some((
        id,
        Record {
            stamp,
            sha256,
            used,
            used_at,
            path,
        },
    ))
}

/// Writes the memo to `<root>/digests` if this build added a record: through a temporary
/// file and a rename, so a reader never sees half of it. Records used by this build are
/// marked used now; beyond [`MAX_RECORDS`], the least recently used are dropped.
pub fn save(root: &Path) -> io::Result<()> {
    let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let Some(memo) = memo.as_mut().filter(|m| m.dirty) else {
        return Ok(());
    };
    let now = secs(SystemTime::now());
    for r in memo.records.values_mut().filter(|r| r.used) {
        r.used_at = now;
    }
    let mut ids: Vec<_> = memo
        .records
        .iter()
        .map(|(id, r)| (r.used_at, *id))
        .collect();
    ids.sort_unstable_by_key(|&(at, id)| (std::cmp::Reverse(at), id));
    ids.truncate(MAX_RECORDS);
    write(root, ids.iter().map(|(_, id)| (id, &memo.records[id])))?;
    memo.dirty = false;
    Ok(())
}

/// Replaces `<root>/digests` with `records`: a temporary file, fsynced, renamed over it.
fn write<'a>(
    root: &Path,
    records: impl Iterator<Item = (&'a (u64, u64), &'a Record)>,
) -> io::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(root)?;
    {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        writeln!(w, "{HEADER}")?;
        for (id, r) in records {
            let (size, mtime, ctime) = r.stamp;
            write!(w, "{} {} {size} {mtime} {ctime} ", id.0, id.1)?;
            write!(w, "{} {} ", r.sha256, r.used_at)?;
            w.write_all(r.path.as_os_str().as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(root.join(FILE)).map_err(|e| e.error)?;
    Ok(())
}

/// What the memo holds, or what a prune left of it and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records kept.
    pub records: usize,
    /// Bytes on disk of the memo file (allocated blocks).
    pub bytes: u64,
    /// Records a prune dropped.
    pub dropped: usize,
}

/// The memo as it stands on disk (an unreadable one counts its bytes and no records).
pub fn tally(root: &Path) -> Tally {
    let bytes = std::fs::metadata(root.join(FILE)).map_or(0, |m| m.blocks() * 512);
    let records = read(root).map_or(0, |r| r.len());
    Tally {
        records,
        bytes,
        dropped: 0,
    }
}

/// Drops the records of files that are gone or changed since they were hashed, and, with
/// `older_than`, those not used within it; `clear` removes the memo whole. A memo of
/// another format (never read by a build) is removed. The caller holds the step cache's
/// exclusive lock (see the module documentation).
pub fn prune(
    root: &Path,
    older_than: Option<Duration>,
    clear: bool,
    now: SystemTime,
) -> io::Result<Tally> {
    let path = root.join(FILE);
    let Some(records) = read(root).filter(|_| !clear) else {
        let dropped = read(root).map_or(0, |r| r.len());
        return match std::fs::remove_file(&path) {
            Ok(()) => Ok(Tally {
                dropped,
                ..Tally::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Tally::default()),
            Err(e) => Err(e),
        };
    };
    let oldest = older_than.map(|age| secs(now).saturating_sub(age.as_secs()));
    let before = records.len();
    let kept: Vec<_> = records
        .into_iter()
        .filter(|(id, r)| oldest.is_none_or(|o| r.used_at >= o) && still_there(*id, r))
        .collect();
    if kept.len() < before {
        write(root, kept.iter().map(|(id, r)| (id, r)))?;
    }
    Ok(Tally {
        dropped: before - kept.len(),
        ..tally(root)
    })
}

/// Whether the record's file is still at its path with the stat it was hashed at (a record
/// without a path is judged by age alone).
fn still_there(id: (u64, u64), r: &Record) -> bool {
    if r.path.as_os_str().is_empty() {
        return true;
    }
    std::fs::metadata(&r.path).is_ok_and(|m| (m.dev(), m.ino()) == id && stamp(&m) == r.stamp)
}

/// Writes a memo of `files`, each remembered as it is now and last used at the given
/// second (for tests elsewhere in the cache).
#[cfg(test)]
pub(crate) fn write_records(root: &Path, files: &[(&Path, u64)]) {
    let records: Vec<_> = files
        .iter()
        .map(|(path, used_at)| {
            let m = std::fs::metadata(path).unwrap();
            let r = Record {
                stamp: stamp(&m),
                sha256: "c".repeat(64),
                used: false,
                used_at: *used_at,
                path: path.to_path_buf(),
            };
            ((m.dev(), m.ino()), r)
        })
        .collect();
    write(root, records.iter().map(|(id, r)| (id, r))).unwrap();
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
        let line = format!("{} {} {size} {mtime} {ctime} {fake} 0 ", m.dev(), m.ino());
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
        let sha = "a".repeat(64);
        assert!(parse(b"1 2 3 4 5 nothex 0 /x").is_none());
        assert!(parse(b"1 2 3 4").is_none());
        assert!(parse(format!("1 2 3 4 5 {sha}").as_bytes()).is_none());
        assert!(parse(format!("1 2 3 4 5 {sha} x /f").as_bytes()).is_none());
        assert!(parse(format!("1 2 3 4 5 {sha} 9 relative").as_bytes()).is_none());
        let (id, r) = parse(format!("1 2 3 -4 5 {sha} 9 /a b").as_bytes()).unwrap();
        assert_eq!((id, r.stamp, r.used_at), ((1, 2), (3, -4, 5), 9));
        assert_eq!(r.path, Path::new("/a b"));
    }

    /// A record of the file at `path` as it is now, last used at `used_at`.
    fn record_of(path: &Path, used_at: u64) -> ((u64, u64), Record) {
        let m = std::fs::metadata(path).unwrap();
        let r = Record {
            stamp: stamp(&m),
            sha256: "c".repeat(64),
            used: false,
            used_at,
            path: path.to_path_buf(),
        };
        ((m.dev(), m.ino()), r)
    }

    fn paths(root: &Path) -> Vec<PathBuf> {
        let mut p: Vec<_> = read(root).unwrap().into_iter().map(|r| r.1.path).collect();
        p.sort();
        p
    }

    /// A record found by a build is marked used again once its last use is an hour old,
    /// though the build added nothing: a prune by age then keeps it.
    #[test]
    fn a_hit_renews_an_old_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("used");
        std::fs::write(&f, "u").unwrap();
        write_records(dir.path(), &[(&f, 5)]);
        load(dir.path());
        assert_eq!(sha256(&f).unwrap(), "c".repeat(64));
        save(dir.path()).unwrap();
        let now = secs(SystemTime::now());
        let ours = read(dir.path())
            .unwrap()
            .into_iter()
            .find(|r| r.1.path == f);
        assert!(ours.unwrap().1.used_at + 60 > now);
    }

    /// Prune keeps only records that can still match and were used within the age; a
    /// record without a path goes by age alone.
    #[test]
    fn prune_drops_gone_changed_and_unused_records() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str| dir.path().join(n);
        for n in ["kept", "gone", "changed", "old"] {
            std::fs::write(f(n), n).unwrap();
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let mut records: Vec<_> = ["kept", "gone", "changed", "old"]
            .iter()
            .map(|n| record_of(&f(n), if *n == "old" { 1000 } else { 99_000 }))
            .collect();
        let mut pathless = record_of(&f("kept"), 99_500);
        (pathless.0, pathless.1.path) = ((u64::MAX, 1), PathBuf::new());
        records.push(pathless);
        write(dir.path(), records.iter().map(|(id, r)| (id, r))).unwrap();
        std::fs::remove_file(f("gone")).unwrap();
        std::fs::write(f("changed"), "changes").unwrap();
        assert_eq!(tally(dir.path()).records, 5);

        let t = prune(dir.path(), Some(Duration::from_secs(3600)), false, now).unwrap();
        assert_eq!((t.records, t.dropped), (2, 3));
        assert_eq!(paths(dir.path()), [PathBuf::new(), f("kept")]);
        // Without an age, only what can no longer match goes; nothing here: not rewritten.
        let before = std::fs::metadata(f(FILE)).unwrap().ino();
        let t = prune(dir.path(), None, false, now).unwrap();
        assert_eq!((t.records, t.dropped), (2, 0));
        assert_eq!(std::fs::metadata(f(FILE)).unwrap().ino(), before);
    }

    /// A prune replaces the memo by a rename: a reader that opened it before still reads the
    /// whole old memo, never a mix; a full clear removes it.
    #[test]
    fn prune_replaces_the_memo_whole_and_clear_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old");
        std::fs::write(&file, "x").unwrap();
        let records = [record_of(&file, 1)];
        write(dir.path(), records.iter().map(|(id, r)| (id, r))).unwrap();
        let old = std::fs::read(dir.path().join(FILE)).unwrap();
        let reader = std::fs::File::open(dir.path().join(FILE)).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let t = prune(dir.path(), Some(Duration::from_secs(60)), false, now).unwrap();
        assert_eq!((t.records, t.dropped), (0, 1));
        let mut seen = Vec::new();
        io::Read::read_to_end(&mut &reader, &mut seen).unwrap();
        assert_eq!(seen, old);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            format!("{HEADER}\n")
        );
        write(dir.path(), records.iter().map(|(id, r)| (id, r))).unwrap();
        let t = prune(dir.path(), None, true, now).unwrap();
        assert_eq!((t.records, t.bytes, t.dropped), (0, 0, 1));
        assert!(!dir.path().join(FILE).exists());
        // A memo of another format is never read by a build: prune removes it.
        std::fs::write(dir.path().join(FILE), "strata-digests 1\n1 2 3 4 5 x\n").unwrap();
        prune(dir.path(), None, false, now).unwrap();
        assert!(!dir.path().join(FILE).exists());
    }
}
