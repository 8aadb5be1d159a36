//! The shape of a pipeline file, as serde reads it. Stage params stay raw YAML here; each
//! stage parses its own (see `validate`).
//!
//! ```yaml
//! name: lab-results
//! vars:
//!   results: ../shared/data/lab-results/dialogue-summary-training-results.csv
//! stages:
//!   results: {kind: load, path: "${results}"}
//!   scores: {kind: score, input: results, references: human_baseline_summaries, predictions: [...]}
//! ```

use indexmap::IndexMap;
use serde::Deserialize;

/// A pipeline file before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// The experiment's name (also names its entries in the cache history).
    pub name: String,
    /// Free text shown by `sumflow validate`.
    #[serde(default)]
    pub description: Option<String>,
    /// Values substituted for `${name}` in stage params; overridable with `--set name=value`.
    #[serde(default)]
    pub vars: IndexMap<String, serde_yaml::Value>,
    /// Params per stage kind, merged under each stage's own: `{train-lora: {device: cuda}}`.
    #[serde(default)]
    pub defaults: IndexMap<String, serde_yaml::Value>,
    /// Stage id → `{kind: ..., params...}`, in file order; a stage with `matrix:` is swept.
    pub stages: IndexMap<String, serde_yaml::Value>,
}
