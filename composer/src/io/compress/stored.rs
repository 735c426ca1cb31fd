//! Which byte ranges of a file the artefact compressors keep as they are: the one rule
//! behind the `.xz` and `.zst` wrappers ([`super::compress_file`]: LZMA2 uncompressed chunks,
//! zstd raw blocks) and stored deflate blocks (VMDK grains, the GCE tarball).
//!
//! A range is stored when it is
//! - **named by the caller**: data strata compressed itself (squashfs images, the initramfs's
//!   xz or zstd segment), wherever the disk, qcow2 or ISO put it; or
//! - **found incompressible by [`probe`]**: every [`PROBE_BLOCK`] of data outside the named
//!   ranges, on a fixed grid of the file's offsets, is compressed once with zstd level 1; a
//!   block that shrinks by less than 1/[`MIN_SAVING`] (2 %) is stored. That catches bytes
//!   compressed by someone else — the kernel image in the ESP (Debian's vmlinuz: `zstd -19`
//!   gains 0.9 % on it for 1.3 s of CPU, `xz -6` the same for 3.1 s), a UKI's `.linux`
//!   section, firmware blobs — without knowing where they are.
//!
//! The probe costs a zstd level-1 pass over the data outside the named ranges (a few MB on a
//! disk: under 0.1 s) and depends only on the file's bytes and the named ranges, never on the
//! thread count, so outputs stay reproducible.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Gaps between stored ranges shorter than this are stored along with them: a piece of its own
/// costs more in container overhead than compressing a few hundred bytes saves.
const MIN_GAP: u64 = 1024;

/// The probe's block: a VMDK grain, small enough to find a compressed file inside an ESP
/// between its FAT tables and small files, big enough for zstd to judge.
pub const PROBE_BLOCK: u64 = 64 << 10;

/// A probed block is stored when zstd level 1 saves less than 1/`MIN_SAVING` of it (2 %).
const MIN_SAVING: usize = 50;

/// Probe blocks handed to one thread at a time (1 MiB).
const BLOCKS_PER_TASK: usize = 16;

/// `stored` clipped to `size`, sorted, with overlapping, touching and nearly touching ranges
/// (gaps under [`MIN_GAP`]) merged.
pub(super) fn normalise(size: u64, stored: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = stored
        .iter()
        .map(|&(off, len)| (off.min(size), off.saturating_add(len).min(size)))
        .filter(|(start, end)| start < end)
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if start <= *last_end + MIN_GAP => *last_end = (*last_end).max(end),
            _ => merged.push((start, end)),
        }
    }
    merged.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// The ranges of `file` to store: `named` (compressed by strata) and every
/// [`PROBE_BLOCK`] outside them that zstd level 1 cannot shrink by 2 %, normalised
/// ([`normalise`]). Holes and all-zero blocks are never stored. Probes on up to `threads`
/// threads; the answer does not depend on how many.
pub fn probe(file: &File, named: &[(u64, u64)], threads: usize) -> io::Result<Vec<(u64, u64)>> {
    let size = file.metadata()?.len();
    let named = normalise(size, named);
    let blocks = candidates(&crate::io::sparse::data_ranges(file)?, &named, size);
    let tasks: Vec<&[u64]> = blocks.chunks(BLOCKS_PER_TASK).collect();
    let verdicts = crate::par::map(&tasks, threads, |task| judge(file, task, size));
    let mut all = named;
    for (task, verdict) in tasks.iter().zip(verdicts) {
        for (&index, keep) in task.iter().zip(verdict?) {
            if keep {
                let off = index * PROBE_BLOCK;
                all.push((off, PROBE_BLOCK.min(size - off)));
            }
        }
    }
    Ok(normalise(size, &all))
}

/// Indices of the probe blocks that hold data (`data`: the file's data ranges, in order)
/// and do not touch a `named` range (sorted, disjoint).
fn candidates(data: &[(u64, u64)], named: &[(u64, u64)], size: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &(off, len) in data {
        let first = (off / PROBE_BLOCK).max(out.last().map_or(0, |l| l + 1));
        for index in first..(off + len).div_ceil(PROBE_BLOCK) {
            let (start, end) = (index * PROBE_BLOCK, ((index + 1) * PROBE_BLOCK).min(size));
            let at = named.partition_point(|&(o, l)| o + l <= start);
            if named.get(at).is_none_or(|&(o, _)| o >= end) {
                out.push(index);
            }
        }
    }
    out
}

/// For each block of `task`: whether it is incompressible (and not all zeros).
fn judge(file: &File, task: &[u64], size: u64) -> io::Result<Vec<bool>> {
    let mut z = ::zstd::bulk::Compressor::new(1)?;
    let mut buf = vec![0u8; PROBE_BLOCK as usize];
    let mut out = Vec::with_capacity(::zstd::zstd_safe::compress_bound(buf.len()));
    task.iter()
        .map(|&index| {
            let off = index * PROBE_BLOCK;
            let data = &mut buf[..PROBE_BLOCK.min(size - off) as usize];
            file.read_exact_at(data, off)?;
            Ok(!crate::io::sparse::is_zero(data) && incompressible(&mut z, data, &mut out)?)
        })
        .collect()
}

/// Whether zstd level 1 saves less than 1/[`MIN_SAVING`] of `data`.
fn incompressible(
    z: &mut ::zstd::bulk::Compressor<'_>,
    data: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    out.clear();
    let packed = z.compress_to_buffer(data, out)?;
    Ok(packed * MIN_SAVING > data.len() * (MIN_SAVING - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sparse::testutil::{Rng, MIB};

    #[test]
    fn ranges_are_clipped_sorted_and_merged() {
        let got = normalise(
            10_000,
            &[
                (9_000, 5_000),
                (100, 100),
                (150, 100),
                (2_000, 10),
                (2_500, 0),
            ],
        );
        // 100..250 and 2000..2010 are 1750 apart: kept apart; 9000.. is clipped.
        assert_eq!(got, vec![(100, 150), (2_000, 10), (9_000, 1_000)]);
        // A gap under MIN_GAP is swallowed.
        assert_eq!(normalise(5_000, &[(0, 10), (500, 10)]), vec![(0, 510)]);
        assert!(normalise(0, &[(0, 10)]).is_empty());
    }

    /// A file with, on the probe grid: text (compressible), noise (not), zeros written out,
    /// a hole, noise under a named range, and a short noisy tail.
    #[test]
    fn noise_outside_the_named_ranges_is_stored_text_and_zeros_are_not() {
        let b = PROBE_BLOCK;
        let f = tempfile::NamedTempFile::new().unwrap();
        let text: Vec<u8> = b"the probe keeps text packed. "
            .iter()
            .copied()
            .cycle()
            .take(2 * b as usize)
            .collect();
        let mut rng = Rng::new(9);
        let noise: Vec<u8> = (0..3 * b).map(|_| rng.next_u64() as u8).collect();
        let file = f.as_file();
        file.write_all_at(&text, 0).unwrap(); // blocks 0, 1: text
        file.write_all_at(&noise, 2 * b).unwrap(); // blocks 2..5: noise
        file.write_all_at(&vec![0u8; b as usize], 5 * b).unwrap(); // block 5: zeros
        file.write_all_at(&noise, 9 * b).unwrap(); // blocks 9..12: noise, named
        file.write_all_at(&noise[..1000], 14 * b).unwrap(); // a short noisy tail
        let named = [(9 * b + 10, 3 * b - 10)];
        let got = probe(file, &named, 3).unwrap();
        // Block 9 touches the named range, so it is not probed: its first 10 bytes stay packed.
        assert_eq!(
            got,
            vec![(2 * b, 3 * b), (9 * b + 10, 3 * b - 10), (14 * b, 1000)]
        );
        for threads in [1, 2, 7] {
            assert_eq!(probe(file, &named, threads).unwrap(), got);
        }
        // Nothing named, nothing probed-in for a file of text and holes.
        let t = tempfile::NamedTempFile::new().unwrap();
        t.as_file().write_all_at(&text, 3 * MIB).unwrap();
        assert!(probe(t.as_file(), &[], 2).unwrap().is_empty());
    }

    #[test]
    fn candidates_skip_blocks_touching_named_ranges_and_repeat_none() {
        let b = PROBE_BLOCK;
        // Two data ranges sharing block 1; a named range inside block 3.
        let data = [(0, b + 10), (b + 20, 3 * b), (10 * b, 1)];
        let named = [(3 * b + 5, 7)];
        assert_eq!(candidates(&data, &named, 20 * b), vec![0, 1, 2, 4, 10]);
        assert_eq!(candidates(&[(0, 100)], &[], 100), vec![0]);
    }
}
