//! A validated pipeline: what `load` gives the rest of the runner — every stage with its typed
//! params and its inputs bound to the stages that produce them, in a topological order.

use std::path::PathBuf;

use indexmap::IndexMap;
use sumflow_stages::{ArtifactKind, DynStage, FileInput, OutputDecl, Params, Resource};

/// A validated pipeline: every stage parsed, every reference resolved, no cycles.
pub struct Pipeline<'r> {
    /// `name:` from the file.
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// blake3 of the file's bytes.
    pub file_hash: String,
    /// Vars after `--set` overrides.
    pub vars: IndexMap<String, serde_yaml::Value>,
    /// Stages in file order.
    pub stages: Vec<StageNode<'r>>,
    /// Stage indices in a topological order (inputs before the stages that read them).
    pub order: Vec<usize>,
}

/// One stage of a validated pipeline.
pub struct StageNode<'r> {
    /// The stage id (the key under `stages:`).
    pub id: String,
    /// The implementation.
    pub stage: &'r dyn DynStage,
    /// Typed params.
    pub params: Params,
    /// Inputs, resolved to producing stages.
    pub inputs: Vec<BoundInput>,
    /// Declared outputs.
    pub outputs: Vec<OutputDecl>,
    /// Local files whose content enters the key.
    pub files: Vec<FileInput>,
    /// CPU or GPU.
    pub resource: Resource,
    /// How many processes (one per device) run it together: `devices:`, 1 unless given. Not
    /// in the key: the result is the same experiment (tests hold 2 ranks to 1 process).
    pub devices: usize,
    /// The combination of a sweep this stage is, if it is one.
    pub sweep: Option<SweepItem>,
}

/// One combination of a sweep, as a stage and its manifest record carry it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepItem {
    /// The swept stage as the file names it (`lora`).
    pub base: String,
    /// What follows its `@` (`r8-lr1e-3`).
    pub suffix: String,
    /// The combination: matrix key → value, in the matrix's order.
    pub item: indexmap::IndexMap<String, serde_json::Value>,
}

/// An input slot bound to another stage's output.
#[derive(Debug, Clone)]
pub struct BoundInput {
    /// The param field of the reading stage.
    pub field: String,
    /// Index of the producing stage.
    pub stage: usize,
    /// Name of the producing stage's output.
    pub output: String,
    /// Kind of that output.
    pub kind: ArtifactKind,
}

impl<'r> Pipeline<'r> {
    /// The index of stage `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }

    /// Indices of the stages that read an output of stage `i`.
    pub fn dependents(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.stages.iter().enumerate().filter(move |(_, s)| s.inputs.iter().any(|b| b.stage == i)).map(|(j, _)| j)
    }
}
