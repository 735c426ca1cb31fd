//! Turning any artefact strata writes into something QEMU can attach:
//! `.xz` and `.zst` are decompressed, `.ova` and GCE's `.tar.gz` unpacked, to
//! a sparse temporary file (zero blocks become holes). Everything else is
//! attached as it is.

use crate::error::{Error, Result};
use crate::format::{Format, OutputKind};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use strata_qemu::ImageFormat;

/// Where QEMU finds the disk, and in which format.
pub fn prepare(artefact: &Path, kind: OutputKind, work: &Path) -> Result<(PathBuf, ImageFormat)> {
    let mut path = artefact.to_path_buf();
    if kind.wrap.is_some() {
        let plain = OutputKind { wrap: None, ..kind };
        let dest = work.join(format!("unpacked.{}", plain.extension()));
        decompress(artefact, &dest)?;
        path = dest;
    }
    match kind.format {
        Format::Raw | Format::Iso => Ok((path, ImageFormat::Raw)),
        Format::Qcow2 => Ok((path, ImageFormat::Qcow2)),
        Format::Vhd | Format::VhdDynamic => Ok((path, ImageFormat::Vpc)),
        Format::Vmdk => Ok((path, ImageFormat::Vmdk)),
        Format::Ova => {
            let dest = work.join("unpacked.vmdk");
            untar_member(
                File::open(&path).map_err(Error::io("opening", &path))?,
                |n| n.ends_with(".vmdk"),
                &dest,
                &path,
            )?;
            Ok((dest, ImageFormat::Vmdk))
        }
        Format::GcpTar => {
            let dest = work.join("disk.raw");
            let (_, gz) =
                crate::io::decompress::open(&path).map_err(Error::io("opening", &path))?;
            untar_member(gz, |n| n == "disk.raw", &dest, &path)?;
            Ok((dest, ImageFormat::Raw))
        }
    }
}

/// Decompresses a `.xz` or `.zst` artefact; the decoder follows the magic bytes, which say
/// the same as the artefact's name for anything strata wrote.
fn decompress(src: &Path, dest: &Path) -> Result<()> {
    let (_, reader) = crate::io::decompress::open(src).map_err(Error::io("opening", src))?;
    copy_sparse(reader, dest).map_err(Error::io("decompressing", src))
}

/// Extracts the first tar member whose name matches.
fn untar_member(
    r: impl Read,
    want: impl Fn(&str) -> bool,
    dest: &Path,
    archive: &Path,
) -> Result<()> {
    let mut tar = tar::Archive::new(r);
    for entry in tar.entries().map_err(Error::io("reading", archive))? {
        let entry = entry.map_err(Error::io("reading", archive))?;
        let name = entry
            .path()
            .map_err(Error::io("reading", archive))?
            .to_string_lossy()
            .into_owned();
        if want(&name) {
            return copy_sparse(entry, dest).map_err(Error::io("unpacking", archive));
        }
    }
    Err(crate::error::InputError::new(
        archive,
        "",
        "holds no disk image",
        "boot the archive strata wrote, or its raw image",
    )
    .into())
}

/// Copies a stream into a new file, leaving holes where whole blocks are zero.
fn copy_sparse(mut r: impl Read, dest: &Path) -> std::io::Result<()> {
    let mut out = File::create(dest)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let filled = crate::io::read_up_to(&mut r, &mut buf)?;
        if filled == 0 {
            break;
        }
        if crate::io::sparse::is_zero(&buf[..filled]) {
            out.seek(SeekFrom::Current(filled as i64))?;
        } else {
            out.write_all(&buf[..filled])?;
        }
        len += filled as u64;
    }
    out.set_len(len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_blocks_become_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[3 << 20] = 7;
        let dest = dir.path().join("x");
        copy_sparse(&data[..], &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(std::fs::metadata(&dest).unwrap().blocks() * 512 < 1 << 20);
    }
}
