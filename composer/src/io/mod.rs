//! Stream adapters, one per file.

pub mod compress;
pub mod hash;

pub mod sparse;
pub mod window;

pub use window::Window;
