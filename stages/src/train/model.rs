//! The model a training stage trains ([`Built`]): fp32 weights; for LoRA the base frozen and
//! adapters added, which are then all the optimizer sees.

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind};

use super::params::{Method, TrainParams};
use crate::error::StageError;
use crate::runtime::RuntimeOptions;
use crate::t5::adapt;
use crate::t5::loader;
use crate::t5::model::T5;

/// A model ready to train: the optimizer sees `trainable` only.
pub struct Built {
    /// The network (with adapters for LoRA).
    pub model: T5,
    /// The base model's variables.
    pub base: nn::VarStore,
    /// The adapters' variables (LoRA).
    pub adapters: Option<nn::VarStore>,
    /// The base model's folder.
    pub dir: PathBuf,
}

impl Built {
    /// The store the optimizer updates and the artifact saves.
    pub fn trainable(&self) -> &nn::VarStore {
        self.adapters.as_ref().unwrap_or(&self.base)
    }

    /// (trainable, total) parameters — the lab's printout.
    pub fn parameter_report(&self) -> (i64, i64) {
        let count = |vs: &nn::VarStore| vs.variables().values().map(|t| t.numel() as i64).sum::<i64>();
        let base = count(&self.base);
        match &self.adapters {
            Some(a) => (count(a), base + count(a)),
            None => (base, base),
        }
    }
}

/// Builds the model for `method`: fp32 weights; LoRA freezes the base and adds adapters.
/// Attention is computed as the runtime options say.
pub fn build(
    method: Method,
    dir: &Path,
    p: &TrainParams,
    device: Device,
    runtime: &RuntimeOptions,
) -> Result<Built, StageError> {
    let mut loaded = loader::load(dir, device, Kind::Float)?;
    loaded.model.attention = runtime.attention;
    if let Some(d) = p.dropout {
        loaded.model.set_dropout(d);
    }
    let adapters = match method {
        Method::Full => None,
        Method::Lora => {
            loaded.vs.freeze();
            let vs = nn::VarStore::new(device);
            tch::manual_seed(p.seed as i64);
            let settings = p.lora.clone().unwrap_or_default();
            if let Some(e) = settings.check_rank(&loaded.model.config) {
                return Err(StageError::param(format!("lora.{}", e.field), e.message));
            }
            adapt::apply(&mut loaded.model, &vs.root(), &settings);
            Some(vs)
        }
    };
    Ok(Built { model: loaded.model, base: loaded.vs, adapters, dir: dir.to_path_buf() })
}
