//! The composer's boundary error: a stable [`ErrorKind`] for the exit code,
//! the context (file, field, position, what was being done), an optional
//! `fix:` hint, and the cause as a boxed `source()` chain.
//!
//! Display shows only this level's message, never its source: `main`
//! walks [`std::error::Error::source`] and prints each cause on its own
//! line, so a message never repeats itself. Leaf modules keep their own
//! `thiserror` enums; they become the `source` here, not a string.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A cause kept behind a boundary error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Broad classes of failure, mapped to exit codes only in `main.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The profile, a platform file, a command-line value or a file they
    /// name is wrong (unreadable archive, wrong architecture, bad size).
    InvalidInput,
    /// A source could not deliver: a registry, a pull, a digest mismatch.
    Source,
    /// The machine lacks something (firmware, QEMU): install it.
    Environment,
    /// Reading or writing failed.
    Io,
    /// A disk or output format could not hold what was asked (a limit of
    /// the format, not of the input file).
    Format,
    /// The guest did not report a good boot.
    BootFailed,
}

/// A problem with something the user gave us, told so they can fix it.
#[derive(Debug, Clone)]
pub struct InputError {
    /// The file that holds the problem (profile, manifest, kernel…).
    pub file: PathBuf,
    /// 1-based line and column, when known (u32 keeps the error small).
    pub position: Option<(u32, u32)>,
    /// The field in that file, e.g. `kernel.deb` (empty when the whole file is at fault).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
    /// Why, when a reader or parser said so; shared so the error stays
    /// `Clone`, behind one thin pointer so it stays small.
    pub source: Option<Arc<Cause>>,
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
            source: None,
        }
    }

    /// Attaches the position of the field.
    pub fn at(mut self, position: Option<(usize, usize)>) -> Self {
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.position = position.map(|(l, c)| (narrow(l), narrow(c)));
        self
    }

    /// Attaches the cause (the reader's own error).
    pub fn caused_by(mut self, source: impl Into<Cause>) -> Self {
        self.source = Some(Arc::new(source.into()));
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
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for InputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

/// Every error the composer library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, with file, line, field, fix and cause.
    #[error(transparent)]
    Input(Box<InputError>),
    /// Something the machine lacks.
    #[error("{message}")]
    Environment {
        /// What is missing.
        message: String,
        /// How to get it.
        hint: String,
    },
    /// An I/O failure on a named path.
    #[error("{op} {}", path.display())]
    Io {
        /// What we were doing, e.g. `writing`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A failure inside one build step, classified, with its cause.
    #[error("{context}")]
    Step {
        /// Which class of failure (never `InvalidInput`: that is [`Error::Input`]).
        kind: ErrorKind,
        /// What was being done, e.g. `writing the vhd image`.
        context: String,
        /// How to fix it, when we know.
        hint: Option<String>,
        /// The cause.
        #[source]
        source: Cause,
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
            Error::Step { kind, .. } => *kind,
            Error::BootFailed(_) => ErrorKind::BootFailed,
        }
    }

    /// How to fix it, when known (printed by `main` as `fix:`).
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Input(e) => Some(e.hint.as_str()).filter(|h| !h.is_empty()),
            Error::Environment { hint, .. } => Some(hint.as_str()),
            Error::Step { hint, .. } => hint.as_deref(),
            Error::Io { .. } | Error::BootFailed(_) => None,
        }
    }

    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { op, path, source }
    }

    /// A failure of kind `kind` while doing `context`, caused by `source`.
    pub fn step(kind: ErrorKind, context: impl Into<String>, source: impl Into<Cause>) -> Error {
        Error::Step {
            kind,
            context: context.into(),
            hint: None,
            source: source.into(),
        }
    }

    /// A format writer could not make an output (`writing the vhd image`). A full, read-only
    /// or forbidden disk underneath is an I/O failure (exit 4), not a limit of the format: the
    /// fix is space or permissions, not another format.
    pub fn format(context: impl Into<String>, source: impl Into<Cause>) -> Error {
        let source = source.into();
        if disk_fault(&*source) {
            return Error::step(ErrorKind::Io, context, source).with_hint(
                "free space (or fix permissions) where the output directory is, then build again",
            );
        }
        Error::step(ErrorKind::Format, context, source)
    }

    /// Attaches a `fix:` hint to a step error (other variants carry their own).
    pub fn with_hint(self, fix: impl Into<String>) -> Error {
        match self {
            Error::Step {
                kind,
                context,
                source,
                ..
            } => Error::Step {
                kind,
                context,
                hint: Some(fix.into()),
                source,
            },
            other => other,
        }
    }

    /// This error and its causes, outermost first, one message each.
    pub fn chain(&self) -> Vec<String> {
        causes(self)
    }
}

/// `err` and its causes, outermost first, one message each.
pub fn causes(err: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push(e.to_string());
        cur = e.source();
    }
    out
}

/// `err` and its causes on one line, `: `-separated: for a table cell or a test message,
/// where `caused by:` lines do not fit.
pub fn chain_line(err: &dyn std::error::Error) -> String {
    causes(err).join(": ")
}

/// Whether an `io::Error` somewhere in `err`'s chain says the disk is full, read-only or
/// not ours to write.
fn disk_fault(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::PermissionDenied
            ) {
                return true;
            }
        }
        cur = e.source();
    }
    false
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
    fn input_errors_name_file_line_and_field_and_keep_the_fix_apart() {
        let e: Error = InputError::new(
            "p.yaml",
            "kernel.deb",
            "file not found: k.deb",
            "run `make kernel`",
        )
        .at(Some((3, 3)))
        .into();
        assert_eq!(
            e.to_string(),
            "p.yaml:3:3: kernel.deb: file not found: k.deb"
        );
        assert_eq!(e.hint(), Some("run `make kernel`"));
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn the_chain_lists_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated header");
        let e: Error = InputError::new("p.yaml", "rootfs.tar", "cannot read the root", "fix it")
            .caused_by(io)
            .into();
        assert_eq!(
            e.chain(),
            vec![
                "p.yaml: rootfs.tar: cannot read the root".to_string(),
                "truncated header".to_string()
            ]
        );
        let s = Error::format("writing the vhd image", "too large".to_string());
        assert_eq!(s.kind(), ErrorKind::Format);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let wrapped = InputError::new("x", "", "stream failed", "").caused_by(full);
        let e = Error::format("writing the EFI system partition", wrapped);
        assert_eq!(e.kind(), ErrorKind::Io, "a full disk is not a format limit");
        assert!(e.hint().is_some_and(|h| h.contains("free space")));
        assert_eq!(s.chain(), vec!["writing the vhd image", "too large"]);
    }
}
