//! The model commands: `make-model`, `merge`, `params` and `summarize`, through the code the
//! `make-model` and `generate` stages run, with the same checks (a flag's name stands where a
//! pipeline would name the field).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapter;
use crate::data::load::read_table;
use crate::data::tokenize::render;
use crate::error::StageError;
use crate::generate::{open, summarize as generate_all, GenerateParams};
use crate::io::hub::fetch_model;
use crate::io::table::{Format, Table};
use crate::make_model::{make_model as make, MakeModelParams};
use crate::runtime::RuntimeOptions;
use crate::stage::{InputRef, NoProgress};
use crate::t5::adapt::count_parameters;
use crate::t5::config::T5Config;
use crate::t5::decode::Strategy;
use crate::t5::loader::read_config;
use crate::t5::lora::LoraSettings;
use crate::torch::device::DeviceChoice;

/// What `sumflow params` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCount {
    /// Parameters the optimizer updates.
    pub trainable: i64,
    /// All parameters.
    pub total: i64,
}

impl ParamCount {
    /// The lab's `print_number_of_trainable_model_parameters` output.
    pub fn render(&self) -> String {
        format!(
            "trainable model parameters: {}\nall model parameters: {}\npercentage of trainable model parameters: {:.2}%\n",
            self.trainable,
            self.total,
            100.0 * self.trainable as f64 / self.total as f64
        )
    }
}

/// A model folder: local, or fetched from the hub.
fn local(model: &str) -> Result<PathBuf, StageError> {
    if model.starts_with("hf://") {
        fetch_model(model)
    } else {
        Ok(model.into())
    }
}

/// Writes a random-init model of `arch` with a tokenizer trained on `data` into `out` (which
/// must not exist yet: a user's files are never overwritten).
pub fn make_model(arch: &str, data: &Path, vocab_size: u32, seed: i64, out: &Path) -> Result<(), StageError> {
    let p = MakeModelParams {
        arch: arch.into(),
        tokenizer_data: data.display().to_string(),
        vocab_size,
        text_columns: vec!["dialogue".into(), "summary".into()],
        seed,
    };
    if let Some(e) = p.check().into_iter().next() {
        return Err(StageError::param(format!("--{}", e.field.replace('_', "-")), e.message));
    }
    into_new_folder(out, |tmp| make(&p, tmp))
}

/// Writes `base` with the adapter in `adapter` merged into its weights to `out`, a new folder
/// that is neither the base nor the adapter, nor inside either.
pub fn merge(adapter: &Path, base: &str, out: &Path) -> Result<(), StageError> {
    let base = local(base)?;
    let inside = |dir: &Path| {
        let (Ok(dir), Some(out)) = (std::fs::canonicalize(dir), canonical_target(out)) else { return false };
        out.starts_with(&dir)
    };
    for (flag, dir) in [("--base", base.as_path()), ("ADAPTER", adapter)] {
        if inside(dir) {
            return Err(StageError::param(
                "--out",
                format!("{} is {flag} or inside it ({}): merge writes a new folder", out.display(), dir.display()),
            ));
        }
    }
    into_new_folder(out, |tmp| adapter::merge(adapter, &base, tmp))
}

/// `path` made absolute and canonical as far as it exists (the rest appended as written).
fn canonical_target(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?;
    }
    let mut out = std::fs::canonicalize(existing).ok()?;
    out.extend(rest.iter().rev());
    Some(out)
}

/// Runs `write` into a temporary folder beside `out`, then renames it to `out`, which must not
/// exist (or be an empty folder): nothing half-written is ever left at `out`, and nothing there
/// is replaced.
fn into_new_folder(out: &Path, write: impl FnOnce(&Path) -> Result<(), StageError>) -> Result<(), StageError> {
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        return Err(StageError::param("--out", format!("{} exists; choose a new folder", out.display())));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
    let name = out.file_name().map_or("out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
    let written = write(&tmp).and_then(|()| crate::io::atomic::sync_tree(&tmp).map_err(|e| StageError::io(&tmp, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir(out);
    std::fs::rename(&tmp, out).map_err(|e| StageError::io(out, e))
}

/// Parses `r=32,alpha=32,dropout=0.05,targets=q+v` (targets also comma-separated at the end).
fn parse_lora(spec: &str) -> Result<LoraSettings, StageError> {
    let mut s = LoraSettings::default();
    let mut targets: Vec<String> = Vec::new();
    let mut in_targets = false;
    let bad = || StageError::param("--lora", format!("`{spec}`: write r=32,alpha=32,dropout=0.05,targets=q,v"));
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("r", v)) => s.r = v.parse().map_err(|_| bad())?,
            Some(("alpha", v)) => s.alpha = v.parse().map_err(|_| bad())?,
            Some(("dropout", v)) => s.dropout = v.parse().map_err(|_| bad())?,
            Some(("targets", v)) => {
                in_targets = true;
                targets.extend(v.split('+').map(str::to_string));
            }
            None if in_targets => targets.push(part.to_string()),
            _ => return Err(bad()),
        }
    }
    if !targets.is_empty() {
        s.targets = targets;
    }
    if let Some(e) = s.check().into_iter().next() {
        return Err(StageError::param(format!("--lora {}", e.field), e.message));
    }
    Ok(s)
}

/// Counts the parameters of an architecture preset or of a model folder's config.
pub fn params(model: &str, lora: Option<&str>) -> Result<ParamCount, StageError> {
    let config = match T5Config::preset(model) {
        Some(c) => c,
        None => read_config(&local(model)?)?,
    };
    let lora = lora.map(parse_lora).transpose()?;
    if let Some(e) = lora.as_ref().and_then(|l| l.check_rank(&config)) {
        return Err(StageError::param(format!("--lora {}", e.field), e.message));
    }
    let (trainable, total) = count_parameters(&config, lora.as_ref());
    Ok(ParamCount { trainable, total })
}

/// The `generate` params `summarize`'s flags stand for, checked as the stage checks them.
fn generate_params(
    model: &str,
    max_new_tokens: i64,
    num_beams: i64,
    device: &str,
) -> Result<GenerateParams, StageError> {
    let mut p = GenerateParams::new(InputRef { stage: "input".into(), output: None }, model.to_string());
    p.max_new_tokens = max_new_tokens;
    if num_beams < 1 {
        return Err(StageError::param("--num-beams", "must be at least 1"));
    }
    if num_beams > 1 {
        p.decoding = Strategy::Beam { num_beams, length_penalty: 1.0 };
    }
    p.device = match device {
        "cpu" => DeviceChoice::Cpu,
        "cuda" => DeviceChoice::Cuda,
        "auto" => DeviceChoice::Auto,
        other => return Err(StageError::param("--device", format!("`{other}`: use cpu, cuda or auto"))),
    };
    if let Some(e) = p.check().into_iter().next() {
        let flag = e.field.rsplit('.').next().unwrap_or(&e.field).replace('_', "-");
        return Err(StageError::param(format!("--{flag}"), e.message));
    }
    Ok(p)
}

/// Summaries of `dialogues` with the lab's prompt.
pub fn summarize(
    model: &str,
    adapter: Option<&Path>,
    dialogues: &[String],
    max_new_tokens: i64,
    num_beams: i64,
    device: &str,
    runtime: &RuntimeOptions,
) -> Result<Vec<String>, StageError> {
    let p = generate_params(model, max_new_tokens, num_beams, device)?;
    let m = open(&local(model)?, adapter, &p, runtime, None)?;
    let prompts: Vec<String> = dialogues.iter().map(|d| render(&p.template, d)).collect();
    let generated = generate_all(&m, &prompts, &p.options(), &NoProgress, runtime.trace.as_deref())?;
    Ok(generated.summaries.into_iter().map(|s| s.0).collect())
}

/// Writes the rows of `input` plus a `prediction` column to `output`, in the format its
/// extension names (CSV, JSONL or Parquet), as a new file; returns the rows written.
#[allow(clippy::too_many_arguments)]
pub fn summarize_file(
    model: &str,
    adapter: Option<&Path>,
    input: &Path,
    output: &Path,
    column: &str,
    max_new_tokens: i64,
    num_beams: i64,
    device: &str,
    runtime: &RuntimeOptions,
) -> Result<usize, StageError> {
    let format = Format::from_path(output).ok_or_else(|| {
        StageError::param("--output", format!("{}: name a .csv, .jsonl or .parquet file", output.display()))
    })?;
    if output.exists() {
        return Err(StageError::param("--output", format!("{} exists; choose a new file", output.display())));
    }
    let table = read_table(input, None)?;
    let name = input.display().to_string();
    if table.names().iter().any(|n| n == "prediction") {
        return Err(StageError::data(&name, "already has a `prediction` column"));
    }
    generate_params(model, max_new_tokens, num_beams, device)?;
    let summaries =
        summarize(model, adapter, table.column(column, &name)?, max_new_tokens, num_beams, device, runtime)?;
    let mut names = table.names().to_vec();
    let mut columns: Vec<Vec<String>> =
        names.iter().map(|n| table.column(n, &name).map(<[String]>::to_vec)).collect::<Result<_, _>>()?;
    names.push("prediction".into());
    columns.push(summaries);
    let out = Table::new(names, columns, &name)?;
    out.write_file(output, format)?;
    Ok(out.num_rows())
}
