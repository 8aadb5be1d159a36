//! Checkpoints in a stage's work folder: `ckpt-<step>/` holds the trainable weights (fp32: with
//! bf16 weights, the masters), the optimizer's moments, the run's [`Progress`] and the blake3 of
//! each of those files (`digests.json`, written last); `latest` names the newest complete one,
//! and older ones go only after it is written. A checkpoint is trusted only when every file
//! hashes to its recorded digest: a truncated or overwritten one is discarded with a warning and
//! training starts over, never resumed from (it would cache a different result under the clean
//! key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::optim::AdamW;
use crate::error::StageError;
use crate::io::atomic::{atomic_write, sync_tree};
use crate::io::digest::file_digest;
use crate::t5::weights;

/// Where a run is: enough to continue exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Next batch within the epoch.
    pub batch: usize,
    /// Per step: (step, loss, lr, tokens/s).
    pub losses: Vec<(u64, f64, f64, f64)>,
    /// (step, validation loss).
    pub validation: Vec<(u64, f64)>,
}

/// The files of a checkpoint, in the order they are written.
const FILES: [&str; 3] = ["trainable.safetensors", "optimizer.safetensors", "progress.json"];
/// The digests of [`FILES`], written last.
const DIGESTS: &str = "digests.json";

/// The checkpoints of one stage run (its work folder).
pub struct Checkpoints {
    dir: PathBuf,
}

/// What resuming found.
pub enum Resumed {
    /// No checkpoint: start at step 0.
    Fresh,
    /// Resumed from a checkpoint.
    At(Progress),
    /// A checkpoint was there but did not match its digests (why): it was discarded.
    Discarded(String),
}

impl Checkpoints {
    /// The checkpoints in `dir` (created).
    pub fn open(dir: &Path) -> Result<Self, StageError> {
        std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
        Ok(Checkpoints { dir: dir.to_path_buf() })
    }

    fn io(&self, e: std::io::Error) -> StageError {
        StageError::io(&self.dir, e)
    }

    /// Writes a checkpoint of the weights `opt` trains and its moments `state` (from
    /// [`AdamW::state`]) at `progress`, then makes it the latest.
    pub fn save(&self, opt: &AdamW, state: &BTreeMap<String, Tensor>, progress: &Progress) -> Result<(), StageError> {
        let name = format!("ckpt-{}", progress.step);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| self.io(e))?;
        weights::save(&opt.masters(), &tmp.join(FILES[0]))?;
        weights::save(state, &tmp.join(FILES[1]))?;
        let progress_json = serde_json::to_vec(progress).expect("progress serializes");
        std::fs::write(tmp.join(FILES[2]), progress_json).map_err(|e| self.io(e))?;
        let digests: BTreeMap<&str, String> = FILES
            .iter()
            .map(|f| Ok((*f, file_digest(&tmp.join(f)).map_err(|e| StageError::io(&tmp.join(f), e))?)))
            .collect::<Result<_, StageError>>()?;
        let text = serde_json::to_vec_pretty(&digests).expect("digests serialize");
        std::fs::write(tmp.join(DIGESTS), text).map_err(|e| self.io(e))?;
        sync_tree(&tmp).map_err(|e| self.io(e))?;
        let done = self.dir.join(&name);
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&tmp, &done).map_err(|e| self.io(e))?;
        atomic_write(&self.dir.join("latest"), name.as_bytes()).map_err(|e| self.io(e))?;
        // Only now may older checkpoints go.
        for entry in std::fs::read_dir(&self.dir).map_err(|e| self.io(e))?.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.starts_with("ckpt-") && n != name {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Why the latest checkpoint `dir` cannot be trusted, if it cannot.
    fn damage(dir: &Path) -> Option<String> {
        let path = dir.join(DIGESTS);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Some(format!("{} is missing", path.display()));
        };
        let Ok(recorded) = serde_json::from_str::<BTreeMap<String, String>>(&text) else {
            return Some(format!("{} is not a digest list", path.display()));
        };
        FILES.iter().find_map(|f| {
            let path = dir.join(f);
            match (recorded.get(*f), file_digest(&path)) {
                (Some(want), Ok(got)) if *want == got => None,
                (None, _) => Some(format!("{} has no recorded digest", path.display())),
                (_, Err(e)) => Some(format!("{}: {e}", path.display())),
                (_, Ok(_)) => Some(format!("{} does not match its recorded digest", path.display())),
            }
        })
    }

    /// Loads the latest checkpoint into `opt` when there is one and it is intact; a damaged one
    /// is removed (and so is `latest`) when `owner` (the rank that writes them), and the run
    /// starts over.
    pub fn resume(&self, opt: &mut AdamW, owner: bool) -> Result<Resumed, StageError> {
        let latest = self.dir.join("latest");
        let Ok(name) = std::fs::read_to_string(&latest) else { return Ok(Resumed::Fresh) };
        let dir = self.dir.join(name.trim());
        if let Some(why) = Self::damage(&dir) {
            if owner {
                let _ = std::fs::remove_file(&latest);
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Ok(Resumed::Discarded(why));
        }
        weights::load_into(opt.masters(), &dir.join(FILES[0]))?;
        opt.masters_changed();
        let state: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join(FILES[1]))
            .map_err(|e| StageError::torch(dir.join(FILES[1]).display().to_string(), e))?
            .into_iter()
            .collect();
        let path = dir.join(FILES[2]);
        let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        let progress: Progress = serde_json::from_str(&text).map_err(|e| StageError::json(&path, e))?;
        opt.restore(&state, progress.step as i64)?;
        Ok(Resumed::At(progress))
    }
}
