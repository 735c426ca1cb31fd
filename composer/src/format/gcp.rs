//! Google Compute Engine image tarball: `disk.raw` in a gzip-compressed GNU tar, the form
//! `gcloud compute images create --source-uri` imports.
//!
//! - The member is a GNU "old" sparse file (type `S`, what `tar --format=oldgnu -S` makes):
//!   only non-zero 64 KiB chunks are stored, with a sparse map in the header and extension
//!   headers; holes cost nothing to compress or to upload.
//! - GCE wants the disk size to be a whole number of GiB, so the raw size is rounded up
//!   (the tail is a hole; [`GcpStats::rounded_up`] says when this happened). A GPT's backup
//!   header is then no longer at the end of the disk: size the raw image in GiB to avoid it.
//! - Deterministic: member mtime from the caller, uid/gid 0, mode 0644, empty owner names;
//!   gzip header mtime 0, no file name, OS "unknown".
//! - gzip is compressed on all cores the way pigz does it ([`Gzip`]): one gzip member whose
//!   deflate stream is cut every 1 MiB of input; each piece is compressed on its own (no
//!   shared window, about 0.1 % larger) and ends in a sync flush, the last one in the final
//!   block, and the CRC-32s are combined. The bytes of the raw image that strata compressed
//!   itself (the caller's stored ranges: squashfs, the initramfs's compressed segment) and
//!   the blocks the incompressibility probe finds (the kernel: [`Stored::probed`]) go out as
//!   stored deflate blocks instead of being deflated again. The pieces do not depend on
//!   the thread count, so the output is the same on any machine with the same
//!   flate2/miniz_oxide version.
//!
//! Not supported: other member names, several members, PAX or GNU 1.0 sparse formats.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::io::compress::deflate::{Gzip, Stored};
use crate::io::sparse;

/// GCE disk sizes are whole GiB.
const GIB: u64 = 1 << 30;
/// Granularity at which zeros are left out of the sparse member.
const GRANULARITY: u64 = 64 << 10;
/// tar block size.
const BLOCK: u64 = 512;
/// The member name GCE requires.
const MEMBER: &str = "disk.raw";

/// Errors from writing a GCE tarball.
#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    /// Reading the raw image failed.
    #[error("cannot read raw image {path}")]
    Read {
        /// The raw image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the tarball failed.
    #[error("cannot write gce tarball {path}")]
    Write {
        /// The output.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcpStats {
    /// Size of `disk.raw` as extracted (the raw size rounded up to a GiB).
    pub disk_size: u64,
    /// True if the raw size was not a whole number of GiB and was rounded up.
    pub rounded_up: bool,
    /// Data bytes stored in the member (non-zero chunks).
    pub stored_bytes: u64,
    /// Size of the `.tar.gz` file.
    pub file_size: u64,
}

/// The member's header blocks: the GNU header with the first four map entries, then
/// extension headers of 21 entries each.
fn sparse_headers(map: &[(u64, u64)], disk_size: u64, mtime: u64) -> io::Result<Vec<u8>> {
    let stored: u64 = map.iter().map(|r| r.1).sum();
    let mut h = tar::Header::new_gnu();
    h.set_path(MEMBER)?;
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(stored);
    let gnu = h
        .as_gnu_mut()
        .ok_or_else(|| io::Error::other("tar header is not gnu"))?;
    gnu.set_real_size(disk_size);
    for (slot, &(off, len)) in gnu.sparse.iter_mut().zip(map) {
        slot.set_offset(off);
        slot.set_length(len);
    }
    gnu.set_is_extended(map.len() > gnu.sparse.len());
    h.set_cksum();
    let mut blocks = h.as_bytes().to_vec();
    let rest: Vec<&[(u64, u64)]> = map.get(4..).unwrap_or(&[]).chunks(21).collect();
    for (i, part) in rest.iter().enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, &(off, len)) in ext.sparse_mut().iter_mut().zip(part.iter()) {
            slot.set_offset(off);
            slot.set_length(len);
        }
        ext.set_is_extended(i + 1 < rest.len());
        blocks.extend_from_slice(ext.as_bytes());
    }
    Ok(blocks)
}

/// The sparse map: non-zero ranges, ending with an empty entry at the end of the disk when
/// the disk ends in a hole (GNU tar's convention, so extraction gets the size right).
fn sparse_map(file: &File, disk_size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut map = sparse::nonzero_ranges(file, GRANULARITY)?;
    if map.last().is_none_or(|&(o, l)| o + l < disk_size) {
        map.push((disk_size, 0));
    }
    Ok(map)
}

/// Write `raw` as `disk.raw` into the gzip-compressed tar `out` (created or truncated).
///
/// `mtime` is the member's modification time in seconds since 1970 (for example
/// `SOURCE_DATE_EPOCH`). `stored` lists byte ranges `(offset, length)` of `raw` that hold
/// compressed data: they go into the gzip stream as stored deflate blocks.
pub fn write(
    raw: &Path,
    out: &Path,
    mtime: u64,
    stored: &[(u64, u64)],
) -> Result<GcpStats, GcpError> {
    let read_err = |source| GcpError::Read {
        path: raw.to_path_buf(),
        source,
    };
    let write_err = |source| GcpError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::open(raw).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let disk_size = size.div_ceil(GIB).max(1) * GIB;
    let map = sparse_map(&file, disk_size).map_err(read_err)?;
    let threads = crate::par::jobs().min(8);
    let kept = Stored::probed(&file, stored, threads).map_err(read_err)?;
    let stored: u64 = map.iter().map(|r| r.1).sum();

    let dst = File::create(out).map_err(write_err)?;
    let mut gz = Gzip::new(BufWriter::with_capacity(1 << 20, dst), threads).map_err(write_err)?;
    gz.write_all(&sparse_headers(&map, disk_size, mtime).map_err(write_err)?)
        .map_err(write_err)?;
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len) in &map {
        copy_range(&file, off, len, &kept, &mut gz, &mut buf).map_err(|e| match e {
            CopyError::Read(e) => read_err(e),
            CopyError::Write(e) => write_err(e),
        })?;
    }
    let pad = (stored.next_multiple_of(BLOCK) - stored) as usize;
    gz.write_all(&vec![0u8; pad + 2 * BLOCK as usize])
        .map_err(write_err)?;
    let mut w = gz.finish().map_err(write_err)?;
    w.flush().map_err(write_err)?;
    let dst = w.into_inner().map_err(|e| write_err(e.into_error()))?;
    dst.sync_data().map_err(write_err)?;
    let file_size = dst.metadata().map_err(write_err)?.len();
    Ok(GcpStats {
        disk_size,
        rounded_up: disk_size != size,
        stored_bytes: stored,
        file_size,
    })
}

/// Which side of a copy failed.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Append `len` bytes of `src` at `off` to `dst`, telling it which of them are `stored`.
fn copy_range<W: Write>(
    src: &File,
    off: u64,
    len: u64,
    stored: &Stored,
    dst: &mut Gzip<W>,
    buf: &mut [u8],
) -> Result<(), CopyError> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], off + done)
            .map_err(CopyError::Read)?;
        dst.push(&buf[..n], &stored.within(off + done, n as u64))
            .map_err(CopyError::Write)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sparse::testutil::{self, MIB};
    use std::io::Read;

    /// Extract with GNU tar and compare with the raw image padded to `disk_size`.
    fn judge(raw: &Path, tgz: &Path, disk_size: u64) {
        if !testutil::have("tar") {
            return;
        }
        testutil::run("gzip", &["-t", &tgz.to_string_lossy()]);
        let list = testutil::run("tar", &["-tvzf", &tgz.to_string_lossy()]);
        let line = String::from_utf8_lossy(&list.stdout).to_string();
        assert!(
            line.contains(&format!(" {disk_size} ")) && line.trim_end().ends_with(" disk.raw"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        let dir = tempfile::tempdir().unwrap();
        testutil::run(
            "tar",
            &[
                "-xzf",
                &tgz.to_string_lossy(),
                "-C",
                &dir.path().to_string_lossy(),
            ],
        );
        let got = dir.path().join("disk.raw");
        assert_eq!(std::fs::metadata(&got).unwrap().len(), disk_size);
        // The raw bytes, then zeros up to the rounded size.
        let raw_len = std::fs::metadata(raw).unwrap().len();
        let (got, n) = (got.to_string_lossy(), raw_len.to_string());
        testutil::run("cmp", &["-n", &n, &raw.to_string_lossy(), &got]);
        if raw_len < disk_size {
            let rest = (disk_size - raw_len).to_string();
            testutil::run(
                "cmp",
                &[
                    "-n",
                    &rest,
                    "-i",
                    &format!("{raw_len}:0"),
                    &got,
                    "/dev/zero",
                ],
            );
        }
    }

    #[test]
    fn small_image_extracts_identical() {
        let raw = testutil::small_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.tar.gz");
        let stats = write(raw.path(), &out, 1_700_000_000, &[]).unwrap();
        assert_eq!((stats.disk_size, stats.rounded_up), (1 << 30, true));
        assert!(stats.stored_bytes < 6 * MIB, "{stats:?}");

        // Our own reading, through the tar crate's sparse support.
        let mut archive =
            tar::Archive::new(flate2::read::GzDecoder::new(File::open(&out).unwrap()));
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.header().entry_type(), tar::EntryType::GNUSparse);
        assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
        assert_eq!(entry.size(), 1 << 30);
        let rawb = testutil::bytes(raw.path());
        let mut data = Vec::new();
        entry
            .take(rawb.len() as u64 + MIB)
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(&data[..rawb.len()], &rawb[..]);
        assert!(sparse::is_zero(&data[rawb.len()..]));
        judge(raw.path(), &out, 1 << 30);
    }

    #[test]
    fn gzip_header_has_no_name_and_no_time() {
        let raw = testutil::raw_image(MIB, &[(0, 100)], &[]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.tar.gz");
        write(raw.path(), &out, 0, &[]).unwrap();
        let b = testutil::bytes(&out);
        assert_eq!(&b[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(b[3] & 0x08, 0, "FNAME flag");
        assert_eq!(&b[4..8], &[0; 4], "MTIME");
    }

    #[test]
    fn many_ranges_use_extension_headers() {
        let data: Vec<(u64, u64)> = (0..60).map(|i| (i * 3 * GRANULARITY, 10)).collect();
        let raw = testutil::raw_image(GIB, &data, &[]);
        let map = sparse_map(&File::open(raw.path()).unwrap(), GIB).unwrap();
        assert_eq!(map.len(), 61);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.tar.gz");
        let stats = write(raw.path(), &out, 0, &[]).unwrap();
        assert!(!stats.rounded_up);
        judge(raw.path(), &out, GIB);
    }

    /// Stored ranges: gzip and tar read the same disk back, and the file is no larger than
    /// GNU tar's sparse member through `gzip -6` (within 1 %).
    #[test]
    fn stored_ranges_extract_identical_and_match_gzip_in_size() {
        let (raw, stored) = testutil::compressed_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.tar.gz");
        let stats = write(raw.path(), &out, 0, &stored).unwrap();
        assert!(
            testutil::have("tar") && testutil::have("gzip"),
            "tar and gzip judge"
        );
        judge(raw.path(), &out, 1 << 30);
        let peer_dir = tempfile::tempdir().unwrap();
        let disk = peer_dir.path().join(MEMBER);
        std::fs::copy(raw.path(), &disk).unwrap();
        let script = "cd \"$1\" && tar --format=oldgnu -S -c disk.raw | gzip -6 | wc -c";
        let dir_arg = peer_dir.path().to_string_lossy();
        let peer = testutil::run("sh", &["-c", script, "sh", &dir_arg]);
        let peer: u64 = String::from_utf8_lossy(&peer.stdout)
            .trim()
            .parse()
            .unwrap();
        let ratio = stats.file_size as f64 / peer as f64;
        assert!(
            ratio <= 1.01,
            "{} vs tar | gzip -6: {peer}",
            stats.file_size
        );
    }

    #[test]
    fn output_is_deterministic() {
        let raw = testutil::small_image();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
        write(raw.path(), &a, 5, &[]).unwrap();
        write(raw.path(), &b, 5, &[]).unwrap();
        assert_eq!(testutil::bytes(&a), testutil::bytes(&b));
    }

    #[test]
    fn large_sparse_image_extracts_identical() {
        let raw = testutil::large_image();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.tar.gz");
        let stats = write(raw.path(), &out, 0, &[]).unwrap();
        assert_eq!((stats.disk_size, stats.rounded_up), (2 << 30, false));
        judge(raw.path(), &out, 2 << 30);
    }
}
