//! Stream adapters, one per file.

pub mod compress;
pub mod count;
pub mod decompress;
pub mod hash;
pub mod outdir;
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
