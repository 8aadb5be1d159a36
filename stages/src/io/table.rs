//! Text tables: the in-memory form of every `table` artifact and its Parquet file.
//!
//! A table artifact is a folder with `table.parquet` (all columns UTF-8, in order) and
//! `meta.json` (row count, where the rows came from, rows skipped).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::io::atomic::atomic_write;

/// File name of the table inside a table artifact.
pub const TABLE_FILE: &str = "table.parquet";
/// File name of the metadata inside a table artifact.
pub const META_FILE: &str = "meta.json";

/// A table file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// Each format with its file extensions.
    pub const ALL: [(Format, &'static [&'static str]); 3] =
        [(Format::Csv, &["csv"]), (Format::Jsonl, &["jsonl", "json"]), (Format::Parquet, &["parquet"])];

    /// The format a file's extension names.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Format::ALL.iter().find(|(_, exts)| exts.contains(&ext.as_str())).map(|(f, _)| *f)
    }
}

/// A table of text columns, all the same length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    names: Vec<String>,
    columns: Vec<Vec<String>>,
}

/// Facts about a table artifact, stored beside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TableMeta {
    /// Number of rows.
    pub rows: usize,
    /// Where the rows came from (a file, a hub dataset, a stage).
    pub source: String,
    /// Rows dropped because a text cell was empty (when asked to skip them).
    #[serde(default)]
    pub skipped_empty: usize,
}

impl Table {
    /// A table from named columns; an error naming `source` (where the columns came from) if
    /// their lengths differ or a name repeats.
    pub fn new(names: Vec<String>, columns: Vec<Vec<String>>, source: &str) -> Result<Self, StageError> {
        let bad = |message: String| Err(StageError::data(source, message));
        if names.len() != columns.len() {
            return bad(format!("{} names for {} columns", names.len(), columns.len()));
        }
        if let Some(first) = columns.first() {
            if let Some((i, _)) = columns.iter().enumerate().find(|(_, c)| c.len() != first.len()) {
                return bad(format!("column `{}` has a different length", names[i]));
            }
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return bad(format!("column `{n}` appears twice"));
            }
        }
        Ok(Table { names, columns })
    }

    /// Column names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.columns.first().map_or(0, Vec::len)
    }

    /// The column called `name`, or an error listing the columns there are.
    pub fn column(&self, name: &str, source_name: &str) -> Result<&[String], StageError> {
        self.names.iter().position(|n| n == name).map(|i| self.columns[i].as_slice()).ok_or_else(|| {
            StageError::MissingColumn {
                source_name: source_name.to_string(),
                column: name.to_string(),
                found: self.names.clone(),
            }
        })
    }

    /// The rows at `rows`, in that order.
    pub fn take(&self, rows: &[usize]) -> Table {
        Table {
            names: self.names.clone(),
            columns: self.columns.iter().map(|c| rows.iter().map(|&r| c[r].clone()).collect()).collect(),
        }
    }

    /// Writes `table.parquet` and `meta.json` into the folder `dir`.
    pub fn write_artifact(&self, dir: &Path, source: &str, skipped_empty: usize) -> Result<(), StageError> {
        self.write_parquet(&dir.join(TABLE_FILE))?;
        let meta = TableMeta { rows: self.num_rows(), source: source.to_string(), skipped_empty };
        let path = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(&meta).expect("table metadata serializes");
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))
    }

    /// Reads the table of a table artifact folder.
    pub fn read_artifact(dir: &Path) -> Result<Table, StageError> {
        Table::read_parquet(&dir.join(TABLE_FILE))
    }

    /// Reads a table artifact's metadata.
    pub fn read_meta(dir: &Path) -> Result<TableMeta, StageError> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| StageError::json(&path, e))
    }

    /// Writes the table as one Parquet file (snappy, all columns UTF-8).
    pub fn write_parquet(&self, path: &Path) -> Result<(), StageError> {
        let bytes = self.parquet_bytes(path)?;
        std::fs::write(path, bytes).map_err(|e| StageError::io(path, e))
    }

    /// The table as the bytes of a Parquet file (`path` names it in errors).
    fn parquet_bytes(&self, path: &Path) -> Result<Vec<u8>, StageError> {
        let pq = |source| StageError::Parquet { path: path.to_path_buf(), source };
        let fields: Vec<Field> = self.names.iter().map(|n| Field::new(n, DataType::Utf8, false)).collect();
        let schema = Arc::new(Schema::new(fields));
        let arrays: Vec<ArrayRef> =
            self.columns.iter().map(|c| Arc::new(StringArray::from_iter_values(c)) as ArrayRef).collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|source| StageError::Arrow { context: path.display().to_string(), source })?;
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(pq)?;
        writer.write(&batch).map_err(pq)?;
        writer.into_inner().map_err(pq)
    }

    /// Writes the table to `path` as `format` says, atomically (a reader sees no file or the
    /// whole file): CSV with a header, JSON objects one per line, or Parquet.
    pub fn write_file(&self, path: &Path, format: Format) -> Result<(), StageError> {
        let bytes = match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(&self.names).map_err(|e| StageError::csv(path, e))?;
                for r in 0..self.num_rows() {
                    w.write_record(self.columns.iter().map(|c| c[r].as_str())).map_err(|e| StageError::csv(path, e))?;
                }
                w.into_inner().map_err(|e| StageError::io(path, e.into_error()))?
            }
            Format::Jsonl => {
                let mut out = Vec::new();
                for r in 0..self.num_rows() {
                    let row: serde_json::Map<String, serde_json::Value> = self
                        .names
                        .iter()
                        .zip(&self.columns)
                        .map(|(n, c)| (n.clone(), serde_json::Value::String(c[r].clone())))
                        .collect();
                    serde_json::to_writer(&mut out, &row).map_err(|e| StageError::json(path, e))?;
                    out.push(b'\n');
                }
                out
            }
            Format::Parquet => self.parquet_bytes(path)?,
        };
        atomic_write(path, &bytes).map_err(|e| StageError::io(path, e))
    }

    /// Reads a Parquet file; non-text columns are cast to text, nulls are an error.
    pub fn read_parquet(path: &Path) -> Result<Table, StageError> {
        let pq = |source| StageError::Parquet { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(|e| StageError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
        let names: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut columns: Vec<Vec<String>> = vec![Vec::new(); names.len()];
        let mut row0 = 0;
        for batch in builder.build().map_err(pq)? {
            let batch = batch.map_err(|source| StageError::Arrow { context: path.display().to_string(), source })?;
            for (i, col) in batch.columns().iter().enumerate() {
                let text = arrow::compute::cast(col, &DataType::Utf8).map_err(|source| StageError::Arrow {
                    context: format!("{}: column `{}`", path.display(), names[i]),
                    source,
                })?;
                let text = text
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| StageError::Internal("cast to Utf8 gave another type".into()))?;
                for r in 0..text.len() {
                    if text.is_null(r) {
                        return Err(StageError::data(
                            format!("{}: row {}", path.display(), row0 + r + 1),
                            format!("column `{}` is null", names[i]),
                        ));
                    }
                    columns[i].push(text.value(r).to_string());
                }
            }
            row0 += batch.num_rows();
        }
        Table::new(names, columns, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_round_trip_keeps_text_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let t = Table::new(
            vec!["id".into(), "text".into()],
            vec![vec!["a".into(), "b".into()], vec!["x\r\ny — ü".into(), " padded ".into()]],
            "test",
        )
        .unwrap();
        t.write_artifact(dir.path(), "test", 1).unwrap();
        assert_eq!(Table::read_artifact(dir.path()).unwrap(), t);
        let meta = Table::read_meta(dir.path()).unwrap();
        assert_eq!((meta.rows, meta.skipped_empty), (2, 1));
    }

    #[test]
    fn missing_column_lists_the_found_ones() {
        let t = Table::new(vec!["a".into(), "b".into()], vec![vec![], vec![]], "t").unwrap();
        let err = t.column("c", "data.csv").unwrap_err().to_string();
        assert_eq!(err, "data.csv: no column `c` (found: a, b)");
    }
}
