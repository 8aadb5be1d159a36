//! The stages sumflow runs, behind the [`Stage`] trait, and the [`Registry`] that lists them.
//!
//! `load`, `subsample` and `score` (with ROUGE in [`rouge`]) need no libtorch; the model stages
//! build with the `torch` feature.

pub mod atomic;
#[cfg(feature = "torch")]
pub mod autocast;
#[cfg(feature = "torch")]
pub mod cuda_graph;
pub mod error;
#[cfg(feature = "torch")]
pub mod generate;
pub mod hub;
pub mod join;
pub mod load;
#[cfg(feature = "torch")]
pub mod lora;
#[cfg(feature = "torch")]
pub mod make_model;
pub mod model_ref;
#[cfg(feature = "torch")]
pub mod optim;
pub mod packing;
pub mod registry;
pub mod report;
pub mod rouge;
pub mod runtime;
pub mod score;
pub mod shapes;
pub mod stage;
#[cfg(feature = "torch")]
pub mod step_profile;
pub mod subsample;
#[cfg(feature = "torch")]
pub mod t5;
pub mod table;
pub mod tokenize;
pub mod tokenizer;
#[cfg(feature = "torch")]
pub mod trace;
#[cfg(feature = "torch")]
pub mod train;

pub use error::StageError;
pub use registry::{DynStage, Params, Registry};
pub use stage::{
    ArtifactKind, FileInput, InputRef, InputSlot, NoProgress, OutputDecl, ParamError, Progress, Resource, Stage,
    StageContext, StageRecord,
};
