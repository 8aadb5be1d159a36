//! `make-model`: a random-init T5 of a real architecture (FLAN-T5 small/base/large, or tiny for
//! tests) plus a Unigram tokenizer trained on the dialogue and summary text of a DialogSum
//! file or folder, written in Hugging Face's layout. It stands in for hub weights offline.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::stage::{ArtifactKind, FileInput, InputSlot, OutputDecl, ParamError, Stage, StageContext};
use crate::t5::config::T5Config;

/// Params of `make-model`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeModelParams {
    /// `tiny`, `flan-t5-small`, `flan-t5-base` or `flan-t5-large`.
    pub arch: String,
    /// A CSV/JSONL/Parquet file, or a folder whose `train` split is used, to train the tokenizer.
    pub tokenizer_data: String,
    /// Tokenizer pieces before the 100 sentinels (the model keeps T5's 32,128 embeddings).
    #[serde(default = "default_vocab")]
    pub vocab_size: u32,
    /// Columns whose text trains the tokenizer.
    #[serde(default = "default_columns")]
    pub text_columns: Vec<String>,
    /// Seed of the random weights.
    #[serde(default)]
    pub seed: i64,
}

fn default_vocab() -> u32 {
    32000
}

fn default_columns() -> Vec<String> {
    vec!["dialogue".into(), "summary".into()]
}

impl MakeModelParams {
    /// Problems with the params, by field, before anything runs.
    pub fn check(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if T5Config::preset(&self.arch).is_none() {
            errors.push(ParamError::new(
                "arch",
                format!("unknown arch `{}` (one of: {})", self.arch, T5Config::PRESETS.join(", ")),
            ));
        }
        if self.vocab_size < 200 || self.vocab_size > 32000 {
            errors.push(ParamError::new("vocab_size", "must be between 200 and 32000"));
        }
        errors
    }
}

/// The file holding the tokenizer's training text.
fn data_file(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_dir() {
        ["csv", "jsonl", "parquet"]
            .iter()
            .map(|e| p.join(format!("train.{e}")))
            .find(|f| f.is_file())
            .unwrap_or(p.join("train.csv"))
    } else {
        p
    }
}

/// Writes the model folder into `out`: config, generation config, tokenizer, random weights.
#[cfg(feature = "torch")]
pub fn make_model(p: &MakeModelParams, out: &std::path::Path) -> Result<(), StageError> {
    let config = T5Config::preset(&p.arch).ok_or_else(|| {
        StageError::param("arch", format!("unknown arch `{}` (one of: {})", p.arch, T5Config::PRESETS.join(", ")))
    })?;
    use crate::t5::{model::T5, weights};
    use tch::{nn, Device};

    let data = data_file(&p.tokenizer_data);
    let table = crate::data::load::read_table(&data, None)?;
    let mut texts = Vec::new();
    for col in &p.text_columns {
        texts.extend(table.column(col, &data.display().to_string())?.iter().cloned());
    }
    let tokenizer = crate::data::tokenizer::train(&texts, p.vocab_size)?;
    if tokenizer.get_vocab_size(true) as i64 > config.vocab_size {
        return Err(StageError::param(
            "vocab_size",
            format!("the tokenizer has more pieces than the model's {} embeddings", config.vocab_size),
        ));
    }
    crate::data::tokenizer::save(&tokenizer, &out.join("tokenizer.json"))?;

    tch::manual_seed(p.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = T5::new(&vs.root(), config.clone());
    weights::save(&weights::variables(&vs), &out.join("model.safetensors"))?;

    let write_json = |name: &str, value: &serde_json::Value| {
        let path = out.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON serializes");
        std::fs::write(&path, text + "\n").map_err(|e| StageError::io(&path, e))
    };
    write_json("config.json", &serde_json::to_value(&config).expect("config serializes"))?;
    write_json(
        "generation_config.json",
        &serde_json::json!({"decoder_start_token_id": config.decoder_start_token_id, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}),
    )?;
    write_json(
        "tokenizer_config.json",
        &serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 512}),
    )
}

/// Runs the stage (with libtorch: see [`crate::Registry::with_libtorch`]).
#[cfg(feature = "torch")]
pub fn run(p: &MakeModelParams, ctx: &StageContext) -> Result<(), StageError> {
    ctx.progress.message("training the tokenizer and initializing weights");
    make_model(p, &ctx.output_dir("model")?)
}

/// The `make-model` stage.
pub struct MakeModel;

impl Stage for MakeModel {
    type Params = MakeModelParams;
    const KIND: &'static str = "make-model";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "random-init FLAN-T5 architecture + a tokenizer trained on local text (offline stand-in for hub weights)";

    fn inputs(&self, _: &MakeModelParams) -> Vec<InputSlot> {
        Vec::new()
    }
    fn outputs(&self, _: &MakeModelParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "model".into(), kind: ArtifactKind::Model }]
    }
    fn check(&self, p: &MakeModelParams) -> Vec<ParamError> {
        p.check()
    }
    fn files(&self, p: &MakeModelParams) -> Vec<FileInput> {
        vec![FileInput { field: "tokenizer_data".into(), path: data_file(&p.tokenizer_data) }]
    }
    fn needs_libtorch(&self) -> bool {
        true
    }
    fn run(&self, _: &MakeModelParams, _: &StageContext) -> Result<(), StageError> {
        Err(StageError::NeedsLibtorch)
    }
    fn summary(&self, p: &MakeModelParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let dir = outputs.get("model")?;
        let bytes = std::fs::metadata(dir.join("model.safetensors")).ok()?.len();
        Some(format!("{} (random init, seed {}), {:.1} MB of weights", p.arch, p.seed, bytes as f64 / 1e6))
    }
}
