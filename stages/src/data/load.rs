//! The `load` stage: a CSV, JSONL or Parquet file (output `all`), a folder of split files
//! (one output per split), or a hub dataset `hf://datasets/OWNER/NAME`, checked row by row.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::io::table::{Format, Table};
use crate::stage::{ArtifactKind, FileInput, InputRef, InputSlot, OutputDecl, ParamError, Stage, StageContext};

/// Params of `load`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    /// A `.csv`, `.jsonl` or `.parquet` file, a folder with one such file per split, or
    /// `hf://datasets/OWNER/NAME` (fetched through the Hugging Face hub).
    pub path: String,
    /// Splits a folder or hub dataset provides; each becomes an output of that name.
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// File format, when the extension does not say it.
    #[serde(default)]
    pub format: Option<Format>,
    /// Columns to rename: name in the file → name in the output table.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Columns that must be present (after renaming).
    #[serde(default)]
    pub require: Vec<String>,
    /// Column of unique row ids, checked for duplicates (default: `id`, when there is one).
    #[serde(default)]
    pub id_column: Option<String>,
    /// What to do with a row whose text cell is empty or whitespace: `error` or `skip` (counted).
    #[serde(default)]
    pub empty_text: EmptyText,
    /// Columns allowed to hold empty text.
    #[serde(default)]
    pub allow_empty: Vec<String>,
    /// Hub revision for `hf://` paths.
    #[serde(default = "default_revision")]
    pub revision: String,
}

fn default_splits() -> Vec<String> {
    vec!["train".into(), "validation".into(), "test".into()]
}

fn default_revision() -> String {
    "main".into()
}

/// Policy for empty text cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmptyText {
    /// Stop with an error naming the file and row.
    #[default]
    Error,
    /// Drop the row and count it.
    Skip,
}

const HUB_PREFIX: &str = "hf://datasets/";

/// Where a `load` reads from.
enum Source {
    File(PathBuf),
    Dir(PathBuf),
    Hub(String),
}

impl LoadParams {
    fn source(&self) -> Source {
        if let Some(name) = self.path.strip_prefix(HUB_PREFIX) {
            Source::Hub(name.to_string())
        } else if Path::new(&self.path).is_dir() {
            Source::Dir(PathBuf::from(&self.path))
        } else {
            Source::File(PathBuf::from(&self.path))
        }
    }
}

/// The file holding `split` in a folder: `<split>.csv`, `.jsonl`, `.json` or `.parquet`.
fn split_file(dir: &Path, split: &str) -> PathBuf {
    Format::ALL
        .iter()
        .flat_map(|(_, exts)| exts.iter())
        .map(|ext| dir.join(format!("{split}.{ext}")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join(format!("{split}.csv")))
}

/// The `load` stage.
pub struct Load;

impl Stage for Load {
    type Params = LoadParams;
    const KIND: &'static str = "load";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "read a CSV/JSONL/Parquet file, a folder of split files, or hf://datasets/OWNER/NAME";

    fn inputs(&self, _: &LoadParams) -> Vec<InputSlot> {
        Vec::new()
    }

    fn outputs(&self, p: &LoadParams) -> Vec<OutputDecl> {
        let names = match p.source() {
            Source::File(_) => vec!["all".to_string()],
            Source::Dir(_) | Source::Hub(_) => p.splits.clone(),
        };
        names.into_iter().map(|name| OutputDecl { name, kind: ArtifactKind::Table }).collect()
    }

    fn check(&self, p: &LoadParams) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if p.path.trim().is_empty() {
            errors.push(ParamError::new("path", "is empty"));
        }
        if let Source::Hub(name) = p.source() {
            if name.split('/').count() != 2 || name.split('/').any(str::is_empty) {
                errors.push(ParamError::new("path", format!("`{}`: write hf://datasets/OWNER/NAME", p.path)));
            }
        }
        if matches!(p.source(), Source::Dir(_) | Source::Hub(_)) && p.splits.is_empty() {
            errors.push(ParamError::new("splits", "a folder or hub dataset needs at least one split"));
        }
        for (i, s) in p.splits.iter().enumerate() {
            if !InputRef::is_name(s) {
                errors.push(ParamError::new(
                    format!("splits[{i}]"),
                    format!("`{s}` is not a valid output name (letters, digits, _ and -)"),
                ));
            }
        }
        if let (Source::File(path), None) = (p.source(), p.format) {
            if Format::from_path(&path).is_none() {
                errors.push(ParamError::new(
                    "path",
                    format!(
                        "cannot tell the format of `{}`: use a .csv, .jsonl or .parquet file, or set `format`",
                        path.display()
                    ),
                ));
            }
        }
        errors
    }

    fn files(&self, p: &LoadParams) -> Vec<FileInput> {
        match p.source() {
            Source::File(path) => vec![FileInput { field: "path".into(), path }],
            Source::Dir(dir) => {
                p.splits.iter().map(|s| FileInput { field: format!("path/{s}"), path: split_file(&dir, s) }).collect()
            }
            Source::Hub(_) => Vec::new(),
        }
    }

    fn run(&self, p: &LoadParams, ctx: &StageContext) -> Result<(), StageError> {
        let files: Vec<(String, PathBuf)> = match p.source() {
            Source::File(path) => vec![("all".into(), path)],
            Source::Dir(dir) => p.splits.iter().map(|s| (s.clone(), split_file(&dir, s))).collect(),
            Source::Hub(name) => crate::io::hub::fetch_dataset(&name, &p.revision, &p.splits)?,
        };
        ctx.progress.set_total(files.len() as u64);
        for (output, path) in files {
            ctx.progress.message(&format!("reading {}", path.display()));
            let format = p.format.or_else(|| Format::from_path(&path)).unwrap_or(Format::Csv);
            let raw = read_file(&path, format)?;
            let (table, skipped) = validate(raw, p, &path)?;
            table.write_artifact(&ctx.output_dir(&output)?, &path.display().to_string(), skipped)?;
            ctx.progress.inc(1);
        }
        Ok(())
    }

    fn summary(&self, _: &LoadParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let parts: Vec<String> = outputs
            .iter()
            .filter_map(|(name, dir)| {
                let meta = Table::read_meta(dir).ok()?;
                let skipped = if meta.skipped_empty > 0 {
                    format!(", {} skipped as empty", meta.skipped_empty)
                } else {
                    String::new()
                };
                Some(format!("{name}: {} rows{skipped}", meta.rows))
            })
            .collect();
        Some(parts.join("; "))
    }
}

/// A table read from a file, with the line (CSV, JSONL) or row number (Parquet) of each row.
pub struct RawTable {
    table: Table,
    row_lines: Vec<u64>,
    unit: &'static str,
}

/// Reads any supported file into a table, checking encoding and shape.
pub fn read_table(path: &Path, format: Option<Format>) -> Result<Table, StageError> {
    let format = format.or_else(|| Format::from_path(path)).unwrap_or(Format::Csv);
    Ok(read_file(path, format)?.table)
}

fn read_file(path: &Path, format: Format) -> Result<RawTable, StageError> {
    let meta = std::fs::metadata(path).map_err(|e| StageError::io(path, e))?;
    if meta.len() == 0 {
        return Err(StageError::data(path.display().to_string(), "file is empty"));
    }
    let raw = match format {
        Format::Csv => read_csv(path)?,
        Format::Jsonl => read_jsonl(path)?,
        Format::Parquet => {
            let table = Table::read_parquet(path)?;
            let row_lines = (1..=table.num_rows() as u64).collect();
            RawTable { table, row_lines, unit: "row" }
        }
    };
    if raw.table.num_rows() == 0 {
        return Err(StageError::data(path.display().to_string(), "has no rows"));
    }
    Ok(raw)
}

fn read_csv(path: &Path) -> Result<RawTable, StageError> {
    let at = |line: u64| format!("{}:{}", path.display(), line);
    let csv_err = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line());
        let message = match e.kind() {
            csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                format!("row has {len} fields, the header has {expected_len}")
            }
            _ => e.to_string(),
        };
        StageError::data(at(line), message)
    };
    let mut reader = csv::ReaderBuilder::new()
        .from_path(path)
        .map_err(|e| StageError::data(path.display().to_string(), e.to_string()))?;
    let header = reader.headers().map_err(csv_err)?.clone();
    // An unnamed first column is a pandas index; name it as pandas reads it back.
    let names: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| if h.is_empty() { format!("unnamed_{i}") } else { h.to_string() })
        .collect();
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    let mut row_lines = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        row_lines.push(record.position().map_or(0, |p| p.line()));
        for (c, field) in columns.iter_mut().zip(record.iter()) {
            c.push(field.to_string());
        }
    }
    let table = Table::new(names, columns, &at(1))?;
    Ok(RawTable { table, row_lines, unit: "line" })
}

fn read_jsonl(path: &Path) -> Result<RawTable, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Vec<String>> = Vec::new();
    let mut row_lines = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let lineno = i as u64 + 1;
        let at = || format!("{}:{}", path.display(), lineno);
        let line = std::str::from_utf8(line)
            .map_err(|e| StageError::data(at(), format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
        if line.trim().is_empty() {
            continue;
        }
        let object: indexmap::IndexMap<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| StageError::data(at(), format!("not a JSON object: {e}")))?;
        if names.is_empty() && row_lines.is_empty() {
            names = object.keys().cloned().collect();
            columns = vec![Vec::new(); names.len()];
        }
        if object.len() != names.len() || names.iter().any(|n| !object.contains_key(n)) {
            let keys: Vec<&String> = object.keys().collect();
            return Err(StageError::data(at(), format!("keys {keys:?} differ from the first line's {names:?}")));
        }
        for (n, c) in names.iter().zip(columns.iter_mut()) {
            let text = match &object[n] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(x) => x.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => return Err(StageError::data(at(), format!("`{n}` is null"))),
                _ => return Err(StageError::data(at(), format!("`{n}` is not a string, number or boolean"))),
            };
            c.push(text);
        }
        row_lines.push(lineno);
    }
    let table = Table::new(names, columns, &path.display().to_string())?;
    Ok(RawTable { table, row_lines, unit: "line" })
}

/// Renames, checks required columns, empty text and duplicate ids; returns the rows kept.
fn validate(raw: RawTable, p: &LoadParams, path: &Path) -> Result<(Table, usize), StageError> {
    let RawTable { table, row_lines, unit } = raw;
    let at = |row: usize| match unit {
        "line" => format!("{}:{}", path.display(), row_lines[row]),
        _ => format!("{}: row {}", path.display(), row_lines[row]),
    };
    let source_name = path.display().to_string();

    let mut names = table.names().to_vec();
    for (from, to) in &p.rename {
        let i = names.iter().position(|n| n == from).ok_or_else(|| StageError::MissingColumn {
            source_name: source_name.clone(),
            column: from.clone(),
            found: table.names().to_vec(),
        })?;
        names[i] = to.clone();
    }
    let columns: Vec<Vec<String>> = table
        .names()
        .iter()
        .map(|n| table.column(n, &source_name).map(<[String]>::to_vec))
        .collect::<Result<_, _>>()?;
    let table = Table::new(names, columns, &source_name)?;
    for col in &p.require {
        table.column(col, &source_name)?;
    }

    // Empty text: an error naming the row, or a skipped row.
    let mut keep = Vec::with_capacity(table.num_rows());
    let checked: Vec<(&String, &[String])> = table
        .names()
        .iter()
        .filter(|n| !p.allow_empty.contains(n))
        .map(|n| Ok((n, table.column(n, &source_name)?)))
        .collect::<Result<_, StageError>>()?;
    for row in 0..table.num_rows() {
        match checked.iter().find(|(_, c)| c[row].trim().is_empty()) {
            None => keep.push(row),
            Some(_) if p.empty_text == EmptyText::Skip => {}
            Some((name, _)) => {
                return Err(StageError::data(
                    at(row),
                    format!("column `{name}` is empty (set `empty_text: skip` to drop such rows, or list the column in `allow_empty`)"),
                ))
            }
        }
    }

    // Duplicate ids: name both rows.
    let id_column = match &p.id_column {
        Some(c) => Some(table.column(c, &source_name).map(|_| c.as_str())?),
        None => table.names().iter().any(|n| n == "id").then_some("id"),
    };
    if let Some(id_column) = id_column {
        let ids = table.column(id_column, &source_name)?;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for &row in &keep {
            if let Some(first) = seen.insert(ids[row].as_str(), row) {
                return Err(StageError::data(
                    at(row),
                    format!("duplicate {id_column} `{}` (first at {})", ids[row], at(first)),
                ));
            }
        }
    }
    let skipped = table.num_rows() - keep.len();
    let table = if skipped == 0 { table } else { table.take(&keep) };
    Ok((table, skipped))
}
