//! The runner's errors. Each keeps what caused it as its source; `main` prints the chain
//! (`error: …` then `caused by: …`), and nothing else prints errors.

use std::path::PathBuf;

use crate::diagnostic::Diagnostics;

/// Why a sumflow command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file is invalid (every problem, with file:line:column).
    #[error("{0}")]
    Pipeline(Diagnostics),
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A stage, or a tool running a stage's code, failed (its error names the file, row or
    /// field at fault).
    #[error(transparent)]
    Stage(#[from] sumflow_stages::StageError),
    /// A stage panicked (a bug, or a libtorch failure tch turned into a panic).
    #[error("the stage panicked: {0}")]
    Panicked(String),
    /// A file a stage reads changed after its digest was taken (while the stage read it, or
    /// while it was hashed): the key would name one version and the output another.
    #[error("{} changed while it was being read; run again once it stays as it is", path.display())]
    InputChanged {
        /// The file.
        path: PathBuf,
    },
    /// Stages failed; each was reported as it happened.
    #[error("{} stage{} failed: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    StagesFailed(Vec<String>),
    /// A file in the cache is not what it should be.
    #[error("cache {}: {message}", path.display())]
    Cache {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A JSON file of the cache (an entry, a manifest, a memo) does not parse.
    #[error("{}: not a sumflow {what}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A remote failed or refused something (the message names the object, record or stage,
    /// and the backend's error in brief).
    #[error("remote `{remote}`: {message}")]
    Remote {
        /// The remote's name (or URL, without credentials).
        remote: String,
        /// What went wrong.
        message: String,
    },
    /// A remote could not be reached (no connection, no answer in time).
    #[error("remote `{remote}`: {message}")]
    RemoteUnreachable {
        /// The remote's name (or URL, without credentials).
        remote: String,
        /// What went wrong.
        message: String,
    },
    /// A lock file is missing, unreadable, or disagrees with the pipeline.
    #[error("{}: {message}", path.display())]
    Lock {
        /// The lock file.
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
    /// Whoever read the command's output stopped reading (a closed pipe): the command ends
    /// quietly.
    #[error("standard output was closed")]
    ReaderGone,
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

/// The messages of an error and of every error beneath it, outermost first.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out
}
