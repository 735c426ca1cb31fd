//! The zstd frames of [`super::compress_file`] (RFC 8878): one frame per piece, and
//! concatenated frames decompress to the concatenation of their contents.
//!
//! - A packed piece is a frame from libzstd at the level asked for, with its content size and
//!   checksum.
//! - A stored piece (data strata compressed itself) is a frame from libzstd at level 1 with
//!   long-distance matching: incompressible blocks become Raw_Blocks at once, and what repeats
//!   at a distance (a file a squashfs holds twice) is still found, for almost no time.

use std::io;

use ::zstd::bulk::Compressor;
use ::zstd::zstd_safe::CParameter;

use super::pieces::Spares;

/// The libzstd contexts of one [`super::compress_file`], kept from piece to piece (see
/// [`Spares`]); a context's output does not depend on what it compressed before.
pub(super) struct Frames {
    deduped: Spares<Compressor<'static>>,
    packed: Spares<Compressor<'static>>,
    level: i32,
}

impl Frames {
    /// Contexts for packed pieces at `level`, and for stored ones.
    pub fn new(level: i32) -> Frames {
        Frames {
            deduped: Spares::new(),
            packed: Spares::new(),
            level,
        }
    }

    /// A frame holding `data`, compressed data strata wrote: libzstd at level 1 with
    /// long-distance matching, which costs about as little as copying (libzstd gives up on
    /// incompressible blocks at once and writes them as Raw_Blocks) but still finds what
    /// repeats at a distance, such as a file stored twice in a squashfs. Measured on a 58 MB
    /// zstd-15 squashfs: 0.08 s of CPU, 2.1 % smaller than raw blocks, where `zstd -19` gets
    /// 2.6 %.
    pub fn deduped(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let make = || {
            let mut c = framing(1)?;
            c.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
            c.set_parameter(CParameter::WindowLog(LDM_WINDOW_LOG))?;
            Ok(c)
        };
        self.deduped.with(make, |c| c.compress(data))
    }

    /// A frame holding `data` compressed by libzstd at the level asked for.
    pub fn packed(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.packed
            .with(|| framing(self.level), |c| c.compress(data))
    }
}

/// A context at `level` whose frames carry their content size and a checksum, as every frame
/// of the wrapper does.
fn framing(level: i32) -> io::Result<Compressor<'static>> {
    let mut c = Compressor::new(level)?;
    c.set_parameter(CParameter::ChecksumFlag(true))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    Ok(c)
}

/// Window of [`Frames::deduped`]: 128 MiB, the most decoders accept without being asked; libzstd
/// shrinks it to the piece's size.
const LDM_WINDOW_LOG: u32 = 27;

/// What one thread of [`super::compress_file`] holds at most: libzstd's context for a full
/// piece at `level` (its tables: about 80 MiB at level 19), the piece and its encoding. The
/// context's size is libzstd's own upper bound for a one-shot context sized to the piece, the
/// way [`Frames::packed`] compresses it, found without building one: a context built and
/// started to be measured allocated and cleared its 80 MiB of tables on every wrapper, 0.18 s
/// of page faults and zeroing in the `.raw.zst` job, the longest of the outputs step.
pub(super) fn memory_per_thread(level: i32) -> io::Result<u64> {
    use ::zstd::zstd_safe::zstd_sys;
    // SAFETY: both functions take plain values and read or write no memory of ours.
    let size = unsafe {
        let params = zstd_sys::ZSTD_getCParams(level, super::ZSTD_CHUNK, 0);
        zstd_sys::ZSTD_estimateCCtxSize_usingCParams(params)
    };
    // SAFETY: as above.
    if unsafe { zstd_sys::ZSTD_isError(size) } != 0 {
        return Err(io::Error::other(::zstd::zstd_safe::get_error_name(size)));
    }
    Ok(size as u64 + 2 * super::ZSTD_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimate covers the context libzstd builds to compress a piece in one shot at that
    /// level (measured here after compressing a piece-sized input), and overshoots it by at most
    /// a quarter (20 % at level 12): an upper bound, as a memory budget wants.
    #[test]
    fn the_context_estimate_is_what_a_one_shot_context_takes() {
        for level in [1, 12, 19] {
            let piece = vec![7u8; super::super::ZSTD_CHUNK as usize];
            let mut c = Compressor::new(level).unwrap();
            c.compress(&piece).unwrap();
            let measured = c.context_mut().sizeof() as u64;
            let estimate = memory_per_thread(level).unwrap() - 2 * super::super::ZSTD_CHUNK;
            assert!(
                estimate >= measured && estimate <= measured + measured / 4,
                "level {level}: estimate {estimate}, measured {measured}"
            );
        }
    }

    #[test]
    fn deduped_frames_store_noise_and_find_distant_repeats() {
        let frames = Frames::new(19);
        let deduped_frame = |data: &[u8]| frames.deduped(data);
        let mut rng = crate::io::sparse::testutil::Rng::new(3);
        let noise: Vec<u8> = (0..3 << 20).map(|_| rng.next_u64() as u8).collect();
        let frame = deduped_frame(&noise).unwrap();
        assert!(
            frame.len() < noise.len() + noise.len() / 1000,
            "{}",
            frame.len()
        );
        assert!(::zstd::stream::decode_all(&frame[..]).unwrap() == noise);
        // The same 1 MiB of noise twice, 2 MiB apart: the second copy costs almost nothing.
        let mut twice = noise.clone();
        twice.extend_from_slice(&noise[..1 << 20]);
        let frame = deduped_frame(&twice).unwrap();
        assert!(frame.len() < (3 << 20) + (64 << 10), "{}", frame.len());
        assert!(::zstd::stream::decode_all(&frame[..]).unwrap() == twice);
        assert!(::zstd::stream::decode_all(&deduped_frame(&[]).unwrap()[..])
            .unwrap()
            .is_empty());
    }

    /// A context kept from an earlier piece writes the frame a fresh one writes.
    #[test]
    fn kept_contexts_write_the_frames_of_fresh_ones() {
        let mut rng = crate::io::sparse::testutil::Rng::new(5);
        let noise: Vec<u8> = (0..1 << 20).map(|_| rng.next_u64() as u8).collect();
        let text: Vec<u8> = (0..3 << 20)
            .map(|i| b"strata "[i % 7] ^ (i / 9973) as u8)
            .collect();
        let kept = Frames::new(19);
        for data in [&text[..], &noise[..], &text[..1 << 20], &[][..]] {
            let fresh = Frames::new(19);
            assert_eq!(kept.packed(data).unwrap(), fresh.packed(data).unwrap());
            assert_eq!(kept.deduped(data).unwrap(), fresh.deduped(data).unwrap());
        }
    }
}
