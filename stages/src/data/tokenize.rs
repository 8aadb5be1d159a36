//! The `tokenize` stage: the lab's prompt around each dialogue, the model's tokenizer, EOS
//! appended, truncation counted and reported (never silent), rows encoded in parallel. Output:
//! `tokens.parquet` (`id`, `input_ids`, `labels` as unpadded lists of int32; padding happens
//! per batch) and `meta.json`.

// Reading tokens back is for the model stages (the `torch` feature).
#![cfg_attr(not(feature = "torch"), allow(dead_code))]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int32Builder, ListArray, ListBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::StageError;
use crate::io::model_ref;
use crate::io::table::Table;
use crate::stage::{ArtifactKind, FileInput, InputRef, InputSlot, OutputDecl, ParamError, Stage, StageContext};

/// The longest source or target a stage takes, in tokens: T5's attention grows with its square.
pub const MAX_TOKENS: usize = 8192;

/// The lab's prompt.
pub const LAB_TEMPLATE: &str = "Summarize the following conversation.\n\n{dialogue}\n\nSummary: ";

/// The prompt for one dialogue.
pub fn render(template: &str, dialogue: &str) -> String {
    template.replace("{dialogue}", dialogue)
}

/// Token ids of `text` with EOS appended, cut to `max` tokens (keeping EOS last); returns
/// whether it was cut.
pub fn encode(tokenizer: &Tokenizer, text: &str, max: usize) -> Result<(Vec<i32>, bool), StageError> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|source| StageError::Tokenizer { context: "encoding a text".into(), source })?;
    let mut ids: Vec<i32> = enc.get_ids().iter().map(|&i| i as i32).collect();
    let truncated = ids.len() > max;
    if truncated {
        let eos = *ids.last().expect("not empty");
        ids.truncate(max - 1);
        ids.push(eos);
    }
    Ok((ids, truncated))
}

/// Params of `tokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeParams {
    /// The table of dialogues (and summaries).
    pub input: InputRef,
    /// A model folder or `hf://OWNER/NAME` whose tokenizer to use.
    #[serde(default)]
    pub model: Option<String>,
    /// Or the `model` output of a stage.
    #[serde(default)]
    pub model_from: Option<InputRef>,
    /// The prompt; `{dialogue}` is replaced by the dialogue.
    #[serde(default = "lab_template")]
    pub template: String,
    /// Column of dialogues.
    #[serde(default = "dialogue")]
    pub source_column: String,
    /// Column of summaries (the labels); none for unlabelled data.
    #[serde(default = "summary")]
    pub target_column: Option<String>,
    /// Column of row ids (default: `id` when present, else the row number).
    #[serde(default)]
    pub id_column: Option<String>,
    /// Longest source, in tokens (EOS included).
    #[serde(default = "d512")]
    pub max_source_tokens: usize,
    /// Longest target, in tokens (EOS included).
    #[serde(default = "d512")]
    pub max_target_tokens: usize,
}

impl TokenizeParams {
    /// Params with every default, tokenizing `input` with `model`'s tokenizer.
    pub fn new(input: InputRef, model: String) -> Self {
        TokenizeParams {
            input,
            model: Some(model),
            model_from: None,
            template: lab_template(),
            source_column: dialogue(),
            target_column: summary(),
            id_column: None,
            max_source_tokens: d512(),
            max_target_tokens: d512(),
        }
    }
}

fn lab_template() -> String {
    LAB_TEMPLATE.into()
}
fn dialogue() -> String {
    "dialogue".into()
}
fn summary() -> Option<String> {
    Some("summary".into())
}
fn d512() -> usize {
    512
}

/// Facts about a token artifact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenMeta {
    /// Rows.
    pub rows: usize,
    /// Sources cut to `max_source_tokens`.
    pub truncated_sources: usize,
    /// Targets cut to `max_target_tokens`.
    pub truncated_targets: usize,
    /// Source tokens in all.
    pub source_tokens: usize,
    /// Target tokens in all.
    pub target_tokens: usize,
}

/// Tokenized rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenTable {
    /// Row ids.
    pub ids: Vec<String>,
    /// Encoder inputs.
    pub input_ids: Vec<Vec<i32>>,
    /// Decoder targets (empty lists when unlabelled).
    pub labels: Vec<Vec<i32>>,
}

fn list(rows: &[Vec<i32>]) -> ArrayRef {
    let mut b = ListBuilder::new(Int32Builder::new());
    for r in rows {
        b.values().append_slice(r);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn unlist(col: &ArrayRef, path: &Path) -> Result<Vec<Vec<i32>>, StageError> {
    let bad = || StageError::data(path.display().to_string(), "not a token table (lists of int32 expected)");
    let l = col.as_any().downcast_ref::<ListArray>().ok_or_else(bad)?;
    (0..l.len())
        .map(|i| {
            let v = l.value(i);
            let ints = v.as_any().downcast_ref::<Int32Array>().ok_or_else(bad)?;
            Ok(ints.values().to_vec())
        })
        .collect()
}

impl TokenTable {
    /// Writes `tokens.parquet` and `meta.json` into `dir`.
    pub fn write(&self, dir: &Path, meta: &TokenMeta) -> Result<(), StageError> {
        let path = dir.join("tokens.parquet");
        let pq = |source| StageError::Parquet { path: path.clone(), source };
        let item = Arc::new(Field::new("item", DataType::Int32, true));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("input_ids", DataType::List(item.clone()), false),
            Field::new("labels", DataType::List(item), false),
        ]));
        let columns: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from_iter_values(&self.ids)), list(&self.input_ids), list(&self.labels)];
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|source| StageError::Arrow { context: path.display().to_string(), source })?;
        let file = File::create(&path).map_err(|e| StageError::io(&path, e))?;
        let mut w = ArrowWriter::try_new(file, schema, None).map_err(pq)?;
        w.write(&batch).map_err(pq)?;
        w.close().map_err(pq)?;
        let meta_path = dir.join("meta.json");
        std::fs::write(&meta_path, serde_json::to_string_pretty(meta).expect("meta serializes"))
            .map_err(|e| StageError::io(&meta_path, e))
    }

    /// Reads `tokens.parquet` from a token artifact folder.
    pub fn read(dir: &Path) -> Result<TokenTable, StageError> {
        let path = dir.join("tokens.parquet");
        let pq = |source| StageError::Parquet { path: path.clone(), source };
        let file = File::open(&path).map_err(|e| StageError::io(&path, e))?;
        let mut t = TokenTable::default();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?.build().map_err(pq)? {
            let batch = batch.map_err(|source| StageError::Arrow { context: path.display().to_string(), source })?;
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| StageError::data(path.display().to_string(), "no id column"))?;
            t.ids.extend((0..ids.len()).map(|i| ids.value(i).to_string()));
            t.input_ids.extend(unlist(batch.column(1), &path)?);
            t.labels.extend(unlist(batch.column(2), &path)?);
        }
        Ok(t)
    }

    /// Reads `meta.json` from a token artifact folder.
    pub fn read_meta(dir: &Path) -> Result<TokenMeta, StageError> {
        let path = dir.join("meta.json");
        let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| StageError::json(&path, e))
    }
}

/// Row ids: the id column, or 1-based row numbers.
pub fn row_ids(table: &Table, id_column: &Option<String>, source: &str) -> Result<Vec<String>, StageError> {
    match id_column {
        Some(c) => Ok(table.column(c, source)?.to_vec()),
        None if table.names().iter().any(|n| n == "id") => Ok(table.column("id", source)?.to_vec()),
        None => Ok((1..=table.num_rows()).map(|i| i.to_string()).collect()),
    }
}

/// Tokenizes a table as `p` says; returns the tokens and the counts.
pub fn tokenize(
    table: &Table,
    tokenizer: &Tokenizer,
    p: &TokenizeParams,
    source: &str,
) -> Result<(TokenTable, TokenMeta), StageError> {
    let dialogues = table.column(&p.source_column, source)?;
    let summaries = match &p.target_column {
        Some(c) => Some(table.column(c, source)?),
        None => None,
    };
    // Per row: (source ids, cut?), (target ids, cut?).
    type Encoded = (Vec<i32>, bool);
    let rows: Vec<(Encoded, Encoded)> = (0..table.num_rows())
        .into_par_iter()
        .map(|r| {
            let src = encode(tokenizer, &render(&p.template, &dialogues[r]), p.max_source_tokens)?;
            let tgt = match summaries {
                Some(s) => encode(tokenizer, &s[r], p.max_target_tokens)?,
                None => (Vec::new(), false),
            };
            Ok((src, tgt))
        })
        .collect::<Result<_, StageError>>()?;
    let meta = TokenMeta {
        rows: rows.len(),
        truncated_sources: rows.iter().filter(|r| r.0 .1).count(),
        truncated_targets: rows.iter().filter(|r| r.1 .1).count(),
        source_tokens: rows.iter().map(|r| r.0 .0.len()).sum(),
        target_tokens: rows.iter().map(|r| r.1 .0.len()).sum(),
    };
    let (input_ids, labels) = rows.into_iter().map(|(s, t)| (s.0, t.0)).unzip();
    Ok((TokenTable { ids: row_ids(table, &p.id_column, source)?, input_ids, labels }, meta))
}

/// The `tokenize` stage.
pub struct Tokenize;

impl Stage for Tokenize {
    type Params = TokenizeParams;
    const KIND: &'static str = "tokenize";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "prompt + tokenizer → unpadded token ids (sources and labels), truncation counted";

    fn inputs(&self, p: &TokenizeParams) -> Vec<InputSlot> {
        let mut slots =
            vec![InputSlot { field: "input".into(), reference: p.input.clone(), accepts: &[ArtifactKind::Table] }];
        slots.extend(model_ref::inputs(&p.model_from));
        slots
    }
    fn outputs(&self, _: &TokenizeParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "tokens".into(), kind: ArtifactKind::Tokens }]
    }
    fn check(&self, p: &TokenizeParams) -> Vec<ParamError> {
        let mut errors = model_ref::check(&p.model, &p.model_from);
        if !p.template.contains("{dialogue}") {
            errors.push(ParamError::new("template", "must contain `{dialogue}`"));
        }
        for (field, v) in [("max_source_tokens", p.max_source_tokens), ("max_target_tokens", p.max_target_tokens)] {
            if !(2..=MAX_TOKENS).contains(&v) {
                errors.push(ParamError::new(field, format!("must be between 2 (a token and EOS) and {MAX_TOKENS}")));
            }
        }
        errors
    }
    fn files(&self, p: &TokenizeParams) -> Vec<FileInput> {
        // Only the tokenizer matters here, not the weights.
        model_ref::files(&p.model).into_iter().filter(|f| f.field.ends_with("tokenizer.json")).collect()
    }
    fn run(&self, p: &TokenizeParams, ctx: &StageContext) -> Result<(), StageError> {
        let table = Table::read_artifact(ctx.input("input")?)?;
        let tokenizer = crate::data::tokenizer::load(&model_ref::resolve(&p.model, ctx)?.join("tokenizer.json"))?;
        ctx.progress.set_total(table.num_rows() as u64);
        let (tokens, meta) = tokenize(&table, &tokenizer, p, &format!("input {}", p.input))?;
        ctx.progress.inc(table.num_rows() as u64);
        ctx.record("truncated_sources", meta.truncated_sources as f64);
        ctx.record("truncated_targets", meta.truncated_targets as f64);
        tokens.write(&ctx.output_dir("tokens")?, &meta)
    }
    fn summary(&self, p: &TokenizeParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let m = TokenTable::read_meta(outputs.get("tokens")?).ok()?;
        Some(format!(
            "{} rows, {} source + {} target tokens; truncated: {} sources (> {}), {} targets (> {})",
            m.rows,
            m.source_tokens,
            m.target_tokens,
            m.truncated_sources,
            p.max_source_tokens,
            m.truncated_targets,
            p.max_target_tokens
        ))
    }
}
