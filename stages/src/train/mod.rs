//! The training stages, `train-full` and `train-lora`: one loop for both ([`fit`]); the method
//! only changes how the model is built ([`model`]: which variables the optimizer sees).
//!
//! ```text
//! params       TrainParams, the two methods, checks before anything runs
//! model        the model to train (LoRA: frozen base + adapters)
//! batches      an epoch's batches: length-bucketed and padded (shapes), or packed (packing)
//! optim        AdamW over flat buffers, clipping, the schedule
//! checkpoints  resumable, digest-checked checkpoints in the work folder
//! fit          the loop
//! artifact     the weights and the training record the stage writes
//! ```

pub mod params;

with_torch! {
    pub mod artifact;
    pub mod batches;
    pub mod checkpoints;
    pub mod fit;
    pub mod model;
    pub mod optim;
    pub mod packing;
    pub mod shapes;
}

#[cfg(all(test, feature = "torch"))]
mod parity_tests;
#[cfg(all(test, feature = "torch"))]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::StageError;
use crate::io::model_ref;
use crate::stage::{ArtifactKind, FileInput, InputSlot, OutputDecl, ParamError, Resource, Stage, StageContext};
use crate::torch::choice::DeviceChoice;
use params::{Method, TrainParams};

/// The `train-full` stage.
pub struct TrainFull;

/// The `train-lora` stage.
pub struct TrainLora;

/// What tells the two training stages apart; [`Stage`] is implemented once for both.
pub trait Trainer: Send + Sync + 'static {
    /// Full fine-tuning or LoRA.
    const METHOD: Method;
    /// The stage's kind.
    const KIND: &'static str;
    /// Its output's name and kind.
    const OUTPUT: (&'static str, ArtifactKind);
    /// One line for `sumflow stages`.
    const ABOUT: &'static str;
}

impl Trainer for TrainFull {
    const METHOD: Method = Method::Full;
    const KIND: &'static str = "train-full";
    const OUTPUT: (&'static str, ArtifactKind) = ("model", ArtifactKind::Model);
    const ABOUT: &'static str = "full fine-tuning (lab defaults: lr 1e-5, weight decay 0.01)";
}

impl Trainer for TrainLora {
    const METHOD: Method = Method::Lora;
    const KIND: &'static str = "train-lora";
    const OUTPUT: (&'static str, ArtifactKind) = ("adapter", ArtifactKind::Adapter);
    const ABOUT: &'static str =
        "LoRA fine-tuning, PEFT-layout adapter (lab defaults: r 32, alpha 32, dropout 0.05, q and v, lr 1e-3)";
}

impl<T: Trainer> Stage for T {
    type Params = TrainParams;
    const KIND: &'static str = T::KIND;
    // 3: the fused norm on CUDA (the same within bf16 rounding; the CPU is unchanged).
    // 4: the update's scalars as fp32 device tensors (the last bits of the weights).
    const VERSION: u32 = 4;
    const ABOUT: &'static str = T::ABOUT;

    fn defaults(&self, p: &mut TrainParams) {
        T::METHOD.defaults(p)
    }
    fn inputs(&self, p: &TrainParams) -> Vec<InputSlot> {
        let mut slots =
            vec![InputSlot { field: "train".into(), reference: p.train.clone(), accepts: &[ArtifactKind::Tokens] }];
        if let Some(v) = &p.validation {
            slots.push(InputSlot {
                field: "validation".into(),
                reference: v.clone(),
                accepts: &[ArtifactKind::Tokens],
            });
        }
        slots.extend(model_ref::inputs(&p.model_from));
        slots
    }
    fn outputs(&self, _: &TrainParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: T::OUTPUT.0.into(), kind: T::OUTPUT.1 }]
    }
    fn check(&self, p: &TrainParams) -> Vec<ParamError> {
        params::check(T::METHOD, p)
    }
    fn files(&self, p: &TrainParams) -> Vec<FileInput> {
        model_ref::files(&p.model)
    }
    fn resource(&self, p: &TrainParams) -> Resource {
        if p.device == DeviceChoice::Cpu {
            Resource::Cpu
        } else {
            Resource::Gpu
        }
    }
    fn needs_libtorch(&self) -> bool {
        true
    }
    fn distributed(&self) -> bool {
        true
    }
    fn runtime_in_key(&self) -> bool {
        true
    }
    fn volatile_files(&self) -> &'static [&'static str] {
        &["training/throughput.csv"]
    }
    fn run(&self, _: &TrainParams, _: &StageContext) -> Result<(), StageError> {
        Err(StageError::NeedsLibtorch)
    }
    fn summary(&self, _: &TrainParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let d = outputs.get(T::OUTPUT.0)?.join("training");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("parameters.json")).ok()?).ok()?;
        let losses = std::fs::read_to_string(d.join("losses.csv")).ok()?;
        let last = losses.lines().last()?.split(',').nth(1)?.to_string();
        Some(format!(
            "{} steps, final loss {last}; trainable model parameters: {} of {} ({:.2}%)",
            r["steps"],
            r["trainable_parameters"],
            r["all_parameters"],
            r["percent_trainable"].as_f64()?
        ))
    }
}

/// Runs either stage (with libtorch: see [`crate::Registry::with_libtorch`]): build the model
/// for the method, train it, write the artifact.
#[cfg(feature = "torch")]
pub fn run<T: Trainer>(p: &TrainParams, ctx: &StageContext) -> Result<(), StageError> {
    let (method, output) = (T::METHOD, T::OUTPUT.0);
    use crate::data::tokenize::TokenTable;
    use crate::torch::device;
    use std::time::Instant;

    let start = Instant::now();
    let device = device::device(p.device, ctx.runtime, ctx.gpu)?;
    let dir = model_ref::resolve(&p.model, ctx)?;
    let train_tokens = TokenTable::read(ctx.input("train")?)?;
    let validation = match &p.validation {
        Some(_) => Some(TokenTable::read(ctx.input("validation")?)?),
        None => None,
    };
    let built = model::build(method, &dir, p, device, ctx.runtime)?;
    ctx.record("load_seconds", start.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let progress = fit::fit(&built, &train_tokens, validation.as_ref(), p, &ctx.work_dir, ctx)?;
    let (trainable, total) = built.parameter_report();
    ctx.record("steps", progress.step as f64);
    ctx.record("seconds", t0.elapsed().as_secs_f64());
    let tokens_per_s: Vec<f64> = progress.losses.iter().map(|l| l.3).collect();
    ctx.record("mean_tokens_per_s", tokens_per_s.iter().sum::<f64>() / tokens_per_s.len().max(1) as f64);
    ctx.record("trainable_parameters", trainable as f64);
    ctx.record("all_parameters", total as f64);
    if let Some((_, l, _, _)) = progress.losses.last() {
        ctx.record("final_loss", *l);
    }
    // With several ranks, rank 0 writes the artifact (all hold the same weights).
    if !ctx.writes_outputs() {
        return Ok(());
    }
    let out = ctx.output_dir(output)?;
    let t = Instant::now();
    artifact::save(&built, p, &out)?;
    artifact::write_record(&out, &built, &progress)?;
    ctx.record("save_seconds", t.elapsed().as_secs_f64());
    Ok(())
}
