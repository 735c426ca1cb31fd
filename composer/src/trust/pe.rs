//! PE32+ images, edited natively: appending sections to an EFI stub (the
//! unified kernel image), the Authenticode digest, the PE checksum and the
//! certificate table.
//!
//! Only the headers are held in memory; section contents are streamed from
//! their files into the image, and the digest and checksum are computed by
//! reading the image back in blocks, so a UKI carrying a large initramfs
//! costs no more memory than a small one.
//!
//! Layout of an image [`assemble`] writes: the stub's headers with the new
//! section headers after its own, the stub's sections at the file offsets
//! they had (shifted by whole file-alignment units only when the new headers
//! need more room), then the new sections in the given order, each padded to
//! the file alignment. Relative virtual addresses of the stub never change.
//! The stub's COFF symbol table (debug data no loader reads) and any
//! certificate table are dropped.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// PE32+ optional-header magic.
const PE32_PLUS: u16 = 0x20b;
/// Size of one section header.
const SECTION_HEADER: usize = 40;
/// Index of the certificate table in the data directories.
const DIR_SECURITY: usize = 4;
/// Index of the debug directory: it holds file offsets, so sections cannot move under it.
const DIR_DEBUG: usize = 6;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`: what every added section is.
const DATA_SECTION: u32 = 0x4000_0040;
/// `WIN_CERT_REVISION_2_0`.
const WIN_CERT_REVISION: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
const WIN_CERT_TYPE_PKCS: u16 = 0x0002;

/// Why an image cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    /// Reading or writing failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Not a PE32+ image, or a header points outside the file.
    #[error("{} is not a PE32+ EFI image: {why}", path.display())]
    NotPe {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The stub cannot take more sections without moving data it cannot move.
    #[error("{} cannot take {count} more sections: {why}", path.display())]
    NoRoom {
        /// The stub.
        path: PathBuf,
        /// How many were to be added.
        count: usize,
        /// Why not.
        why: String,
    },
    /// A section name longer than the 8 bytes a PE header holds.
    #[error("section name {0:?} is longer than 8 bytes")]
    SectionName(String),
    /// A section larger than the 4 GiB a PE header can describe.
    #[error("section {name} is {size} bytes, more than a PE image can hold")]
    TooLarge {
        /// The section.
        name: String,
        /// Its size.
        size: u64,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PeError {
    let path = path.to_path_buf();
    move |source| PeError::Io { op, path, source }
}

/// One section header, as read or to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    /// Name, at most 8 bytes.
    pub name: String,
    /// Bytes the section occupies in memory.
    pub virtual_size: u32,
    /// Its relative virtual address.
    pub virtual_address: u32,
    /// Bytes it occupies in the file (a multiple of the file alignment).
    pub raw_size: u32,
    /// Its file offset.
    pub raw_offset: u32,
    /// `IMAGE_SCN_*` flags.
    pub characteristics: u32,
}

/// The headers of a PE32+ image, parsed, with the byte offsets of the
/// fields the editor rewrites.
#[derive(Debug, Clone)]
pub struct Headers {
    /// Everything up to `SizeOfHeaders`, as read.
    pub bytes: Vec<u8>,
    /// Offset of the COFF header (after the `PE\0\0` signature).
    coff: usize,
    /// Offset of the optional header.
    opt: usize,
    /// Size of the optional header.
    opt_size: usize,
    /// `NumberOfRvaAndSizes`.
    dirs: usize,
    /// The sections, in header order.
    pub sections: Vec<SectionHeader>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Headers {
    /// Reads and checks the headers of the PE32+ image `path`.
    pub fn read(path: &Path) -> Result<Headers, PeError> {
        let not_pe = |why: &str| PeError::NotPe {
            path: path.into(),
            why: why.into(),
        };
        let mut f = File::open(path).map_err(io_err("opening", path))?;
        let len = f.metadata().map_err(io_err("reading", path))?.len();
        let mut head = vec![0u8; len.min(4096) as usize];
        f.read_exact(&mut head).map_err(io_err("reading", path))?;
        if head.len() < 0x40 || &head[..2] != b"MZ" {
            return Err(not_pe("no MZ header"));
        }
        let coff = u32_at(&head, 0x3c) as usize + 4;
        if coff + 20 > head.len() || &head[coff - 4..coff] != b"PE\0\0" {
            return Err(not_pe("no PE signature where e_lfanew points"));
        }
        let opt = coff + 20;
        let opt_size = u16_at(&head, coff + 16) as usize;
        if opt + opt_size > head.len() || opt_size < 112 || u16_at(&head, opt) != PE32_PLUS {
            return Err(not_pe("the optional header is not PE32+"));
        }
        let size_of_headers = u32_at(&head, opt + 60) as usize;
        let nsec = u16_at(&head, coff + 2) as usize;
        let sections_at = opt + opt_size;
        if size_of_headers > head.len() || sections_at + nsec * SECTION_HEADER > size_of_headers {
            return Err(not_pe("the section table does not fit in SizeOfHeaders"));
        }
        head.truncate(size_of_headers);
        let dirs = (u32_at(&head, opt + 108) as usize).min((opt_size - 112) / 8);
        let sections = (0..nsec)
            .map(|i| read_section(&head, sections_at + i * SECTION_HEADER))
            .collect();
        let h = Headers {
            bytes: head,
            coff,
            opt,
            opt_size,
            dirs,
            sections,
        };
        for s in &h.sections {
            if u64::from(s.raw_offset) + u64::from(s.raw_size) > len {
                return Err(not_pe(&format!(
                    "section {} lies past the end of the file",
                    s.name
                )));
            }
        }
        Ok(h)
    }

    /// `IMAGE_FILE_MACHINE_*` (0x8664 x86-64, 0xaa64 arm64).
    pub fn machine(&self) -> u16 {
        u16_at(&self.bytes, self.coff)
    }
    /// `SectionAlignment`.
    pub fn section_alignment(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 32)
    }
    /// `FileAlignment`.
    pub fn file_alignment(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 36)
    }
    /// `SizeOfHeaders`.
    pub fn size_of_headers(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 60)
    }
    /// Offset of the `CheckSum` field.
    fn checksum_at(&self) -> usize {
        self.opt + 64
    }
    /// Offset of data directory `i`, when the image has it.
    fn dir_at(&self, i: usize) -> Option<usize> {
        (i < self.dirs).then_some(self.opt + 112 + 8 * i)
    }
    /// Data directory `i` as (RVA or file offset, size).
    pub fn dir(&self, i: usize) -> (u32, u32) {
        self.dir_at(i).map_or((0, 0), |at| {
            (u32_at(&self.bytes, at), u32_at(&self.bytes, at + 4))
        })
    }
    /// The certificate table as (file offset, size); (0, 0) when unsigned.
    pub fn certificate_table(&self) -> (u32, u32) {
        self.dir(DIR_SECURITY)
    }
    /// Where the section table starts.
    fn sections_at(&self) -> usize {
        self.opt + self.opt_size
    }
}

fn read_section(b: &[u8], at: usize) -> SectionHeader {
    let name = &b[at..at + 8];
    let end = name.iter().position(|&c| c == 0).unwrap_or(8);
    SectionHeader {
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        virtual_size: u32_at(b, at + 8),
        virtual_address: u32_at(b, at + 12),
        raw_size: u32_at(b, at + 16),
        raw_offset: u32_at(b, at + 20),
        characteristics: u32_at(b, at + 36),
    }
}

fn write_section(b: &mut [u8], at: usize, s: &SectionHeader) {
    b[at..at + SECTION_HEADER].fill(0);
    b[at..at + s.name.len()].copy_from_slice(s.name.as_bytes());
    put_u32(b, at + 8, s.virtual_size);
    put_u32(b, at + 12, s.virtual_address);
    put_u32(b, at + 16, s.raw_size);
    put_u32(b, at + 20, s.raw_offset);
    put_u32(b, at + 36, s.characteristics);
}

/// What a new section holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes made in memory (small sections: `.osrel`, `.cmdline`…).
    Bytes(Vec<u8>),
    /// A file streamed into the image (`.linux`, `.initrd`).
    File(PathBuf),
}

impl Content {
    fn len(&self) -> Result<u64, PeError> {
        match self {
            Content::Bytes(b) => Ok(b.len() as u64),
            Content::File(p) => Ok(std::fs::metadata(p).map_err(io_err("reading", p))?.len()),
        }
    }
}

/// A section to add.
#[derive(Debug, Clone)]
pub struct NewSection {
    /// Its name (`.linux`…).
    pub name: String,
    /// Its contents.
    pub content: Content,
}

/// Writes `stub` with `sections` appended to `out`, as the module doc
/// describes; returns the headers of the result.
pub fn assemble(stub: &Path, sections: &[NewSection], out: &Path) -> Result<Headers, PeError> {
    let old = Headers::read(stub)?;
    let lens = sections
        .iter()
        .map(|s| s.content.len())
        .collect::<Result<Vec<_>, _>>()?;
    let new = layout(stub, &old, sections, &lens)?;
    let mut dst = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io_err("creating", out))?;
    write_image(stub, &old, &new, sections, &mut dst, out)?;
    let sum = checksum(&mut dst, new.checksum_at()).map_err(io_err("reading", out))?;
    dst.seek(SeekFrom::Start(new.checksum_at() as u64))
        .and_then(|_| dst.write_all(&sum.to_le_bytes()))
        .and_then(|_| dst.sync_data())
        .map_err(io_err("writing", out))?;
    Ok(new)
}

/// The headers of the assembled image: new section headers, sizes, no
/// symbols or certificates; raw data shifted when the headers grow.
fn layout(
    stub: &Path,
    old: &Headers,
    sections: &[NewSection],
    lens: &[u64],
) -> Result<Headers, PeError> {
    let (salign, falign) = (
        u64::from(old.section_alignment()),
        u64::from(old.file_alignment()),
    );
    let no_room = |why: String| PeError::NoRoom {
        path: stub.into(),
        count: sections.len(),
        why,
    };
    let nsec = old.sections.len() + sections.len();
    let header_end = (old.sections_at() + nsec * SECTION_HEADER) as u64;
    let size_of_headers = align_up(header_end, falign).max(u64::from(old.size_of_headers()));
    let shift = size_of_headers - u64::from(old.size_of_headers());
    let first_va = old
        .sections
        .iter()
        .map(|s| s.virtual_address)
        .min()
        .unwrap_or(0);
    if size_of_headers > u64::from(first_va) {
        return Err(no_room(format!(
            "the section table would end at {header_end:#x}, past the first section at {first_va:#x}"
        )));
    }
    if shift > 0 && old.dir(DIR_DEBUG) != (0, 0) {
        return Err(no_room(
            "its debug directory holds file offsets that would move".into(),
        ));
    }
    let mut h = old.clone();
    h.bytes.resize(size_of_headers as usize, 0);
    for s in &mut h.sections {
        s.raw_offset += shift as u32;
    }
    let mut va = old
        .sections
        .iter()
        .map(|s| {
            align_up(
                u64::from(s.virtual_address) + u64::from(s.virtual_size),
                salign,
            )
        })
        .max()
        .unwrap_or(size_of_headers);
    let mut raw = old
        .sections
        .iter()
        .map(|s| u64::from(s.raw_offset + s.raw_size) + shift)
        .max()
        .unwrap_or(size_of_headers);
    raw = align_up(raw, falign);
    let mut added_raw = 0u64;
    for (s, &len) in sections.iter().zip(lens) {
        if s.name.len() > 8 {
            return Err(PeError::SectionName(s.name.clone()));
        }
        let too_large = || PeError::TooLarge {
            name: s.name.clone(),
            size: len,
        };
        let raw_size = align_up(len, falign);
        if va + align_up(len, salign) > u64::from(u32::MAX) || raw + raw_size > u64::from(u32::MAX)
        {
            return Err(too_large());
        }
        h.sections.push(SectionHeader {
            name: s.name.clone(),
            virtual_size: len as u32,
            virtual_address: va as u32,
            raw_size: raw_size as u32,
            raw_offset: raw as u32,
            characteristics: DATA_SECTION,
        });
        va = align_up(va + len.max(1), salign);
        raw += raw_size;
        added_raw += raw_size;
    }
    finish_headers(&mut h, va, size_of_headers, added_raw);
    Ok(h)
}

/// Writes the counts and sizes of `h` into its bytes.
fn finish_headers(h: &mut Headers, size_of_image: u64, size_of_headers: u64, added_raw: u64) {
    let (coff, opt) = (h.coff, h.opt);
    let b = &mut h.bytes;
    put_u16(b, coff + 2, h.sections.len() as u16);
    put_u32(b, coff + 8, 0); // PointerToSymbolTable: the symbols are dropped
    put_u32(b, coff + 12, 0); // NumberOfSymbols
    let init = u64::from(u32_at(b, opt + 8)) + added_raw;
    put_u32(b, opt + 8, init.min(u64::from(u32::MAX)) as u32);
    put_u32(b, opt + 56, size_of_image as u32);
    put_u32(b, opt + 60, size_of_headers as u32);
    put_u32(b, opt + 64, 0);
    if let Some(at) = h.dir_at(DIR_SECURITY) {
        put_u32(&mut h.bytes, at, 0);
        put_u32(&mut h.bytes, at + 4, 0);
    }
    let table = h.sections_at();
    for (i, s) in h.sections.iter().enumerate() {
        write_section(&mut h.bytes, table + i * SECTION_HEADER, s);
    }
}

/// Writes headers, the stub's sections and the new ones.
fn write_image(
    stub: &Path,
    old: &Headers,
    new: &Headers,
    sections: &[NewSection],
    dst: &mut File,
    out: &Path,
) -> Result<(), PeError> {
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut *dst);
    let werr = io_err("writing", out);
    w.write_all(&new.bytes).map_err(werr)?;
    let mut src = File::open(stub).map_err(io_err("opening", stub))?;
    let mut at = new.bytes.len() as u64;
    let mut order: Vec<(usize, &SectionHeader)> = new.sections.iter().enumerate().collect();
    order.sort_by_key(|(_, s)| s.raw_offset);
    for (i, s) in order {
        pad_to(&mut w, &mut at, u64::from(s.raw_offset)).map_err(io_err("writing", out))?;
        let len = if let Some(o) = old.sections.get(i) {
            src.seek(SeekFrom::Start(u64::from(o.raw_offset)))
                .map_err(io_err("reading", stub))?;
            copy_exact(
                &mut (&mut src).take(u64::from(o.raw_size)),
                &mut w,
                stub,
                out,
            )?
        } else {
            match &sections[i - old.sections.len()].content {
                Content::Bytes(b) => {
                    w.write_all(b).map_err(io_err("writing", out))?;
                    b.len() as u64
                }
                Content::File(p) => {
                    let mut f = File::open(p).map_err(io_err("opening", p))?;
                    copy_exact(
                        &mut (&mut f).take(u64::from(s.virtual_size)),
                        &mut w,
                        p,
                        out,
                    )?
                }
            }
        };
        at += len;
        pad_to(
            &mut w,
            &mut at,
            u64::from(s.raw_offset) + u64::from(s.raw_size),
        )
        .map_err(io_err("writing", out))?;
    }
    w.flush().map_err(io_err("writing", out))
}

/// Copies all of `src`, failing on a short read (a file that shrank).
fn copy_exact(
    src: &mut io::Take<&mut File>,
    w: &mut impl Write,
    from: &Path,
    out: &Path,
) -> Result<u64, PeError> {
    let want = src.limit();
    let n = io::copy(src, w).map_err(|e| PeError::Io {
        op: "copying into",
        path: out.into(),
        source: e,
    })?;
    if n != want {
        return Err(PeError::Io {
            op: "reading",
            path: from.into(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while being read",
            ),
        });
    }
    Ok(n)
}

/// Writes zeros from `*at` up to `to`.
fn pad_to(w: &mut impl Write, at: &mut u64, to: u64) -> io::Result<()> {
    if to > *at {
        io::copy(&mut io::repeat(0).take(to - *at), w)?;
        *at = to;
    }
    Ok(())
}

/// The PE checksum of `f` (the field at `checksum_at` counted as zero):
/// 16-bit one's-complement-style sum with carries folded, plus the length.
pub fn checksum(f: &mut File, checksum_at: usize) -> io::Result<u32> {
    f.seek(SeekFrom::Start(0))?;
    let mut r = io::BufReader::with_capacity(1 << 20, &mut *f);
    let mut sum: u64 = 0;
    let mut pos: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = read_full(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &mut buf[..n];
        let field = checksum_at as u64;
        for i in 0..4u64 {
            if (pos..pos + n as u64).contains(&(field + i)) {
                chunk[(field + i - pos) as usize] = 0;
            }
        }
        // Only the last chunk can be odd (read_full fills whole buffers): its
        // last byte counts as a word with a zero high byte.
        for pair in chunk.chunks(2) {
            let word = u16::from_le_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u64::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        pos += n as u64;
    }
    let folded = ((sum & 0xffff) + (sum >> 16)) & 0xffff;
    Ok((folded + pos) as u32)
}

/// Fills `buf` unless the end comes first; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The Authenticode SHA-256 digest of the image `path`: the headers without
/// the checksum and the certificate-table entry, each section's raw data in
/// file order, then the data after the last section up to the certificate
/// table (Microsoft's "Windows Authenticode Portable Executable Signature
/// Format", "Calculating the PE Image Hash"). Streams the file.
pub fn authenticode_digest(path: &Path) -> Result<[u8; 32], PeError> {
    let h = Headers::read(path)?;
    let mut f = File::open(path).map_err(io_err("opening", path))?;
    let len = f.metadata().map_err(io_err("reading", path))?.len();
    let (cert_at, cert_len) = h.certificate_table();
    let end = if cert_len > 0 {
        u64::from(cert_at)
    } else {
        len
    };
    let cert_dir = h.dir_at(DIR_SECURITY).ok_or_else(|| PeError::NotPe {
        path: path.into(),
        why: "it has no certificate-table directory entry".into(),
    })?;
    let mut d = Sha256::new();
    let b = &h.bytes;
    d.update(&b[..h.checksum_at()]);
    d.update(&b[h.checksum_at() + 4..cert_dir]);
    d.update(&b[cert_dir + 8..]);
    let mut hashed_to = b.len() as u64;
    let mut sections: Vec<&SectionHeader> = h.sections.iter().filter(|s| s.raw_size > 0).collect();
    sections.sort_by_key(|s| s.raw_offset);
    for s in sections {
        let start = u64::from(s.raw_offset);
        let len = u64::from(s.raw_size);
        hash_range(&mut f, &mut d, start, len).map_err(io_err("reading", path))?;
        hashed_to = hashed_to.max(start + len);
    }
    if end > hashed_to {
        hash_range(&mut f, &mut d, hashed_to, end - hashed_to).map_err(io_err("reading", path))?;
    }
    Ok(d.finalize().into())
}

fn hash_range(f: &mut File, d: &mut Sha256, start: u64, len: u64) -> io::Result<()> {
    f.seek(SeekFrom::Start(start))?;
    let mut w = HashWriter(d);
    let n = io::copy(&mut (&mut *f).take(len), &mut w)?;
    if n != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "a section lies past the end of the file",
        ));
    }
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pads the image `path` with zeros to a multiple of 8 bytes, where its
/// certificate table will start: the padding is part of what the signature
/// covers, so it must be there before the digest is taken.
pub fn pad_for_signature(path: &Path) -> Result<(), PeError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let len = f.metadata().map_err(io_err("reading", path))?.len();
    f.set_len(align_up(len, 8)).map_err(io_err("writing", path))
}

/// Appends `pkcs7` (DER `ContentInfo` of a SignedData) to the unsigned image
/// `path` as its certificate table (`WIN_CERTIFICATE`, revision 2.0, type
/// PKCS_SIGNED_DATA, padded to 8 bytes), points the directory entry at it
/// and recomputes the checksum. The image must be padded already
/// ([`pad_for_signature`]). An image signed already is refused: one
/// signature per image is what UEFI checks.
pub fn embed_signature(path: &Path, pkcs7: &[u8]) -> Result<(), PeError> {
    let h = Headers::read(path)?;
    if h.certificate_table() != (0, 0) {
        return Err(PeError::NotPe {
            path: path.into(),
            why: "it is signed already".into(),
        });
    }
    let cert_dir = h.dir_at(DIR_SECURITY).ok_or_else(|| PeError::NotPe {
        path: path.into(),
        why: "it has no certificate-table directory entry".into(),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let werr = || io_err("writing", path);
    let len = f.metadata().map_err(io_err("reading", path))?.len();
    if len % 8 != 0 {
        return Err(PeError::NotPe {
            path: path.into(),
            why: "its length is not a multiple of 8 (pad it before taking the digest)".into(),
        });
    }
    let at = len;
    let size = align_up(8 + pkcs7.len() as u64, 8);
    let mut table = Vec::with_capacity(size as usize);
    table.extend_from_slice(&(size as u32).to_le_bytes());
    table.extend_from_slice(&WIN_CERT_REVISION.to_le_bytes());
    table.extend_from_slice(&WIN_CERT_TYPE_PKCS.to_le_bytes());
    table.extend_from_slice(pkcs7);
    table.resize(size as usize, 0);
    f.seek(SeekFrom::Start(len)).map_err(werr())?;
    f.write_all(&vec![0u8; (at - len) as usize])
        .map_err(werr())?;
    f.write_all(&table).map_err(werr())?;
    let mut entry = [0u8; 8];
    put_u32(&mut entry, 0, at as u32);
    put_u32(&mut entry, 4, size as u32);
    f.seek(SeekFrom::Start(cert_dir as u64))
        .and_then(|_| f.write_all(&entry))
        .map_err(werr())?;
    let sum = checksum(&mut f, h.checksum_at()).map_err(io_err("reading", path))?;
    f.seek(SeekFrom::Start(h.checksum_at() as u64))
        .and_then(|_| f.write_all(&sum.to_le_bytes()))
        .and_then(|_| f.sync_data())
        .map_err(werr())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const STUB_X64: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    pub(crate) const STUB_AA64: &str = "/usr/lib/systemd/boot/efi/linuxaa64.efi.stub";

    fn sections(dir: &Path) -> Vec<NewSection> {
        let big = dir.join("big");
        std::fs::write(&big, vec![0xa5u8; 300_001]).unwrap();
        vec![
            NewSection {
                name: ".osrel".into(),
                content: Content::Bytes(b"ID=strata\n".to_vec()),
            },
            NewSection {
                name: ".linux".into(),
                content: Content::File(big),
            },
        ]
    }

    #[test]
    fn appended_sections_follow_the_stub_in_memory_and_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for stub in [STUB_X64, STUB_AA64] {
            let out = dir.path().join("uki.efi");
            let old = Headers::read(Path::new(stub)).unwrap();
            let new = assemble(Path::new(stub), &sections(dir.path()), &out).unwrap();
            let back = Headers::read(&out).unwrap();
            assert_eq!(back.sections, new.sections);
            let n = old.sections.len();
            assert_eq!(
                back.sections[..n],
                old.sections[..],
                "the stub's sections stay put"
            );
            let (osrel, linux) = (&back.sections[n], &back.sections[n + 1]);
            assert_eq!((osrel.name.as_str(), osrel.virtual_size), (".osrel", 10));
            assert_eq!(linux.virtual_size, 300_001);
            let salign = old.section_alignment();
            assert_eq!(linux.virtual_address % salign, 0);
            assert!(linux.virtual_address >= osrel.virtual_address + osrel.virtual_size);
            let data = std::fs::read(&out).unwrap();
            let at = osrel.raw_offset as usize;
            assert_eq!(&data[at..at + 10], b"ID=strata\n");
            let at = linux.raw_offset as usize;
            assert!(data[at..at + 300_001].iter().all(|&b| b == 0xa5));
            assert_eq!(data.len() as u32, linux.raw_offset + linux.raw_size);
            let size_of_image = u32_at(&back.bytes, back.opt + 56);
            assert_eq!(size_of_image % salign, 0);
            assert!(size_of_image >= linux.virtual_address + linux.virtual_size);
            assert_eq!(u32_at(&back.bytes, back.coff + 8), 0, "no symbol table");
        }
    }

    #[test]
    fn the_checksum_is_what_the_stub_carries() {
        // Debian's x86-64 stub carries a checksum (its symbol table included).
        let mut f = File::open(STUB_X64).unwrap();
        let h = Headers::read(Path::new(STUB_X64)).unwrap();
        let want = u32_at(&h.bytes, h.checksum_at());
        assert_eq!(checksum(&mut f, h.checksum_at()).unwrap(), want);
    }

    #[test]
    fn too_many_sections_for_the_stub_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<NewSection> = (0..400)
            .map(|i| NewSection {
                name: format!(".s{i}"),
                content: Content::Bytes(vec![1]),
            })
            .collect();
        let e = assemble(Path::new(STUB_X64), &many, &dir.path().join("x")).unwrap_err();
        assert!(matches!(e, PeError::NoRoom { .. }), "{e}");
    }

    #[test]
    fn a_non_pe_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"MZ not really").unwrap();
        assert!(matches!(Headers::read(&p), Err(PeError::NotPe { .. })));
    }
}
