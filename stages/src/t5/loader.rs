//! Opening a model folder in Hugging Face's layout (`config.json`, `model.safetensors`,
//! `tokenizer.json`), local or fetched by [`crate::hub::fetch_model`].

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind};
use tokenizers::Tokenizer;

use super::{weights, T5Config, T5};
use crate::error::StageError;

/// A model ready to run.
pub struct Loaded {
    /// Its variables (the optimizer's, when training).
    pub vs: nn::VarStore,
    /// The network.
    pub model: T5,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The folder it came from.
    pub dir: PathBuf,
    /// A LoRA adapter's variables, when one is applied.
    pub adapters: Option<nn::VarStore>,
}

const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Reads `config.json` leniently.
pub fn read_config(dir: &Path) -> Result<T5Config, StageError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| StageError::data(path.display().to_string(), format!("not a T5 config: {e}")))
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
    let tokenizer = crate::tokenizer::load(&dir.join("tokenizer.json"))?;
    Ok(Loaded { vs, model, tokenizer, dir: dir.to_path_buf(), adapters: None })
}

impl Loaded {
    /// Applies the PEFT adapter in `dir` (same device and precision as the model).
    pub fn with_adapter(mut self, dir: &Path) -> Result<Self, StageError> {
        let mut vs = crate::lora::load_adapter(&mut self.model, dir, self.vs.device())?;
        if let Some(kind) = self.vs.variables().values().next().map(tch::Tensor::kind) {
            if kind != Kind::Float {
                vs.set_kind(kind);
            }
        }
        self.adapters = Some(vs);
        Ok(self)
    }

    /// Folds the applied adapter into the base weights and drops it (see
    /// [`crate::lora::fold`]): for inference, where the adapter no longer trains.
    pub fn fold_adapter(&mut self) {
        crate::lora::fold(&mut self.model);
        self.adapters = None;
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
