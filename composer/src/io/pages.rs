//! Handing the page cache of files the build has finished with back to the kernel, and
//! writing a cache entry back while its step writes it ([`written_back_while`]: the fsync that
//! seals the entry then has little left to wait for).
//!
//! A cold build writes about 1.5 GB that it then reads at most once more: the kernel
//! package's 400 MB of modules (the kernel cache's pack; an initramfs takes a few dozen), each squashfs image
//! (copied into the initramfs), the initramfs (copied into the disk), the disk (read by each
//! conversion) and every output. Left in the page cache, those pages crowd out what is still to
//! be read, and every later write takes pages nobody has touched for a while. On a virtual
//! machine whose host takes back guest memory left idle (Firecracker with DAMON's pageout, as on
//! this project's machines, and many CI runners), such a page costs a trip to the host when it
//! is first touched again: writing 150 MB took 0.23 s into those pages and 0.035 s into pages
//! a file had handed back just before. The build's next writes reuse the pages handed back here.
//!
//! Only clean pages can be dropped, so each file's dirty pages are written back first (the
//! step cache has fsynced its entries already; the kernel cache's files are not, and are
//! written back here). It is advice: a failure changes nothing but time, so errors are
//! ignored, and a file read again later is read from the disk.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Writes back and drops from the page cache the data of each file of `paths` (a missing or
/// unreadable one is skipped). Writeback is started for every file before waiting for the
/// first, so the disk works on all of them at once.
pub fn release<P: AsRef<Path>>(paths: &[P]) {
    for p in paths {
        start_writeback(p.as_ref(), 0, 0);
    }
    for p in paths {
        drop_written(p.as_ref(), 0, 0);
    }
}

/// Hands back the pages of files as a writer of many files goes, a bounded distance behind
/// it: for files nobody reads soon (the kernel cache's 400 MB of modules), whose pages its next
/// files then reuse, so that it touches `behind` bytes of page cache instead of all it writes.
/// A file's (or a part's) writeback starts when it is [`push`](Self::push)ed; its pages go once
/// more than `behind` bytes were pushed after it, by when the disk has long written it.
pub struct Trailing {
    /// Pushed and not dropped yet: file, offset, length (0: to its end) and size in bytes.
    queue: VecDeque<(PathBuf, u64, u64, u64)>,
    queued: u64,
    behind: u64,
}

impl Trailing {
    /// A trail `behind` bytes long.
    pub fn new(behind: u64) -> Trailing {
        Trailing {
            queue: VecDeque::new(),
            queued: 0,
            behind,
        }
    }

    /// A file the writer has finished: its writeback starts, and what lies more than
    /// `behind` bytes back is dropped.
    pub fn push(&mut self, path: &Path) {
        let size = start_writeback(path, 0, 0);
        self.queue(path, 0, 0, size);
    }

    /// [`push`](Self::push) for `len` bytes of `path` from `offset`, a part the writer of one
    /// growing file has finished (the kernel cache's pack of modules).
    ///
    /// The part is taken from the start of its first page: the kernel drops only whole pages,
    /// so the page a part shares with the one before goes with it (the page it shares with the
    /// next goes with that one, and the file's last page, at its end, with the last).
    pub fn push_part(&mut self, path: &Path, offset: u64, len: u64) {
        let start = offset - offset % page_size();
        start_writeback(path, start, len + (offset - start));
        self.queue(path, start, len + (offset - start), len);
    }

    fn queue(&mut self, path: &Path, offset: u64, len: u64, size: u64) {
        self.queue
            .push_back((path.to_path_buf(), offset, len, size));
        self.queued += size;
        while self.queued > self.behind {
            let Some((old, offset, len, size)) = self.queue.pop_front() else {
                break;
            };
            self.queued -= size;
            drop_written(&old, offset, len);
        }
    }

    /// Drops what is still on the trail (the writer is done).
    pub fn finish(mut self) {
        for (path, offset, len, _) in self.queue.drain(..) {
            drop_written(&path, offset, len);
        }
    }
}

/// Runs `work`, which writes the file `path`, while a helper thread starts the writeback of
/// what it has written so far every [`WRITE_BACK_EVERY`].
///
/// The step cache fsyncs each entry before trusting it, and Linux starts writing a file's
/// dirty pages only when they are 30 s old or a tenth of memory is dirty: left alone, every
/// byte of an entry waits for that fsync, on the build's path from one step to the next (the
/// root image, the initramfs, the disk: 56–87 ms each for 90–150 MB here). Written back as it
/// goes, the file leaves its fsync the last tenth of a second of writes at most. The helper
/// only starts writeback (`SYNC_FILE_RANGE_WRITE`) and never waits for it.
pub fn written_back_while<R>(path: &Path, work: impl FnOnce() -> R) -> R {
    let nudge = || {
        start_writeback(path, 0, 0);
    };
    crate::par::beside(WRITE_BACK_EVERY, nudge, work)
}

/// How often [`written_back_while`] starts the writeback of the file being written.
const WRITE_BACK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The size of a page of the page cache.
fn page_size() -> u64 {
    // SAFETY: a plain query.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Starts writing back the dirty pages of `len` bytes of `path` from `offset` (`len` 0: to
/// its end), without waiting; returns the file's size (0 when it cannot be opened).
fn start_writeback(path: &Path, offset: u64, len: u64) -> u64 {
    let Ok(f) = File::open(path) else {
        return 0;
    };
    sync_range(&f, offset, len, libc::SYNC_FILE_RANGE_WRITE);
    f.metadata().map_or(0, |m| m.len())
}

/// Waits until the pages of `len` bytes of `path` from `offset` (`len` 0: to its end) are on
/// disk, then drops them from the page cache.
fn drop_written(path: &Path, offset: u64, len: u64) {
    let Ok(f) = File::open(path) else {
        return;
    };
    sync_range(
        &f,
        offset,
        len,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    let (offset, len) = (offset as libc::off_t, len as libc::off_t);
    // SAFETY: plain integers; the descriptor is open for the duration of the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
}

/// `sync_file_range(2)` over `len` bytes of `f` from `offset` (`len` 0: to its end) with
/// `flags`; its result is not needed (see the module's doc).
fn sync_range(f: &File, offset: u64, len: u64, flags: libc::c_uint) {
    let (offset, len) = (offset as libc::off64_t, len as libc::off64_t);
    // SAFETY: plain integers; the descriptor is open for the duration of the call.
    unsafe { libc::sync_file_range(f.as_raw_fd(), offset, len, flags) };
}

/// Pages of `path` in the page cache, by `mincore(2)` over a read-only mapping of it (tests).
#[cfg(test)]
pub(crate) fn resident_pages(path: &Path) -> usize {
    let f = File::open(path).unwrap();
    let len = usize::try_from(f.metadata().unwrap().len()).unwrap();
    if len == 0 {
        return 0;
    }
    // SAFETY: sysconf takes and returns plain integers.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a fresh read-only shared mapping of a file we hold open, unmapped below; `vec`
    // has one byte per page of the mapping, as mincore requires.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
        libc::munmap(addr, len);
    }
    vec.iter().filter(|b| *b & 1 == 1).count()
}

/// A directory for a test that needs a file system which can drop pages: under `/var/tmp`,
/// which the FHS keeps across reboots and so is never tmpfs (where the pages are the storage).
#[cfg(test)]
pub(crate) fn droppable_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A released file reads back the same (only its pages went), and a missing path among the
    /// others is skipped.
    #[test]
    fn released_files_keep_their_bytes() {
        let dir = droppable_tempdir();
        let a = dir.path().join("a");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        File::create(&a).unwrap().write_all(&data).unwrap();
        release(&[a.clone(), dir.path().join("missing")]);
        assert_eq!(std::fs::read(&a).unwrap(), data);
    }

    /// A trail keeps at most its length of files in the page cache behind the writer, and
    /// none once finished.
    #[test]
    fn a_trail_drops_the_files_behind_it() {
        let dir = droppable_tempdir();
        let mut trail = Trailing::new(3 << 20);
        let files: Vec<PathBuf> = (0..6).map(|i| dir.path().join(format!("f{i}"))).collect();
        for f in &files {
            File::create(f)
                .unwrap()
                .write_all(&vec![1u8; 1 << 20])
                .unwrap();
            trail.push(f);
        }
        let resident: Vec<usize> = files.iter().map(|f| resident_pages(f)).collect();
        assert_eq!(resident[..3], [0, 0, 0], "{resident:?}");
        assert!(resident[3..].iter().all(|&r| r > 0), "{resident:?}");
        trail.finish();
        assert!(files.iter().all(|f| resident_pages(f) == 0));
    }

    /// A file written inside [`written_back_while`] goes to the disk as it is written: its
    /// extents stop being delayed allocations without anyone syncing it, while a file written
    /// just before, outside, keeps them (Linux leaves dirty data for 30 s).
    #[test]
    fn a_file_being_written_is_written_back_as_it_goes() {
        let dir = droppable_tempdir();
        let (before, during) = (dir.path().join("before"), dir.path().join("during"));
        let data = vec![5u8; 4 << 20];
        std::fs::write(&before, &data).unwrap();
        assert!(
            delayed_extents(&before) > 0,
            "the file system under /var/tmp allocates at once: nothing to see"
        );
        let gone = written_back_while(&during, || {
            std::fs::write(&during, &data).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while delayed_extents(&during) > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            delayed_extents(&during) == 0
        });
        assert!(gone, "still waiting for its writeback after 10 s");
        assert!(delayed_extents(&before) > 0, "everything was written back");
    }

    /// Extents of `path` whose blocks are not allocated yet (`FIEMAP_EXTENT_DELALLOC`), by
    /// the `FS_IOC_FIEMAP` ioctl, which leaves the file alone (no `FIEMAP_FLAG_SYNC`).
    fn delayed_extents(path: &Path) -> usize {
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const EXTENT_DELALLOC: u32 = 0x4;
        const MAX_EXTENTS: usize = 64;
        // struct fiemap (32 bytes), then struct fiemap_extent (56 bytes each), as u64 words.
        let mut buf = vec![0u64; 4 + 7 * MAX_EXTENTS];
        buf[1] = u64::MAX; // fm_length
        buf[3] = MAX_EXTENTS as u64; // fm_extent_count (low half); fm_reserved 0
        let f = File::open(path).unwrap();
        // SAFETY: `buf` is a struct fiemap with room for `fm_extent_count` extents.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        assert_eq!(r, 0, "FIEMAP: {}", std::io::Error::last_os_error());
        let mapped = (buf[2] >> 32) as usize; // fm_mapped_extents (high half)
        (0..mapped)
            .filter(|i| (buf[4 + 7 * i + 5] as u32) & EXTENT_DELALLOC != 0)
            .count()
    }

    /// The pages of a released file leave the page cache, dirty ones included: a file just
    /// written has them all, none stay.
    #[test]
    fn released_files_leave_the_page_cache() {
        let dir = droppable_tempdir();
        let a = dir.path().join("a");
        File::create(&a)
            .unwrap()
            .write_all(&vec![7u8; 4 << 20])
            .unwrap();
        assert!(resident_pages(&a) > 0);
        release(&[&a]);
        assert_eq!(resident_pages(&a), 0);
    }
}
