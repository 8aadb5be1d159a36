//! The registry: every built-in stage listed by hand, behind an object-safe wrapper so the
//! runner can hold stages of different `Params` types side by side.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::StageError;
use crate::stage::{FileInput, InputSlot, OutputDecl, ParamError, Resource, Stage, StageContext};

/// A stage's params after parsing: the typed value and its canonical JSON (defaults filled in).
pub struct Params {
    typed: Box<dyn Any + Send + Sync>,
    /// The typed params serialized to JSON; what the cache key hashes.
    pub canonical: serde_json::Value,
}

/// The object-safe face of a [`Stage`]; implemented for every stage by [`Registry::add`].
pub trait DynStage: Send + Sync {
    /// The stage's `kind:`.
    fn kind(&self) -> &'static str;
    /// The stage implementation's version.
    fn version(&self) -> u32;
    /// One line about the stage.
    fn about(&self) -> &'static str;
    /// Parses params strictly; the error names the offending field's dotted path.
    fn parse(&self, raw: serde_yaml::Value) -> Result<Params, ParamError>;
    /// See [`Stage::inputs`].
    fn inputs(&self, p: &Params) -> Vec<InputSlot>;
    /// See [`Stage::outputs`].
    fn outputs(&self, p: &Params) -> Vec<OutputDecl>;
    /// See [`Stage::check`].
    fn check(&self, p: &Params) -> Vec<ParamError>;
    /// See [`Stage::files`].
    fn files(&self, p: &Params) -> Vec<FileInput>;
    /// See [`Stage::resource`].
    fn resource(&self, p: &Params) -> Resource;
    /// See [`Stage::needs_libtorch`].
    fn needs_libtorch(&self) -> bool;
    /// See [`Stage::distributed`].
    fn distributed(&self) -> bool;
    /// See [`Stage::runtime_in_key`].
    fn runtime_in_key(&self) -> bool;
    /// The JSON schema of the stage's params (types, defaults, doc comments).
    fn schema(&self) -> schemars::Schema;
    /// See [`Stage::volatile_files`].
    fn volatile_files(&self) -> &'static [&'static str];
    /// See [`Stage::run`].
    fn run(&self, p: &Params, ctx: &StageContext) -> Result<(), StageError>;
    /// See [`Stage::summary`].
    fn summary(&self, p: &Params, outputs: &BTreeMap<String, PathBuf>) -> Option<String>;
}

/// How a stage runs where its own `run` cannot (model stages in a build with libtorch).
type RunFn<P> = fn(&P, &StageContext) -> Result<(), StageError>;

struct Wrapped<S: Stage>(S, Option<RunFn<S::Params>>);

impl<S: Stage> Wrapped<S> {
    fn typed<'p>(&self, p: &'p Params) -> &'p S::Params {
        p.typed.downcast_ref().expect("params were parsed by the same stage")
    }
}

impl<S: Stage> DynStage for Wrapped<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn about(&self) -> &'static str {
        S::ABOUT
    }
    fn parse(&self, raw: serde_yaml::Value) -> Result<Params, ParamError> {
        let mut typed: S::Params = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ParamError::new(field, e.into_inner().to_string())
        })?;
        self.0.defaults(&mut typed);
        let canonical =
            serde_json::to_value(&typed).map_err(|e| ParamError::new("", format!("params do not serialize: {e}")))?;
        Ok(Params { typed: Box::new(typed), canonical })
    }
    fn inputs(&self, p: &Params) -> Vec<InputSlot> {
        self.0.inputs(self.typed(p))
    }
    fn outputs(&self, p: &Params) -> Vec<OutputDecl> {
        self.0.outputs(self.typed(p))
    }
    fn check(&self, p: &Params) -> Vec<ParamError> {
        self.0.check(self.typed(p))
    }
    fn files(&self, p: &Params) -> Vec<FileInput> {
        self.0.files(self.typed(p))
    }
    fn resource(&self, p: &Params) -> Resource {
        self.0.resource(self.typed(p))
    }
    fn needs_libtorch(&self) -> bool {
        self.0.needs_libtorch()
    }
    fn distributed(&self) -> bool {
        self.0.distributed()
    }
    fn runtime_in_key(&self) -> bool {
        self.0.runtime_in_key()
    }
    fn schema(&self) -> schemars::Schema {
        schemars::schema_for!(S::Params)
    }
    fn volatile_files(&self) -> &'static [&'static str] {
        self.0.volatile_files()
    }
    fn run(&self, p: &Params, ctx: &StageContext) -> Result<(), StageError> {
        match self.1 {
            Some(run) => run(self.typed(p), ctx),
            None => self.0.run(self.typed(p), ctx),
        }
    }
    fn summary(&self, p: &Params, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        self.0.summary(self.typed(p), outputs)
    }
}

/// The stages a pipeline may use, by kind.
#[derive(Default)]
pub struct Registry {
    stages: BTreeMap<&'static str, Box<dyn DynStage>>,
}

impl Registry {
    /// An empty registry (tests add fake stages to it).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in stage, as the runner knows them: the model stages are declared (params,
    /// inputs, outputs, checks) but cannot run here; nothing of libtorch is reached from this
    /// registry, so the runner's binary does not link it.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        r.add(crate::data::load::Load);
        r.add(crate::data::subsample::Subsample);
        r.add(crate::data::join::Join);
        r.add(crate::data::tokenize::Tokenize);
        r.add(crate::eval::score::Score);
        r.add(crate::eval::report::Report);
        r.add(crate::make_model::MakeModel);
        r.add(crate::generate::Generate);
        r.add(crate::train::TrainFull);
        r.add(crate::train::TrainLora);
        r
    }

    /// Every built-in stage, the model stages able to run: the worker's registry (a build with
    /// libtorch).
    #[cfg(feature = "torch")]
    pub fn with_libtorch() -> Self {
        let mut r = Registry::builtin();
        r.add_with(crate::make_model::MakeModel, crate::make_model::run);
        r.add_with(crate::generate::Generate, crate::generate::run);
        r.add_with(crate::train::TrainFull, crate::train::run::<crate::train::TrainFull>);
        r.add_with(crate::train::TrainLora, crate::train::run::<crate::train::TrainLora>);
        r
    }

    /// Adds a stage; a second stage of the same kind replaces the first.
    pub fn add<S: Stage>(&mut self, stage: S) {
        self.stages.insert(S::KIND, Box::new(Wrapped(stage, None)));
    }

    /// Adds a stage that runs with `run` instead of its own [`Stage::run`].
    #[cfg(feature = "torch")]
    fn add_with<S: Stage>(&mut self, stage: S, run: RunFn<S::Params>) {
        self.stages.insert(S::KIND, Box::new(Wrapped(stage, Some(run))));
    }

    /// The stage of `kind`, if registered.
    pub fn get(&self, kind: &str) -> Option<&dyn DynStage> {
        self.stages.get(kind).map(|s| s.as_ref())
    }

    /// All kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.stages.keys().copied()
    }

    /// All stages, sorted by kind.
    pub fn iter(&self) -> impl Iterator<Item = &dyn DynStage> {
        self.stages.values().map(|s| s.as_ref())
    }
}
