//! Stream adapters, one per file.

pub mod window;

pub use window::Window;
