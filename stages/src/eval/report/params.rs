//! The `report` stage's params, and the column names of the lab's results layout (its
//! defaults, which `sumflow bench` scores too).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::eval::rouge::RougeType;
use crate::stage::InputRef;

/// The reference column of the lab's results layout.
pub const LAB_REFERENCES: &str = "human_baseline_summaries";
/// The model columns of the lab's results layout: the original model first.
pub const LAB_MODELS: [&str; 3] = ["original_model_summaries", "instruct_model_summaries", "peft_model_summaries"];

/// Params of `report`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// The results table: a reference column and one column per model (the lab's layout).
    pub input: InputRef,
    /// The report's title.
    #[serde(default = "title")]
    pub title: String,
    /// A paragraph under the title: what was compared, and how.
    #[serde(default)]
    pub description: Option<String>,
    /// Column of reference summaries.
    #[serde(default = "references")]
    pub references: String,
    /// Prediction columns: the baseline (e.g. the original model) first, then the others.
    #[serde(default = "models")]
    pub models: Vec<String>,
    /// Pairs (model, baseline) compared beyond "each vs the first", e.g. PEFT vs full (default:
    /// the lab's PEFT vs full fine-tuning, where `models` has both).
    #[serde(default)]
    pub compare: Option<Vec<(String, String)>>,
    /// Training artifacts by label (a `train-full` model, a `train-lora` adapter).
    #[serde(default)]
    pub training: IndexMap<String, InputRef>,
    /// Row ids shown side by side (default: the lab's row 200, `test_66_3`, when present; else
    /// the first two rows).
    #[serde(default = "examples")]
    pub examples: Vec<String>,
    /// A sweep's columns (among `models`) with the values each was made with — in a pipeline,
    /// `{"peft@*": "${item}"}` — for a section that sets the varied values against the metrics.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub sweep: IndexMap<String, IndexMap<String, serde_json::Value>>,
    /// The metric that picks a sweep's best combination.
    #[serde(default = "best_by", skip_serializing_if = "is_rouge1")]
    pub best_by: RougeType,
}

fn best_by() -> RougeType {
    RougeType::Rouge1
}
fn is_rouge1(m: &RougeType) -> bool {
    *m == RougeType::Rouge1
}

fn title() -> String {
    "sumflow report".into()
}
fn references() -> String {
    LAB_REFERENCES.into()
}
fn models() -> Vec<String> {
    LAB_MODELS.map(String::from).to_vec()
}
/// The lab's comparison, PEFT vs full fine-tuning, where `models` has both columns.
pub fn default_compare(models: &[String]) -> Vec<(String, String)> {
    let (peft, full) = (LAB_MODELS[2], LAB_MODELS[1]);
    if models.iter().any(|m| m == peft) && models.iter().any(|m| m == full) {
        vec![(peft.into(), full.into())]
    } else {
        Vec::new()
    }
}
fn examples() -> Vec<String> {
    vec!["test_66_3".into(), "test_0_1".into(), "test_33_1".into()]
}
