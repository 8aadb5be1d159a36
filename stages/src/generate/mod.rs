//! The `generate` stage: summaries for every row of a table. Identical dialogues are generated
//! once (DialogSum's test split: 500 dialogues in 1,500 rows); the rest are sorted by length and
//! batched under a token budget (halved on CUDA out-of-memory), then put back in row order.
//! `one_at_a_time` runs the lab's loop instead, for benchmarks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::data::tokenize::{LAB_TEMPLATE, MAX_TOKENS};
use crate::error::StageError;
use crate::io::model_ref;
use crate::io::table::Table;
use crate::stage::{
    ArtifactKind, FileInput, InputRef, InputSlot, OutputDecl, ParamError, Resource, Stage, StageContext,
};
use crate::t5::settings::Strategy;
use crate::torch::choice::{DeviceChoice, DtypeChoice};

#[cfg(feature = "torch")]
mod run;
#[cfg(feature = "torch")]
pub use run::{open, run, summarize};

/// Params of `generate`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// The table of dialogues.
    pub input: InputRef,
    /// A model folder or `hf://OWNER/NAME`.
    #[serde(default)]
    pub model: Option<String>,
    /// Or the `model` output of a stage.
    #[serde(default)]
    pub model_from: Option<InputRef>,
    /// A LoRA adapter folder (PEFT layout) to apply to the model.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Or the `adapter` output of a `train-lora` stage.
    #[serde(default)]
    pub adapter_from: Option<InputRef>,
    /// The prompt; `{dialogue}` is replaced by the dialogue.
    #[serde(default = "lab_template")]
    pub template: String,
    /// Column of dialogues.
    #[serde(default = "dialogue")]
    pub source_column: String,
    /// Column of row ids (default: `id` when present, else the row number).
    #[serde(default)]
    pub id_column: Option<String>,
    /// Longest source, in tokens.
    #[serde(default = "d512")]
    pub max_source_tokens: usize,
    /// Most tokens generated per summary (the lab: 200).
    #[serde(default = "d200")]
    pub max_new_tokens: i64,
    /// `{strategy: greedy}` (default), `{strategy: sample, temperature, top_k, seed}` or
    /// `{strategy: beam, num_beams, length_penalty}`.
    #[serde(default = "greedy")]
    pub decoding: Strategy,
    /// Tokens per batch (rows × longest source); default 65,536 on the CPU, 262,144 on CUDA.
    #[serde(default)]
    pub batch_tokens: Option<usize>,
    /// The lab's loop: one dialogue at a time (for benchmarks).
    #[serde(default)]
    pub one_at_a_time: bool,
    /// Greedy decoding with fixed shapes, each token's step replayed as a CUDA graph (CUDA only;
    /// ignored on the CPU): one launch per token instead of the decoder's few hundred kernels.
    /// Not yet measured on a GPU, so off by default.
    #[serde(default)]
    pub cuda_graphs: bool,
    /// `auto`, `cpu` or `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// `auto` (bf16 on CUDA, fp32 on CPU), `fp32`, `bf16`, `fp16` (needs `force_fp16`).
    #[serde(default)]
    pub dtype: DtypeChoice,
    /// Allow fp16 although T5 overflows in it.
    #[serde(default)]
    pub force_fp16: bool,
}

fn lab_template() -> String {
    LAB_TEMPLATE.into()
}
fn dialogue() -> String {
    "dialogue".into()
}
fn d512() -> usize {
    512
}
fn d200() -> i64 {
    200
}
fn greedy() -> Strategy {
    Strategy::Greedy
}

impl GenerateParams {
    /// Params with every default, generating from the table `input` with `model` (what the
    /// model commands and `sumflow bench` start from).
    #[cfg(feature = "torch")]
    pub fn new(input: InputRef, model: String) -> Self {
        GenerateParams {
            input,
            model: Some(model),
            model_from: None,
            adapter: None,
            adapter_from: None,
            template: lab_template(),
            source_column: dialogue(),
            id_column: None,
            max_source_tokens: d512(),
            max_new_tokens: d200(),
            decoding: greedy(),
            batch_tokens: None,
            one_at_a_time: false,
            cuda_graphs: false,
            device: DeviceChoice::default(),
            dtype: DtypeChoice::default(),
            force_fp16: false,
        }
    }

    /// Problems with the params, by field, before anything runs.
    pub fn check(&self) -> Vec<ParamError> {
        let mut errors = model_ref::check(&self.model, &self.model_from);
        if !self.template.contains("{dialogue}") {
            errors.push(ParamError::new("template", "must contain `{dialogue}`"));
        }
        if !(1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens) {
            errors.push(ParamError::new("max_new_tokens", format!("must be between 1 and {MAX_NEW_TOKENS}")));
        }
        if !(2..=MAX_TOKENS).contains(&self.max_source_tokens) {
            errors.push(ParamError::new("max_source_tokens", format!("must be between 2 and {MAX_TOKENS}")));
        }
        if self.batch_tokens == Some(0) {
            errors.push(ParamError::new("batch_tokens", "must be at least 1"));
        }
        match self.decoding {
            Strategy::Greedy => {}
            Strategy::Beam { num_beams, length_penalty } => {
                if !(1..=MAX_BEAMS).contains(&num_beams) {
                    errors.push(ParamError::new("decoding.num_beams", format!("must be between 1 and {MAX_BEAMS}")));
                }
                if !length_penalty.is_finite() {
                    errors.push(ParamError::new("decoding.length_penalty", "must be a number"));
                }
            }
            Strategy::Sample { temperature, top_k, .. } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    errors.push(ParamError::new(
                        "decoding.temperature",
                        "must be above 0 (for the most likely token, use `strategy: greedy`)",
                    ));
                }
                if top_k < 0 {
                    errors.push(ParamError::new("decoding.top_k", "must be 0 (all tokens) or more"));
                }
            }
        }
        if self.adapter.is_some() && self.adapter_from.is_some() {
            errors.push(ParamError::new("adapter", "give `adapter` or `adapter_from`, not both"));
        }
        if self.dtype == DtypeChoice::Fp16 && !self.force_fp16 {
            errors.push(ParamError::new("dtype", "fp16 overflows to NaN in T5; use bf16, or set force_fp16: true"));
        }
        if self.cuda_graphs && self.decoding != Strategy::Greedy {
            errors.push(ParamError::new("cuda_graphs", "is for greedy decoding (`decoding: {strategy: greedy}`)"));
        }
        errors
    }
}

/// Bounds that keep a generation's memory and time finite: new tokens per summary (the decoder
/// cache grows with them), and beams (each a copy of the batch).
const MAX_NEW_TOKENS: i64 = 4096;
const MAX_BEAMS: i64 = 64;

/// The `generate` stage.
pub struct Generate;

impl Stage for Generate {
    type Params = GenerateParams;
    const KIND: &'static str = "generate";
    // 2: explicit attention on the CPU, chunked encoder (same results within float rounding).
    // 3: adapters folded into the weights, the fused norm on CUDA (the same within rounding).
    const VERSION: u32 = 3;
    const ABOUT: &'static str = "summaries for every row: batched, length-sorted, duplicates generated once";

    fn inputs(&self, p: &GenerateParams) -> Vec<InputSlot> {
        let mut slots =
            vec![InputSlot { field: "input".into(), reference: p.input.clone(), accepts: &[ArtifactKind::Table] }];
        slots.extend(model_ref::inputs(&p.model_from));
        slots.extend(p.adapter_from.iter().map(|r| InputSlot {
            field: "adapter_from".into(),
            reference: r.clone(),
            accepts: &[ArtifactKind::Adapter],
        }));
        slots
    }
    fn outputs(&self, _: &GenerateParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "predictions".into(), kind: ArtifactKind::Table }]
    }
    fn check(&self, p: &GenerateParams) -> Vec<ParamError> {
        p.check()
    }
    fn files(&self, p: &GenerateParams) -> Vec<FileInput> {
        let mut files = model_ref::files(&p.model);
        if let Some(a) = &p.adapter {
            files.extend(
                ["adapter_model.safetensors", "adapter_config.json"]
                    .iter()
                    .map(|f| FileInput { field: format!("adapter/{f}"), path: PathBuf::from(a).join(f) }),
            );
        }
        files
    }
    fn resource(&self, p: &GenerateParams) -> Resource {
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
    fn run(&self, _: &GenerateParams, _: &StageContext) -> Result<(), StageError> {
        Err(StageError::NeedsLibtorch)
    }
    fn summary(&self, _: &GenerateParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        let meta = Table::read_meta(outputs.get("predictions")?).ok()?;
        Some(format!("{} predictions", meta.rows))
    }
}

#[cfg(all(test, feature = "torch"))]
mod tests {
    use super::*;

    #[test]
    fn new_gives_the_defaults_a_pipeline_gets() {
        let parsed: GenerateParams = serde_yaml::from_str("input: t\nmodel: m").unwrap();
        let made = GenerateParams::new(InputRef::parse("t").unwrap(), "m".into());
        assert_eq!(serde_json::to_value(made).unwrap(), serde_json::to_value(parsed).unwrap());
    }
}
