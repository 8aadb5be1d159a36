//! Errors a stage can fail with. Each keeps its source and names the file or field at fault.

use std::path::{Path, PathBuf};

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
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
    /// Reading or writing Parquet failed.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow conversion failed.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being converted.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Fetching from the Hugging Face hub failed.
    #[error("{what}: {message}")]
    Hub {
        /// What was fetched.
        what: String,
        /// Why it failed, with the offline alternative.
        message: String,
    },
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
}
