//! The training stages' params ([`TrainParams`]), the two methods ([`Method`]), how a step
//! computes ([`Precision`]), and every check that can be made before anything runs ([`check`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::io::model_ref;
use crate::stage::{InputRef, ParamError};
use crate::t5::settings::LoraSettings;
use crate::torch::choice::{DeviceChoice, DtypeChoice};

/// Params of `train-full` and `train-lora`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Training tokens (a `tokenize` output).
    pub train: InputRef,
    /// Validation tokens, for the validation loss.
    #[serde(default)]
    pub validation: Option<InputRef>,
    /// The base model: a folder or `hf://OWNER/NAME`.
    #[serde(default)]
    pub model: Option<String>,
    /// Or the `model` output of a stage.
    #[serde(default)]
    pub model_from: Option<InputRef>,
    /// LoRA settings (`train-lora` only; defaults r 32, alpha 32, dropout 0.05, targets q, v).
    #[serde(default)]
    pub lora: Option<LoraSettings>,
    /// Peak learning rate (defaults: full 1e-5, LoRA 1e-3 — the lab's).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Decoupled weight decay (defaults: full 0.01, LoRA 0).
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// Passes over the training data.
    #[serde(default = "one")]
    pub epochs: u64,
    /// Train exactly this many steps, overriding `epochs` (default: the epochs' worth).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Linear warm-up steps, then linear decay to 0.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (0: off).
    #[serde(default = "one_f")]
    pub grad_clip: f64,
    /// Tokens per batch: rows × (longest source + longest target).
    #[serde(default = "d16k")]
    pub batch_tokens: usize,
    /// Most rows per batch.
    #[serde(default = "d64")]
    pub max_batch_rows: usize,
    /// Round each batch's source and target widths up to a multiple of this (1: pad to the
    /// longest row only). Fewer distinct shapes for the device — its allocator and its kernel
    /// choices work per shape — for some padding; the padding is masked, so the loss is the same
    /// (only dropout's draws land elsewhere).
    #[serde(default = "d1")]
    pub pad_to_multiple_of: usize,
    /// The labels' multiple, when it should differ from the sources' (summaries are short:
    /// DialogSum's average 26 tokens, so 64 would pad them 2.5×; 16 suits them).
    #[serde(default)]
    pub pad_labels_to_multiple_of: Option<usize>,
    /// Capture each batch shape's step as a CUDA graph and replay it (CUDA only; ignored on the
    /// CPU): the host stops issuing every kernel of every step. So that an epoch has few shapes,
    /// batches are then padded to at least 64-token sources, 16-token labels and 8 rows (empty
    /// rows, out of the loss). Should a capture fail, training goes on eagerly and says so.
    /// See `stages/src/torch/cuda_graph.rs`.
    #[serde(default)]
    pub cuda_graphs: bool,
    /// Seed of batch order, dropout and LoRA initialization.
    #[serde(default)]
    pub seed: u64,
    /// Validation every this many steps (0: at the end only).
    #[serde(default)]
    pub eval_every: u64,
    /// A checkpoint every this many steps (0: not by steps).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// A checkpoint once this many minutes passed since the last one, or since training began
    /// (0: not by time). By time rather than steps by default: a flan-t5-base checkpoint (fp32
    /// weights and AdamW moments, 3 GB, fsynced) takes seconds to write, which on a GPU is the
    /// time of dozens of steps; a run killed loses at most this long.
    #[serde(default = "d10")]
    pub checkpoint_minutes: f64,
    /// Override the model's dropout rate (e.g. 0 for reproducible comparisons).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Stop after this many consecutive non-finite losses.
    #[serde(default = "d5")]
    pub nonfinite_patience: u32,
    /// `auto`, `cpu` or `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Compute precision: `auto` (bf16 on CUDA, fp32 on the CPU), `fp32` or `bf16`. bf16 is
    /// autocast: matrix products in bf16, norms and the loss in fp32, and weights, gradients
    /// and AdamW's moments fp32 throughout. `fp16` is refused (T5 overflows in it).
    #[serde(default)]
    pub dtype: DtypeChoice,
    /// With bf16 compute: the model's weights themselves in bf16 — copies of fp32 master
    /// weights, which AdamW updates — instead of autocast over fp32 weights. Activations and
    /// gradients stay bf16 (no casts at every operation); norms, attention's softmax and the
    /// loss still accumulate in fp32; the artifact holds the fp32 masters. (Left out of the
    /// canonical params when off, so the caches of runs from before it still hit.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bf16_weights: bool,
    /// Several examples per row ("packing"): dialogues fill rows as wide as the longest one,
    /// their summaries the label rows beside them, and each attends only within itself. The
    /// loss is the one unpacked rows give; rows are full instead of padded, and batches have
    /// one shape (a second for the few longest summaries: with `cuda_graphs`, two captures per
    /// run). Batches still hold `batch_tokens` tokens, padding included. See
    /// `stages/src/train/packing.rs`. (Left out of the canonical params when off.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pack: bool,
}

fn one() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn d1() -> usize {
    1
}
fn d16k() -> usize {
    16384
}
fn d64() -> usize {
    64
}
fn d10() -> f64 {
    10.0
}
fn d5() -> u32 {
    5
}

/// Full fine-tuning or LoRA: the only thing that differs between the two stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every weight trains.
    Full,
    /// Only adapters train; the base is frozen.
    Lora,
}

/// How a training step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(feature = "torch")]
pub enum Precision {
    /// fp32 throughout.
    Fp32,
    /// bf16 autocast over fp32 weights.
    Autocast,
    /// bf16 weights, copies of fp32 masters (`bf16_weights`).
    Bf16Weights,
}

impl TrainParams {
    /// Params with every default (as a pipeline that names only `train` and `model` gets them,
    /// before the method's defaults are filled in): what `sumflow bench` starts from.
    pub fn new(train: InputRef, model: String) -> Self {
        TrainParams {
            train,
            validation: None,
            model: Some(model),
            model_from: None,
            lora: None,
            lr: None,
            weight_decay: None,
            epochs: one(),
            max_steps: None,
            warmup_steps: 0,
            grad_clip: one_f(),
            batch_tokens: d16k(),
            max_batch_rows: d64(),
            pad_to_multiple_of: d1(),
            pad_labels_to_multiple_of: None,
            cuda_graphs: false,
            seed: 0,
            eval_every: 0,
            checkpoint_every: 0,
            checkpoint_minutes: d10(),
            dropout: None,
            nonfinite_patience: d5(),
            device: DeviceChoice::default(),
            dtype: DtypeChoice::default(),
            bf16_weights: false,
            pack: false,
        }
    }

    /// How steps compute on `device`.
    #[cfg(feature = "torch")]
    pub fn precision(&self, device: tch::Device) -> Precision {
        let bf16 = match self.dtype {
            DtypeChoice::Auto => device.is_cuda(),
            DtypeChoice::Bf16 => true,
            DtypeChoice::Fp32 | DtypeChoice::Fp16 => false,
        };
        match (bf16, self.bf16_weights) {
            (false, _) => Precision::Fp32,
            (true, false) => Precision::Autocast,
            (true, true) => Precision::Bf16Weights,
        }
    }

    /// Whether the forward pass runs under bf16 autocast on `device`.
    #[cfg(feature = "torch")]
    pub fn autocast(&self, device: tch::Device) -> bool {
        self.precision(device) == Precision::Autocast
    }
}

impl Method {
    /// Fills the method's defaults (the lab's): full fine-tuning lr 1e-5, weight decay 0.01;
    /// LoRA lr 1e-3, no weight decay, r 32, alpha 32, dropout 0.05 on q and v.
    pub fn defaults(self, p: &mut TrainParams) {
        let (lr, wd) = match self {
            Method::Full => (1e-5, 0.01),
            Method::Lora => (1e-3, 0.0),
        };
        p.lr.get_or_insert(lr);
        p.weight_decay.get_or_insert(wd);
        if self == Method::Lora {
            p.lora.get_or_insert_with(LoraSettings::default);
        }
    }
}

/// The params' problems for `method`, before anything runs (also for `sumflow bench`).
pub fn check(method: Method, p: &TrainParams) -> Vec<ParamError> {
    let mut errors = model_ref::check(&p.model, &p.model_from);
    if method == Method::Full && p.lora.is_some() {
        errors.push(ParamError::new("lora", "is for `train-lora`; `train-full` trains every weight"));
    }
    if let Some(l) = &p.lora {
        errors.extend(l.check().into_iter().map(|e| ParamError::new(format!("lora.{}", e.field), e.message)));
    }
    if p.lr.is_some_and(|lr| !(lr.is_finite() && lr > 0.0)) {
        errors.push(ParamError::new("lr", "must be positive"));
    }
    if p.weight_decay.is_some_and(|wd| !(wd.is_finite() && wd >= 0.0)) {
        errors.push(ParamError::new("weight_decay", "must be 0 or more"));
    }
    if !(p.grad_clip.is_finite() && p.grad_clip >= 0.0) {
        errors.push(ParamError::new("grad_clip", "must be a norm, 0 or more (0: no clipping)"));
    }
    if p.max_steps == Some(0) {
        errors.push(ParamError::new("max_steps", "must be at least 1"));
    }
    if p.batch_tokens == 0 {
        errors.push(ParamError::new("batch_tokens", "must be at least 1"));
    }
    if p.max_batch_rows == 0 {
        errors.push(ParamError::new("max_batch_rows", "must be at least 1"));
    }
    if p.nonfinite_patience == 0 {
        errors.push(ParamError::new("nonfinite_patience", "must be at least 1"));
    }
    if p.bf16_weights && p.dtype == DtypeChoice::Fp32 {
        errors.push(ParamError::new("bf16_weights", "needs bf16 compute (`dtype: bf16`, or `auto` on CUDA)"));
    }
    if p.dtype == DtypeChoice::Fp16 {
        errors.push(ParamError::new("dtype", "fp16 overflows in T5 and training has no loss scaling; use bf16"));
    }
    if p.epochs == 0 && p.max_steps.is_none() {
        errors.push(ParamError::new("epochs", "must be at least 1"));
    }
    if p.dropout.is_some_and(|d| !(0.0..1.0).contains(&d)) {
        errors.push(ParamError::new("dropout", "must be in [0, 1)"));
    }
    if !(p.checkpoint_minutes >= 0.0 && p.checkpoint_minutes.is_finite()) {
        errors.push(ParamError::new("checkpoint_minutes", "must be a number of minutes, 0 or more"));
    }
    if p.pad_to_multiple_of == 0 {
        errors.push(ParamError::new("pad_to_multiple_of", "must be at least 1"));
    }
    if p.pad_labels_to_multiple_of == Some(0) {
        errors.push(ParamError::new("pad_labels_to_multiple_of", "must be at least 1"));
    }
    if p.pack && (p.pad_to_multiple_of > 1 || p.pad_labels_to_multiple_of.is_some_and(|m| m > 1)) {
        let field = if p.pad_to_multiple_of > 1 { "pad_to_multiple_of" } else { "pad_labels_to_multiple_of" };
        errors.push(ParamError::new(field, "has no effect with `pack: true` (packed batches have fixed shapes)"));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_gives_the_defaults_a_pipeline_gets() {
        let parsed: TrainParams = serde_yaml::from_str("train: t\nmodel: m").unwrap();
        let made = TrainParams::new(InputRef::parse("t").unwrap(), "m".into());
        assert_eq!(serde_json::to_value(made).unwrap(), serde_json::to_value(parsed).unwrap());
    }
}
