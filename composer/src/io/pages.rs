//! Handing the page cache of files the build has finished with back to the kernel.
//!
//! A cold build writes about 1.5 GB that it then reads at most once more: the kernel
//! package's 4,000 module files (an initramfs takes a few dozen of them), each squashfs image
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

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Writes back and drops from the page cache the data of each file of `paths` (a missing or
/// unreadable one is skipped). Writeback is started for every file before waiting for the
/// first, so the disk works on all of them at once.
pub fn release<P: AsRef<Path>>(paths: &[P]) {
    for p in paths {
        if let Ok(f) = File::open(p) {
            sync_range(&f, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    for p in paths {
        if let Ok(f) = File::open(p) {
            sync_range(
                &f,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            // SAFETY: plain integers; the descriptor is open for the duration of the call.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

/// `sync_file_range(2)` over the whole of `f` with `flags`; its result is not needed (see
/// the module's doc).
fn sync_range(f: &File, flags: libc::c_uint) {
    // SAFETY: plain integers; the descriptor is open for the duration of the call.
    unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
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
