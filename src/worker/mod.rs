//! Worker processes: the runner never loads libtorch. A stage that computes with it
//! ([`sumflow_stages::Stage::needs_libtorch`]) runs in `sumflow-worker`, a second binary built
//! from this crate with libtorch, started once per stage run; the model commands (`bench`,
//! `make-model`, `merge`, `params`, `summarize`) are handed to it whole.
//!
//! ```text
//! runner ── stdin:  one Job as a JSON line, then nothing (the pipe stays open) ──▶ worker
//! runner ◀── stdout: Message JSON lines (progress, warnings, then done or failed) ── worker
//! runner ◀── stderr: libtorch's and the stage's own lines, shown as they come     ── worker
//! ```
//!
//! The runner keeps the worker's stdin open while it runs: when the runner dies the pipe
//! closes and the worker exits, so no orphan goes on writing into the cache's work folders.
//! A worker that dies without saying `done` or `failed` (an abort, an out-of-memory kill)
//! fails its stage with its exit status and the last lines of its stderr; the other stages
//! go on. A stage with `devices: N` runs in N workers, ranks 0 to N-1, which meet through a
//! c10d store on 127.0.0.1 (rank 0 serves it on a port the runner found free); rank 0 writes
//! the outputs, and a rank that fails stops the others. [`spawn`] is the runner's end, [`serve`]
//! the worker's; [`torchrun`] runs the distributed stages over the ranks torchrun started.

pub mod serve;
pub mod spawn;
pub mod torchrun;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sumflow_stages::{ArtifactKind, Ranks, RuntimeOptions, StageRecord};

/// What a worker is asked to run: one stage, with its params as the runner parsed them (their
/// canonical form, the one its key hashes), the artifact folders bound to its inputs, and where
/// to write.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The runner's version: a worker of another version refuses the job.
    pub version: String,
    /// The stage's id in the pipeline.
    pub stage_id: String,
    /// Its kind.
    pub kind: String,
    /// Its params, canonical (defaults filled in).
    pub params: serde_json::Value,
    /// Input slot → artifact folder and kind.
    pub inputs: BTreeMap<String, (PathBuf, ArtifactKind)>,
    /// The scratch folder its outputs go into (one subfolder per output).
    pub output_root: PathBuf,
    /// The work folder that survives failed runs (checkpoints).
    pub work_dir: PathBuf,
    /// The CUDA device the runner pinned the stage to.
    pub gpu: Option<usize>,
    /// The runner's runtime options.
    pub runtime: RuntimeOptions,
    /// How the stages upstream went (for the report stage; model stages ignore it).
    pub upstream: Vec<StageRecord>,
    /// With `devices:` above 1, this worker's rank among the stage's workers.
    #[serde(default)]
    pub ranks: Option<Ranks>,
}

/// One line a worker writes on its stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Message {
    /// The total amount of work (steps, rows).
    Total(u64),
    /// Units of work finished.
    Inc(u64),
    /// A short status.
    Status(String),
    /// Something the user should know that does not stop the stage.
    Warn(String),
    /// The stage finished: its figures and warnings (its outputs are in the scratch folder).
    Done {
        /// Figures recorded by the stage, and the worker's peak resident memory.
        stats: BTreeMap<String, f64>,
        /// Warnings given.
        warnings: Vec<String>,
        /// libtorch, CUDA and GPU facts as the worker found them.
        runtime: BTreeMap<String, String>,
    },
    /// The stage failed: the error and its causes, outermost first.
    Failed(Vec<String>),
}

/// This build's version, as jobs carry it.
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The worker binary: `$SUMFLOW_WORKER`, else `sumflow-worker` beside this executable.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SUMFLOW_WORKER") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("sumflow"));
    exe.with_file_name(format!("sumflow-worker{}", std::env::consts::EXE_SUFFIX))
}
