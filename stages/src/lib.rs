//! The stages sumflow runs, behind the [`Stage`] trait, and the [`Registry`] that lists them.
//!
//! Stages here need no libtorch: `load`, `subsample` and `score` (with ROUGE in [`rouge`]).

pub mod error;
pub mod hub;
pub mod load;
pub mod registry;
pub mod rouge;
pub mod score;
pub mod stage;
pub mod subsample;
pub mod table;

pub use error::StageError;
pub use registry::{DynStage, Params, Registry};
pub use stage::{
    ArtifactKind, FileInput, InputRef, InputSlot, NoProgress, OutputDecl, ParamError, Progress, Resource, Stage,
    StageContext,
};
