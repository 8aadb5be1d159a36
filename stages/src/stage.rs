//! The `Stage` trait: what every stage declares (params, inputs, outputs, version) and the
//! context it runs in. The runner knows stages only through this trait and the registry.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::StageError;
use crate::runtime::{Ranks, RuntimeOptions};

/// What an artifact holds; an input accepts some kinds and a stage output has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A table of text columns: `table.parquet` plus `meta.json`.
    Table,
    /// Scores: `metrics.json` plus `per_example.csv`.
    Metrics,
    /// A model folder in Hugging Face's layout (config, safetensors, tokenizer).
    Model,
    /// Token ids: `tokens.parquet` (`id`, `input_ids`, `labels`) plus `meta.json`.
    Tokens,
    /// A LoRA adapter in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`).
    Adapter,
    /// A report: `report.html`, `report.md`, `results.csv`, plots.
    Report,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::Table => "table",
            ArtifactKind::Metrics => "metrics",
            ArtifactKind::Model => "model",
            ArtifactKind::Tokens => "tokens",
            ArtifactKind::Adapter => "adapter",
            ArtifactKind::Report => "report",
        })
    }
}

/// A reference to another stage's output, written `stage` or `stage.output` in a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputRef {
    /// Id of the stage that produces the input.
    pub stage: String,
    /// Name of the output; `None` when the stage has a single output.
    pub output: Option<String>,
}

impl InputRef {
    /// Whether `s` may name an output, or a stage in a file (letters, digits, `_` and `-`).
    pub fn is_name(s: &str) -> bool {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    /// Whether `s` may name a stage of a pipeline: a name, or a sweep's expansion of one
    /// (`lora@r8-lr1e-3`).
    pub fn is_stage_id(s: &str) -> bool {
        match s.split_once('@') {
            Some((base, suffix)) => InputRef::is_name(base) && InputRef::is_name(suffix),
            None => InputRef::is_name(s),
        }
    }

    /// Parses `stage` or `stage.output`.
    pub fn parse(s: &str) -> Result<Self, InvalidRef> {
        let (stage, output) = match s.split_once('.') {
            Some((stage, output)) => (stage, Some(output)),
            None => (s, None),
        };
        if !InputRef::is_stage_id(stage) || !output.is_none_or(InputRef::is_name) {
            return Err(InvalidRef(s.to_string()));
        }
        Ok(InputRef { stage: stage.to_string(), output: output.map(str::to_string) })
    }
}

/// Text that is not a stage reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a stage reference: write `STAGE` or `STAGE.OUTPUT`")]
pub struct InvalidRef(pub String);

impl JsonSchema for InputRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StageReference".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "stage reference: STAGE or STAGE.OUTPUT"})
    }
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.output {
            Some(out) => write!(f, "{}.{}", self.stage, out),
            None => f.write_str(&self.stage),
        }
    }
}

impl Serialize for InputRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InputRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        InputRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One input a stage reads: the param field it comes from, the reference, and what it accepts.
#[derive(Debug, Clone)]
pub struct InputSlot {
    /// Name of the param field holding the reference (also the slot's name).
    pub field: String,
    /// The referenced output.
    pub reference: InputRef,
    /// Artifact kinds this slot accepts.
    pub accepts: &'static [ArtifactKind],
}

/// One output a stage produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDecl {
    /// Output name, referenced as `stage.name`.
    pub name: String,
    /// What the artifact holds.
    pub kind: ArtifactKind,
}

/// A local file whose content (not its path) enters the cache key.
#[derive(Debug, Clone)]
pub struct FileInput {
    /// The param field naming the file.
    pub field: String,
    /// Path as written (relative paths are relative to the working directory).
    pub path: PathBuf,
}

/// A problem with a stage's params found before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// Dotted path of the field within the stage's params (empty for the stage itself).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ParamError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError { field: field.into(), message: message.into() }
    }
}

/// The resource class a stage needs: the executor runs as many `Gpu` stages at once as there
/// are visible GPUs (one on a machine without), each pinned to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Runs on the CPU only.
    Cpu,
    /// Uses the accelerator.
    Gpu,
}

/// Progress and log lines from a running stage; the runner decides how to show them.
pub trait Progress: Send + Sync {
    /// Sets the total amount of work (items, steps, rows).
    fn set_total(&self, total: u64);
    /// Adds `n` units of finished work.
    fn inc(&self, n: u64);
    /// A short status message.
    fn message(&self, msg: &str);
    /// Something the user should know that does not stop the stage (a damaged checkpoint
    /// discarded, CUDA graphs given up): shown whatever the display.
    fn warn(&self, msg: &str);
    /// A line the stage's process wrote on its own (a worker's stderr: libtorch's warnings, a
    /// `--profile` report), shown as it is.
    fn log(&self, _line: &str) {}
}

/// A `Progress` that ignores everything (library use and tests).
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64) {}
    fn inc(&self, _: u64) {}
    fn message(&self, _: &str) {}
    fn warn(&self, _: &str) {}
}

/// How a stage upstream of the running one went, as the runner recorded it: for stages that
/// report on the run (the `report` stage's per-stage table). A cached stage's figures are from
/// the run that made its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Whether its outputs came from the cache in this run.
    pub cached: bool,
    /// Seconds its run took.
    pub seconds: f64,
    /// The figures it recorded (the runner adds `peak_rss_mb` and, for GPU stages where NVML
    /// sees the card, `peak_gpu_mb`).
    pub stats: BTreeMap<String, f64>,
}

/// Everything a running stage may touch: its inputs, its output folders, a work folder, and the
/// process's runtime options.
pub struct StageContext<'a> {
    /// The stage's id in the pipeline (for messages).
    pub stage_id: &'a str,
    /// The process-wide switches (attention backend, profiling, tracing, …).
    pub runtime: &'a RuntimeOptions,
    inputs: BTreeMap<String, (PathBuf, ArtifactKind)>,
    output_root: PathBuf,
    /// A folder that survives failed runs of the same recipe (checkpoints live here).
    pub work_dir: PathBuf,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// The CUDA device the runner pinned this stage to (its index among the visible ones), for
    /// a `Gpu` stage on a machine with GPUs.
    pub gpu: Option<usize>,
    /// With `devices:` above 1, this process's place among the stage's processes.
    pub ranks: Option<Ranks>,
    stats: std::sync::Mutex<BTreeMap<String, f64>>,
    warnings: std::sync::Mutex<Vec<String>>,
    upstream: Vec<StageRecord>,
}

impl<'a> StageContext<'a> {
    /// A context whose outputs go under `output_root/<name>/`.
    pub fn new(
        stage_id: &'a str,
        inputs: BTreeMap<String, (PathBuf, ArtifactKind)>,
        output_root: PathBuf,
        work_dir: PathBuf,
        progress: &'a dyn Progress,
        runtime: &'a RuntimeOptions,
    ) -> Self {
        StageContext {
            stage_id,
            runtime,
            inputs,
            output_root,
            work_dir,
            progress,
            gpu: None,
            ranks: None,
            stats: Default::default(),
            warnings: Default::default(),
            upstream: Vec::new(),
        }
    }

    /// The same context, told how the stages upstream of it went (in pipeline order).
    pub fn with_upstream(mut self, upstream: Vec<StageRecord>) -> Self {
        self.upstream = upstream;
        self
    }

    /// The same context, pinned to CUDA device `gpu`.
    pub fn on_gpu(mut self, gpu: Option<usize>) -> Self {
        self.gpu = gpu;
        self
    }

    /// The same context, as one of several processes running the stage.
    pub fn with_ranks(mut self, ranks: Option<Ranks>) -> Self {
        self.ranks = ranks;
        self
    }

    /// Whether this process writes the stage's outputs: the only one, or rank 0.
    pub fn writes_outputs(&self) -> bool {
        self.ranks.as_ref().is_none_or(|r| r.rank == 0)
    }

    /// How the stages upstream of this one went in this run.
    pub fn upstream(&self) -> &[StageRecord] {
        &self.upstream
    }

    /// Records a figure of this run (throughput, counts); it goes into the run's manifest.
    pub fn record(&self, name: &str, value: f64) {
        self.stats.lock().expect("stats lock").insert(name.to_string(), value);
    }

    /// The figures recorded so far.
    pub fn stats(&self) -> BTreeMap<String, f64> {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Warns the user (through [`Progress::warn`]); the warning also goes into the run's
    /// manifest.
    pub fn warn(&self, message: String) {
        self.progress.warn(&message);
        self.warnings.lock().expect("warnings lock").push(message);
    }

    /// The warnings given so far.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().expect("warnings lock").clone()
    }

    /// The artifact folder bound to input slot `field`.
    pub fn input(&self, field: &str) -> Result<&Path, StageError> {
        self.inputs
            .get(field)
            .map(|(p, _)| p.as_path())
            .ok_or_else(|| StageError::Internal(format!("no input bound to `{field}`")))
    }

    /// The (created) folder the stage writes output `name` into.
    pub fn output_dir(&self, name: &str) -> Result<PathBuf, StageError> {
        let dir = self.output_root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        Ok(dir)
    }
}

/// A stage: typed params, declared inputs and outputs, a version, and `run`.
pub trait Stage: Send + Sync + 'static {
    /// The stage's params, parsed strictly (`deny_unknown_fields`) from the pipeline file; their
    /// doc comments are the reference `sumflow stages KIND` prints (through their JSON schema).
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
    /// The `kind:` that selects this stage in a pipeline.
    const KIND: &'static str;
    /// Bump to invalidate every cached output of this stage.
    const VERSION: u32;
    /// One line for `sumflow stages`.
    const ABOUT: &'static str;

    /// Fills defaults that depend on the stage (e.g. each method's learning rate) before the
    /// params are hashed, so a spelled-out default and an omitted one give the same key.
    fn defaults(&self, _params: &mut Self::Params) {}
    /// The inputs the params refer to.
    fn inputs(&self, params: &Self::Params) -> Vec<InputSlot>;
    /// The outputs the stage will produce with these params.
    fn outputs(&self, params: &Self::Params) -> Vec<OutputDecl>;
    /// Checks that need more than types (ranges, exclusive options), all at once.
    fn check(&self, _params: &Self::Params) -> Vec<ParamError> {
        Vec::new()
    }
    /// Local files whose content enters the cache key in place of their path.
    fn files(&self, _params: &Self::Params) -> Vec<FileInput> {
        Vec::new()
    }
    /// The resource class of this stage.
    fn resource(&self, _params: &Self::Params) -> Resource {
        Resource::Cpu
    }
    /// Whether the stage can run on several devices at once (`devices:` in a pipeline): one
    /// process per device, meeting through [`StageContext::ranks`].
    fn distributed(&self) -> bool {
        false
    }
    /// Whether the stage computes with libtorch: the runner then runs it in a worker process
    /// (`sumflow-worker`, the build with libtorch), so the runner itself never loads it and a
    /// crash in libtorch fails this stage only.
    fn needs_libtorch(&self) -> bool {
        false
    }
    /// Whether the runtime options that change numbers ([`RuntimeOptions::key`]: the attention
    /// backend, cuDNN attention) enter this stage's cache key: true for stages that compute with
    /// libtorch.
    fn runtime_in_key(&self) -> bool {
        false
    }
    /// Files (relative to an output folder) that record timings and so differ between runs;
    /// `audit --reproduce` reports them apart from real differences.
    fn volatile_files(&self) -> &'static [&'static str] {
        &[]
    }
    /// Runs the stage, writing each declared output into `ctx.output_dir(name)`.
    fn run(&self, params: &Self::Params, ctx: &StageContext) -> Result<(), StageError>;
    /// A human summary of finished outputs (`outputs` maps output names to artifact folders).
    fn summary(&self, _params: &Self::Params, _outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        None
    }
}
