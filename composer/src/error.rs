//! The composer's error type: a stable kind for exit codes, and for bad
//! input, a report that names the file, the line, the field and the fix.

use std::fmt;
use std::path::{Path, PathBuf};

/// Broad classes of failure, mapped to exit codes only in `main.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The profile, a platform file or a command-line value is wrong.
    InvalidInput,
    /// An input file (kernel, rootfs, extension, init, bootloader) is missing or unusable.
    Source,
    /// The machine lacks something (firmware, QEMU): install it.
    Environment,
    /// Reading or writing failed.
    Io,
    /// The guest did not report a good boot.
    BootFailed,
}

/// A problem with something the user gave us, told so they can fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file that holds the problem (profile, manifest, kernel…).
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The field in that file, e.g. `kernel.deb` (empty when the whole file is at fault).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl InputError {
    /// A problem with `field` of `file`.
    pub fn new(
        file: impl AsRef<Path>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        InputError {
            file: file.as_ref().to_path_buf(),
            position: None,
            field: field.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Attaches the position of the field.
    pub fn at(mut self, position: Option<(usize, usize)>) -> Self {
        self.position = position;
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  fix: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every error the composer library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, with file, line, field and fix.
    #[error("{0}")]
    Input(Box<InputError>),
    /// Something the machine lacks.
    #[error("{message}\n  fix: {hint}")]
    Environment {
        /// What is missing.
        message: String,
        /// How to get it.
        hint: String,
    },
    /// An I/O failure on a named path.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What we were doing, e.g. `writing`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A failure inside one build step, with the step named.
    #[error("{step}: {message}")]
    Step {
        /// The build step, e.g. `root squashfs`.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The boot test ran, and the guest did not report a good boot.
    #[error("boot test failed: {0}")]
    BootFailed(String),
}

impl Error {
    /// The stable class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Input(_) => ErrorKind::InvalidInput,
            Error::Environment { .. } => ErrorKind::Environment,
            Error::Io { .. } => ErrorKind::Io,
            Error::Step { .. } => ErrorKind::Io,
            Error::BootFailed(_) => ErrorKind::BootFailed,
        }
    }

    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { op, path, source }
    }

    /// A failure inside a build step.
    pub fn step(step: &'static str, message: impl fmt::Display) -> Error {
        Error::Step {
            step,
            message: message.to_string(),
        }
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::Input(Box::new(e))
    }
}

/// The composer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_name_file_line_field_and_fix() {
        let e = InputError::new(
            "p.yaml",
            "kernel.deb",
            "file not found: k.deb",
            "run `make kernel`",
        )
        .at(Some((3, 3)));
        assert_eq!(
            e.to_string(),
            "p.yaml:3:3: kernel.deb: file not found: k.deb\n  fix: run `make kernel`"
        );
    }
}
