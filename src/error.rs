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
    /// A model stage needs the worker binary, and it is not there.
    #[error("model stages run in `{}`, which is not there: build it (`make build`), or set SUMFLOW_WORKER to its path", path.display())]
    WorkerMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A stage failed in its worker: the worker's error, its causes kept.
    #[error(transparent)]
    Worker(WorkerError),
    /// A stage's worker process ended without finishing the stage: an abort, a crash, an
    /// out-of-memory kill.
    #[error("its worker process died ({status})")]
    WorkerDied {
        /// How it ended (`signal: 6 (SIGABRT)`, `exit status: 134`).
        status: String,
        /// The last lines of its stderr.
        #[source]
        stderr: Option<WorkerError>,
    },
    /// Running under torchrun went wrong (its environment, the other ranks).
    #[error("torchrun: {0}")]
    Torchrun(String),
    /// One rank of a stage running on several devices failed (the others were stopped).
    #[error("rank {rank} of {world} failed")]
    Rank {
        /// The rank, from 0.
        rank: usize,
        /// How many ranks ran.
        world: usize,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
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

/// An error that happened in a worker process, rebuilt from its messages (outermost first) so
/// it prints as it would have in the runner.
#[derive(Debug, Clone)]
pub struct WorkerError {
    message: String,
    source: Option<Box<WorkerError>>,
}

impl WorkerError {
    /// The chain `messages` (outermost first) as nested errors.
    pub fn from_chain(messages: Vec<String>) -> WorkerError {
        let mut messages = messages.into_iter().rev();
        let innermost = WorkerError { message: messages.next().unwrap_or_default(), source: None };
        messages.fold(innermost, |source, message| WorkerError { message, source: Some(Box::new(source)) })
    }

    /// The last lines a dead worker wrote on stderr, as the cause of its death; `None` if it
    /// wrote none.
    pub fn stderr_tail(lines: Vec<String>) -> Option<WorkerError> {
        (!lines.is_empty()).then(|| WorkerError {
            message: format!("its stderr ended with:\n    {}", lines.join("\n    ")),
            source: None,
        })
    }
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WorkerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
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

/// Prints an error with its causes: `error: …` then `caused by: …` (pipeline diagnostics carry
/// their own `error:` headers).
pub fn report(e: &Error) {
    if let Error::Pipeline(_) = e {
        eprintln!("{e}");
        return;
    }
    for (k, message) in chain(e).iter().enumerate() {
        eprintln!("{}: {message}", if k == 0 { "error" } else { "caused by" });
    }
}
