//! The one GPT writer: protective MBR, primary and backup GPT (through gptman), for the disk
//! images ([`super::write_gpt`]) and the hybrid ISO (`format::iso`).
//!
//! [`regions`] builds the two ends of a disk in memory: the first 34 sectors (protective MBR,
//! primary header, entry array) and the last 33 (backup entry array and header). Everything in
//! between is left to the caller, so a streamed writer (the ISO) can put them in place without
//! seeking, and a sparse disk file only gets these bytes written.
//!
//! Fixed: 512-byte sectors ([`SECTOR`]), 128 entries of 128 bytes (the minimum array UEFI allows), a
//! non-bootable protective MBR over the whole disk. Not supported: other sector sizes, hybrid
//! MBRs with real partitions.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::SECTOR;

/// Sectors of one 128 × 128-byte entry array.
pub const ARRAY_SECTORS: u64 = 32;
/// Sectors at the start of the disk the GPT uses: MBR, header, entry array.
pub const HEAD_SECTORS: u64 = 2 + ARRAY_SECTORS;
/// Sectors at the end of the disk the GPT uses: backup entry array, backup header.
pub const TAIL_SECTORS: u64 = ARRAY_SECTORS + 1;

/// One partition as the table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition<'a> {
    /// Type GUID, in on-disk GPT byte order.
    pub type_guid: [u8; 16],
    /// Unique GUID, in on-disk GPT byte order.
    pub guid: [u8; 16],
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Partition name (up to 36 UTF-16 units).
    pub name: &'a str,
}

/// The bytes of a disk's GPT, see [`regions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptRegions {
    /// The first [`HEAD_SECTORS`] sectors, for offset 0.
    pub head: Vec<u8>,
    /// The last [`TAIL_SECTORS`] sectors, for offset `disk_bytes - tail.len()`.
    pub tail: Vec<u8>,
}

/// The protective MBR and both GPTs of a disk of `disk_bytes` (a multiple of [`SECTOR`]).
///
/// `first_usable_lba` overrides the usual 34: the ISO keeps its ISO 9660 area, which lies
/// between the GPT and the first partition, out of what partitioning tools offer as free space.
pub fn regions(
    disk_bytes: u64,
    disk_guid: [u8; 16],
    partitions: &[GptPartition<'_>],
    first_usable_lba: Option<u64>,
) -> io::Result<GptRegions> {
    let mut disk = TwoEnds::new(disk_bytes)?;
    let mut gpt = gptman::GPT::new_from(&mut disk, SECTOR, disk_guid).map_err(io::Error::other)?;
    if let Some(first) = first_usable_lba {
        gpt.header.first_usable_lba = first;
    }
    for (i, p) in partitions.iter().enumerate() {
        gpt[(i + 1) as u32] = gptman::GPTPartitionEntry {
            partition_type_guid: p.type_guid,
            unique_partition_guid: p.guid,
            starting_lba: p.first_lba,
            ending_lba: p.last_lba,
            attribute_bits: 0,
            partition_name: p.name.into(),
        };
    }
    gpt.write_into(&mut disk).map_err(io::Error::other)?;
    gptman::GPT::write_protective_mbr_into(&mut disk, SECTOR).map_err(io::Error::other)?;
    Ok(GptRegions {
        head: disk.head,
        tail: disk.tail,
    })
}

/// A disk of `size` bytes of which only the GPT's two ends are held; reads give zeros and
/// writes elsewhere are refused (they would be a bug in the table's geometry).
struct TwoEnds {
    size: u64,
    pos: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl TwoEnds {
    fn new(size: u64) -> io::Result<Self> {
        let (head, tail) = (HEAD_SECTORS * SECTOR, TAIL_SECTORS * SECTOR);
        if !size.is_multiple_of(SECTOR) || size < head + tail {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a GPT disk of {size} bytes is not whole sectors or too small"),
            ));
        }
        Ok(TwoEnds {
            size,
            pos: 0,
            head: vec![0; head as usize],
            tail: vec![0; tail as usize],
        })
    }

    fn tail_start(&self) -> u64 {
        self.size - self.tail.len() as u64
    }
}

impl Read for TwoEnds {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.size.saturating_sub(self.pos) as usize);
        buf[..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for TwoEnds {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.pos + buf.len() as u64;
        let (region, at) = if end <= self.head.len() as u64 {
            (&mut self.head, self.pos)
        } else if self.pos >= self.tail_start() && end <= self.size {
            let at = self.pos - self.tail_start();
            (&mut self.tail, at)
        } else {
            return Err(io::Error::other(format!(
                "GPT write of {} bytes at {} lies outside the table's sectors",
                buf.len(),
                self.pos
            )));
        };
        region[at as usize..][..buf.len()].copy_from_slice(buf);
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for TwoEnds {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("GPT seek before the disk start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regions_read_back_as_one_gpt() {
        let size = 8 << 20;
        let part = GptPartition {
            type_guid: [1; 16],
            guid: [2; 16],
            first_lba: 2048,
            last_lba: 4095,
            name: "EFI",
        };
        let r = regions(size, [3; 16], std::slice::from_ref(&part), Some(2048)).unwrap();
        let mut disk = vec![0u8; size as usize];
        disk[..r.head.len()].copy_from_slice(&r.head);
        let tail_at = disk.len() - r.tail.len();
        disk[tail_at..].copy_from_slice(&r.tail);
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        assert_eq!(disk[446 + 4], 0xee, "protective partition type");
        let gpt = gptman::GPT::read_from(&mut io::Cursor::new(&disk), SECTOR).unwrap();
        assert_eq!(gpt.header.disk_guid, [3; 16]);
        assert_eq!(gpt.header.first_usable_lba, 2048);
        assert_eq!(gpt.header.backup_lba, size / SECTOR - 1);
        assert_eq!(gpt[1].starting_lba, 2048);
        assert_eq!(gpt[1].partition_name.as_str(), "EFI");
    }

    #[test]
    fn a_disk_too_small_for_a_gpt_is_refused() {
        let e = regions(10 * SECTOR, [0; 16], &[], None).unwrap_err();
        assert!(e.to_string().contains("too small"), "{e}");
    }
}
