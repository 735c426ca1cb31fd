//! The zstd frames of [`super::compress_file`] (RFC 8878): one frame per piece, and
//! concatenated frames decompress to the concatenation of their contents.
//!
//! - A packed piece is a frame from libzstd at the level asked for, with its content size and
//!   checksum.
//! - A stored piece is a frame written here: magic, a frame header with a 128 KiB window (so
//!   decoders need little memory), the content size and the checksum flag, then Raw_Blocks of
//!   at most 128 KiB (the block maximum for that window), the last one flagged, then the low 32
//!   bits of the content's XXH64.

use std::io;

/// Frame magic, little-endian.
const MAGIC: u32 = 0xFD2F_B528;
/// The largest Raw_Block payload, and the window size the frame header declares.
const RAW_BLOCK: usize = 128 << 10;
/// Window descriptor of a 2^17-byte (128 KiB) window: exponent 17 − 10, mantissa 0.
const WINDOW_128K: u8 = 7 << 3;

/// A frame holding `data` as Raw_Blocks.
pub(super) fn stored_frame(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(RAW_BLOCK).max(1);
    let mut out = Vec::with_capacity(data.len() + 3 * blocks + 18);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    let size = data.len() as u64;
    // Frame header descriptor: content size field of 4 or 8 bytes, no single segment,
    // content checksum, no dictionary.
    let checksum_flag = 1 << 2;
    match u32::try_from(size) {
        Ok(small) => {
            out.extend_from_slice(&[2 << 6 | checksum_flag, WINDOW_128K]);
            out.extend_from_slice(&small.to_le_bytes());
        }
        Err(_) => {
            out.extend_from_slice(&[3 << 6 | checksum_flag, WINDOW_128K]);
            out.extend_from_slice(&size.to_le_bytes());
        }
    }
    let mut chunks = data.chunks(RAW_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty frame still has one (empty, last) block.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(chunk) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        // Block header: last flag, type 0 (Raw_Block), size in the upper 21 bits.
        let header = last | (chunk.len() as u32) << 3;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    let digest = xxhash_rust::xxh64::xxh64(data, 0) as u32;
    out.extend_from_slice(&digest.to_le_bytes());
    out
}

/// A frame holding `data` compressed by libzstd at `level`.
pub(super) fn packed_frame(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    use ::zstd::zstd_safe::CParameter;
    let mut c = ::zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::ChecksumFlag(true))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    c.compress(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_frames_decode_with_libzstd() {
        for len in [0, 1, RAW_BLOCK, RAW_BLOCK + 1, 3 * RAW_BLOCK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let frame = stored_frame(&data);
            assert_eq!(
                frame.len(),
                data.len() + 14 + 3 * len.div_ceil(RAW_BLOCK).max(1)
            );
            let back = ::zstd::stream::decode_all(&frame[..]).unwrap();
            assert!(back == data, "length {len}");
        }
        // A flipped content byte fails the checksum.
        let mut frame = stored_frame(&[5u8; 1000]);
        frame[100] ^= 1;
        assert!(::zstd::stream::decode_all(&frame[..]).is_err());
    }
}
