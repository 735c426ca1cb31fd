//! Deflate (RFC 1951) in independent pieces that keep already-compressed ranges as stored
//! blocks: the VMDK writer's grains (each a zlib stream, RFC 1950) and the GCE tarball's gzip
//! stream (RFC 1952, cut every 1 MiB the way pigz cuts it) are both made of these pieces.
//!
//! A piece is split at the ranges that hold compressed data ([`Stored`]: what the caller names,
//! such as squashfs images and the initramfs's xz or zstd segment, and what the
//! incompressibility probe of `stored.rs` finds, such as the kernel): those go out as stored
//! blocks (a 5-byte header per
//! 65 535 bytes, no compression work), and each run between them is deflated by a compressor
//! of its own, at [`LEVEL`], ending in a sync flush so the next block starts on a byte. A
//! fresh compressor per run is required, not a shortcut: the decoder's window holds the
//! stored bytes, the encoder's would not, so a match reaching back across a stored run would
//! point at the wrong bytes.
//!
//! Pieces depend only on their bytes and their stored ranges, never on the thread count, so
//! writers that cut their input at fixed offsets and encode pieces in parallel
//! ([`Gzip`], the VMDK grain loop) write the same bytes on any number of threads (for a given
//! flate2/miniz_oxide version).

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Deflate level: zlib's default, what `gzip -6` and `qemu-img convert -O vmdk` use.
pub const LEVEL: u32 = 6;
/// Largest payload of one stored block (its length field is 16 bits).
const STORED_MAX: usize = 0xffff;

/// How a piece ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Byte-aligned and not final: another piece follows in the same stream.
    Sync,
    /// With the final block: the deflate stream ends here.
    Final,
}

/// Byte ranges of an input that hold compressed data, sorted and merged
/// (`stored.rs`: gaps too short to be worth a block of their own are stored with their
/// neighbours).
#[derive(Debug, Clone, Default)]
pub struct Stored(Vec<(u64, u64)>);

impl Stored {
    /// `ranges` (`(offset, length)`) of an input of `size` bytes, as they are.
    pub fn new(size: u64, ranges: &[(u64, u64)]) -> Stored {
        Stored(super::stored::normalise(size, ranges))
    }

    /// `named` (ranges of `file` strata compressed) and the blocks of `file` the
    /// incompressibility probe finds (`stored.rs`, the rule the `.xz`/`.zst` wrappers use).
    pub fn probed(
        file: &std::fs::File,
        named: &[(u64, u64)],
        threads: usize,
    ) -> io::Result<Stored> {
        super::stored::probe(file, named, threads).map(Stored)
    }

    /// The stored ranges within `offset..offset + len`, relative to `offset`.
    pub fn within(&self, offset: u64, len: u64) -> Vec<(usize, usize)> {
        let end = offset + len;
        let first = self.0.partition_point(|&(o, l)| o + l <= offset);
        self.0[first..]
            .iter()
            .take_while(|&&(o, _)| o < end)
            .map(|&(o, l)| {
                let (s, e) = (o.max(offset), (o + l).min(end));
                ((s - offset) as usize, (e - s) as usize)
            })
            .collect()
    }
}

/// Raw deflate of `data`, keeping `stored` (sorted, disjoint ranges relative to `data`) as
/// stored blocks and compressing the rest; ends as `end` says.
pub fn piece(data: &[u8], stored: &[(usize, usize)], end: End) -> io::Result<Vec<u8>> {
    piece_mapped(data, stored, end).map(|(out, _)| out)
}

/// Where a stored block's payload went: `(offset in the input, offset in the output,
/// length)`. A container that copies the output whole can tell a wrapping compressor which
/// of its bytes are compressed already.
pub type Span = (usize, usize, usize);

/// [`piece`], and the [`Span`] of every stored block's payload, in order.
pub fn piece_mapped(
    data: &[u8],
    stored: &[(usize, usize)],
    end: End,
) -> io::Result<(Vec<u8>, Vec<Span>)> {
    // Each run: its start in `data`, its bytes, whether it is stored.
    let mut runs: Vec<(usize, &[u8], bool)> = Vec::with_capacity(2 * stored.len() + 1);
    let mut at = 0;
    for &(off, len) in stored {
        let (off, stop) = (off.clamp(at, data.len()), (off + len).min(data.len()));
        if off < stop {
            runs.push((at, &data[at..off], false));
            runs.push((off, &data[off..stop], true));
            at = stop;
        }
    }
    runs.push((at, &data[at..], false));
    // Empty packed runs cost a sync marker each: drop them, but keep one run to end on.
    runs.retain(|(_, bytes, keep)| *keep || !bytes.is_empty());
    if runs.is_empty() {
        runs.push((0, &[], false));
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 64);
    let mut spans = Vec::new();
    let last = runs.len() - 1;
    for (i, (start, bytes, keep)) in runs.into_iter().enumerate() {
        let fin = end == End::Final && i == last;
        if keep {
            stored_blocks(bytes, fin, &mut out, (start, &mut spans));
        } else {
            deflate_run(bytes, fin, &mut out)?;
        }
    }
    Ok((out, spans))
}

/// `data` as stored blocks, the last one marked final when `fin`. The writer is byte-aligned
/// here (a sync flush or another stored block came before), so the 3 header bits and their
/// padding fill exactly one byte. Each payload's [`Span`] goes to `spans` (`data` starts at
/// `start` of the piece's input).
fn stored_blocks(
    data: &[u8],
    fin: bool,
    out: &mut Vec<u8>,
    (start, spans): (usize, &mut Vec<Span>),
) {
    let n = data.len().div_ceil(STORED_MAX);
    for (i, block) in data.chunks(STORED_MAX).enumerate() {
        let len = block.len() as u16;
        out.push(u8::from(fin && i + 1 == n));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        spans.push((start + i * STORED_MAX, out.len(), block.len()));
        out.extend_from_slice(block);
    }
}

/// `data` deflated by a compressor of its own, ending in a sync flush or, when `fin`, the
/// final block.
fn deflate_run(data: &[u8], fin: bool, out: &mut Vec<u8>) -> io::Result<()> {
    let mut c = Compress::new(Compression::new(LEVEL), false);
    let flush = if fin {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    out.reserve(data.len() / 2 + 1024);
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 << 10);
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        // Done when all input is in and the flush left room in the buffer (so it completed);
        // the final run is done when the stream has ended.
        if (fin && status == Status::StreamEnd) || (!fin && all_in && out.len() < out.capacity()) {
            return Ok(());
        }
    }
}

/// A zlib stream (RFC 1950) of `data`: header, [`piece`] ending in the final block, Adler-32.
pub fn zlib(data: &[u8], stored: &[(usize, usize)]) -> io::Result<Vec<u8>> {
    zlib_mapped(data, stored).map(|(out, _)| out)
}

/// [`zlib`], and the [`Span`] of every stored block's payload in the stream.
pub fn zlib_mapped(data: &[u8], stored: &[(usize, usize)]) -> io::Result<(Vec<u8>, Vec<Span>)> {
    // CMF 0x78 (deflate, 32 KiB window), FLG 0x9c (default level, check bits).
    const HEADER: [u8; 2] = [0x78, 0x9c];
    let (body, spans) = piece_mapped(data, stored, End::Final)?;
    let mut out = Vec::with_capacity(body.len() + 6);
    out.extend_from_slice(&HEADER);
    out.extend_from_slice(&body);
    out.extend_from_slice(&adler32(data).to_be_bytes());
    let spans = spans
        .into_iter()
        .map(|(i, o, n)| (i, o + HEADER.len(), n))
        .collect();
    Ok((out, spans))
}

/// RFC 1950's Adler-32 checksum.
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    // The most bytes whose sums cannot overflow a u32 before reducing (zlib's NMAX).
    const NMAX: usize = 5552;
    let (mut a, mut b) = (1u32, 0u32);
    for block in data.chunks(NMAX) {
        for &byte in block {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// Input bytes per independently deflated gzip piece.
pub const GZIP_PIECE: usize = 1 << 20;

/// A gzip writer (one member) that deflates fixed [`GZIP_PIECE`]s of its input on several
/// threads, each with [`piece`], and combines their CRC-32s. Input written with
/// [`Gzip::push`] may name ranges to store; [`Write`] stores none.
pub struct Gzip<W: Write> {
    inner: W,
    threads: usize,
    /// Input not compressed yet: at most `threads + 1` pieces.
    pending: Vec<u8>,
    /// Stored ranges of `pending`, sorted (touching ones merged).
    stored: Vec<(usize, usize)>,
    crc: Crc,
}

impl<W: Write> Gzip<W> {
    /// Starts the stream: the 10-byte gzip header (deflate, no flags, mtime 0, no extra
    /// flags, OS unknown), so the bytes carry no time and no name.
    pub fn new(mut inner: W, threads: usize) -> io::Result<Self> {
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        let threads = threads.max(1);
        Ok(Gzip {
            inner,
            threads,
            pending: Vec::with_capacity((threads + 1) * GZIP_PIECE),
            stored: Vec::new(),
            crc: Crc::new(),
        })
    }

    /// Appends `buf`, whose `stored` ranges (relative to `buf`, sorted) are compressed data
    /// to keep as stored blocks.
    pub fn push(&mut self, mut buf: &[u8], mut stored: &[(usize, usize)]) -> io::Result<()> {
        let batch = (self.threads + 1) * GZIP_PIECE;
        let mut base = 0;
        while !buf.is_empty() {
            let n = buf.len().min(batch - self.pending.len());
            let at = self.pending.len();
            for &(off, len) in stored {
                let (s, e) = (off.max(base), (off + len).min(base + n));
                if s < e {
                    self.mark(at + s - base, e - s);
                }
            }
            while stored.first().is_some_and(|&(o, l)| o + l <= base + n) {
                stored = &stored[1..];
            }
            self.pending.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            base += n;
            if self.pending.len() == batch {
                // Keep the last piece back: only `finish` knows which piece is the final one.
                self.emit(batch - GZIP_PIECE, End::Sync)?;
            }
        }
        Ok(())
    }

    /// Records `pending[off..off + len]` as stored.
    fn mark(&mut self, off: usize, len: usize) {
        match self.stored.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => self.stored.push((off, len)),
        }
    }

    /// Deflates the first `n` pending bytes (whole pieces, but the last when `end` is final)
    /// in parallel and writes them in order.
    fn emit(&mut self, n: usize, end: End) -> io::Result<()> {
        let starts: Vec<usize> = if n == 0 {
            vec![0]
        } else {
            (0..n).step_by(GZIP_PIECE).collect()
        };
        let count = starts.len();
        let (data, stored) = (&self.pending[..n], &self.stored);
        let encoded = crate::par::map(&starts, self.threads, |&s| {
            let e = (s + GZIP_PIECE).min(n);
            let ranges = within(stored, s, e - s);
            let last = end == End::Final && s + GZIP_PIECE >= n;
            let mut crc = Crc::new();
            crc.update(&data[s..e]);
            piece(
                &data[s..e],
                &ranges,
                if last { End::Final } else { End::Sync },
            )
            .map(|bytes| (crc, bytes))
        });
        debug_assert_eq!(encoded.len(), count);
        for r in encoded {
            let (crc, bytes) = r?;
            self.crc.combine(&crc);
            self.inner.write_all(&bytes)?;
        }
        self.pending.drain(..n);
        self.stored = within(&self.stored, n, self.pending.len());
        Ok(())
    }

    /// Compresses what is left, ends the deflate stream and writes the gzip trailer.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit(self.pending.len(), End::Final)?;
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.inner)
    }
}

/// The ranges of `ranges` (sorted) within `off..off + len`, relative to `off`.
fn within(ranges: &[(usize, usize)], off: usize, len: usize) -> Vec<(usize, usize)> {
    ranges
        .iter()
        .filter_map(|&(o, l)| {
            let (s, e) = (o.max(off), (o + l).min(off + len));
            (s < e).then(|| (s - off, e - s))
        })
        .collect()
}

impl<W: Write> Write for Gzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf, &[])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sparse::testutil::Rng;
    use std::io::Read;

    /// Text that deflate shrinks, with random (incompressible) stretches in it.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut data: Vec<u8> = b"strata keeps compressed bytes as they are. "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect();
        for _ in 0..len / 50_000 {
            let at = (rng.next_u64() as usize) % len;
            let n = (20_000).min(len - at);
            rng.fill(&mut data[at..at + n]);
        }
        data
    }

    fn inflate(raw_deflate: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(raw_deflate)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn pieces_with_stored_ranges_inflate_to_their_input() {
        let data = sample(300_000, 1);
        for stored in [
            vec![],
            vec![(0, 300_000)],
            vec![(0, 10), (100, 70_000), (200_000, 100_000)],
            vec![(5, 0), (299_999, 1)],
            vec![(1000, 200_000)],
        ] {
            let bytes = piece(&data, &stored, End::Final).unwrap();
            assert_eq!(inflate(&bytes), data, "{stored:?}");
            // Two sync pieces and a final one make one stream.
            let mut joined = piece(&data[..1000], &stored, End::Sync).unwrap();
            joined.extend(piece(&data[1000..], &[], End::Sync).unwrap());
            joined.extend(piece(&[], &[], End::Final).unwrap());
            assert_eq!(inflate(&joined), data, "{stored:?}");
        }
        assert!(inflate(&piece(&[], &[], End::Final).unwrap()).is_empty());
    }

    /// The spans of a zlib stream name where each stored range's bytes are, whole.
    #[test]
    fn spans_locate_the_stored_bytes_in_the_output() {
        let data = sample(300_000, 3);
        let stored = [(10, 5), (100, 140_000), (200_000, 100_000)];
        let (z, spans) = zlib_mapped(&data, &stored).unwrap();
        assert_eq!(z, zlib(&data, &stored).unwrap());
        for &(i, o, n) in &spans {
            assert!(z[o..o + n] == data[i..i + n], "{:?}", (i, o, n));
        }
        let mut covered: Vec<(usize, usize)> = Vec::new();
        for &(i, _, n) in &spans {
            match covered.last_mut() {
                Some((s, l)) if *s + *l == i => *l += n,
                _ => covered.push((i, n)),
            }
        }
        assert_eq!(covered, stored);
    }

    /// A stored range costs its length plus 5 bytes per 64 KiB, however compressible.
    #[test]
    fn stored_ranges_are_not_compressed() {
        let data = sample(200_000, 2);
        let packed = piece(&data, &[], End::Final).unwrap().len();
        let stored = piece(&data, &[(0, 200_000)], End::Final).unwrap().len();
        assert_eq!(stored, 200_000 + 4 * 5);
        assert!(packed < 150_000, "{packed}");
    }

    #[test]
    fn zlib_streams_check_out() {
        let data = sample(70_000, 3);
        for stored in [vec![], vec![(10, 65_536)]] {
            let z = zlib(&data, &stored).unwrap();
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&z[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
        }
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        let big = vec![0xff; 100_000];
        // Cross-check against miniz's own Adler-32 through a zlib stream it writes.
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&big).unwrap();
        let z = enc.finish().unwrap();
        assert_eq!(z[z.len() - 4..], adler32(&big).to_be_bytes());
    }

    #[test]
    fn stored_ranges_are_found_within_a_window() {
        let s = Stored::new(1 << 20, &[(100, 100), (5000, 3000), (900_000, 1 << 20)]);
        assert_eq!(s.within(0, 50), vec![]);
        assert_eq!(s.within(150, 5000), vec![(0, 50), (4850, 150)]);
        assert_eq!(s.within(7000, 100_000), vec![(0, 1000)]);
        assert_eq!(s.within(1_000_000, 48_576), vec![(0, 48_576)]);
    }

    /// The gzip writer's bytes do not depend on its thread count or on how input is split
    /// into writes, and gunzip gives back the input.
    #[test]
    fn gzip_is_valid_and_independent_of_threads_and_writes() {
        let data = sample(5 * GZIP_PIECE + 12_345, 4);
        let stored = [(1000, 2 * GZIP_PIECE), (4 * GZIP_PIECE + 7, 9)];
        let mut outs = Vec::new();
        for (threads, step) in [(1, 1000), (2, 3 * GZIP_PIECE), (3, 77_777)] {
            let mut gz = Gzip::new(Vec::new(), threads).unwrap();
            for (i, part) in data.chunks(step).enumerate() {
                let rel = within(&stored, i * step, part.len());
                gz.push(part, &rel).unwrap();
            }
            outs.push(gz.finish().unwrap());
        }
        assert!(outs.windows(2).all(|w| w[0] == w[1]));
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&outs[0][..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Without stored ranges the stream is smaller: the ranges were honoured.
        let mut plain = Gzip::new(Vec::new(), 2).unwrap();
        plain.write_all(&data).unwrap();
        assert!(plain.finish().unwrap().len() < outs[0].len());
        let empty = Gzip::new(Vec::new(), 2).unwrap().finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
