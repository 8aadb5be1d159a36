//! Fetching from the Hugging Face hub (hf-hub). Each failure says how to run offline instead.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use crate::error::StageError;

fn hub_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StageError {
    StageError::Hub { what: what.to_string(), source: Box::new(e) }
}

/// Downloads (or finds in the hub cache) one file per split of dataset `name`: `<split>.csv`,
/// `.jsonl` or `.parquet` at the top level or under `data/`.
pub fn fetch_dataset(name: &str, revision: &str, splits: &[String]) -> Result<Vec<(String, PathBuf)>, StageError> {
    let what = format!("hf://datasets/{name}@{revision}");
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| hub_error(&what, e))?;
    let repo = api.repo(Repo::with_revision(name.to_string(), RepoType::Dataset, revision.to_string()));
    let info = repo.info().map_err(|e| hub_error(&what, e))?;
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    splits
        .iter()
        .map(|split| {
            let wanted = |f: &str| {
                let base = f.strip_prefix("data/").unwrap_or(f);
                ["csv", "jsonl", "json", "parquet"].iter().any(|ext| {
                    base == format!("{split}.{ext}")
                        || (base.starts_with(&format!("{split}-")) && base.ends_with(&format!(".{ext}")))
                })
            };
            let matches: Vec<&str> = files.iter().copied().filter(|f| wanted(f)).collect();
            match matches.as_slice() {
                [file] => {
                    let path = repo.get(file).map_err(|e| hub_error(&format!("{what}/{file}"), e))?;
                    Ok((split.clone(), path))
                }
                [] => {
                    Err(StageError::data(&what, format!("no file for split `{split}` (files: {})", files.join(", "))))
                }
                many => Err(StageError::data(
                    &what,
                    format!("split `{split}` is sharded into {} files, which `load` does not read yet", many.len()),
                )),
            }
        })
        .collect()
}

/// Downloads (or finds in the hub cache) a model's config, weights and tokenizer; returns the
/// local folder holding them. `source` is `hf://OWNER/NAME`.
pub fn fetch_model(source: &str) -> Result<PathBuf, StageError> {
    let name = source.trim_start_matches("hf://");
    let what = format!("hf://{name}");
    let api = ApiBuilder::from_env().with_progress(false).build().map_err(|e| hub_error(&what, e))?;
    let repo = api.model(name.to_string());
    let mut dir = None;
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let path = repo.get(file).map_err(|e| hub_error(&format!("{what}/{file}"), e))?;
        dir = path.parent().map(std::path::Path::to_path_buf);
    }
    let _ = repo.get("generation_config.json");
    dir.ok_or_else(|| StageError::data(&what, "no files"))
}
