//! Pipeline files: the YAML schema, loading with `vars` and `--set`, and validation into a
//! [`Pipeline`] whose stages have typed params and resolved inputs.

mod load;
pub mod schema;
pub mod span;
mod validate;
mod validated;

pub use load::load;
pub use validated::{BoundInput, Pipeline, StageNode};
