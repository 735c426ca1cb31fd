//! Compresses the data blocks of a squashfs image on several threads, ahead of backhand's writer.
//!
//! backhand's `FilesystemWriter` reads the files one after the other and compresses each block
//! on the thread that called `write`, through the `CompressionAction` of the image's `Kind`.
//! [`Lookahead`] is such an action. While the writer runs, a reader thread walks the tree's files
//! in the order the writer takes them (path order) and cuts them into the blocks the writer will
//! compress, by the writer's own rules: every block of a file at least one block long except
//! blocks of zeros (they become holes), and files shorter than a block packed into fragment
//! blocks, a new one started when the next file would not fit, the last one written even when
//! empty. A file shorter than a block with the same bytes as an earlier one adds nothing to a
//! fragment block: the writer deduplicates (`set_no_duplicate_files`) and our backhand keeps one
//! copy of such files too (vendor/backhand/PATCHES.md). The threads of one [`pool`], shared by
//! every image written at the same time, compress those blocks; the results wait in a bounded
//! queue, in order. When the writer asks for a block, [`Lookahead`] compares it byte for byte
//! with the head of the queue and hands over the worker's result when they are equal. Anything
//! else (metadata blocks, a file that changed between the two reads, one the reader could not
//! open) is compressed inline, so a wrong guess costs time, never bytes. The workers run
//! backhand's own `DefaultCompressor`, so every block has the bytes the single-threaded writer
//! gives it, and the image is the same on any number of threads.
//!
//! Why a compressor hook rather than a patched backhand or a writer of our own: the hook is the
//! one backhand offers for this (`Kind::new_v4`), it leaves the layout of the image (inodes,
//! directories, deduplication, fragments, tables) to the code that already writes and tests it,
//! and it keeps the image byte-identical to the single-threaded writer by construction. The
//! price is that each file is read twice (the reader's copy is usually still in the page cache
//! when the writer reads it) and the bytes are compared once more.
//!
//! A file of a block or more with the bytes of an earlier one is compressed by nobody. backhand,
//! like mksquashfs, compresses and writes such a file before its hash tells it that the file is
//! a copy, then seeks back over it. The reader predicts that decision by the writer's own key (the
//! file's length and the xxh64 of its bytes) and queues the copy's blocks with a stand-in result
//! one byte longer than the block, which backhand takes as "does not compress" and stores the
//! block as it is: bytes the writer then seeks back over. Were the prediction ever wrong (only a
//! file that changed between the reader's read and the writer's can make it so), the image would
//! hold those blocks uncompressed: larger, never wrong. Only a file whose length an earlier
//! file of a block or more had is read ahead to be hashed, so files without a same-length
//! predecessor are read as before.
//!
//! Memory is bounded: at most [`DEPTH_PER_WORKER`] blocks per worker wait in each image's
//! queue, and the pool holds one block per worker in its own queue and one being compressed.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::kind::Kind;
use backhand::{BackhandError, FilesystemCompressor, SuperBlock};
use xxhash_rust::xxh64::Xxh64;

use super::tree::{EntryKind, FileData, Tree};

/// Blocks per worker that may be read and compressed ahead of the writer: enough that a slow
/// block does not leave the other workers idle, few enough to keep memory small.
const DEPTH_PER_WORKER: usize = 4;

/// The action backhand is given. `Kind::new_v4` wants a `'static` one, so it holds no state:
/// the queue of the image being written lives in [`QUEUE`], per thread, since backhand calls
/// `compress` on the thread that called `write` (two images written at once do not mix).
pub(super) struct Lookahead;

static LOOKAHEAD: Lookahead = Lookahead;

thread_local! {
    static QUEUE: RefCell<Option<Queue>> = const { RefCell::new(None) };
}

/// The image kind (little-endian squashfs 4.0) that routes compression through [`Lookahead`].
pub(super) fn kind() -> Kind {
    Kind::new_v4(&LOOKAHEAD)
}

/// How many blocks the reader cut and how many the writer took from the queue; equal when every
/// guess was right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Blocks the reader queued for the writer.
    pub cut: u64,
    /// Blocks the writer took from the queue instead of compressing them itself.
    pub used: u64,
    /// Of the blocks cut, those of files predicted to be copies: queued uncompressed, with the
    /// stand-in result (see the module doc).
    pub spared: u64,
}

/// A block as the reader cut it, and the worker's result (`None` when compressing failed: the
/// writer then compresses it itself and reports the error).
struct Compressed {
    input: Vec<u8>,
    output: Option<Vec<u8>>,
}

/// The writer's end: one receiver per block, in the order the writer will ask for them.
struct Queue {
    order: Receiver<Receiver<Compressed>>,
    head: Option<Compressed>,
    used: u64,
}

impl Queue {
    fn new(order: Receiver<Receiver<Compressed>>) -> Self {
        Self {
            order,
            head: None,
            used: 0,
        }
    }

    /// The compressed form of `bytes` when they are the next block in the queue. A block that
    /// was lost (a worker died) is skipped; a mismatch leaves the head for the next call.
    fn take(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.head.is_none() {
            self.head = self.order.recv().ok().and_then(|done| done.recv().ok());
        }
        if self.head.as_ref()?.input != bytes {
            return None;
        }
        self.used += 1;
        self.head.take()?.output
    }
}

impl CompressionAction for Lookahead {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        compressor: Compressor,
    ) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, compressor)
    }

    fn compress(
        &self,
        bytes: &[u8],
        fc: FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, BackhandError> {
        let ready = QUEUE.with_borrow_mut(|queue| queue.as_mut().and_then(|q| q.take(bytes)));
        match ready {
            Some(compressed) => Ok(compressed),
            None => DefaultCompressor.compress(bytes, fc, block_size),
        }
    }

    fn compression_options(
        &self,
        superblock: &mut SuperBlock,
        kind: &Kind,
        fs_compressor: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        DefaultCompressor.compression_options(superblock, kind, fs_compressor)
    }
}

/// Runs `write` (a backhand write of `tree` with [`kind`]) on this thread while a reader cuts
/// `tree`'s blocks ahead of it and the [`pool`] of `workers` threads compresses them. Returns
/// what `write` returned.
pub(super) fn run<R>(
    tree: &Tree,
    fc: FilesystemCompressor,
    block_size: u32,
    workers: usize,
    write: impl FnOnce() -> R,
) -> (R, Counts) {
    let workers = workers.max(1);
    let jobs = pool(workers);
    let (order_tx, order_rx) = mpsc::sync_channel(DEPTH_PER_WORKER * workers);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut ahead = Ahead {
                order: order_tx,
                jobs,
                fc,
                block_size,
                cut: 0,
                spared: 0,
            };
            cut(tree, block_size as usize, &mut ahead);
            (ahead.cut, ahead.spared)
        });
        let installed = Installed::new(order_rx);
        let written = write();
        let used = installed.finish();
        // The reader stops once the queue's receiver is gone; a panic in it is resumed here.
        let (cut, spared) = reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (written, Counts { cut, used, spared })
    })
}

/// A block to compress, with the settings of its image, and where its result goes.
struct Job {
    input: Vec<u8>,
    fc: FilesystemCompressor,
    block_size: u32,
    done: SyncSender<Compressed>,
}

/// The queue of the `workers` threads that compress the blocks of every image written at the
/// same time (the root on one thread, the extensions on another), started on first use and
/// kept for the life of the process.
///
/// Why one pool and not workers per image: the images are written concurrently, and a pool
/// each put twice as many compressing threads as cores on the machine. Time-sliced, they evict
/// each other's match tables from the caches: compressing the same blocks at zstd level 15 on
/// 2 cores took 4.5 % more CPU on 4 threads than on 2, and 17 % more on 8. The queue is
/// first come, first served; a writer waits only for blocks its own reader has cut, and the
/// workers wait for nothing but the queue (a result's channel has room for it), so images
/// sharing the pool cannot block each other. A worker that panics leaves the others working;
/// should none be left, sending fails and the writers compress every block themselves. The
/// tests ask for other counts, each of which gets a pool of its own.
fn pool(workers: usize) -> SyncSender<Job> {
    static POOLS: Mutex<BTreeMap<usize, SyncSender<Job>>> = Mutex::new(BTreeMap::new());
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    pools
        .entry(workers)
        .or_insert_with(|| {
            let (tx, rx) = mpsc::sync_channel::<Job>(workers);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..workers {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || compress_jobs(&rx));
            }
            tx
        })
        .clone()
}

/// Compresses jobs for as long as the process lives.
fn compress_jobs(jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        let output = DefaultCompressor
            .compress(&job.input, job.fc, job.block_size)
            .ok();
        // The writer may have finished (or failed) without this block; nothing to do then.
        let _ = job.done.send(Compressed {
            input: job.input,
            output,
        });
    }
}

/// The calling thread's [`Queue`] for as long as this lives, removed on drop (also when the
/// write panics), which lets the reader stop; the pool's workers go on with other images'
/// blocks, and compress at most the few of this one already queued.
struct Installed;

impl Installed {
    fn new(order: Receiver<Receiver<Compressed>>) -> Self {
        QUEUE.set(Some(Queue::new(order)));
        Self
    }

    /// Removes the queue and returns how many blocks the writer took from it.
    fn finish(self) -> u64 {
        QUEUE.take().map_or(0, |queue| queue.used)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        QUEUE.take();
    }
}

/// The reader's end: sends each block to the workers and its receiver to the writer's queue.
struct Ahead {
    order: SyncSender<Receiver<Compressed>>,
    jobs: SyncSender<Job>,
    fc: FilesystemCompressor,
    block_size: u32,
    cut: u64,
    spared: u64,
}

impl Ahead {
    /// Queues `block`; `None` once the writer or the workers are gone.
    fn send(&mut self, block: Vec<u8>) -> Option<()> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.order.send(done_rx).ok()?;
        self.jobs
            .send(Job {
                input: block,
                fc: self.fc,
                block_size: self.block_size,
                done: done_tx,
            })
            .ok()?;
        self.cut += 1;
        Some(())
    }

    /// Queues `block` of a predicted copy without compressing it: its stand-in result is one
    /// byte longer than the block, so backhand stores the block as it is (and then seeks back
    /// over it, the file being a copy).
    fn send_spared(&mut self, block: Vec<u8>) -> Option<()> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let output = Some(vec![0; block.len() + 1]);
        done_tx
            .send(Compressed {
                input: block,
                output,
            })
            .ok()?;
        self.order.send(done_rx).ok()?;
        self.cut += 1;
        self.spared += 1;
        Some(())
    }
}

/// Cuts `tree`'s files into the blocks backhand's data writer compresses, in its order (see the
/// module doc). Stops at a file it cannot read: the writer then reads it and reports the error.
fn cut(tree: &Tree, block_size: usize, ahead: &mut Ahead) -> Option<()> {
    let mut buf = vec![0u8; block_size];
    let mut fragments = Vec::with_capacity(block_size);
    let mut small = SmallFiles::default();
    let mut big = BigFiles::default();
    let files = tree.iter().filter_map(|(_, entry)| match &entry.kind {
        EntryKind::File(data) => Some(data),
        _ => None,
    });
    for data in files {
        let mut reader = open(data).ok()?;
        let first = fill(&mut reader, &mut buf).ok()?;
        if first == 0 {
            continue;
        }
        if first < block_size {
            if !small.is_new(&buf[..first]) {
                continue;
            }
            if fragments.len() + first > block_size {
                ahead.send(std::mem::take(&mut fragments))?;
            }
            fragments.extend_from_slice(&buf[..first]);
            continue;
        }
        // A copy of an earlier file of a block or more has that file's length: only then is
        // the whole file hashed before its blocks are queued.
        let copy = big.has_len(len_of(data).ok()?) && big.is_known(hash(open(data).ok()?).ok()?);
        let mut key = (0, Xxh64::new(0));
        let mut len = first;
        while len > 0 {
            key.0 += len as u64;
            key.1.update(&buf[..len]);
            if buf[..len].iter().any(|b| *b != 0) {
                let block = buf[..len].to_vec();
                if copy {
                    ahead.send_spared(block)?;
                } else {
                    ahead.send(block)?;
                }
            }
            len = fill(&mut reader, &mut buf).ok()?;
        }
        big.insert((key.0, key.1.digest()));
    }
    ahead.send(fragments)
}

/// The writer's duplicate key of a file of a block or more: its length and the xxh64 (seed 0)
/// of its bytes, as backhand's `DataWriter::add_bytes` computes it.
type BigKey = (u64, u64);

/// The key of the file `reader` reads.
fn hash(mut reader: impl Read) -> io::Result<BigKey> {
    let (mut len, mut hasher) = (0, Xxh64::new(0));
    let mut buf = vec![0; 1 << 16];
    loop {
        match fill(&mut reader, &mut buf)? {
            0 => return Ok((len, hasher.digest())),
            n => {
                len += n as u64;
                hasher.update(&buf[..n]);
            }
        }
    }
}

/// The keys of the files of a block or more seen so far, to predict which ones the writer finds
/// to be copies (the same rule as its own: equal keys).
#[derive(Default)]
struct BigFiles(HashMap<u64, HashSet<u64>>);

impl BigFiles {
    /// Whether an earlier file had this length.
    fn has_len(&self, len: u64) -> bool {
        self.0.contains_key(&len)
    }

    /// Whether an earlier file had this key.
    fn is_known(&self, (len, hash): BigKey) -> bool {
        self.0
            .get(&len)
            .is_some_and(|hashes| hashes.contains(&hash))
    }

    fn insert(&mut self, (len, hash): BigKey) {
        self.0.entry(len).or_default().insert(hash);
    }
}

/// The files shorter than a block seen so far, to predict which ones the writer stores once.
///
/// Keyed by length and a 64-bit hash, not by the SHA-256 the writer uses: a collision only
/// mispredicts the fragment blocks after it (time, never bytes, as the module doc says), and the
/// cheap hash keeps the reader from hashing every small file a second time at SHA-256 cost.
#[derive(Default)]
struct SmallFiles(HashSet<(usize, u64)>);

impl SmallFiles {
    /// Whether no earlier file had these bytes; remembers them.
    fn is_new(&mut self, bytes: &[u8]) -> bool {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        self.0.insert((bytes.len(), hasher.finish()))
    }
}

fn open(data: &FileData) -> io::Result<Box<dyn Read + '_>> {
    Ok(match data {
        FileData::Host(path) => Box::new(File::open(path)?),
        FileData::Bytes(bytes) => Box::new(bytes.as_slice()),
    })
}

/// `data`'s length as the file system reports it now (asked only of files a block or longer).
fn len_of(data: &FileData) -> io::Result<u64> {
    Ok(match data {
        FileData::Host(path) => std::fs::metadata(path)?.len(),
        FileData::Bytes(bytes) => bytes.len() as u64,
    })
}

/// Reads until `buf` is full or the end of the file, as backhand's chunk reader does.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(blocks: &[(&[u8], &[u8])]) -> Queue {
        let (tx, rx) = mpsc::sync_channel(blocks.len());
        for (input, output) in blocks {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            done_tx
                .send(Compressed {
                    input: input.to_vec(),
                    output: Some(output.to_vec()),
                })
                .unwrap();
            tx.send(done_rx).unwrap();
        }
        Queue::new(rx)
    }

    #[test]
    fn a_block_other_than_the_head_is_left_to_the_writer() {
        let mut queue = queue_of(&[(b"first", b"F"), (b"second", b"S")]);
        assert_eq!(queue.take(b"metadata"), None);
        assert_eq!(queue.take(b"first"), Some(b"F".to_vec()));
        assert_eq!(queue.take(b"firs"), None);
        assert_eq!(queue.take(b"second"), Some(b"S".to_vec()));
        assert_eq!(
            queue.take(b"second"),
            None,
            "each block is handed over once"
        );
        assert_eq!(queue.used, 2);
    }

    #[test]
    fn a_lost_block_is_skipped() {
        let (tx, rx) = mpsc::sync_channel(2);
        let (lost_tx, lost_rx) = mpsc::sync_channel::<Compressed>(1);
        drop(lost_tx);
        tx.send(lost_rx).unwrap();
        let mut queue = Queue::new(rx);
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        done_tx
            .send(Compressed {
                input: b"next".to_vec(),
                output: None,
            })
            .unwrap();
        tx.send(done_rx).unwrap();
        assert_eq!(queue.take(b"lost"), None);
        // A failed compression is not handed over: the writer compresses it and sees the error.
        assert_eq!(queue.take(b"next"), None);
        assert_eq!(queue.used, 1);
    }

    #[test]
    fn fill_reads_across_short_reads() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut reader = Trickle(b"0123456789");
        let mut buf = [0u8; 4];
        let lens: Vec<usize> = (0..4)
            .map(|_| fill(&mut reader, &mut buf).unwrap())
            .collect();
        assert_eq!(lens, [4, 4, 2, 0]);
    }
}
