//! Counting the bytes that pass through a reader or writer, for progress reports.
//!
//! [`Counted`] wraps any `Read` or `Write` (and passes `Seek` through) and tells a [`Meter`]
//! how many bytes each call moved. A meter is shared by reference and must be `Sync`, so the
//! writers of several images, each on its own thread, can feed one progress report each. The
//! count is what the inner reader or writer accepted: a short read or write counts what it
//! moved, an error counts nothing.

use std::io::{self, IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Receives byte counts as they happen.
pub trait Meter: Sync {
    /// `bytes` more were moved.
    fn add(&self, bytes: u64);
}

/// Counting into nothing: for callers that want no progress.
impl Meter for () {
    fn add(&self, _: u64) {}
}

/// A plain total, e.g. for tests or for a caller that samples it itself.
impl Meter for AtomicU64 {
    fn add(&self, bytes: u64) {
        self.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A reader or writer whose traffic is reported to a [`Meter`].
pub struct Counted<'m, T> {
    inner: T,
    meter: &'m dyn Meter,
}

impl<'m, T> Counted<'m, T> {
    /// Wraps `inner`; every byte read from or written to it is added to `meter`.
    pub fn new(inner: T, meter: &'m dyn Meter) -> Self {
        Self { inner, meter }
    }

    /// The wrapped reader or writer (bytes moved through it directly are not counted).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps it.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn counted(&self, n: usize) -> usize {
        self.meter.add(n as u64);
        n
    }
}

impl<T: Read> Read for Counted<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        Ok(self.counted(n))
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let n = self.inner.read_vectored(bufs)?;
        Ok(self.counted(n))
    }
}

impl<T: Write> Write for Counted<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        Ok(self.counted(n))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        Ok(self.counted(n))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Seeking moves no bytes: it is passed through uncounted.
impl<T: Seek> Seek for Counted<'_, T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        self.inner.stream_position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most one byte per call, as a slow pipe might.
    struct OneByte<R>(R);

    impl<R: Read> Read for OneByte<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn counts_every_byte_of_one_byte_reads() {
        let meter = AtomicU64::new(0);
        let mut r = Counted::new(OneByte(&b"hello world"[..]), &meter);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(meter.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn counts_what_the_writer_accepted_and_seeks_without_counting() {
        let meter = AtomicU64::new(0);
        let mut w = Counted::new(io::Cursor::new(Vec::new()), &meter);
        w.write_all(b"abcdef").unwrap();
        w.seek(SeekFrom::Start(1)).unwrap();
        w.write_all(b"X").unwrap();
        assert_eq!(meter.load(Ordering::Relaxed), 7);
        assert_eq!(w.into_inner().into_inner(), b"aXcdef");
    }

    #[test]
    fn a_failed_read_counts_nothing() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let meter = AtomicU64::new(0);
        let err = Counted::new(Broken, &meter).read(&mut [0; 4]).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(meter.load(Ordering::Relaxed), 0);
    }
}
