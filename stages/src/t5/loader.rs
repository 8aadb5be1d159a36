//! Opening a model folder in Hugging Face's layout (`config.json`, `model.safetensors`,
//! `tokenizer.json`), local or fetched by [`crate::io::hub::fetch_model`].

use std::path::Path;

use tch::{nn, Device, Kind};
use tokenizers::Tokenizer;

use super::config::T5Config;
use super::model::T5;
use super::{adapt, weights};
use crate::error::StageError;

/// A model ready to run.
pub struct Loaded {
    /// Its variables (the optimizer's, when training).
    pub vs: nn::VarStore,
    /// The network.
    pub model: T5,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// A LoRA adapter's variables, when one is applied.
    pub adapters: Option<nn::VarStore>,
}

const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Reads `config.json` leniently.
pub fn read_config(dir: &Path) -> Result<T5Config, StageError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    let config: T5Config = serde_json::from_str(&text).map_err(|e| StageError::json(&path, e))?;
    let problems = config.check();
    if !problems.is_empty() {
        return Err(StageError::data(path.display().to_string(), problems.join("; ")));
    }
    Ok(config)
}

/// Loads config, weights and tokenizer from `dir` onto `device` in precision `kind`.
pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Loaded, StageError> {
    weights::refuse_pickle(dir)?;
    for f in FILES {
        if !dir.join(f).is_file() {
            return Err(StageError::data(dir.display().to_string(), format!("not a model folder: no {f}")));
        }
    }
    let config = read_config(dir)?;
    let mut vs = nn::VarStore::new(device);
    let model = T5::new(&vs.root(), config);
    weights::load(&vs, &dir.join("model.safetensors"))?;
    if kind != Kind::Float {
        vs.set_kind(kind);
    }
    let path = dir.join("tokenizer.json");
    let tokenizer = crate::data::tokenizer::load(&path)?;
    // Every id the tokenizer makes must have a row in the embedding.
    let pieces = tokenizer.get_vocab_size(true) as i64;
    if pieces > model.config.vocab_size {
        return Err(StageError::data(
            path.display().to_string(),
            format!("has {pieces} pieces; the model embeds only {} (config.json's vocab_size)", model.config.vocab_size),
        ));
    }
    Ok(Loaded { vs, model, tokenizer, adapters: None })
}

impl Loaded {
    /// Folds the applied adapter into the base weights and drops it (see
    /// [`adapt::fold`]): for inference, where the adapter no longer trains.
    pub fn fold_adapter(&mut self) {
        adapt::fold(&mut self.model);
        self.adapters = None;
    }

    /// The device the model's weights are on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// Copies a model folder's configs and tokenizer (not its weights) into `out`.
pub fn copy_model_files(base: &Path, out: &Path) -> Result<(), StageError> {
    for f in ["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"] {
        let src = base.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|e| StageError::io(&src, e))?;
        }
    }
    Ok(())
}
