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
//! `data/`, `eval/` and `io/` build without libtorch; the rest needs the `torch` feature.

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

with_torch! {
    mod adapter;
    mod generate;
    mod make_model;
    mod t5;
    mod torch;
    mod train;
}

pub use error::{panic_message, StageError};
pub use registry::{DynStage, Params, Registry};
pub use runtime::{AttentionBackend, RuntimeOptions, DEFAULT_CUDA_ALLOC_CONF};
pub use stage::{
    ArtifactKind, FileInput, InputRef, InputSlot, NoProgress, OutputDecl, ParamError, Progress, Resource, Stage,
    StageContext, StageRecord,
};
