//! The .xz container of [`super::compress_file`], written by hand (xz file format 1.2.1:
//! <https://tukaani.org/xz/xz-file-format.txt>) so that each piece of the input is a block of
//! its own, encoded on any thread:
//!
//! - stream header: magic, stream flags (the check type), CRC32 of the flags;
//! - one block per piece: a block header that records the compressed and uncompressed sizes
//!   (xz ≥ 5.4 needs them to decompress on several threads) and one LZMA2 filter with the
//!   preset's dictionary size, then LZMA2 data, padding to 4 bytes and the check (CRC32 or
//!   CRC64 of the uncompressed bytes);
//! - a packed piece's LZMA2 data comes from liblzma's raw LZMA2 encoder at the preset;
//! - a stored piece's LZMA2 data is uncompressed chunks of at most 64 KiB (control byte 0x01,
//!   which resets the dictionary, for the first, 0x02 for the rest) and the end marker 0x00;
//! - the index (one record per block: unpadded and uncompressed size) and the stream footer.
//!
//! Not supported: filters other than LZMA2 (no BCJ), SHA-256 checks, multi-stream files.

use super::XzCheck;
use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
use std::io;

/// The largest payload of one LZMA2 uncompressed chunk.
const STORED_CHUNK: usize = 64 << 10;
/// Stream header magic.
const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
/// Stream footer magic.
const FOOTER_MAGIC: [u8; 2] = *b"YZ";
/// Filter id of LZMA2.
const LZMA2_ID: u8 = 0x21;

/// The block settings shared by every block of a stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// xz preset 0..=9.
    pub preset: u32,
    /// Integrity check of each block.
    pub check: XzCheck,
    /// The preset's dictionary size, as the LZMA2 filter property encodes it.
    dict_prop: u8,
}

impl Settings {
    /// Settings for `preset` (checked by the caller to be 0..=9).
    pub fn new(preset: u32, check: XzCheck) -> io::Result<Settings> {
        Ok(Settings {
            preset,
            check,
            dict_prop: dict_prop(preset_dict(preset)?),
        })
    }

    /// The uncompressed size of a full piece: 3 × the dictionary, the block size `xz -T`
    /// uses, so compression matches it.
    pub fn chunk(&self) -> io::Result<u64> {
        Ok(3 * u64::from(preset_dict(self.preset)?))
    }

    /// What one thread of [`super::compress_file`] holds at most: liblzma's encoder at the
    /// preset (94 MiB at 6, as `xz --info-memory` says), a full piece and its encoding.
    pub fn memory_per_thread(&self) -> io::Result<u64> {
        // SAFETY: a plain function of an integer; it returns UINT64_MAX for a preset it
        // does not know.
        let encoder = unsafe { liblzma_sys::lzma_easy_encoder_memusage(self.preset) };
        if encoder == u64::MAX {
            return Err(io::Error::other(format!(
                "xz preset {} is not known",
                self.preset
            )));
        }
        Ok(encoder + 2 * self.chunk()?)
    }
}

/// One encoded block and what the index records of it.
pub(super) struct Block {
    /// Header, data, padding and check.
    pub bytes: Vec<u8>,
    /// Header + compressed data + check, without the padding (the index's "unpadded size").
    pub unpadded: u64,
    /// Uncompressed bytes.
    pub uncompressed: u64,
}

/// The dictionary size liblzma's preset uses.
fn preset_dict(preset: u32) -> io::Result<u32> {
    // SAFETY: lzma_options_lzma is plain data (integers and a dictionary pointer that may be
    // null), so all zeros is a valid value for lzma_lzma_preset to fill.
    let mut raw: liblzma_sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    // SAFETY: `raw` is a valid, writable lzma_options_lzma that outlives the call.
    if unsafe { liblzma_sys::lzma_lzma_preset(&mut raw, preset) } != 0 {
        return Err(io::Error::other(format!("xz preset {preset} is not known")));
    }
    Ok(raw.dict_size)
}

/// The LZMA2 dictionary-size property: the smallest `p` with `(2 | p & 1) << (p / 2 + 11)`
/// at least `dict` (40 means 4 GiB − 1).
fn dict_prop(dict: u32) -> u8 {
    (0u8..40)
        .find(|&p| (2u64 | u64::from(p & 1)) << (p / 2 + 11) >= u64::from(dict))
        .unwrap_or(40)
}

/// The stream header.
pub(super) fn stream_header(check: XzCheck) -> Vec<u8> {
    let flags = [0, check_id(check)];
    let mut out = HEADER_MAGIC.to_vec();
    out.extend_from_slice(&flags);
    out.extend_from_slice(&crc32(&flags).to_le_bytes());
    out
}

/// The index of `records` (unpadded, uncompressed) and the stream footer.
pub(super) fn index_and_footer(records: &[(u64, u64)], check: XzCheck) -> Vec<u8> {
    let mut index = vec![0u8];
    vli(&mut index, records.len() as u64);
    for &(unpadded, uncompressed) in records {
        vli(&mut index, unpadded);
        vli(&mut index, uncompressed);
    }
    pad4(&mut index);
    let crc = crc32(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let backward = u32::try_from(index.len() / 4 - 1).unwrap_or(u32::MAX);
    let mut tail = backward.to_le_bytes().to_vec();
    tail.extend_from_slice(&[0, check_id(check)]);
    index.extend_from_slice(&crc32(&tail).to_le_bytes());
    index.extend_from_slice(&tail);
    index.extend_from_slice(&FOOTER_MAGIC);
    index
}

/// A block holding `data` as LZMA2 uncompressed chunks.
pub(super) fn stored_block(data: &[u8], s: &Settings) -> Block {
    let chunks = data.len().div_ceil(STORED_CHUNK);
    let mut lzma2 = Vec::with_capacity(data.len() + 3 * chunks + 1);
    for (i, chunk) in data.chunks(STORED_CHUNK).enumerate() {
        // `chunk` is 1..=64 KiB long, so its length − 1 fits 16 bits.
        let size = (chunk.len() - 1) as u16;
        lzma2.push(if i == 0 { 0x01 } else { 0x02 });
        lzma2.extend_from_slice(&size.to_be_bytes());
        lzma2.extend_from_slice(chunk);
    }
    lzma2.push(0x00);
    block(&lzma2, data, s)
}

/// A block holding `data` compressed by liblzma's raw LZMA2 encoder.
pub(super) fn packed_block(data: &[u8], s: &Settings) -> io::Result<Block> {
    let opts = LzmaOptions::new_preset(s.preset).map_err(io::Error::other)?;
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let mut stream = Stream::new_raw_encoder(&filters).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    let mut input = data;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity() / 2 + 4096);
        }
        let before = stream.total_in();
        let status = stream
            .process_vec(input, &mut out, Action::Finish)
            .map_err(io::Error::other)?;
        input = &input[(stream.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            break;
        }
    }
    Ok(block(&out, data, s))
}

/// Header, `lzma2`, padding and the check of `data`.
fn block(lzma2: &[u8], data: &[u8], s: &Settings) -> Block {
    let mut header = vec![0u8, 0xC0];
    vli(&mut header, lzma2.len() as u64);
    vli(&mut header, data.len() as u64);
    header.extend_from_slice(&[LZMA2_ID, 1, s.dict_prop]);
    // The header size byte counts the CRC32 that follows the padding.
    while !(header.len() + 4).is_multiple_of(4) {
        header.push(0);
    }
    header[0] = ((header.len() + 4) / 4 - 1) as u8;
    let crc = crc32(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    let check = match s.check {
        XzCheck::Crc32 => crc32(data).to_le_bytes().to_vec(),
        XzCheck::Crc64 => crc64(data).to_le_bytes().to_vec(),
    };
    let unpadded = (header.len() + lzma2.len() + check.len()) as u64;
    let mut bytes = header;
    bytes.reserve(lzma2.len() + 3 + check.len());
    bytes.extend_from_slice(lzma2);
    pad4(&mut bytes);
    bytes.extend_from_slice(&check);
    Block {
        bytes,
        unpadded,
        uncompressed: data.len() as u64,
    }
}

/// The stream flags' check id.
fn check_id(check: XzCheck) -> u8 {
    match check {
        XzCheck::Crc32 => 0x01,
        XzCheck::Crc64 => 0x04,
    }
}

/// Appends `n` as an xz variable-length integer (7 bits a byte, low first).
fn vli(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Zero-pads `out` to a multiple of 4 bytes.
fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// liblzma's CRC32 (the one xz itself checks with).
fn crc32(data: &[u8]) -> u32 {
    // SAFETY: the pointer and length describe `data`, which lives across the call.
    unsafe { liblzma_sys::lzma_crc32(data.as_ptr(), data.len(), 0) }
}

/// liblzma's CRC64.
fn crc64(data: &[u8]) -> u64 {
    // SAFETY: the pointer and length describe `data`, which lives across the call.
    unsafe { liblzma_sys::lzma_crc64(data.as_ptr(), data.len(), 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_property_matches_the_presets() {
        assert_eq!(dict_prop(8 << 20), 22);
        assert_eq!(dict_prop(256 << 10), 12);
        assert_eq!(dict_prop(3 << 20), 19);
        assert_eq!(preset_dict(6).unwrap(), 8 << 20);
        assert_eq!(
            Settings::new(6, XzCheck::Crc64).unwrap().chunk().unwrap(),
            24 << 20
        );
    }

    #[test]
    fn vli_encodes_seven_bits_a_byte() {
        let enc = |n| {
            let mut v = Vec::new();
            vli(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(0x7F), [0x7F]);
        assert_eq!(enc(0x80), [0x80, 0x01]);
        assert_eq!(enc(300), [0xAC, 0x02]);
    }

    #[test]
    fn stored_blocks_use_uncompressed_chunks() {
        let s = Settings::new(6, XzCheck::Crc32).unwrap();
        let data = vec![7u8; 70_000];
        let b = stored_block(&data, &s);
        assert_eq!(b.uncompressed, 70_000);
        let header_len = 4 * (usize::from(b.bytes[0]) + 1);
        let lzma2 = &b.bytes[header_len..];
        assert_eq!(lzma2[..3], [0x01, 0xFF, 0xFF]);
        assert_eq!(lzma2[3 + 65_536..3 + 65_536 + 3], [0x02, 0x11, 0x6F]);
        assert_eq!(lzma2[6 + 70_000], 0x00);
        assert_eq!(b.unpadded as usize, header_len + 6 + 70_000 + 1 + 4);
    }
}
