//! A window onto part of a file: how a partition's filesystem is written in
//! place into the disk image, with no intermediate copy and no loop device.
//!
//! Position 0 of the window is `start` in the file. Writes past the window's
//! end fail loudly (naming the offset) instead of spilling into the next
//! partition.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// `len` bytes of `inner` starting at `start`.
pub struct Window<F> {
    inner: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Window<F> {
    /// A window over `inner[start .. start + len]`, positioned at 0.
    pub fn new(inner: F, start: u64, len: u64) -> Window<F> {
        Window {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    /// The window's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives the underlying file back.
    pub fn into_inner(self) -> F {
        self.inner
    }

    fn sync_pos(&mut self) -> io::Result<()> {
        self.inner
            .seek(SeekFrom::Start(self.start + self.pos))
            .map(|_| ())
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.sync_pos()?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let end = self.pos + buf.len() as u64;
        if end > self.len {
            return Err(io::Error::other(format!(
                "write of {} bytes at offset {} runs past the end of a {}-byte region",
                buf.len(),
                self.pos,
                self.len
            )));
        }
        self.sync_pos()?;
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F: Seek> Seek for Window<F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the region",
            )
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_and_writes_inside_the_window_only() {
        let mut w = Window::new(Cursor::new(vec![0u8; 16]), 4, 8);
        w.write_all(b"abcd").unwrap();
        w.seek(SeekFrom::End(-2)).unwrap();
        w.write_all(b"yz").unwrap();
        let err = w.write_all(b"!").unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
        w.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        w.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"abcd\0\0yz");
        let v = w.into_inner().into_inner();
        assert_eq!(&v[..4], &[0; 4]);
        assert_eq!(&v[12..], &[0; 4]);
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut w = Window::new(Cursor::new(b"0123456789".to_vec()), 3, 4);
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while w.read(&mut b).unwrap() == 1 {
            out.push(b[0]);
        }
        assert_eq!(out, b"3456");
    }
}
