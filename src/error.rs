//! The runner's errors. `main` prints them; everything else returns them.

use std::path::PathBuf;

use crate::diagnostic::Diagnostics;

/// Why a sumflow command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file is invalid (every problem, with file:line:column).
    #[error("{0}")]
    Pipeline(Diagnostics),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stage failed (its error names the file, row or field at fault).
    #[error("stage `{stage}` ({kind}) failed: {source}")]
    Stage {
        /// The stage id.
        stage: String,
        /// Its kind.
        kind: String,
        /// What went wrong.
        #[source]
        source: sumflow_stages::StageError,
    },
    /// A model command failed.
    #[error("{0}")]
    Model(#[from] sumflow_stages::StageError),
    /// Stages failed; each was reported as it happened.
    #[error("{} stage{} failed: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    StagesFailed(Vec<String>),
    /// A file in the cache is not what it should be.
    #[error("cache {path}: {message}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--frozen` and some stage would run.
    #[error("--frozen: {0}")]
    Frozen(String),
    /// An audit found mismatches.
    #[error("audit failed: {0}")]
    Audit(String),
    /// A command-line problem not caught by clap.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
