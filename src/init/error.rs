//! What makes `init` fail: a file it cannot read, or a mapping it wrote
//! that does not compile (a bug). Below every other room of `init`, so
//! that the sniffing and the entry point can both return it.

use crate::source::SourceError;

/// A file `init` cannot read.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The mapping written does not compile: a bug in `init`.
    #[error("the mapping init wrote does not work, which is a bug in init: {0}")]
    Invalid(String),
}
