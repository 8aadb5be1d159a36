//! Errors a stage can fail with. Each names the file, row or field at fault and keeps the error
//! underneath as its source, so the runner can print the whole chain (`error: …` then
//! `caused by: …`). A mistake in a param that only running can find is [`StageError::Param`];
//! [`StageError::Internal`] is for broken invariants only.

use std::path::{Path, PathBuf};

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Reading or writing a file failed.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Input data is malformed; `location` names the file and line or row.
    #[error("{location}: {message}")]
    Data {
        /// `file:line` or `file: row N`.
        location: String,
        /// What is wrong with it.
        message: String,
    },
    /// A table lacks a column the stage needs.
    #[error("{source_name}: no column `{column}` (found: {})", found.join(", "))]
    MissingColumn {
        /// The table's origin (file or stage input).
        source_name: String,
        /// The missing column.
        column: String,
        /// The columns that are there.
        found: Vec<String>,
    },
    /// A param that could only be checked when the stage ran (the device it names is missing,
    /// the model it names is not of the kind it needs).
    #[error("{field}: {message}")]
    Param {
        /// The param's dotted path within the stage's params.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Ranks of a stage running on several devices could not meet, or a collective failed (a
    /// rank died or went silent past the timeout).
    #[error("distributed: {0}")]
    Distributed(String),
    /// A model stage was asked to run where libtorch is not (the runner): it runs in
    /// `sumflow-worker`, through [`crate::Registry::with_libtorch`].
    #[error("model stages run in `sumflow-worker`, not here")]
    NeedsLibtorch,
    /// Reading or writing Parquet failed.
    #[error("{}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow conversion failed.
    #[error("{context}")]
    Arrow {
        /// What was being converted.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Reading or writing CSV failed.
    #[error("{}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: csv::Error,
    },
    /// A JSON file is not what it should be.
    #[error("{}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The tokenizers library failed (loading, training, encoding, decoding).
    #[error("{context}")]
    Tokenizer {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },
    /// libtorch failed.
    #[cfg(feature = "torch")]
    #[error("{context}")]
    Torch {
        /// What was being done (a file, an operation).
        context: String,
        /// The underlying error.
        #[source]
        source: tch::TchError,
    },
    /// Writing safetensors failed.
    #[cfg(feature = "torch")]
    #[error("{}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// Fetching from the Hugging Face hub failed.
    #[error("{what}: cannot fetch it from the Hugging Face hub; offline, point the stage at a local copy instead (a folder path, e.g. --set data=../shared/data/dialogsum, or --set model=DIR from `sumflow make-model`)")]
    Hub {
        /// What was fetched.
        what: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device or libtorch refused something (a CUDA graph capture, an autocast state).
    #[error("{0}")]
    Device(String),
    /// A bug or broken invariant inside sumflow.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StageError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StageError::Io { path: path.to_path_buf(), source }
    }

    /// Malformed data at `location`.
    pub fn data(location: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::Data { location: location.into(), message: message.into() }
    }

    /// A param found wrong while running.
    pub fn param(field: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::Param { field: field.into(), message: message.into() }
    }

    /// A JSON error on `path`.
    pub fn json(path: &Path, source: serde_json::Error) -> Self {
        StageError::Json { path: path.to_path_buf(), source }
    }

    /// A CSV error on `path`.
    pub fn csv(path: &Path, source: csv::Error) -> Self {
        StageError::Csv { path: path.to_path_buf(), source }
    }

    /// A libtorch error while doing `context`.
    #[cfg(feature = "torch")]
    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        StageError::Torch { context: context.into(), source }
    }
}

/// The message a panic carried (`panic!` with a string or a format), or a placeholder.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}
