//! Hybrid ISO 9660 image that boots with UEFI from an embedded ESP, both as
//! a CD/DVD (El Torito) and when written raw to a USB stick or disk (GPT).
//!
//! The FAT ESP image is stored once. The same bytes are at the same time
//! the file `ESP.IMG` of the ISO 9660 tree, the image of the only El Torito
//! boot entry (no emulation, platform 0xEF = UEFI), and partition 1 (type
//! EFI System) of a GPT in the ISO system area. Layout, in 2048-byte ISO
//! blocks (the GPT counts 512-byte sectors):
//!
//! | block            | content                                                           |
//! |------------------|-------------------------------------------------------------------|
//! | 0–15             | system area: protective MBR, GPT header (sector 1), 128 entries (sectors 2–33) |
//! | 16, 17, 18       | primary volume descriptor, El Torito boot record, set terminator   |
//! | 19, 20           | path tables (little-endian, big-endian)                            |
//! | 21               | root directory: `BOOT.CAT`, `ESP.IMG`, `README.TXT`                |
//! | 22, 23           | boot catalog, README                                               |
//! | 512 (1 MiB)      | the ESP, up to the end of the volume but for the backup GPT        |
//! | last 33 sectors  | backup GPT entries and header (inside the volume space)            |
//!
//! The protective MBR and both GPTs come from the disk images' GPT writer
//! ([`crate::disk::gpt`]), placed by hand at both ends of the stream.
//!
//! The ESP's first sector is also the GPT's first usable sector, so that
//! partitioning tools do not offer the ISO 9660 metadata as free space.
//!
//! Why both tables coexist: firmware reading a CD sees 2048-byte sectors,
//! so the GPT header at byte 512 is not at its LBA 1 and the GPT is ignored;
//! it then finds the El Torito catalog. Firmware reading a disk with
//! 512-byte sectors finds the GPT first and boots `\EFI\BOOT\BOOT*.EFI` from
//! its EFI System partition. Both read the same FAT volume.
//!
//! Supported: one UEFI boot image (x86-64 or AArch64; El Torito has a single
//! platform id for all UEFI machines), 8.3 ISO 9660 names without Rock Ridge
//! or Joliet (the tree only exists for people and tools looking at the
//! disc; nothing reads it to boot), deterministic output (all dates and
//! GUIDs come from [`IsoOptions`]), and an ESP streamed in, never held in
//! memory. Not supported: BIOS (legacy) boot, ESPs of 4 GiB or more (one
//! ISO 9660 extent), 4096-byte-sector disks, multisession.
//!
//! Specs: ECMA-119 (ISO 9660), "El Torito" Bootable CD-ROM Format
//! Specification 1.0, UEFI 2.10 §5.3 (GPT).

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::disk::{
    self,
    gpt::{GptPartition, GptRegions},
};

/// The ISO 9660 logical block size.
const BLOCK: u64 = 2048;
/// The GPT sector size: the sector size of USB sticks and virtual disks.
const SECTOR: u64 = 512;
/// Blocks of the system area, before the volume descriptors.
const SYSTEM_AREA_BLOCKS: u64 = 16;
const PVD_BLOCK: u64 = 16;
const BOOT_RECORD_BLOCK: u64 = 17;
const L_PATH_TABLE_BLOCK: u64 = 19;
const M_PATH_TABLE_BLOCK: u64 = 20;
const ROOT_DIR_BLOCK: u64 = 21;
const CATALOG_BLOCK: u64 = 22;
const README_BLOCK: u64 = 23;
/// First block after the ISO metadata.
const METADATA_END_BLOCK: u64 = 24;
/// The ESP starts at 1 MiB, so the partition is aligned for USB flash
/// erase blocks and for the partitioning tools' default alignment.
const ESP_BLOCK: u64 = 512;
/// The largest ESP: one ISO 9660 extent records at most 4 GiB - 1 bytes.
const MAX_ESP_BYTES: u64 = (1 << 32) - BLOCK;
/// Bytes read from the ESP per write.
const COPY_CHUNK: usize = 1 << 20;
/// Partition type GUID of an EFI System partition, in GPT byte order
/// (C12A7328-F81F-11D2-BA4B-00A0C93EC93B).
const ESP_TYPE_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];
/// El Torito platform id of UEFI (El Torito spec addendum, UEFI 2.10 §13.3.2.1).
const PLATFORM_UEFI: u8 = 0xef;
const ESP_NAME: &[u8] = b"ESP.IMG;1";
const CATALOG_NAME: &[u8] = b"BOOT.CAT;1";
const README_NAME: &[u8] = b"README.TXT;1";
/// What the volume descriptor says wrote the image.
const APPLICATION_ID: &[u8] = b"STRATA";

/// How the README names the machine the image is for. The architecture only
/// changes the README: El Torito has one platform id (0xEF) for every UEFI
/// machine, and firmware picks its own loader (`BOOTX64.EFI`, `BOOTAA64.EFI`)
/// from the ESP.
fn describe(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86-64",
        Arch::Arm64 => "AArch64 (arm64)",
    }
}

/// What the image records besides the ESP; everything that would otherwise
/// come from a clock or a random generator, so output is reproducible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoOptions {
    /// ISO 9660 volume identifier (1 to 32 of `A-Z 0-9 _`), e.g. `STRATA`;
    /// Linux shows it as the filesystem label.
    pub volume_id: String,
    /// Unix time used for every date in the image (volume and directory
    /// records); 1900 to 2155, the range of ISO 9660 directory dates.
    pub timestamp: i64,
    /// GPT disk GUID, in on-disk GPT byte order.
    pub disk_guid: [u8; 16],
    /// Unique GUID of the ESP partition, in on-disk GPT byte order.
    pub esp_guid: [u8; 16],
    /// The machine the image is for.
    pub arch: Arch,
}

/// What [`write`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoStats {
    /// Size of the image in bytes (a multiple of 2048).
    pub bytes: u64,
    /// Byte offset of the ESP inside the image (GPT partition 1, El Torito
    /// boot image and `ESP.IMG`).
    pub esp_offset: u64,
}

/// Why an ISO could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// The ESP image does not look like a FAT volume.
    #[error(
        "esp image {path} is not a FAT volume: {reason} (pass the FAT file system image itself, \
         not a partitioned disk image)"
    )]
    EspNotFat {
        /// The ESP image.
        path: PathBuf,
        /// What is wrong with its boot sector.
        reason: String,
    },
    /// The ESP image could not be read.
    #[error("cannot read esp image {path}")]
    EspRead {
        /// The ESP image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The ESP image size cannot be stored.
    #[error(
        "esp image {path} is {bytes} bytes: it must be a non-zero multiple of 2048 bytes below \
         4 GiB (FAT images made by strata are a multiple of 1 MiB)"
    )]
    EspSize {
        /// The ESP image.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The ESP image ended before the size it had when the write started.
    #[error(
        "esp image {path} ended after {got} of {expected} bytes: it changed while the iso was \
         written; rebuild it and write the iso again"
    )]
    EspTruncated {
        /// The ESP image.
        path: PathBuf,
        /// Its size when the write started.
        expected: u64,
        /// Bytes read before it ended.
        got: u64,
    },
    /// Writing the image failed.
    #[error("cannot write the iso at byte {offset}")]
    Output {
        /// Offset in the image of the failed write.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output moved by another amount than was written to it.
    #[error(
        "the iso output advanced {got} bytes while {expected} were written: the writer must not \
         append elsewhere or skip data (do not open it in append mode)"
    )]
    OutputLength {
        /// Bytes written.
        expected: u64,
        /// How far the output position moved.
        got: u64,
    },
    /// The timestamp has no ISO 9660 representation.
    #[error(
        "iso timestamp {timestamp} is outside 1900-01-01..2155-12-31, the range of iso 9660 \
         directory dates; set SOURCE_DATE_EPOCH or the profile time within it"
    )]
    Timestamp {
        /// The Unix time given.
        timestamp: i64,
    },
    /// The volume identifier is not ISO 9660 d-characters.
    #[error(
        "iso volume id {id:?} is invalid: use 1 to 32 characters from A-Z, 0-9 and _ \
         (e.g. STRATA)"
    )]
    VolumeId {
        /// The identifier given.
        id: String,
    },
}

/// Writes an ISO whose El Torito UEFI boot image is the FAT ESP image at
/// `esp_image` (a standalone FAT volume file whose size is a multiple of
/// 2048 bytes, normally of 1 MiB), made hybrid with a GPT whose partition 1
/// (type EFI System) covers the same ESP bytes inside the ISO.
///
/// The image is written sequentially from the current position of `out`;
/// the ESP is streamed in 1 MiB pieces. `Seek` is used to check that `out`
/// advanced by exactly what was written. Output depends only on the ESP
/// bytes and `opts`. [`write_file`] writes the same bytes into a file without
/// reading the ESP into memory.
pub fn write(
    esp_image: &Path,
    out: &mut (impl Write + Seek),
    opts: &IsoOptions,
) -> Result<IsoStats, IsoError> {
    let esp = Esp::open(esp_image, None)?;
    let (layout, head, tail) = prepare(&esp, opts)?;
    let start = out
        .stream_position()
        .map_err(|source| IsoError::Output { offset: 0, source })?;
    let mut sink = Sink { out, pos: 0 };
    sink.put(&head)?;
    sink.zeros(layout.esp_offset() - sink.pos)?;
    copy_esp(&esp, &mut sink)?;
    sink.put(&tail)?;
    let written = sink.pos;
    let end = sink.finish()?;
    let moved = end.saturating_sub(start);
    if moved != written || written != layout.bytes() {
        return Err(IsoError::OutputLength {
            expected: written,
            got: moved,
        });
    }
    Ok(IsoStats {
        bytes: written,
        esp_offset: layout.esp_offset(),
    })
}

/// [`write`] into the file `out` (emptied first), taking the ESP from the `len` bytes at
/// `offset` of `source` (the ESP partition of a raw disk, or a whole FAT image):
/// the same bytes, but the ESP goes from file to file in the kernel
/// (`copy_file_range` through [`std::io::copy`]) and its holes stay holes, so
/// nothing of it passes through memory and no scratch copy of it is needed.
pub fn write_file(
    source: &Path,
    offset: u64,
    len: u64,
    out: &File,
    opts: &IsoOptions,
) -> Result<IsoStats, IsoError> {
    let esp = Esp::open(source, Some((offset, len)))?;
    let (layout, head, tail) = prepare(&esp, opts)?;
    let at = |offset| move |source| IsoError::Output { offset, source };
    out.set_len(0).map_err(at(0))?;
    out.write_all_at(&head, 0).map_err(at(0))?;
    copy_esp_file(&esp, out, layout.esp_offset())?;
    let tail_at = layout.esp_offset() + esp.len;
    out.write_all_at(&tail, tail_at).map_err(at(tail_at))?;
    let size = out.metadata().map_err(at(layout.bytes()))?.len();
    if size != layout.bytes() {
        return Err(IsoError::OutputLength {
            expected: layout.bytes(),
            got: size,
        });
    }
    Ok(IsoStats {
        bytes: size,
        esp_offset: layout.esp_offset(),
    })
}

/// The layout, and the bytes before the ESP (system area and ISO 9660
/// metadata) and after it (backup GPT and padding), after checking `opts`.
fn prepare(esp: &Esp<'_>, opts: &IsoOptions) -> Result<(Layout, Vec<u8>, Vec<u8>), IsoError> {
    check_volume_id(&opts.volume_id)?;
    let date = Civil::from_unix(opts.timestamp)?;
    let layout = Layout::new(esp.len);
    let gpt = gpt(&layout, opts)?;
    let mut head = system_area(&gpt);
    head.extend_from_slice(&metadata(&layout, opts, &date));
    Ok((layout, head, tail(&layout, &gpt)))
}

/// Where everything goes, from the ESP size alone.
#[derive(Debug, Clone, Copy)]
struct Layout {
    esp_bytes: u64,
    /// Size of the image in 512-byte sectors, a multiple of 4.
    total_sectors: u64,
}

impl Layout {
    fn new(esp_bytes: u64) -> Self {
        let esp_end = ESP_BLOCK * (BLOCK / SECTOR) + esp_bytes / SECTOR;
        // The backup GPT (array + header) follows the ESP; the image is
        // padded to whole 2048-byte blocks because CD sectors are that big.
        let total_sectors = (esp_end + disk::gpt::TAIL_SECTORS).next_multiple_of(BLOCK / SECTOR);
        Layout {
            esp_bytes,
            total_sectors,
        }
    }

    fn bytes(&self) -> u64 {
        self.total_sectors * SECTOR
    }

    fn blocks(&self) -> u64 {
        self.bytes() / BLOCK
    }

    fn esp_offset(&self) -> u64 {
        ESP_BLOCK * BLOCK
    }

    fn esp_first_sector(&self) -> u64 {
        self.esp_offset() / SECTOR
    }

    fn esp_last_sector(&self) -> u64 {
        self.esp_first_sector() + self.esp_bytes / SECTOR - 1
    }

    /// The El Torito sector count (512-byte units). Like xorriso, 0 when
    /// the image does not fit in 16 bits: EDK2 and the firmware built on it
    /// then take the boot image to run to the end of the volume, which is
    /// right here because the ESP is the last thing in it.
    fn catalog_sector_count(&self) -> u16 {
        u16::try_from(self.esp_bytes / SECTOR).unwrap_or(0)
    }
}

/// Counts bytes written so errors can name the offset.
struct Sink<'a, W: Write + Seek> {
    out: &'a mut W,
    pos: u64,
}

impl<W: Write + Seek> Sink<'_, W> {
    fn put(&mut self, data: &[u8]) -> Result<(), IsoError> {
        self.out
            .write_all(data)
            .map_err(|source| IsoError::Output {
                offset: self.pos,
                source,
            })?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut len: u64) -> Result<(), IsoError> {
        let zero = [0u8; BLOCK as usize * 8];
        while len > 0 {
            let n = len.min(zero.len() as u64);
            self.put(&zero[..n as usize])?;
            len -= n;
        }
        Ok(())
    }

    /// Flushes and returns the final stream position.
    fn finish(self) -> Result<u64, IsoError> {
        let offset = self.pos;
        let err = |source| IsoError::Output { offset, source };
        self.out.flush().map_err(err)?;
        self.out.stream_position().map_err(err)
    }
}

/// The ESP's bytes: `len` bytes at `offset` of the file at `path`.
struct Esp<'a> {
    path: &'a Path,
    file: File,
    offset: u64,
    len: u64,
}

impl<'a> Esp<'a> {
    /// Opens the ESP (the whole file, or `region`: offset and length) and
    /// checks that it is a FAT volume of a size the ISO can hold.
    fn open(path: &'a Path, region: Option<(u64, u64)>) -> Result<Esp<'a>, IsoError> {
        let read_err = |source| IsoError::EspRead {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let file_bytes = file.metadata().map_err(read_err)?.len();
        let (offset, bytes) = region.unwrap_or((0, file_bytes));
        if bytes == 0 || bytes % BLOCK != 0 || bytes > MAX_ESP_BYTES {
            return Err(IsoError::EspSize {
                path: path.to_path_buf(),
                bytes,
            });
        }
        if offset.saturating_add(bytes) > file_bytes {
            return Err(IsoError::EspTruncated {
                path: path.to_path_buf(),
                expected: bytes,
                got: file_bytes.saturating_sub(offset),
            });
        }
        let mut boot = [0u8; SECTOR as usize];
        file.read_exact_at(&mut boot, offset).map_err(read_err)?;
        check_fat_boot_sector(&boot, bytes).map_err(|reason| IsoError::EspNotFat {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Esp {
            path,
            file,
            offset,
            len: bytes,
        })
    }

    fn read_err(&self, source: io::Error) -> IsoError {
        IsoError::EspRead {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn truncated(&self, got: u64) -> IsoError {
        IsoError::EspTruncated {
            path: self.path.to_path_buf(),
            expected: self.len,
            got,
        }
    }
}

/// Checks the parts of a FAT boot sector that firmware relies on to mount
/// it, and that the volume fits in the file.
fn check_fat_boot_sector(boot: &[u8; SECTOR as usize], file_bytes: u64) -> Result<(), String> {
    if boot[510..512] != [0x55, 0xaa] {
        return Err("no 0x55aa signature at byte 510".into());
    }
    if boot[0] != 0xeb && boot[0] != 0xe9 {
        return Err(format!(
            "byte 0 is {:#04x}, not a jump (0xeb or 0xe9)",
            boot[0]
        ));
    }
    let sector = u64::from(u16::from_le_bytes([boot[11], boot[12]]));
    if !sector.is_power_of_two() || !(512..=4096).contains(&sector) {
        return Err(format!("bytes per sector is {sector}"));
    }
    let small = u64::from(u16::from_le_bytes([boot[19], boot[20]]));
    let large = u64::from(u32::from_le_bytes([boot[32], boot[33], boot[34], boot[35]]));
    let volume = (if small != 0 { small } else { large }) * sector;
    if volume == 0 || volume > file_bytes {
        return Err(format!(
            "the boot sector describes {volume} bytes but the file has {file_bytes}"
        ));
    }
    Ok(())
}

/// Streams the ESP into the image.
fn copy_esp<W: Write + Seek>(esp: &Esp<'_>, sink: &mut Sink<'_, W>) -> Result<(), IsoError> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < esp.len {
        let want = (esp.len - done).min(COPY_CHUNK as u64) as usize;
        esp.file
            .read_exact_at(&mut buf[..want], esp.offset + done)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => esp.truncated(done),
                _ => esp.read_err(e),
            })?;
        sink.put(&buf[..want])?;
        done += want as u64;
    }
    Ok(())
}

/// Copies the ESP's data ranges into `out` at `at`, file to file in the
/// kernel; its holes are skipped and stay holes (they read as the zeros
/// [`copy_esp`] writes).
fn copy_esp_file(esp: &Esp<'_>, out: &File, at: u64) -> Result<(), IsoError> {
    let data: u64 = crate::io::sparse::data_ranges(&esp.file)
        .map_err(|e| esp.read_err(e))?
        .iter()
        .map(|&(o, n)| {
            (o + n)
                .min(esp.offset + esp.len)
                .saturating_sub(o.max(esp.offset))
        })
        .sum();
    let copied = crate::io::sparse::copy_data(&esp.file, esp.offset, esp.len, out, at)
        .map_err(|source| IsoError::Output { offset: at, source })?;
    if copied < data {
        return Err(esp.truncated(copied));
    }
    Ok(())
}

fn check_volume_id(id: &str) -> Result<(), IsoError> {
    let d_chars = id
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if id.is_empty() || id.len() > 32 || !d_chars {
        return Err(IsoError::VolumeId { id: id.to_string() });
    }
    Ok(())
}

/// A UTC calendar time, what ISO 9660 dates are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Civil {
    /// Converts Unix time, refusing years a directory record cannot hold.
    fn from_unix(timestamp: i64) -> Result<Self, IsoError> {
        let days = timestamp.div_euclid(86_400);
        let secs = timestamp.rem_euclid(86_400);
        let (year, month, day) = crate::date::civil_from_days(days);
        if !(1900..=2155).contains(&year) {
            return Err(IsoError::Timestamp { timestamp });
        }
        // Each part is below 60 (or 24) by construction.
        Ok(Civil {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
        })
    }

    /// The 7-byte directory record date (ECMA-119 9.1.5), UTC.
    fn dir_record(&self) -> [u8; 7] {
        // The year range was checked in `from_unix`.
        let year = (self.year - 1900) as u8;
        [
            year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte volume descriptor date (ECMA-119 8.4.26.1), UTC.
    fn descriptor(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(text.as_bytes());
        out
    }
}

/// The "not specified" volume descriptor date.
const NO_DATE: [u8; 17] = *b"0000000000000000\0";

fn put_u16_both(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
    buf[at + 2..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u32_both(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Copies `text` into a field, padding with spaces (a- and d-character
/// fields are space padded).
fn put_padded(buf: &mut [u8], at: usize, len: usize, text: &[u8]) {
    buf[at..at + len].fill(b' ');
    buf[at..at + text.len()].copy_from_slice(text);
}

/// Block numbers and sizes fit 32 bits: the ESP is below 4 GiB, so the
/// image is below 8 TiB of 2048-byte blocks.
fn u32_of(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// One directory record (ECMA-119 9.1).
fn dir_record(name: &[u8], extent: u64, len: u64, dir: bool, date: &Civil) -> Vec<u8> {
    let size = 33 + name.len() + (name.len() + 1) % 2;
    let mut rec = vec![0u8; size];
    rec[0] = size as u8;
    put_u32_both(&mut rec, 2, u32_of(extent));
    put_u32_both(&mut rec, 10, u32_of(len));
    rec[18..25].copy_from_slice(&date.dir_record());
    rec[25] = if dir { 2 } else { 0 };
    put_u16_both(&mut rec, 28, 1);
    rec[32] = name.len() as u8;
    rec[33..33 + name.len()].copy_from_slice(name);
    rec
}

/// The README shown on the disc.
fn readme(arch: Arch) -> String {
    format!(
        "This is a strata UEFI boot image for {}.\n\n\
         It boots with UEFI from a CD/DVD (El Torito) and, written raw to a USB\n\
         stick or disk, from partition 1 of its GPT. Both are ESP.IMG, a FAT\n\
         file system holding the boot loader, the kernel and the initramfs.\n\
         BIOS (legacy) boot is not supported.\n",
        describe(arch)
    )
}

/// Blocks 16 to 23: descriptors, path tables, root directory, boot catalog
/// and README.
fn metadata(layout: &Layout, opts: &IsoOptions, date: &Civil) -> Vec<u8> {
    let readme = readme(opts.arch);
    let mut buf = vec![0u8; ((METADATA_END_BLOCK - PVD_BLOCK) * BLOCK) as usize];
    primary_volume_descriptor(block(&mut buf, PVD_BLOCK), layout, opts, date);
    boot_record(block(&mut buf, BOOT_RECORD_BLOCK));
    terminator(block(&mut buf, BOOT_RECORD_BLOCK + 1));
    path_table(block(&mut buf, L_PATH_TABLE_BLOCK), false);
    path_table(block(&mut buf, M_PATH_TABLE_BLOCK), true);
    let readme_len = readme.len() as u64;
    root_directory(block(&mut buf, ROOT_DIR_BLOCK), layout, readme_len, date);
    boot_catalog(block(&mut buf, CATALOG_BLOCK), layout);
    block(&mut buf, README_BLOCK)[..readme.len()].copy_from_slice(readme.as_bytes());
    buf
}

/// Block `n` of the metadata buffer, which starts at block 16.
fn block(buf: &mut [u8], n: u64) -> &mut [u8] {
    let at = ((n - PVD_BLOCK) * BLOCK) as usize;
    &mut buf[at..at + BLOCK as usize]
}

fn descriptor_header(b: &mut [u8], kind: u8) {
    b[0] = kind;
    b[1..6].copy_from_slice(b"CD001");
    b[6] = 1;
}

/// The primary volume descriptor (ECMA-119 8.4).
fn primary_volume_descriptor(b: &mut [u8], layout: &Layout, opts: &IsoOptions, date: &Civil) {
    descriptor_header(b, 1);
    put_padded(b, 8, 32, b"");
    put_padded(b, 40, 32, opts.volume_id.as_bytes());
    put_u32_both(b, 80, u32_of(layout.blocks()));
    put_u16_both(b, 120, 1);
    put_u16_both(b, 124, 1);
    put_u16_both(b, 128, BLOCK as u16);
    put_u32_both(b, 132, PATH_TABLE_LEN as u32);
    b[140..144].copy_from_slice(&(L_PATH_TABLE_BLOCK as u32).to_le_bytes());
    b[148..152].copy_from_slice(&(M_PATH_TABLE_BLOCK as u32).to_be_bytes());
    let root = dir_record(&[0], ROOT_DIR_BLOCK, BLOCK, true, date);
    b[156..156 + root.len()].copy_from_slice(&root);
    put_padded(b, 190, 128, b"");
    put_padded(b, 318, 128, b"");
    put_padded(b, 446, 128, b"");
    put_padded(b, 574, 128, APPLICATION_ID);
    put_padded(b, 702, 37 * 3, b"");
    let stamp = date.descriptor();
    b[813..830].copy_from_slice(&stamp);
    b[830..847].copy_from_slice(&stamp);
    b[847..864].copy_from_slice(&NO_DATE);
    b[864..881].copy_from_slice(&NO_DATE);
    b[881] = 1;
}

/// The El Torito boot record volume descriptor, pointing at the catalog.
fn boot_record(b: &mut [u8]) {
    descriptor_header(b, 0);
    let id = b"EL TORITO SPECIFICATION";
    b[7..7 + id.len()].copy_from_slice(id);
    b[71..75].copy_from_slice(&(CATALOG_BLOCK as u32).to_le_bytes());
}

fn terminator(b: &mut [u8]) {
    descriptor_header(b, 255);
}

/// Bytes of a path table with only the root directory.
const PATH_TABLE_LEN: usize = 10;

/// A path table holding the root directory (ECMA-119 9.4).
fn path_table(b: &mut [u8], big_endian: bool) {
    let (extent, parent) = if big_endian {
        ((ROOT_DIR_BLOCK as u32).to_be_bytes(), 1u16.to_be_bytes())
    } else {
        ((ROOT_DIR_BLOCK as u32).to_le_bytes(), 1u16.to_le_bytes())
    };
    b[0] = 1;
    b[2..6].copy_from_slice(&extent);
    b[6..8].copy_from_slice(&parent);
}

/// The root directory: itself, its parent (itself) and the three files,
/// sorted by name as ECMA-119 9.3 requires.
fn root_directory(b: &mut [u8], layout: &Layout, readme_len: u64, date: &Civil) {
    let records = [
        dir_record(&[0], ROOT_DIR_BLOCK, BLOCK, true, date),
        dir_record(&[1], ROOT_DIR_BLOCK, BLOCK, true, date),
        dir_record(CATALOG_NAME, CATALOG_BLOCK, BLOCK, false, date),
        dir_record(ESP_NAME, ESP_BLOCK, layout.esp_bytes, false, date),
        dir_record(README_NAME, README_BLOCK, readme_len, false, date),
    ];
    let mut at = 0;
    for rec in records {
        b[at..at + rec.len()].copy_from_slice(&rec);
        at += rec.len();
    }
}

/// The El Torito boot catalog: a validation entry for platform UEFI and
/// the default entry, booting the ESP without emulation.
fn boot_catalog(b: &mut [u8], layout: &Layout) {
    b[0] = 1;
    b[1] = PLATFORM_UEFI;
    b[30] = 0x55;
    b[31] = 0xaa;
    // The 16-bit words of the validation entry must sum to 0.
    let sum = b[..32].chunks_exact(2).fold(0u16, |acc, w| {
        acc.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    b[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    let entry = &mut b[32..64];
    entry[0] = 0x88; // bootable
    entry[1] = 0; // no emulation
    entry[6..8].copy_from_slice(&layout.catalog_sector_count().to_le_bytes());
    entry[8..12].copy_from_slice(&(ESP_BLOCK as u32).to_le_bytes());
}

/// The image's GPT: partition 1 is the ESP, and the first usable sector is the ESP's, not the
/// usual 34: the ISO 9660 metadata lies between, and partitioning tools must not offer it as
/// free space.
fn gpt(layout: &Layout, opts: &IsoOptions) -> Result<GptRegions, IsoError> {
    let esp = GptPartition {
        type_guid: ESP_TYPE_GUID,
        guid: opts.esp_guid,
        first_lba: layout.esp_first_sector(),
        last_lba: layout.esp_last_sector(),
        name: "EFI System Partition",
    };
    let first_usable = Some(layout.esp_first_sector());
    disk::gpt::regions(layout.bytes(), opts.disk_guid, &[esp], first_usable)
        .map_err(|source| IsoError::Output { offset: 0, source })
}

/// Blocks 0 to 15: protective MBR, primary GPT header and entry array, zeros.
fn system_area(gpt: &GptRegions) -> Vec<u8> {
    let mut buf = vec![0u8; (SYSTEM_AREA_BLOCKS * BLOCK) as usize];
    buf[..gpt.head.len()].copy_from_slice(&gpt.head);
    buf
}

/// The end of the image after the ESP: zeros, then the backup GPT entry
/// array and header in the last sectors.
fn tail(layout: &Layout, gpt: &GptRegions) -> Vec<u8> {
    let first = layout.esp_last_sector() + 1;
    let mut buf = vec![0u8; ((layout.total_sectors - first) * SECTOR) as usize];
    let at = buf.len() - gpt.tail.len();
    buf[at..].copy_from_slice(&gpt.tail);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Cursor;
    use std::process::{Command, Output};
    use std::time::Instant;

    const MIB: u64 = 1 << 20;
    const HELLO: &[u8] = b"hello from the esp\n";

    fn opts() -> IsoOptions {
        IsoOptions {
            volume_id: "STRATA_TEST".into(),
            timestamp: 1_700_000_000,
            disk_guid: *b"disk-guid-012345",
            esp_guid: *b"esp-guid-0123456",
            arch: Arch::Amd64,
        }
    }

    /// A file that passes the boot sector check without being a usable
    /// FAT volume, filled with a pattern so misplaced bytes show.
    fn fake_esp(path: &Path, bytes: u64) {
        let mut data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        data[0] = 0xeb;
        data[11..13].copy_from_slice(&512u16.to_le_bytes());
        data[19..21].copy_from_slice(&0u16.to_le_bytes());
        data[32..36].copy_from_slice(&((bytes / 512) as u32).to_le_bytes());
        data[510] = 0x55;
        data[511] = 0xaa;
        fs::write(path, data).unwrap();
    }

    fn iso_bytes(esp: &Path, opts: &IsoOptions) -> (Vec<u8>, IsoStats) {
        let mut out = Cursor::new(Vec::new());
        let stats = write(esp, &mut out, opts).unwrap();
        (out.into_inner(), stats)
    }

    /// Runs a tool; `None` when it is not installed (see `test_support::require_tool`).
    fn run(cmd: &mut Command) -> Option<Output> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        if !crate::test_support::require_tool(&program) {
            return None;
        }
        Some(
            cmd.output()
                .unwrap_or_else(|err| panic!("running {program}: {err}")),
        )
    }

    fn text(out: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// A FAT32 ESP made by mkfs.vfat holding HELLO.TXT; `None` without
    /// dosfstools or mtools.
    fn real_esp(dir: &Path, mib: u64) -> Option<PathBuf> {
        let esp = dir.join("esp.img");
        let kib = (mib * 1024).to_string();
        let mut mkfs = Command::new("mkfs.vfat");
        mkfs.args(["-C", "-F", "32", "-n", "STRATA_ESP", "-i", "12345678"]);
        let out = run(mkfs.arg(&esp).arg(&kib))?;
        assert!(out.status.success(), "{}", text(&out));
        let hello = dir.join("hello.txt");
        fs::write(&hello, HELLO).unwrap();
        let mut mcopy = Command::new("mcopy");
        mcopy.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&esp);
        let out = run(mcopy.arg(&hello).arg("::/HELLO.TXT"))?;
        assert!(out.status.success(), "{}", text(&out));
        Some(esp)
    }

    fn le32(b: &[u8], at: usize) -> u64 {
        u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
    }

    fn le64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// (name, extent, size) of each record of the directory at `block`.
    fn read_dir(iso: &[u8], block: u64) -> Vec<(Vec<u8>, u64, u64)> {
        let b = &iso[(block * BLOCK) as usize..][..BLOCK as usize];
        let mut at = 0;
        let mut found = Vec::new();
        while at < b.len() && b[at] != 0 {
            let rec = &b[at..at + b[at] as usize];
            let name = rec[33..33 + rec[32] as usize].to_vec();
            found.push((name, le32(rec, 2), le32(rec, 10)));
            at += rec.len();
        }
        found
    }

    #[test]
    fn iso_structures_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        fake_esp(&esp, 3 * MIB);
        let (iso, stats) = iso_bytes(&esp, &opts());
        assert_eq!(stats.bytes, iso.len() as u64);
        assert_eq!(stats.bytes % BLOCK, 0);
        assert_eq!(stats.esp_offset, MIB);

        let pvd = &iso[16 * 2048..17 * 2048];
        assert_eq!(&pvd[..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..72], b"STRATA_TEST                     ");
        assert_eq!(le32(pvd, 80) * BLOCK, stats.bytes, "volume space size");
        assert_eq!(&pvd[813..830], b"2023111422132000\0");
        assert_eq!(&pvd[156 + 18..156 + 25], &[123, 11, 14, 22, 13, 20, 0]);
        let root = le32(&pvd[156..], 2);

        let entries = read_dir(&iso, root);
        let names: Vec<&[u8]> = entries.iter().map(|e| e.0.as_slice()).collect();
        let expected: [&[u8]; 5] = [b"\0", b"\x01", b"BOOT.CAT;1", b"ESP.IMG;1", b"README.TXT;1"];
        assert_eq!(names, expected);
        let (_, esp_block, esp_len) = entries[3];
        let esp_in_iso = &iso[(esp_block * BLOCK) as usize..][..esp_len as usize];
        assert!(
            esp_in_iso == fs::read(&esp).unwrap(),
            "ESP.IMG differs from the esp"
        );
        let (_, readme_block, readme_len) = entries[4];
        let readme = &iso[(readme_block * BLOCK) as usize..][..readme_len as usize];
        assert!(String::from_utf8_lossy(readme).contains("x86-64"));

        let record = &iso[17 * 2048..18 * 2048];
        assert_eq!(&record[..7], b"\x00CD001\x01");
        assert_eq!(&record[7..30], b"EL TORITO SPECIFICATION");
        let catalog_block = le32(record, 71);
        assert_eq!(catalog_block, entries[2].1, "BOOT.CAT is the catalog");
        assert_eq!(iso[18 * 2048], 255, "terminator");

        let cat = &iso[(catalog_block * BLOCK) as usize..][..64];
        let sum = cat[..32].chunks(2).fold(0u16, |a, w| {
            a.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(
            (cat[0], cat[1], sum, &cat[30..32]),
            (1, 0xef, 0, &[0x55, 0xaa][..])
        );
        assert_eq!((cat[32], cat[33]), (0x88, 0), "bootable, no emulation");
        let count = u16::from_le_bytes([cat[38], cat[39]]);
        assert_eq!(u64::from(count) * 512, 3 * MIB, "sector count");
        assert_eq!(le32(cat, 40), esp_block, "boot image is ESP.IMG");

        let mut cursor = Cursor::new(&iso);
        let gpt = gptman::GPT::read_from(&mut cursor, 512).unwrap();
        assert_eq!(gpt.header.disk_guid, opts().disk_guid);
        assert_eq!(gpt.header.backup_lba * 512 + 512, stats.bytes);
        let part = &gpt[1];
        assert_eq!(part.partition_type_guid, ESP_TYPE_GUID);
        assert_eq!(part.unique_partition_guid, opts().esp_guid);
        assert_eq!(part.starting_lba * 512, esp_block * BLOCK);
        assert_eq!((part.ending_lba + 1) * 512, esp_block * BLOCK + esp_len);
        assert_eq!(part.partition_name.as_str(), "EFI System Partition");
        assert_eq!(
            gpt.header.first_usable_lba, part.starting_lba,
            "no free space before"
        );
        assert!(gpt.iter().filter(|(_, p)| p.is_used()).count() == 1);

        let backup = &iso[iso.len() - 512..];
        // Checks the signature, revision and header CRC.
        gptman::GPTHeader::read_from(&mut Cursor::new(backup)).expect("backup header");
        assert_eq!(le64(backup, 24) * 512 + 512, stats.bytes, "backup my_lba");
        let array = (le64(backup, 72) * 512) as usize;
        assert_eq!(&iso[array..array + 16384], &iso[1024..1024 + 16384]);
        assert_eq!(le32(backup, 88), le32(&iso, 512 + 88), "array crc");
    }

    #[test]
    fn large_esps_get_sector_count_zero() {
        assert_eq!(Layout::new(32 * MIB - 2048).catalog_sector_count(), 65532);
        assert_eq!(Layout::new(32 * MIB).catalog_sector_count(), 0);
        assert_eq!(Layout::new(64 * MIB).catalog_sector_count(), 0);
        let l = Layout::new(64 * MIB);
        assert_eq!(l.bytes() % BLOCK, 0);
        // The backup GPT fits after the ESP.
        let after_esp = l.total_sectors - l.esp_last_sector() - 1;
        assert!(after_esp >= disk::gpt::TAIL_SECTORS, "{after_esp}");
    }

    #[test]
    fn unix_time_converts_to_iso_dates() {
        let c = |t| Civil::from_unix(t).unwrap();
        assert_eq!(c(0).descriptor(), *b"1970010100000000\0");
        assert_eq!(c(-1).descriptor(), *b"1969123123595900\0");
        assert_eq!(c(951_782_400).descriptor(), *b"2000022900000000\0");
        assert_eq!(c(-2_208_988_800).dir_record(), [0, 1, 1, 0, 0, 0, 0]);
        assert_eq!(c(5_869_583_999).dir_record(), [255, 12, 31, 23, 59, 59, 0]);
        for bad in [-2_208_988_801, 5_869_584_000, i64::MIN, i64::MAX] {
            assert!(matches!(
                Civil::from_unix(bad),
                Err(IsoError::Timestamp { timestamp }) if timestamp == bad
            ));
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_the_culprit_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        let attempt = |o: &IsoOptions| write(&path, &mut Cursor::new(Vec::new()), o);
        fs::write(&path, vec![0u8; 2048]).unwrap();
        let err = attempt(&opts()).unwrap_err();
        assert!(matches!(err, IsoError::EspNotFat { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        for bytes in [0, 1000, 4096 + 512] {
            fs::write(&path, vec![0u8; bytes]).unwrap();
            let err = attempt(&opts()).unwrap_err();
            assert!(matches!(err, IsoError::EspSize { .. }), "{err}");
        }
        // A FAT volume larger than the file: a truncated copy.
        fake_esp(&path, 4096);
        let mut data = fs::read(&path).unwrap();
        data[32..36].copy_from_slice(&9u32.to_le_bytes());
        fs::write(&path, &data).unwrap();
        let err = attempt(&opts()).unwrap_err();
        assert!(err.to_string().contains("4608 bytes"), "{err}");
        fake_esp(&path, 4096);
        for id in ["strata", "", "A-B", "THIRTY_THREE_CHARACTERS_LONG_XXXX"] {
            let o = IsoOptions {
                volume_id: id.into(),
                ..opts()
            };
            assert!(
                matches!(attempt(&o), Err(IsoError::VolumeId { .. })),
                "{id}"
            );
        }
        let o = IsoOptions {
            timestamp: -3_000_000_000,
            ..opts()
        };
        assert!(matches!(attempt(&o), Err(IsoError::Timestamp { .. })));
        let missing = dir.path().join("missing.img");
        let err = write(&missing, &mut Cursor::new(Vec::new()), &opts()).unwrap_err();
        assert!(matches!(err, IsoError::EspRead { .. }), "{err}");
    }

    /// A writer that fails once `limit` bytes were written.
    struct FailAfter {
        written: u64,
        limit: u64,
    }

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written >= self.limit {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min((self.limit - self.written) as usize);
            self.written += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FailAfter {
        fn seek(&mut self, _: io::SeekFrom) -> io::Result<u64> {
            Ok(self.written)
        }
    }

    #[test]
    fn write_errors_name_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        fake_esp(&esp, MIB);
        let mut out = FailAfter {
            written: 0,
            limit: MIB + 5000,
        };
        let err = write(&esp, &mut out, &opts()).unwrap_err();
        assert!(
            matches!(err, IsoError::Output { offset, .. } if offset == MIB),
            "{err}"
        );
    }

    /// The ESP taken from inside a sparse disk, file to file, gives the bytes
    /// the streaming writer gives from the ESP alone, and its hole stays one.
    #[test]
    fn an_esp_inside_a_disk_is_copied_into_place_with_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        fake_esp(&esp, 4 * MIB);
        let bytes = fs::read(&esp).unwrap();
        // The disk holds the ESP at 3 MiB with a 2 MiB hole in its middle.
        let disk = dir.path().join("disk.raw");
        let d = File::create(&disk).unwrap();
        d.set_len(16 * MIB).unwrap();
        let (head, tail) = (&bytes[..MIB as usize], &bytes[3 * MIB as usize..]);
        d.write_all_at(head, 3 * MIB).unwrap();
        d.write_all_at(tail, 6 * MIB).unwrap();
        let mut holed = bytes.clone();
        holed[MIB as usize..3 * MIB as usize].fill(0);
        fs::write(&esp, &holed).unwrap();
        let (want, want_stats) = iso_bytes(&esp, &opts());
        let iso = dir.path().join("out.iso");
        let out = File::create(&iso).unwrap();
        out.set_len(100 * MIB).unwrap(); // emptied first
        let stats = write_file(&disk, 3 * MIB, 4 * MIB, &out, &opts()).unwrap();
        assert_eq!(stats, want_stats);
        assert!(
            fs::read(&iso).unwrap() == want,
            "write_file differs from write"
        );
        let data: u64 = crate::io::sparse::data_ranges(&out)
            .unwrap()
            .iter()
            .map(|r| r.1)
            .sum();
        assert!(data <= stats.bytes - 2 * MIB, "the hole was filled: {data}");
        // A region past the end of the file is refused, naming it.
        let err = write_file(&disk, 14 * MIB, 4 * MIB, &out, &opts()).unwrap_err();
        assert!(matches!(err, IsoError::EspTruncated { .. }), "{err}");
        assert!(err.to_string().contains("disk.raw"), "{err}");
    }

    #[test]
    fn output_is_deterministic_and_follows_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp.img");
        fake_esp(&esp, 2 * MIB);
        let (a, _) = iso_bytes(&esp, &opts());
        let (b, _) = iso_bytes(&esp, &opts());
        assert!(a == b, "two writes differ");
        // Writing into a file gives the same bytes as into memory.
        let file = dir.path().join("out.iso");
        write(&esp, &mut File::create(&file).unwrap(), &opts()).unwrap();
        assert!(fs::read(&file).unwrap() == a, "file output differs");
        let changed = [
            IsoOptions {
                esp_guid: [9; 16],
                ..opts()
            },
            IsoOptions {
                disk_guid: [9; 16],
                ..opts()
            },
            IsoOptions {
                timestamp: 0,
                ..opts()
            },
            IsoOptions {
                volume_id: "OTHER".into(),
                ..opts()
            },
            IsoOptions {
                arch: Arch::Arm64,
                ..opts()
            },
        ];
        for o in changed {
            let (c, _) = iso_bytes(&esp, &o);
            assert_eq!(c.len(), a.len());
            assert!(c != a, "{o:?} made no difference");
        }
    }

    #[test]
    fn xorriso_reads_the_el_torito_uefi_entry_and_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let Some(esp) = real_esp(dir.path(), 40) else {
            return;
        };
        let iso = dir.path().join("out.iso");
        write(&esp, &mut File::create(&iso).unwrap(), &opts()).unwrap();
        let mut cmd = Command::new("xorriso");
        cmd.arg("-indev").arg(&iso);
        cmd.args(["-report_el_torito", "plain", "-find", "/"]);
        let Some(out) = run(&mut cmd) else {
            return;
        };
        let report = text(&out);
        assert!(out.status.success(), "{report}");
        let fields = |prefix: &str| -> Vec<String> {
            let line = report.lines().find(|l| l.starts_with(prefix));
            let line = line.unwrap_or_else(|| panic!("no {prefix:?} in:\n{report}"));
            line[prefix.len()..]
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        // N Pltf B Emul Ld_seg Hdpt Ldsiz LBA
        let entry = fields("El Torito boot img :");
        assert_eq!(entry[..4], ["1", "UEFI", "y", "none"], "{report}");
        assert_eq!(entry[7], (MIB / BLOCK).to_string(), "{report}");
        assert_eq!(
            fields("El Torito img path :"),
            ["1", "/ESP.IMG"],
            "{report}"
        );
        for name in ["'/ESP.IMG'", "'/README.TXT'", "'/BOOT.CAT'"] {
            assert!(
                report.lines().any(|l| l == name),
                "{name} not in:\n{report}"
            );
        }
        // xorriso extracts ESP.IMG through the ISO 9660 tree.
        let copy = dir.path().join("copy.img");
        let mut cmd = Command::new("xorriso");
        cmd.arg("-osirrox").arg("on").arg("-indev").arg(&iso);
        let out = run(cmd.arg("-extract").arg("/ESP.IMG").arg(&copy)).unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(fs::read(&copy).unwrap() == fs::read(&esp).unwrap());
    }

    #[test]
    fn sgdisk_accepts_the_gpt_and_partition_1_is_the_esp() {
        let dir = tempfile::tempdir().unwrap();
        let Some(esp) = real_esp(dir.path(), 34) else {
            return;
        };
        let iso = dir.path().join("out.iso");
        write(&esp, &mut File::create(&iso).unwrap(), &opts()).unwrap();
        let Some(out) = run(Command::new("sgdisk").arg("-v").arg(&iso)) else {
            return;
        };
        assert!(
            out.status.success() && text(&out).contains("No problems found"),
            "{}",
            text(&out)
        );
        let out = run(Command::new("sgdisk").args(["-i", "1"]).arg(&iso)).unwrap();
        let info = text(&out);
        let number = |key: &str| -> u64 {
            let line = info.lines().find(|l| l.starts_with(key)).unwrap();
            line[key.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(
            info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{info}"
        );
        let (first, last) = (number("First sector:"), number("Last sector:"));
        let image = fs::read(&iso).unwrap();
        let part = dir.path().join("part.img");
        fs::write(
            &part,
            &image[(first * 512) as usize..((last + 1) * 512) as usize],
        )
        .unwrap();
        let Some(out) = run(Command::new("fsck.vfat").arg("-n").arg(&part)) else {
            return;
        };
        assert!(out.status.success(), "{}", text(&out));
        let mut mtype = Command::new("mtype");
        mtype.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&part);
        let Some(out) = run(mtype.arg("::/HELLO.TXT")) else {
            return;
        };
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(out.stdout, HELLO);
    }

    #[test]
    fn deterministic_with_a_real_esp() {
        let dir = tempfile::tempdir().unwrap();
        let Some(esp) = real_esp(dir.path(), 34) else {
            return;
        };
        let (a, _) = iso_bytes(&esp, &opts());
        let (b, _) = iso_bytes(&esp, &opts());
        assert!(a == b, "two writes differ");
    }

    fn sh(script: &str) {
        let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
        assert!(out.status.success(), "{script}:\n{}", text(&out));
    }

    /// Builds an ESP with systemd-boot, the Debian kernel and an initramfs
    /// whose /init prints ISO-BOOT-OK and powers off.
    fn bootable_esp(dir: &Path, kernel: &Path, busybox: &Path, fat: &str, mib: u64) -> PathBuf {
        let d = dir.display();
        let (k, b) = (kernel.display(), busybox.display());
        sh(&format!(
            "cd {d}; rm -rf k b rd esp.img; dpkg-deb -x {k} k; dpkg-deb -x {b} b
             mkdir -p rd/bin rd/dev rd/proc; cp b/bin/busybox rd/bin/
             printf '#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n\
             echo ISO-BOOT-OK > /dev/console\n/bin/busybox poweroff -f\n' > rd/init
             chmod 755 rd/init; (cd rd && find . | cpio -o -H newc --quiet) > initrd
             printf 'timeout 0\ndefault a.conf\n' > loader.conf
             printf 'linux /vmlinuz\ninitrd /initrd\noptions console=ttyS0 panic=-1\n' > a.conf
             mkfs.vfat -C -F {fat} esp.img {kib} >/dev/null
             export MTOOLS_SKIP_CHECK=1
             mmd -i esp.img ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
             mcopy -i esp.img /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
             mcopy -i esp.img loader.conf ::/loader/loader.conf
             mcopy -i esp.img a.conf ::/loader/entries/a.conf
             mcopy -i esp.img k/boot/vmlinuz-* ::/vmlinuz
             mcopy -i esp.img initrd ::/initrd",
            kib = mib * 1024
        ));
        dir.join("esp.img")
    }

    /// Boots `iso` in QEMU with OVMF, the image attached by `drive`, and
    /// returns the seconds until the guest powered off after the marker.
    fn boot(dir: &Path, iso: &Path, drive: &[&str]) -> f64 {
        let vars = dir.join("vars.fd");
        fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        let mut cmd = Command::new("timeout");
        cmd.args([
            "120",
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
        ]);
        cmd.args([
            "-m",
            "1024",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
        ]);
        cmd.args(["-no-reboot", "-drive"]);
        cmd.arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
        cmd.arg("-drive").arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
        let drive: Vec<String> = drive
            .iter()
            .map(|a| a.replace("{iso}", &iso.display().to_string()))
            .collect();
        cmd.args(&drive);
        let started = Instant::now();
        let out = cmd.output().unwrap();
        let secs = started.elapsed().as_secs_f64();
        let log = text(&out);
        assert!(
            log.contains("ISO-BOOT-OK"),
            "no marker after {secs:.1} s booting with {drive:?}:\n{log}"
        );
        secs
    }

    /// Boots QEMU (TCG) several times: minutes, so only under `make test`.
    #[test]
    fn boots_in_qemu_as_cdrom_and_as_disk() {
        use crate::test_support::{busybox_deb, kernel_deb, require_e2e, require_input};
        let tools = [
            "qemu-system-x86_64",
            "mkfs.vfat",
            "mmd",
            "mcopy",
            "cpio",
            "dpkg-deb",
        ];
        let (kernel, busybox) = (kernel_deb("amd64"), busybox_deb("amd64"));
        if !require_e2e("slow: boots QEMU (TCG) several times")
            || !crate::test_support::require_tools(&tools)
            || !require_input(&kernel)
            || !require_input(&busybox)
            || !require_input(Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"))
            || !require_input(Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"))
        {
            return;
        }
        let cdrom = ["-drive", "file={iso},if=none,id=cd,media=cdrom,readonly=on"];
        let cdrom = [&cdrom[..], &["-device", "ide-cd,drive=cd"]].concat();
        let disk = ["-drive", "file={iso},if=none,id=d,format=raw,snapshot=on"];
        let disk = [&disk[..], &["-device", "virtio-blk-pci,drive=d"]].concat();
        let dir = tempfile::tempdir().unwrap();
        // FAT32 of 48 MiB is past El Torito's 16-bit sector count (the
        // production case); FAT16 of 24 MiB gets an exact count.
        for (fat, mib) in [("32", 48), ("16", 24)] {
            let esp = bootable_esp(dir.path(), &kernel, &busybox, fat, mib);
            let iso = dir.path().join("boot.iso");
            let stats = write(&esp, &mut File::create(&iso).unwrap(), &opts()).unwrap();
            let cd = boot(dir.path(), &iso, &cdrom);
            let hd = boot(dir.path(), &iso, &disk);
            eprintln!(
                "FAT{fat} {mib} MiB ESP, {} byte ISO: CD-ROM boot {cd:.1} s, disk boot {hd:.1} s",
                stats.bytes
            );
        }
        // Control: with the El Torito boot record defaced, the disk still
        // boots, so it boots through the GPT.
        let iso = dir.path().join("boot.iso");
        let mut image = fs::read(&iso).unwrap();
        image[(BOOT_RECORD_BLOCK * BLOCK) as usize + 7] = b'X';
        let defaced = dir.path().join("gpt-only.iso");
        fs::write(&defaced, image).unwrap();
        let hd = boot(dir.path(), &defaced, &disk);
        eprintln!("without El Torito, disk boot {hd:.1} s");
    }
}
