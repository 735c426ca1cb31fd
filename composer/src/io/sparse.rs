//! Finding the data in a sparse file without reading its holes.
//!
//! Disk images are mostly holes (an 8 GiB image may hold 50 MB of data), so every format
//! writer walks only what the file system reports as data:
//!
//! - [`data_ranges`] asks the kernel with `lseek(SEEK_DATA/SEEK_HOLE)`. File systems without
//!   hole reporting answer as if the whole file were data (the kernel's generic fallback), and
//!   where the call itself is refused the whole file is returned, so callers never need a
//!   second code path: they only read more.
//! - [`NonZeroChunks`] refines that to fixed-size chunks (a qcow2 cluster, a VMDK grain, a VHD
//!   block) and skips chunks whose bytes are all zero, because data ranges may contain zeroed
//!   but allocated blocks (`fallocate`, a file system that zero-filled a region).
//! - [`nonzero_ranges`] merges those chunks back into byte ranges, for writers that copy data
//!   at its original offset (VHD fixed, sparse tar members).
//!
//! Reads use `pread`, so they do not depend on the file position; `lseek` does move it,
//! which callers sharing the file must not rely on.
//!
//! Not supported: files that change while they are read (a range can then be missed).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Byte ranges `(offset, length)` of `file` that may hold data, in order and disjoint.
///
/// Holes are left out. The last range ends at the file size. When the kernel or file system
/// cannot report holes, the whole file is one range.
pub fn data_ranges(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let size = file.metadata()?.len();
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, pos, libc::SEEK_DATA) {
            Ok(Some(start)) => start,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && pos == 0 => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e),
        };
        if start >= size {
            break;
        }
        let end = seek(file, start, libc::SEEK_HOLE)?
            .unwrap_or(size)
            .min(size);
        if end <= start {
            // A file that shrank under us; stop rather than loop.
            break;
        }
        ranges.push((start, end - start));
        pos = end;
    }
    Ok(ranges)
}

/// `lseek` that maps ENXIO ("no more data past this offset") to `None`.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t"))?;
    // SAFETY: lseek only reads its integer arguments; the descriptor is owned by `file`,
    // which outlives the call.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(err);
    }
    // `r` is non-negative here, so the conversion cannot fail.
    Ok(Some(r as u64))
}

/// True if every byte of `buf` is zero.
///
/// Compares eight bytes at a time: this runs over every byte of every image written, so the
/// naive byte loop would show in profiles.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut words = buf.chunks_exact(8);
    let words_zero = words
        .by_ref()
        .all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0);
    words_zero && words.remainder().iter().all(|&b| b == 0)
}

/// One chunk of a file that is not all zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Chunk number: the chunk starts at byte `index * chunk_size` of the file.
    pub index: u64,
    /// The chunk's bytes, always `chunk_size` long: past the end of the file it is padded
    /// with zeros, as a virtual disk reads there.
    pub data: Vec<u8>,
}

/// Iterator over the chunks of a file that hold at least one non-zero byte, in order.
///
/// Only chunks overlapping a [`data_ranges`] range are read.
pub struct NonZeroChunks<'a> {
    file: &'a File,
    size: u64,
    chunk_size: u64,
    ranges: std::vec::IntoIter<(u64, u64)>,
    /// Chunk indices still to read in the current range: `next..end`.
    next: u64,
    end: u64,
}

/// Start iterating the non-zero `chunk_size`-byte chunks of `file`.
pub fn nonzero_chunks(file: &File, chunk_size: u64) -> io::Result<NonZeroChunks<'_>> {
    if chunk_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "chunk size 0; hint: use the format's cluster or grain size",
        ));
    }
    let size = file.metadata()?.len();
    Ok(NonZeroChunks {
        file,
        size,
        chunk_size,
        ranges: data_ranges(file)?.into_iter(),
        next: 0,
        end: 0,
    })
}

impl NonZeroChunks<'_> {
    /// The next chunk index to read, moving to the next data range when needed.
    fn next_index(&mut self) -> Option<u64> {
        while self.next >= self.end {
            let (off, len) = self.ranges.next()?;
            let first = off / self.chunk_size;
            let end = (off + len).div_ceil(self.chunk_size);
            // Adjacent ranges may share a chunk; never read a chunk twice.
            self.next = first.max(self.next);
            self.end = end;
        }
        let index = self.next;
        self.next += 1;
        Some(index)
    }

    /// Read chunk `index`, zero-padded past the end of the file.
    fn read(&self, index: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.chunk_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "chunk size too large"))?;
        let mut data = vec![0u8; len];
        let start = index * self.chunk_size;
        let avail = self.size.saturating_sub(start).min(self.chunk_size) as usize;
        self.file.read_exact_at(&mut data[..avail], start)?;
        Ok(data)
    }
}

impl Iterator for NonZeroChunks<'_> {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let index = self.next_index()?;
            match self.read(index) {
                Ok(data) if is_zero(&data) => continue,
                Ok(data) => return Some(Ok(Chunk { index, data })),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Byte ranges `(offset, length)` of `file` holding non-zero data, found at `granularity`
/// (adjacent non-zero chunks merged, the last range clipped to the file size).
///
/// Writers that keep data at its original offset copy only these ranges and leave the rest
/// as holes.
pub fn nonzero_ranges(file: &File, granularity: u64) -> io::Result<Vec<(u64, u64)>> {
    let size = file.metadata()?.len();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut chunks = nonzero_chunks(file, granularity)?;
    while let Some(index) = next_nonzero_index(&mut chunks)? {
        let start = index * granularity;
        let len = granularity.min(size - start);
        match ranges.last_mut() {
            Some((off, l)) if *off + *l == start => *l += len,
            _ => ranges.push((start, len)),
        }
    }
    Ok(ranges)
}

/// Index of the next non-zero chunk, without keeping its data.
fn next_nonzero_index(chunks: &mut NonZeroChunks<'_>) -> io::Result<Option<u64>> {
    chunks.next().transpose().map(|c| c.map(|c| c.index))
}

/// Copies the data of `src` within `offset..offset + len` into `dest`, byte `offset` of `src`
/// going to byte `at` of `dest`, file to file in the kernel (`copy_file_range` through
/// [`std::io::copy`], no pass through user memory). Holes are skipped, so they stay holes
/// in `dest` (whose length the caller sets). Returns the bytes copied; fewer than the data
/// ranges hold means `src` shrank meanwhile.
pub fn copy_data(src: &File, offset: u64, len: u64, mut dest: &File, at: u64) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let end = offset.saturating_add(len);
    let mut copied = 0;
    for (start, n) in data_ranges(src)? {
        let (from, to) = (start.max(offset), (start + n).min(end));
        if from >= to {
            continue;
        }
        let mut input = src;
        input.seek(SeekFrom::Start(from))?;
        dest.seek(SeekFrom::Start(at + (from - offset)))?;
        let got = io::copy(&mut input.take(to - from), &mut dest)?;
        copied += got;
        if got < to - from {
            break;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sparse_file(size: u64, writes: &[(u64, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(size).unwrap();
        for (off, data) in writes {
            f.as_file().write_all_at(data, *off).unwrap();
        }
        f.as_file().sync_all().unwrap();
        f
    }

    #[test]
    fn is_zero_checks_every_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 13]));
        for i in 0..13 {
            let mut b = [0u8; 13];
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
        }
    }

    #[test]
    fn data_ranges_skip_holes_and_cover_data() {
        let mib = 1 << 20;
        let f = sparse_file(16 * mib, &[(2 * mib, &[1; 4096]), (9 * mib + 7, &[2; 10])]);
        let ranges = data_ranges(f.as_file()).unwrap();
        assert!(!ranges.is_empty());
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        // tmpfs and ext4 report block-granular data; a file system without hole support
        // reports everything. Either way each written byte is inside some range.
        for want in [2 * mib, 2 * mib + 4095, 9 * mib + 7, 9 * mib + 16] {
            assert!(
                ranges.iter().any(|&(o, l)| o <= want && want < o + l),
                "{want}"
            );
        }
        if total < 16 * mib {
            assert!(!ranges.iter().any(|&(o, l)| o <= 5 * mib && 5 * mib < o + l));
        }
    }

    #[test]
    fn empty_and_all_hole_files_have_no_chunks() {
        let f = sparse_file(0, &[]);
        assert!(data_ranges(f.as_file()).unwrap().is_empty());
        let g = sparse_file(1 << 20, &[]);
        assert_eq!(nonzero_chunks(g.as_file(), 4096).unwrap().count(), 0);
    }

    #[test]
    fn chunks_skip_allocated_zeros_and_pad_the_tail() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // Allocated zeros, then data, then a short tail.
        f.write_all(&[0; 8192]).unwrap();
        f.write_all(&[5; 100]).unwrap();
        f.write_all(&[0; 4000]).unwrap();
        f.write_all(&[7; 10]).unwrap();
        let chunks: Vec<Chunk> = nonzero_chunks(f.as_file(), 4096)
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        let idx: Vec<u64> = chunks.iter().map(|c| c.index).collect();
        assert_eq!(idx, vec![2, 3]);
        assert_eq!(chunks[1].data.len(), 4096);
        assert_eq!(chunks[1].data[..4], [0; 4]);
        assert_eq!(chunks[1].data[4..14], [7; 10]);
        assert!(is_zero(&chunks[1].data[14..]));
        let ranges = nonzero_ranges(f.as_file(), 4096).unwrap();
        assert_eq!(ranges, vec![(8192, 4096 + 14)]);
    }

    #[test]
    fn zero_chunk_size_is_refused() {
        let f = sparse_file(10, &[]);
        assert!(nonzero_chunks(f.as_file(), 0).is_err());
    }
}

/// Test inputs and judges shared by the format writers' tests.
#[cfg(test)]
pub mod testutil {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::{Command, Output};

    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;

    /// xorshift64*: deterministic bytes without a dependency.
    pub struct Rng(u64);

    impl Rng {
        /// A generator seeded with `seed` (any value but 0 works; 0 is remapped).
        pub fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }

        /// The next pseudo-random word.
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Fill `buf` with a mix of 4 KiB blocks: random ones and text-like ones, so that
        /// compressors see both incompressible and compressible data.
        pub fn fill(&mut self, buf: &mut [u8]) {
            for block in buf.chunks_mut(4096) {
                if self.next_u64().is_multiple_of(2) {
                    for b in block.iter_mut() {
                        *b = self.next_u64() as u8;
                    }
                } else {
                    let word = self.next_u64();
                    for (i, b) in block.iter_mut().enumerate() {
                        *b = b"strata image block "[i % 19] ^ ((word >> (i % 7)) as u8 & 1);
                    }
                }
            }
        }
    }

    /// A sparse raw image of `size` bytes with pseudo-random data at each `(offset, len)`
    /// of `data` and allocated zeros at each of `zeros`.
    pub fn raw_image(
        size: u64,
        data: &[(u64, u64)],
        zeros: &[(u64, u64)],
    ) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let file = f.as_file();
        file.set_len(size).expect("set_len");
        for &(off, len) in zeros {
            file.write_all_at(&vec![0u8; len as usize], off)
                .expect("write zeros");
        }
        let mut rng = Rng::new(size ^ 0x5eed);
        for &(off, len) in data {
            let mut buf = vec![0u8; len as usize];
            rng.fill(&mut buf);
            // Never let a data extent be all zeros by chance at its edges.
            if let Some(b) = buf.first_mut() {
                *b |= 1;
            }
            if let Some(b) = buf.last_mut() {
                *b |= 1;
            }
            file.write_all_at(&buf, off).expect("write data");
        }
        file.sync_all().expect("sync");
        f
    }

    /// 64 MiB: data at 0, unaligned data, allocated zeros, data across the 32 MiB grain
    /// table boundary, a lone byte, and data ending mid-cluster near the end.
    pub fn small_image() -> tempfile::NamedTempFile {
        raw_image(
            64 * MIB,
            &[
                (0, MIB),
                (10 * MIB + 4096 + 17, 3 * MIB),
                (32 * MIB - 50_000, 100_000),
                (50 * MIB + 123, 1),
                (64 * MIB - 70_000, 12_345),
                (64 * MIB - 512, 512),
            ],
            &[(20 * MIB, 2 * MIB)],
        )
    }

    /// 2 GiB with about 30 MB of data spread over it, including the edges of 512 MiB
    /// (qcow2 L2 tables at 64 KiB clusters) and the last MiB (a GPT backup header).
    pub fn large_image() -> tempfile::NamedTempFile {
        let size = 2048 * MIB;
        let mut data = vec![(0, 4 * MIB), (size - MIB, MIB)];
        for i in 1..4 {
            data.push((i * 512 * MIB - MIB / 2, MIB));
        }
        for i in 0..22 {
            data.push((7 * MIB + i * 89 * MIB + i * 4099, MIB + i * 1000));
        }
        raw_image(size, &data, &[(300 * MIB, 8 * MIB)])
    }

    /// 48 MiB like a built disk: mixed data (see [`Rng::fill`]) with two long runs of
    /// random bytes standing for squashfs images, whose ranges are returned as the ones to
    /// store (what `DiskPlan::compressed_ranges` names on a real disk).
    pub fn compressed_image() -> (tempfile::NamedTempFile, Vec<(u64, u64)>) {
        let stored = vec![(4 * MIB + 100, 20 * MIB), (30 * MIB + 4096, 9 * MIB)];
        let f = raw_image(48 * MIB, &[(0, 47 * MIB)], &[]);
        let mut rng = Rng::new(0xc0de);
        for &(off, len) in &stored {
            let buf: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            f.as_file().write_all_at(&buf, off).expect("write data");
        }
        (f, stored)
    }

    /// True if `tool` is installed; see [`crate::test_support::require_tool`].
    pub fn have(tool: &str) -> bool {
        crate::test_support::require_tool(tool)
    }

    /// Run `cmd args`, panicking with its output if it fails.
    pub fn run(cmd: &str, args: &[&str]) -> Output {
        let out = Command::new(cmd).args(args).output().expect("spawn");
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `qemu-img info --output=json` fields: (format, virtual size).
    pub fn qemu_info(path: &Path) -> (String, u64) {
        let out = run(
            "qemu-img",
            &["info", "--output=json", &path.to_string_lossy()],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |key: &str| -> String {
            let at = text
                .find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} in {text}"));
            let rest = text[at + key.len() + 3..].trim_start();
            rest.split([',', '\n', '}'])
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_string()
        };
        (
            field("format"),
            field("virtual-size").parse().expect("virtual-size"),
        )
    }

    /// Assert `qemu-img compare` finds `raw` and `image` identical.
    pub fn qemu_compare(raw: &Path, image: &Path) {
        let out = run(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                &raw.to_string_lossy(),
                &image.to_string_lossy(),
            ],
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));
    }

    /// Bytes of a file, for determinism checks on small outputs.
    pub fn bytes(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read output")
    }

    /// Open a file for reading.
    pub fn open(path: &Path) -> File {
        File::open(path).expect("open")
    }
}
