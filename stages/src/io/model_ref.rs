//! How a stage names its model: `model:` (a local folder or `hf://OWNER/NAME`) or
//! `model_from:` (the `model` output of another stage, e.g. `make-model` or `train-full`).
//! Local model files enter the cache key by content, hub ids by name.

use std::path::PathBuf;

use crate::error::StageError;
use crate::stage::{ArtifactKind, FileInput, InputRef, InputSlot, ParamError, StageContext};

/// Files of a model folder whose content the cache key covers.
const KEY_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// The input slot for `model_from`, if given.
pub fn inputs(model_from: &Option<InputRef>) -> Vec<InputSlot> {
    model_from
        .iter()
        .map(|r| InputSlot { field: "model_from".into(), reference: r.clone(), accepts: &[ArtifactKind::Model] })
        .collect()
}

/// The model's local files, when `model` is a folder.
pub fn files(model: &Option<String>) -> Vec<FileInput> {
    match model {
        Some(m) if !m.starts_with("hf://") => KEY_FILES
            .iter()
            .map(|f| FileInput { field: format!("model/{f}"), path: PathBuf::from(m).join(f) })
            .collect(),
        _ => Vec::new(),
    }
}

/// Exactly one of the two must be given.
pub fn check(model: &Option<String>, model_from: &Option<InputRef>) -> Vec<ParamError> {
    match (model, model_from) {
        (Some(_), None) | (None, Some(_)) => Vec::new(),
        _ => vec![ParamError::new(
            "",
            "give exactly one of `model` (a folder or hf://OWNER/NAME) and `model_from` (a stage)",
        )],
    }
}

/// The model folder to open.
pub fn resolve(model: &Option<String>, ctx: &StageContext) -> Result<PathBuf, StageError> {
    match model {
        Some(m) if m.starts_with("hf://") => crate::io::hub::fetch_model(m),
        Some(m) => Ok(PathBuf::from(m)),
        None => Ok(ctx.input("model_from")?.to_path_buf()),
    }
}
