//! How [`super::compress_file`] cuts a file into independently encoded pieces, and the
//! order-keeping parallel loop that encodes them.
//!
//! The *stored* ranges (see `stored.rs`: what strata compressed itself and what the probe finds
//! incompressible) become pieces that the container keeps as they are (LZMA2 uncompressed
//! chunks; zstd raw blocks, save for long repeats that a level-1 pass finds); everything
//! between them becomes *packed* pieces that are compressed. Both kinds are cut at a fixed
//! size, so the pieces, and therefore the output bytes, depend only on the
//! file and the ranges, never on the thread count. Pieces are encoded `threads` at a time and
//! written in order; memory stays at a few pieces per thread whatever the file size.
//!
//! Holes and zeroed regions stay cheap: a packed piece that lies in a hole is not read, and an
//! all-zero piece is encoded once per length and the encoding reused.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// What happens to a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Kept as it is: data that is compressed already.
    Stored,
    /// Compressed.
    Packed,
}

/// A run of input bytes encoded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    /// Offset in the input.
    pub offset: u64,
    /// Length, at most the chunk size.
    pub len: u64,
    /// Stored or compressed.
    pub kind: Kind,
}

/// The pieces of a `size`-byte input: the stored ranges and the gaps between them, each cut
/// into runs of at most `chunk` bytes counted from the start of its range.
pub(super) fn pieces(size: u64, stored: &[(u64, u64)], chunk: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut cut = |start: u64, end: u64, kind: Kind| {
        let mut offset = start;
        while offset < end {
            let len = chunk.min(end - offset);
            out.push(Piece { offset, len, kind });
            offset += len;
        }
    };
    let mut at = 0;
    for (off, len) in super::stored::normalise(size, stored) {
        cut(at, off, Kind::Packed);
        cut(off, off + len, Kind::Stored);
        at = off + len;
    }
    cut(at, size, Kind::Packed);
    out
}

/// The input file, with its data ranges so holes need not be read.
pub(super) struct Source<'a> {
    file: &'a File,
    data: Vec<(u64, u64)>,
    /// Buffers of pieces already encoded, for the next ones (see [`Spares`]).
    buffers: Spares<Vec<u8>>,
}

impl<'a> Source<'a> {
    /// Asks the file system where `file` holds data.
    pub fn new(file: &'a File) -> io::Result<Source<'a>> {
        Ok(Source {
            file,
            data: crate::io::sparse::data_ranges(file)?,
            buffers: Spares::new(),
        })
    }

    /// The bytes of `p`, or `None` when they are all zero (in a hole, or zeros written out).
    pub fn read(&self, p: &Piece) -> io::Result<Option<Bytes<'_>>> {
        let end = p.offset + p.len;
        let in_data = self
            .data
            .iter()
            .any(|&(off, len)| off < end && p.offset < off + len);
        if !in_data {
            return Ok(None);
        }
        let mut buf = self.buffers.take().unwrap_or_default();
        // Overwritten by the read: only a buffer shorter than the piece is zero-filled.
        buf.resize(usize::try_from(p.len).map_err(io::Error::other)?, 0);
        self.file.read_exact_at(&mut buf, p.offset)?;
        let bytes = Bytes {
            buf,
            home: &self.buffers,
        };
        Ok((!crate::io::sparse::is_zero(&bytes)).then_some(bytes))
    }
}

/// A piece's bytes, whose buffer goes back to its [`Source`] when dropped.
pub(super) struct Bytes<'s> {
    buf: Vec<u8>,
    home: &'s Spares<Vec<u8>>,
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Bytes<'_> {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buf));
    }
}

/// Things worth keeping from one piece to the next (piece buffers, libzstd contexts): taken
/// when one is free, made anew when none is, given back after use; at most one per thread is
/// ever made. A fresh one costs page faults and the zeroing of its pages: made for every
/// 32 MiB piece, the buffers and contexts of the bench disk's `.raw.zst` took 0.4 s of its
/// 1.5 s of CPU that way.
pub(super) struct Spares<T>(Mutex<Vec<T>>);

impl<T> Spares<T> {
    /// None spare yet.
    pub fn new() -> Spares<T> {
        Spares(Mutex::new(Vec::new()))
    }

    /// A spare one, if any.
    pub fn take(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Keeps `t` for a later [`Spares::take`].
    pub fn give(&self, t: T) {
        self.lock().push(t);
    }

    /// Runs `f` on a spare one, or on one `make` makes, and keeps it afterwards.
    pub fn with<R>(
        &self,
        make: impl FnOnce() -> io::Result<T>,
        f: impl FnOnce(&mut T) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut t = match self.take() {
            Some(t) => t,
            None => make()?,
        };
        let r = f(&mut t);
        self.give(t);
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Encodings of all-zero pieces, by length: every hole of a disk image encodes the same way,
/// so it is compressed once.
pub(super) struct ZeroMemo<E>(Mutex<HashMap<u64, Arc<E>>>);

impl<E> ZeroMemo<E> {
    /// An empty memo.
    pub fn new() -> ZeroMemo<E> {
        ZeroMemo(Mutex::new(HashMap::new()))
    }

    /// The encoding of `len` zero bytes, made by `encode` the first time it is asked for.
    /// Two threads may both encode it; the result is the same, and the first one kept.
    pub fn get<Err>(
        &self,
        len: u64,
        encode: impl FnOnce(&[u8]) -> Result<E, Err>,
    ) -> Result<Arc<E>, Err> {
        if let Some(e) = self.lock().get(&len) {
            return Ok(Arc::clone(e));
        }
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        let e = Arc::new(encode(&zeros)?);
        Ok(Arc::clone(self.lock().entry(len).or_insert(e)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<E>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Encodes `pieces` with `encode` on up to `threads` threads and hands the results to `sink`
/// in input order. At most `threads` pieces are in memory at once.
pub(super) fn run<E: Send, Err: Send>(
    pieces: &[Piece],
    threads: usize,
    encode: impl Fn(&Piece) -> Result<E, Err> + Sync,
    mut sink: impl FnMut(&Piece, E) -> Result<(), Err>,
) -> Result<(), Err> {
    let threads = threads.max(1);
    for batch in pieces.chunks(threads) {
        let encoded = crate::par::map(batch, threads, &encode);
        for (p, e) in batch.iter().zip(encoded) {
            sink(p, e?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_file_in_order_and_respect_the_chunk() {
        let ps = pieces(100_000, &[(10_000, 25_000), (90_000, 20_000)], 8_192);
        let mut at = 0;
        for p in &ps {
            assert_eq!(p.offset, at);
            assert!(p.len > 0 && p.len <= 8_192);
            let stored = (10_000..35_000).contains(&p.offset) || p.offset >= 90_000;
            assert_eq!(p.kind == Kind::Stored, stored, "{p:?}");
            at += p.len;
        }
        assert_eq!(at, 100_000);
        assert!(pieces(0, &[], 10).is_empty());
    }
}
