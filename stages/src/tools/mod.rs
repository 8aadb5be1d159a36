//! The tools the runner's commands call beside pipelines, each through the same code the stages
//! run: `sumflow score` (the `score` stage's evaluation), the model commands (`make-model`,
//! `merge`, `params`, `summarize`) and `sumflow bench` (the training and generation stages'
//! own loops), plus the file plumbing the runner's cache shares with the stages (atomic writes,
//! tree digests) and the runtime facts run manifests record. This list is the whole of what the
//! runner may use besides the stage API.

pub use crate::eval::score::{ReferenceMode, ScoreParams, ScoreReport};
pub use crate::io::atomic::{atomic_write, sync_dir, sync_tree};
pub use crate::io::digest::{file_digest, tree_digest, TreeDigest};
pub use crate::io::weights_diff::differences as weight_differences;

#[cfg(feature = "torch")]
mod bench;
#[cfg(feature = "torch")]
mod models;

/// The c10d store torchrun's agent serves, and the ranks' meeting in it, for the runner's
/// `lead` and `follow` workers.
#[cfg(feature = "torch")]
pub use crate::torch::dist::{meet, report_failure, Store};
#[cfg(feature = "torch")]
pub use bench::{bench, BenchReport, BenchSettings, Figures, PeakMemory};
#[cfg(feature = "torch")]
pub use models::{make_model, merge, params, summarize, summarize_file, ParamCount};

use std::collections::BTreeMap;
use std::path::Path;

use crate::data::load::read_table;
use crate::error::StageError;

/// Scores the columns of a CSV/JSONL/Parquet file as `p` says (its `input` is ignored: the
/// table is the file) — what the `score` stage computes.
pub fn score_file(path: &Path, p: &ScoreParams) -> Result<ScoreReport, StageError> {
    let table = read_table(path, None)?;
    Ok(crate::eval::score::evaluate(&table, &path.display().to_string(), p)?.0)
}

/// libtorch, CUDA and GPU facts, by name: the libtorch actually loaded (its version and CUDA
/// version, read from `version.py` beside the library), CUDA devices, and [`describe_gpus`].
#[cfg(feature = "torch")]
pub fn describe_runtime() -> BTreeMap<String, String> {
    let mut out = crate::torch::device::describe();
    out.extend(describe_gpus());
    out
}

/// The GPUs' names as the NVIDIA driver gives them (`gpus`; nothing without a driver). Needs
/// no libtorch.
pub fn describe_gpus() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let gpus: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|g| std::fs::read_to_string(g.path().join("information")).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string())))
        .collect();
    if !gpus.is_empty() {
        out.insert("gpus".into(), gpus.join(", "));
    }
    out
}
