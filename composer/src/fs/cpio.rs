//! Streaming writer for "newc" cpio archives (magic `070701`), the format of Linux initramfs.
//!
//! [`CpioWriter`] writes directories, regular files (streamed from any reader, never buffered
//! whole), symlinks and character devices, then a `TRAILER!!!` entry and zero padding to a
//! multiple of 512 bytes (what GNU cpio does; the kernel skips zero padding, so archives can be
//! concatenated). Output is deterministic: inode numbers count up from 1 in writing order, every
//! entry is owned by uid 0/gid 0, has one link (two for directories) and the mtime given to
//! [`CpioWriter::new`]. Archive paths are relative (`dev/console`); a leading `/` is removed.
//! Entries are written in call order and parents are not added implicitly: the kernel does not
//! create missing parent directories, so write `dev` before `dev/console`.
//!
//! Not supported: hard links, block devices, FIFOs, the `070702` checksum variant (read only),
//! files of 4 GiB or more (the format's size field has 32 bits).
//!
//! [`read_entries`] parses an archive back (newc and 070702) for tests and checks.
//! Format reference: the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Type bits of `st_mode` used in headers.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
/// Permission bits accepted from callers (rwx for all, setuid, setgid, sticky).
const PERMISSION_BITS: u32 = 0o7777;
/// Longest name the kernel's initramfs unpacker accepts, with its terminating NUL.
const PATH_MAX: usize = 4096;
/// Length of a newc header before the name.
const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";
/// The archive is padded to a multiple of this, like GNU cpio's default block size.
const ARCHIVE_ALIGN: u64 = 512;

/// Errors of this module; they reach callers inside [`io::Error`] (see [`CpioError::into_io`]).
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The file does not fit the 32-bit size field.
    #[error("{path} is {size} bytes, above the 4 GiB - 1 limit of newc cpio archives")]
    FileTooLarge {
        /// Path in the archive.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Reading a host file for [`CpioWriter::file_from_path`] failed.
    #[error("cannot read {host} for cpio entry {path}")]
    Host {
        /// The host file.
        host: PathBuf,
        /// Path in the archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A host path given to [`CpioWriter::file_from_path`] is not a regular file.
    #[error(
        "{host} is not a regular file; hint: add directories and symlinks with their own calls"
    )]
    HostNotFile {
        /// The host path.
        host: PathBuf,
    },
    /// An archive path is empty, the root, or leaves the root.
    #[error("cpio path {path:?} is not valid: {reason}")]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An archive being read is malformed.
    #[error("invalid cpio archive at offset {offset}: {reason}")]
    Parse {
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A reader gave more or fewer bytes than declared.
    #[error(
        "cpio entry {path}: the reader gave {got} bytes where {declared} were declared; \
         the archive is incomplete (did the file change while being written?)"
    )]
    SizeMismatch {
        /// Path in the archive.
        path: PathBuf,
        /// The declared size.
        declared: u64,
        /// What the reader gave (`more than N` is reported as N + 1).
        got: u64,
    },
}

impl CpioError {
    /// Wraps the error in an [`io::Error`] of a fitting kind, keeping it as the inner error.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            Self::Host { source, .. } => source.kind(),
            Self::SizeMismatch { .. } => io::ErrorKind::UnexpectedEof,
            Self::Parse { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, self)
    }
}

/// Writes a newc cpio archive to `W` entry by entry.
///
/// After an error the archive is incomplete and should be discarded.
pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    /// Bytes written so far, for 4-byte alignment and the final padding.
    offset: u64,
}

/// Header fields that vary between entries.
struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive; every entry gets modification time `mtime`.
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            mtime,
            next_ino: 1,
            offset: 0,
        }
    }

    /// Adds a directory with permission bits `mode`.
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let name = archive_name(path.as_ref())?;
        let mode = S_IFDIR | (mode & PERMISSION_BITS);
        self.header(Header {
            name: &name,
            mode,
            nlink: 2,
            size: 0,
            rdev: (0, 0),
        })
    }

    /// Adds a regular file of exactly `size` bytes read from `reader`.
    ///
    /// Fails if the reader ends early or has more data than `size`.
    pub fn file(
        &mut self,
        path: impl AsRef<Path>,
        mode: u32,
        size: u64,
        reader: impl Read,
    ) -> io::Result<()> {
        let path = path.as_ref();
        let name = archive_name(path)?;
        let size32 = u32::try_from(size).map_err(|_| {
            CpioError::FileTooLarge {
                path: path.to_path_buf(),
                size,
            }
            .into_io()
        })?;
        let mode = S_IFREG | (mode & PERMISSION_BITS);
        self.header(Header {
            name: &name,
            mode,
            nlink: 1,
            size: size32,
            rdev: (0, 0),
        })?;
        self.copy_exactly(path, size, reader)?;
        self.pad_to(4)
    }

    /// Adds the host file `host` as `path` with permission bits `mode`, streaming it.
    pub fn file_from_path(
        &mut self,
        path: impl AsRef<Path>,
        host: impl AsRef<Path>,
        mode: u32,
    ) -> io::Result<()> {
        let (path, host) = (path.as_ref(), host.as_ref());
        let host_err = |source| {
            CpioError::Host {
                host: host.to_path_buf(),
                path: path.to_path_buf(),
                source,
            }
            .into_io()
        };
        let file = File::open(host).map_err(host_err)?;
        let meta = file.metadata().map_err(host_err)?;
        if !meta.is_file() {
            return Err(CpioError::HostNotFile {
                host: host.to_path_buf(),
            }
            .into_io());
        }
        self.file(path, mode, meta.len(), file)
    }

    /// Adds a symlink to `target` (stored verbatim as the entry's data).
    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let name = archive_name(path)?;
        let target = target.as_ref().as_os_str().as_bytes();
        let size = u32::try_from(target.len()).map_err(|_| {
            CpioError::FileTooLarge {
                path: path.to_path_buf(),
                size: target.len() as u64,
            }
            .into_io()
        })?;
        let mode = S_IFLNK | 0o777;
        self.header(Header {
            name: &name,
            mode,
            nlink: 1,
            size,
            rdev: (0, 0),
        })?;
        self.put(target)?;
        self.pad_to(4)
    }

    /// Adds a character device node (such as `dev/console`, 5:1, which the kernel needs before
    /// it runs `/init` to give it a console).
    pub fn char_dev(
        &mut self,
        path: impl AsRef<Path>,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let name = archive_name(path.as_ref())?;
        let mode = S_IFCHR | (mode & PERMISSION_BITS);
        self.header(Header {
            name: &name,
            mode,
            nlink: 1,
            size: 0,
            rdev: (major, minor),
        })
    }

    /// Writes the trailer and the final padding, flushes, and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        let trailer = Header {
            name: TRAILER.as_bytes(),
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        };
        self.next_ino = 0;
        self.header(trailer)?;
        let padded = self.offset.div_ceil(ARCHIVE_ALIGN) * ARCHIVE_ALIGN;
        self.zeros(padded - self.offset)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes a header and the NUL-terminated name, padded to 4 bytes.
    fn header(&mut self, h: Header<'_>) -> io::Result<()> {
        let ino = self.next_ino;
        // The trailer takes inode 0 and must not advance the counter.
        if ino != 0 {
            self.next_ino += 1;
        }
        // `archive_name` keeps names below PATH_MAX, so the cast cannot truncate.
        let namesize = h.name.len() as u32 + 1;
        let fields = [
            ino, h.mode, 0, 0, h.nlink, self.mtime, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ];
        let mut text = String::with_capacity(HEADER_LEN);
        text.push_str("070701");
        for field in fields {
            text.push_str(&format!("{field:08x}"));
        }
        self.put(text.as_bytes())?;
        self.put(h.name)?;
        self.put(&[0])?;
        self.pad_to(4)
    }

    /// Copies exactly `size` bytes from `reader`, then checks that it has nothing more.
    fn copy_exactly(&mut self, path: &Path, size: u64, reader: impl Read) -> io::Result<()> {
        let mut limited = reader.take(size);
        let copied = crate::io::copy_chunked(
            &mut limited,
            size,
            &mut Counting {
                out: &mut self.out,
                n: &mut self.offset,
            },
        )?;
        let mismatch = |got| {
            CpioError::SizeMismatch {
                path: path.to_path_buf(),
                declared: size,
                got,
            }
            .into_io()
        };
        if copied != size {
            return Err(mismatch(copied));
        }
        let mut rest = limited.into_inner();
        let mut probe = [0u8; 1];
        loop {
            match rest.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(mismatch(size + 1)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        let pad = (align - self.offset % align) % align;
        self.zeros(pad)
    }

    fn zeros(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut io::repeat(0).take(n), &mut self.out)?;
        self.offset += copied;
        Ok(())
    }
}

/// Counts bytes passing to the output, keeping [`CpioWriter::offset`] right during `io::copy`.
struct Counting<'a, W: Write> {
    out: &'a mut W,
    n: &'a mut u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        *self.n += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The archive form of `path`: relative, without `.` or empty components.
fn archive_name(path: &Path) -> io::Result<Vec<u8>> {
    let invalid = |reason| {
        CpioError::InvalidPath {
            path: path.to_path_buf(),
            reason,
        }
        .into_io()
    };
    let mut name: Vec<u8> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => {
                if !name.is_empty() {
                    name.push(b'/');
                }
                name.extend_from_slice(part.as_bytes());
            }
            std::path::Component::ParentDir => return Err(invalid("it contains `..`")),
            _ => {}
        }
    }
    if name.is_empty() {
        return Err(invalid("it names the archive root, which needs no entry"));
    }
    if name.contains(&0) {
        return Err(invalid("it contains a NUL byte"));
    }
    if name.len() >= PATH_MAX {
        return Err(invalid(
            "it is longer than PATH_MAX (4095 bytes), which the kernel refuses",
        ));
    }
    Ok(name)
}

/// One entry of an archive read by [`read_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Path as stored.
    pub path: PathBuf,
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    /// Data size in bytes.
    pub size: u64,
    /// File contents or symlink target.
    pub data: Vec<u8>,
    /// Device major number (character and block devices).
    pub rdev_major: u32,
    /// Device minor number.
    pub rdev_minor: u32,
    /// Inode number.
    pub ino: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time.
    pub mtime: u32,
}

/// Parses a newc (or 070702) archive up to its trailer, holding every entry's data in memory.
///
/// Meant for tests and small archives.
pub fn read_entries(r: impl Read) -> io::Result<Vec<CpioEntry>> {
    let mut reader = Offset { inner: r, at: 0 };
    let mut entries = Vec::new();
    loop {
        let Some((start, fields, name)) = reader.next_header()? else {
            return Ok(entries);
        };
        let mut data = vec![0u8; fields[6] as usize];
        reader
            .read_exact(&mut data)
            .map_err(|e| eof_as_parse(e, start, "data"))?;
        reader.skip_to_align()?;
        entries.push(CpioEntry {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&name)),
            mode: fields[1],
            size: u64::from(fields[6]),
            data,
            rdev_major: fields[9],
            rdev_minor: fields[10],
            ino: fields[0],
            uid: fields[2],
            gid: fields[3],
            nlink: fields[4],
            mtime: fields[5],
        });
    }
}

/// Where one entry's data lies in an archive, as found by [`data_spans`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpan {
    /// Path as stored.
    pub path: PathBuf,
    /// Offset of the data from the start of the archive.
    pub offset: u64,
    /// Data size in bytes.
    pub size: u64,
}

/// The data of every entry of a newc archive up to its trailer, without reading the data:
/// headers are read and the data seeked over, so a large archive costs a few reads per entry.
/// Also returns the offset just past the trailer, where a following segment may start.
pub fn data_spans<R: Read + io::Seek>(r: R) -> io::Result<(Vec<DataSpan>, u64)> {
    let mut reader = Offset { inner: r, at: 0 };
    let mut spans = Vec::new();
    loop {
        let Some((_, fields, name)) = reader.next_header()? else {
            return Ok((spans, reader.at));
        };
        let size = u64::from(fields[6]);
        let offset = reader.at;
        reader.at = reader.inner.seek(io::SeekFrom::Start(offset + size))?;
        reader.skip_to_align()?;
        spans.push(DataSpan {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&name)),
            offset,
            size,
        });
    }
}

/// Checks the magic and decodes the 13 hexadecimal fields of a header.
fn parse_header(header: &[u8; HEADER_LEN], at: u64) -> io::Result<[u32; 13]> {
    if &header[..6] != b"070701" && &header[..6] != b"070702" {
        let magic = String::from_utf8_lossy(&header[..6]).into_owned();
        return Err(parse_err(
            at,
            format!("magic {magic:?} is not newc (070701)"),
        ));
    }
    let mut fields = [0u32; 13];
    for (i, field) in fields.iter_mut().enumerate() {
        let hex = &header[6 + i * 8..14 + i * 8];
        *field = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| parse_err(at, format!("header field {i} is not hexadecimal")))?;
    }
    Ok(fields)
}

fn parse_err(offset: u64, reason: String) -> io::Error {
    CpioError::Parse { offset, reason }.into_io()
}

fn eof_as_parse(e: io::Error, at: u64, what: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        parse_err(
            at,
            format!("archive ends inside the {what} of this entry (no trailer?)"),
        )
    } else {
        e
    }
}

/// A reader that knows how far it has read, to skip padding.
struct Offset<R> {
    inner: R,
    at: u64,
}

impl<R: Read> Read for Offset<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// One entry's start offset, header fields and name, as [`Offset::next_header`] reads them.
type ReadHeader = (u64, [u32; 13], Vec<u8>);

impl<R: Read> Offset<R> {
    /// Reads the next entry's header and name (up to its data): (where the entry starts, its
    /// header fields, its name without the NUL), or `None` at the trailer.
    fn next_header(&mut self) -> io::Result<Option<ReadHeader>> {
        let start = self.at;
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(&mut header)
            .map_err(|e| eof_as_parse(e, start, "header"))?;
        let fields = parse_header(&header, start)?;
        let mut name = vec![0u8; fields[11] as usize];
        self.read_exact(&mut name)
            .map_err(|e| eof_as_parse(e, start, "name"))?;
        if name.pop() != Some(0) {
            return Err(parse_err(start, "name is not NUL-terminated".into()));
        }
        self.skip_to_align()?;
        Ok((name != TRAILER.as_bytes()).then_some((start, fields, name)))
    }

    fn skip_to_align(&mut self) -> io::Result<()> {
        let mut pad = [0u8; 3];
        let n = ((4 - self.at % 4) % 4) as usize;
        let at = self.at;
        self.read_exact(&mut pad[..n])
            .map_err(|e| eof_as_parse(e, at, "padding"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::process::{Command, Stdio};

    /// Accepts at most one byte per call, to catch code that ignores short writes.
    struct OneByteWriter(Vec<u8>);

    impl Write for OneByteWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match buf.first() {
                Some(b) => {
                    self.0.push(*b);
                    Ok(1)
                }
                None => Ok(0),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Gives at most one byte per call, to catch code that expects full reads.
    struct OneByteReader<'a>(&'a [u8]);

    impl Read for OneByteReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + len) as u8).collect()
    }

    /// Writes the same sample archive into any writer, with readers of the given kind.
    fn sample<W: Write>(out: W, one_byte_reads: bool, host: &Path) -> W {
        let mut cpio = CpioWriter::new(out, 1_700_000_000);
        cpio.dir("/dev", 0o755).unwrap();
        cpio.char_dev("dev/console", 0o600, 5, 1).unwrap();
        cpio.dir("usr/bin", 0o755).unwrap();
        for len in [0usize, 1, 2, 3, 4, 5, 4099] {
            let data = body(len);
            let path = format!("usr/bin/f{len}");
            if one_byte_reads {
                cpio.file(&path, 0o4755, len as u64, OneByteReader(&data))
                    .unwrap();
            } else {
                cpio.file(&path, 0o644, len as u64, &data[..]).unwrap();
            }
        }
        cpio.symlink("init", "/usr/bin/f5").unwrap();
        cpio.file_from_path("./etc/host-file", host, 0o640).unwrap();
        cpio.finish().unwrap()
    }

    fn host_file(dir: &Path) -> PathBuf {
        let path = dir.join("host");
        fs::write(&path, b"from the host\n").unwrap();
        path
    }

    #[test]
    fn round_trip_via_read_entries() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample(Vec::new(), false, &host_file(dir.path()));
        assert_eq!(bytes.len() % 512, 0);
        let entries = read_entries(&bytes[..]).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.path.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "usr/bin",
                "usr/bin/f0",
                "usr/bin/f1",
                "usr/bin/f2",
                "usr/bin/f3",
                "usr/bin/f4",
                "usr/bin/f5",
                "usr/bin/f4099",
                "init",
                "etc/host-file"
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000));
            assert_eq!(e.nlink, if e.mode & S_IFDIR == S_IFDIR { 2 } else { 1 });
        }
        assert_eq!(
            (
                entries[1].mode,
                entries[1].rdev_major,
                entries[1].rdev_minor
            ),
            (0o020600, 5, 1)
        );
        assert_eq!(entries[9].data, body(4099));
        assert_eq!(entries[9].mode, 0o100644);
        assert_eq!(
            (entries[10].mode, &entries[10].data[..]),
            (0o120777, &b"/usr/bin/f5"[..])
        );
        assert_eq!(entries[11].data, b"from the host\n");
        assert_eq!(entries[11].mode, 0o100640);
    }

    #[test]
    fn one_byte_writes_and_reads_give_the_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_file(dir.path());
        let normal = sample(Vec::new(), false, &host);
        let slow = sample(OneByteWriter(Vec::new()), false, &host).0;
        assert_eq!(normal, slow);
        let slow_reads = sample(Vec::new(), true, &host);
        let entries = read_entries(OneByteReader(&slow_reads)).unwrap();
        assert_eq!(entries[9].data, body(4099));
        assert_eq!(entries[9].mode, 0o104755);
    }

    #[test]
    fn size_mismatches_and_bad_paths_are_errors() {
        let mut cpio = CpioWriter::new(Vec::new(), 0);
        let err = cpio.file("short", 0o644, 10, &b"12345"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            err.to_string()
                .starts_with("cpio entry short: the reader gave 5 bytes where 10"),
            "{err}"
        );
        let mut cpio = CpioWriter::new(Vec::new(), 0);
        let err = cpio
            .file("long", 0o644, 2, &b"12345"[..])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cpio entry long: the reader gave 3 bytes where 2"),
            "{err}"
        );

        let mut cpio = CpioWriter::new(Vec::new(), 0);
        let err = cpio
            .file("huge", 0o644, 1 << 32, io::empty())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "huge is 4294967296 bytes, above the 4 GiB - 1 limit of newc cpio archives"
        );
        let long = "x/".repeat(2049);
        for bad in ["/", "", "a/../../b", "./.", long.as_str()] {
            let err = cpio.dir(bad, 0o755).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(
            cpio.finish().unwrap().len() == 512,
            "refused entries write nothing"
        );

        let dir = tempfile::tempdir().unwrap();
        let mut cpio = CpioWriter::new(Vec::new(), 0);
        let err = cpio
            .file_from_path("x", dir.path(), 0o644)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a regular file"), "{err}");
        let missing = dir.path().join("missing");
        let err = cpio
            .file_from_path("x", &missing, 0o644)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("cannot read {} for cpio entry x", missing.display())
        );
    }

    #[test]
    fn read_entries_reports_truncation_and_bad_magic() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample(Vec::new(), false, &host_file(dir.path()));
        let err = read_entries(&bytes[..200]).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid cpio archive at offset 116: archive ends inside"),
            "{err}"
        );
        let mut bad = bytes.clone();
        bad[..6].copy_from_slice(b"070707");
        let err = read_entries(&bad[..]).unwrap_err().to_string();
        assert!(err.contains("offset 0: magic \"070707\""), "{err}");
    }

    fn gnu_cpio() -> bool {
        crate::test_support::require_tool("cpio")
    }

    fn run_cpio(args: &[&str], input: &[u8], cwd: &Path) -> (String, String) {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "cpio {args:?} failed: {stderr}");
        (stdout.into_owned(), stderr.into_owned())
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_the_archive() {
        if !gnu_cpio() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample(Vec::new(), false, &host_file(dir.path()));
        let (list, _) = run_cpio(&["-it", "--quiet"], &bytes, dir.path());
        let expected: Vec<_> = read_entries(&bytes[..])
            .unwrap()
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(list.lines().collect::<Vec<_>>(), expected);
        let (verbose, _) = run_cpio(&["-itv", "--quiet"], &bytes, dir.path());
        assert!(
            verbose.lines().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{verbose}"
        );
        assert!(
            verbose
                .lines()
                .any(|l| l.starts_with("-rwsr-xr-x") || l.starts_with("-rw-r--r--")),
            "{verbose}"
        );

        let dest = dir.path().join("x");
        fs::create_dir(&dest).unwrap();
        let (_, stderr) = run_cpio(&["-idv", "--no-absolute-filenames"], &bytes, &dest);
        assert!(stderr.contains("usr/bin/f4099"), "{stderr}");
        for len in [0usize, 1, 2, 3, 4, 5, 4099] {
            let path = dest.join(format!("usr/bin/f{len}"));
            assert_eq!(fs::read(&path).unwrap(), body(len), "{path:?}");
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        }
        assert_eq!(
            fs::read_link(dest.join("init")).unwrap(),
            Path::new("/usr/bin/f5")
        );
        assert_eq!(
            fs::read(dest.join("etc/host-file")).unwrap(),
            b"from the host\n"
        );
        let console = fs::symlink_metadata(dest.join("dev/console"));
        let is_root = fs::metadata(dir.path()).unwrap().uid() == 0;
        if is_root {
            let console = console.unwrap();
            assert!(console.file_type().is_char_device());
            assert_eq!(console.rdev(), (5 << 8) | 1);
        }
    }
}
