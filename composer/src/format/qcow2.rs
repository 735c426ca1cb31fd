//! qcow2 (version 3) writer, from a sparse raw disk image.
//!
//! Spec: qemu `docs/interop/qcow2.txt`. What is written:
//!
//! - header version 3, 104 bytes plus the end-of-extensions marker; no backing file, no
//!   encryption, no snapshots, all feature bits 0, `refcount_order` 4 (16-bit refcounts);
//! - one data cluster per guest cluster holding a non-zero byte, in guest order; all-zero
//!   clusters are left unallocated (they read as zeros), so the file holds only data;
//! - L2 tables only for L1 entries that map something; L1, refcount table and refcount
//!   blocks after them. Every cluster of the file is referenced exactly once and has
//!   refcount 1, so `qemu-img check` finds no leaks and the `COPIED` flags are right.
//!
//! Layout: header cluster, data clusters, L2 tables, L1 table, refcount table, refcount
//! blocks. Metadata goes last so the raw image is read once, in one pass. The output is a
//! function of the input bytes and the cluster size only (deterministic).
//!
//! Not supported: compressed clusters, backing files, external data files, extended L2
//! entries, snapshots, bitmaps, encryption.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Run;
use crate::io::sparse;

/// qcow2 magic: `QFI\xfb`.
const MAGIC: u32 = 0x5146_49fb;
/// Header length written (the version 3 fields, without compression type).
const HEADER_LEN: u32 = 104;
/// `refcount_order` 4: 16-bit refcounts, qemu's default.
const REFCOUNT_ORDER: u32 = 4;
/// L1/L2 flag: refcount is exactly 1, so qemu may write in place.
const COPIED: u64 = 1 << 63;

/// Errors from writing a qcow2 image.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// The cluster size is outside what qemu accepts.
    #[error("qcow2 cluster_bits {bits} is out of range; hint: use 9 to 21 (16 = 64 KiB is qemu's default)")]
    ClusterBits {
        /// The value asked for.
        bits: u32,
    },
    /// Reading the raw image failed.
    #[error("cannot read raw image {path}")]
    Read {
        /// The raw image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the qcow2 output failed.
    #[error("cannot write qcow2 output (at byte {offset})")]
    Write {
        /// Where in the output.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Settings of the qcow2 writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Options {
    /// log2 of the cluster size: 16 (64 KiB) is qemu's default; some clouds want 13 (8 KiB).
    pub cluster_bits: u32,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options { cluster_bits: 16 }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Guest-visible size in bytes (the raw image size).
    pub virtual_size: u64,
    /// Data clusters stored (non-zero guest clusters).
    pub data_clusters: u64,
    /// Size of the qcow2 file in bytes.
    pub file_size: u64,
}

/// Cluster geometry derived from the options and the image size.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cluster_size: u64,
    /// Entries in one L2 table (and in one L1 cluster).
    l2_entries: u64,
    /// Refcounts in one refcount block.
    refcounts_per_block: u64,
    /// Entries in the L1 table.
    l1_size: u64,
}

impl Geometry {
    fn new(cluster_bits: u32, virtual_size: u64) -> Result<Geometry, Qcow2Error> {
        if !(9..=21).contains(&cluster_bits) {
            return Err(Qcow2Error::ClusterBits { bits: cluster_bits });
        }
        let cluster_size = 1u64 << cluster_bits;
        let l2_entries = cluster_size / 8;
        let guest_clusters = virtual_size.div_ceil(cluster_size);
        Ok(Geometry {
            cluster_size,
            l2_entries,
            refcounts_per_block: cluster_size * 8 / (1 << REFCOUNT_ORDER),
            l1_size: guest_clusters.div_ceil(l2_entries),
        })
    }

    /// Clusters needed to hold `bytes`.
    fn clusters(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_size)
    }
}

/// Where the metadata goes, in host clusters, once the data clusters are known.
#[derive(Debug, Clone, Copy)]
struct Layout {
    l2_start: u64,
    l1_start: u64,
    l1_clusters: u64,
    rt_start: u64,
    rt_clusters: u64,
    rb_start: u64,
    rb_count: u64,
    /// Clusters in the whole file.
    total: u64,
}

impl Layout {
    /// Place L2 tables, L1, refcount table and blocks after `data_end` (first free cluster).
    ///
    /// Refcount blocks must count themselves and the table that points to them, so their
    /// number is found by iterating to a fixed point (it converges in two or three rounds:
    /// each block covers thousands of clusters).
    fn new(geo: &Geometry, data_end: u64, l2_tables: u64) -> Layout {
        // An empty image has no L1 table at all: an unreferenced cluster would be a leak.
        let l1_clusters = geo.clusters(geo.l1_size * 8);
        let l2_start = data_end;
        let l1_start = l2_start + l2_tables;
        let rt_start = l1_start + l1_clusters;
        let (mut rt_clusters, mut rb_count) = (1, 1);
        loop {
            let total = rt_start + rt_clusters + rb_count;
            let need_rb = total.div_ceil(geo.refcounts_per_block);
            let need_rt = geo.clusters(need_rb * 8).max(1);
            if need_rb == rb_count && need_rt == rt_clusters {
                break;
            }
            (rb_count, rt_clusters) = (need_rb, need_rt);
        }
        Layout {
            l2_start,
            l1_start,
            l1_clusters,
            rt_start,
            rt_clusters,
            rb_start: rt_start + rt_clusters,
            rb_count,
            total: rt_start + rt_clusters + rb_count,
        }
    }
}

/// Output stream that remembers its position, so errors can name the offset.
struct Out<'a, W: Write + Seek> {
    inner: &'a mut W,
    pos: u64,
}

impl<W: Write + Seek> Out<'_, W> {
    fn write(&mut self, buf: &[u8]) -> Result<(), Qcow2Error> {
        self.inner
            .write_all(buf)
            .map_err(|source| Qcow2Error::Write {
                offset: self.pos,
                source,
            })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn seek(&mut self, pos: u64) -> Result<(), Qcow2Error> {
        self.inner
            .seek(SeekFrom::Start(pos))
            .map_err(|source| Qcow2Error::Write {
                offset: pos,
                source,
            })?;
        self.pos = pos;
        Ok(())
    }
}

/// Convert the raw image at `raw` to qcow2 v3 into `out`, which must be empty: the image is
/// written from offset 0 of `out`.
///
/// Reads only the data ranges of `raw`, one cluster at a time.
pub fn write(
    raw: &Path,
    out: &mut (impl Write + Seek),
    opts: &Qcow2Options,
) -> Result<Stats, Qcow2Error> {
    write_mapped(raw, out, opts).map(|(stats, _)| stats)
}

/// [`write`], also returning where the raw image's bytes landed in the file (data clusters
/// in guest order), so a wrapper can find the bytes strata compressed itself
/// ([`super::through`]).
pub fn write_mapped(
    raw: &Path,
    out: &mut (impl Write + Seek),
    opts: &Qcow2Options,
) -> Result<(Stats, Vec<Run>), Qcow2Error> {
    let read_err = |source| Qcow2Error::Read {
        path: raw.to_path_buf(),
        source,
    };
    let file = File::open(raw).map_err(read_err)?;
    let virtual_size = file.metadata().map_err(read_err)?.len();
    let geo = Geometry::new(opts.cluster_bits, virtual_size)?;
    let mut out = Out { inner: out, pos: 0 };

    // Data clusters from host cluster 1 on; cluster 0 is the header, written last.
    out.seek(geo.cluster_size)?;
    let mut l2: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut next_host = 1u64;
    let mut runs = Vec::new();
    for chunk in sparse::nonzero_chunks(&file, geo.cluster_size).map_err(read_err)? {
        let chunk = chunk.map_err(read_err)?;
        let run = Run {
            guest: chunk.index * geo.cluster_size,
            host: next_host * geo.cluster_size,
            len: chunk.data.len() as u64,
        };
        super::push_run(&mut runs, run);
        out.write(&chunk.data)?;
        let table = l2
            .entry(chunk.index / geo.l2_entries)
            .or_insert_with(|| vec![0; geo.l2_entries as usize]);
        table[(chunk.index % geo.l2_entries) as usize] = (next_host * geo.cluster_size) | COPIED;
        next_host += 1;
    }

    let layout = Layout::new(&geo, next_host, l2.len() as u64);
    write_metadata(&mut out, &geo, &layout, &l2)?;
    out.seek(0)?;
    out.write(&header(&geo, &layout, virtual_size))?;
    out.inner
        .flush()
        .map_err(|source| Qcow2Error::Write { offset: 0, source })?;
    let stats = Stats {
        virtual_size,
        data_clusters: next_host - 1,
        file_size: layout.total * geo.cluster_size,
    };
    Ok((stats, runs))
}

/// Write L2 tables, L1 table, refcount table and refcount blocks at their layout places
/// (contiguous, starting where the data ended).
fn write_metadata<W: Write + Seek>(
    out: &mut Out<'_, W>,
    geo: &Geometry,
    layout: &Layout,
    l2: &BTreeMap<u64, Vec<u64>>,
) -> Result<(), Qcow2Error> {
    let cs = geo.cluster_size;
    let mut l1 = vec![0u64; geo.l1_size as usize];
    for (i, (l1_index, table)) in l2.iter().enumerate() {
        out.write(&be_table(table, cs))?;
        l1[*l1_index as usize] = ((layout.l2_start + i as u64) * cs) | COPIED;
    }
    out.write(&be_table(&l1, layout.l1_clusters * cs))?;

    let rt: Vec<u64> = (0..layout.rb_count)
        .map(|i| (layout.rb_start + i) * cs)
        .collect();
    out.write(&be_table(&rt, layout.rt_clusters * cs))?;
    for block in 0..layout.rb_count {
        out.write(&refcount_block(geo, block, layout.total))?;
    }
    Ok(())
}

/// Big-endian u64 table, zero-padded to `len` bytes.
fn be_table(entries: &[u64], len: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(len as usize);
    for e in entries {
        buf.extend_from_slice(&e.to_be_bytes());
    }
    buf.resize(len as usize, 0);
    buf
}

/// Refcount block number `block`: refcount 1 for every cluster below `total`.
fn refcount_block(geo: &Geometry, block: u64, total: u64) -> Vec<u8> {
    let mut buf = vec![0u8; geo.cluster_size as usize];
    let first = block * geo.refcounts_per_block;
    let used = total.saturating_sub(first).min(geo.refcounts_per_block) as usize;
    for entry in buf.chunks_exact_mut(2).take(used) {
        entry.copy_from_slice(&1u16.to_be_bytes());
    }
    buf
}

/// The header cluster: v3 header, end-of-extensions marker, zero padding.
fn header(geo: &Geometry, layout: &Layout, virtual_size: u64) -> Vec<u8> {
    let cs = geo.cluster_size;
    let mut h = Vec::with_capacity(cs as usize);
    h.extend_from_slice(&MAGIC.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
    h.extend_from_slice(&(cs.trailing_zeros()).to_be_bytes()); // cluster_bits
    h.extend_from_slice(&virtual_size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    h.extend_from_slice(&(geo.l1_size as u32).to_be_bytes());
    let l1_offset = if geo.l1_size == 0 {
        0
    } else {
        layout.l1_start * cs
    };
    h.extend_from_slice(&l1_offset.to_be_bytes());
    h.extend_from_slice(&(layout.rt_start * cs).to_be_bytes());
    h.extend_from_slice(&(layout.rt_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    h.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h.extend_from_slice(&HEADER_LEN.to_be_bytes());
    debug_assert_eq!(h.len(), HEADER_LEN as usize);
    h.extend_from_slice(&[0u8; 8]); // end of header extensions: type 0, length 0
    h.resize(cs as usize, 0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sparse::testutil::{self, MIB};
    use std::io::Cursor;

    fn convert(raw: &Path, bits: u32) -> (tempfile::NamedTempFile, Stats) {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut f = out.reopen().unwrap();
        let stats = write(raw, &mut f, &Qcow2Options { cluster_bits: bits }).unwrap();
        (out, stats)
    }

    fn judge(raw: &Path, image: &Path, size: u64) {
        if !testutil::have("qemu-img") {
            return;
        }
        assert_eq!(testutil::qemu_info(image), ("qcow2".to_string(), size));
        let check = testutil::run(
            "qemu-img",
            &["check", "-f", "qcow2", &image.to_string_lossy()],
        );
        let text = String::from_utf8_lossy(&check.stdout);
        assert!(text.contains("No errors were found"), "{text}");
        testutil::qemu_compare(raw, image);
    }

    /// Read one guest cluster back through our own reading of L1/L2.
    fn read_cluster(img: &[u8], guest: u64, bits: u32) -> Option<&[u8]> {
        let be64 = |o: usize| u64::from_be_bytes(img[o..o + 8].try_into().unwrap());
        let cs = 1u64 << bits;
        let l1_off = be64(40) as usize;
        let l2e = cs / 8;
        let l1 = be64(l1_off + 8 * (guest / l2e) as usize) & !COPIED;
        if l1 == 0 {
            return None;
        }
        let host = be64(l1 as usize + 8 * (guest % l2e) as usize) & !COPIED;
        (host != 0).then(|| &img[host as usize..(host + cs) as usize])
    }

    #[test]
    fn small_image_round_trips_and_passes_qemu_img() {
        let raw = testutil::small_image();
        for bits in [16, 9, 12, 21] {
            let (out, stats) = convert(raw.path(), bits);
            assert_eq!(stats.virtual_size, 64 * MIB);
            assert_eq!(
                std::fs::metadata(out.path()).unwrap().len(),
                stats.file_size
            );
            let img = testutil::bytes(out.path());
            let rawb = testutil::bytes(raw.path());
            let cs = 1usize << bits;
            for (i, want) in rawb.chunks(cs).enumerate() {
                match read_cluster(&img, i as u64, bits) {
                    Some(got) => assert_eq!(got, want, "cluster {i} bits {bits}"),
                    None => assert!(sparse::is_zero(want), "cluster {i} bits {bits} lost"),
                }
            }
            judge(raw.path(), out.path(), 64 * MIB);
        }
    }

    #[test]
    fn zero_clusters_are_not_stored() {
        let raw = testutil::raw_image(8 * MIB, &[(MIB, 1)], &[(2 * MIB, 4 * MIB)]);
        let (_out, stats) = convert(raw.path(), 16);
        assert_eq!(stats.data_clusters, 1);
        // header + data + L2 + L1 + refcount table + one refcount block
        assert_eq!(stats.file_size, 6 * 65536);
    }

    #[test]
    fn output_is_deterministic() {
        let raw = testutil::small_image();
        let (a, _) = convert(raw.path(), 16);
        let mut b = Cursor::new(Vec::new());
        write(raw.path(), &mut b, &Qcow2Options::default()).unwrap();
        assert_eq!(testutil::bytes(a.path()), b.into_inner());
    }

    #[test]
    fn empty_and_hole_only_images_are_valid() {
        for size in [0, 3 * MIB] {
            let raw = testutil::raw_image(size, &[], &[]);
            let (out, stats) = convert(raw.path(), 16);
            assert_eq!(stats.data_clusters, 0);
            judge(raw.path(), out.path(), size);
        }
    }

    #[test]
    fn bad_cluster_bits_are_refused() {
        let raw = testutil::raw_image(MIB, &[], &[]);
        let mut out = Cursor::new(Vec::new());
        let err = write(raw.path(), &mut out, &Qcow2Options { cluster_bits: 22 }).unwrap_err();
        assert!(err.to_string().contains("9 to 21"), "{err}");
    }

    /// The runs say where each guest byte landed: the mapped stored ranges hold exactly the
    /// raw image's bytes there.
    #[test]
    fn runs_map_guest_bytes_to_the_file() {
        let (raw, stored) = testutil::compressed_image();
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut f = out.reopen().unwrap();
        let opts = Qcow2Options { cluster_bits: 16 };
        let (_, runs) = write_mapped(raw.path(), &mut f, &opts).unwrap();
        super::super::assert_runs_map(out.path(), raw.path(), &stored, &runs);
    }

    #[test]
    fn large_sparse_image_passes_qemu_img() {
        let raw = testutil::large_image();
        for bits in [16, 13] {
            let (out, _) = convert(raw.path(), bits);
            judge(raw.path(), out.path(), 2048 * MIB);
        }
    }
}
