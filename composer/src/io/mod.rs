//! Stream adapters, one per file.

pub mod sparse;
pub mod window;

pub use window::Window;
