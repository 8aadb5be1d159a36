//! The stages sumflow runs, behind the [`Stage`] trait, and the [`Registry`] that lists them.
//!
//! The runner sees this crate through three doors only: the stage API ([`Stage`], the
//! [`Registry`], [`StageContext`], [`StageError`]), the process-wide [`RuntimeOptions`], and the
//! [`tools`] its commands call (`sumflow score`, `summarize`, `bench`, …). Everything else is
//! private to the crate. Inside, folders follow the architecture, and imports point one way:
//!
//! ```text
//! io/       atomic writes, tables, hub fetching, model references
//! data/     load, subsample, join, tokenize, the tokenizer
//! eval/     score, rouge/, report/
//! torch/    the device layer: device choice, autocast, CUDA graphs, profile, trace (+ FFI)
//! t5/       the model: config, layers, LoRA layer, decoding, weights   (imports torch/, never train/)
//! adapter   PEFT adapter files: config, load, merge                     (above t5/)
//! train/    the training stages and their loop                          (above t5/ and adapter)
//! generate, make_model                                                  (above t5/ and adapter)
//! ```
//!
//! Without the `torch` feature (the runner's build) every stage is declared — params, inputs,
//! outputs, checks — but the model stages cannot run: `t5/config` and `t5/settings`,
//! `torch/choice`, `train/params` and the stages' declarations build; their work needs libtorch
//! and runs in `sumflow-worker`, the build with it.

mod error;
mod registry;
mod runtime;
mod stage;
pub mod tools;

mod data;
mod eval;
mod io;

/// Items that exist only with the `torch` feature (libtorch through tch).
macro_rules! with_torch {
    ($($item:item)*) => { $( #[cfg(feature = "torch")] $item )* };
}

// The model stages: their params and declarations build without libtorch (the runner checks
// and plans them); their work needs it.
mod generate;
mod make_model;
mod t5;
mod torch;
mod train;

with_torch! {
    mod adapter;
}

pub use error::{panic_message, StageError};
pub use registry::{DynStage, Params, Registry};
pub use runtime::{AttentionBackend, Ranks, RuntimeOptions, DEFAULT_CUDA_ALLOC_CONF};
pub use stage::{
    ArtifactKind, FileInput, InputRef, InputSlot, NoProgress, OutputDecl, ParamError, Progress, Resource, Stage,
    StageContext, StageRecord,
};
