//! Pipeline files: the YAML schema, loading with `vars` and `--set`, `defaults:` per kind,
//! sweeps (`matrix:`), and validation into a [`Pipeline`] whose stages have typed params and
//! resolved inputs.

mod defaults;
mod load;
pub mod matrix;
pub mod schema;
pub mod span;
mod validate;
mod validated;

pub use load::load;
pub use validated::{BoundInput, Pipeline, StageNode, SweepItem};
