//! Stream adapters, one per file.

pub mod compress;
pub mod count;
pub mod decompress;
pub mod hash;
pub mod outdir;
pub mod pages;
pub mod perm;

pub mod sparse;
pub mod window;

pub use window::Window;

/// Reads until `buf` is full or the input ends; returns the number of bytes read. Unlike
/// `read_exact`, a short input is not an error: the caller decides (magic bytes, last chunk).
pub fn read_up_to(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copies `reader` to `out` in chunks of up to 1 MiB (`size`: the bytes expected, to size the
/// buffer) and returns the bytes copied. `io::copy` into a writer that is neither a
/// `BufWriter` nor a `File` (a counting or hashing wrapper around one) goes through an 8 KiB
/// stack buffer: a read call per 8 KiB and one more copy of every byte into the `BufWriter`
/// behind the wrapper, while a chunk as large as that `BufWriter` goes straight to its file.
pub fn copy_chunked(
    reader: &mut impl std::io::Read,
    size: u64,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; size.clamp(1, 1 << 20) as usize];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
}
