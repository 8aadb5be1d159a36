//! The command line (clap): every command with its flags, the global ones (the cache and the
//! runtime options), and the dispatch to `commands`, where each command's body lives. Each
//! command returns its exit code; errors go back to `main` to be printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use sumflow_stages::{AttentionBackend, Registry, RuntimeOptions};

use crate::cache::Cache;
use crate::commands::{self, Format};
use crate::error::Error;
use crate::pipeline::{self, Pipeline};
use crate::remote::{self, Remote};
use crate::run::executor::Pull;
use crate::run::plan::Selection;

/// sumflow: declarative, cached pipelines for fine-tuning experiments.
#[derive(Debug, Parser)]
#[command(name = "sumflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    cache: CacheArg,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: every stage the cache does not already hold.
    Run {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Stages running at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Hold the run to the lock file: fail, naming stage and field, where the plan differs
        /// from it or a stage would have to run (CI: results reproduced, not recomputed).
        #[arg(long)]
        frozen: bool,
        /// The lock file to write (or, with --frozen, to check) instead of PIPELINE.lock.
        #[arg(long, value_name = "FILE")]
        lock: Option<PathBuf>,
        /// Ask the remote for every stage the cache lacks; download only what stages that run
        /// read and the final results.
        #[arg(long)]
        pull: bool,
        /// With --pull: download every output the remote has.
        #[arg(long, requires = "pull")]
        pull_all: bool,
        /// Upload what the run produced to the remote.
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Upload the outputs of a pipeline's stages (every cached entry without one) to a remote.
    Push {
        /// The pipeline file (all cached entries if none).
        file: Option<PathBuf>,
        /// Override a var: `--set NAME=VALUE` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE", requires = "file")]
        sets: Vec<String>,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Download the outputs of a pipeline's stages from a remote into the cache.
    Pull {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Show what a run would do, and why each miss misses.
    Plan {
        #[command(flatten)]
        pipeline: PipelineArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Check a pipeline file without running anything.
    Validate {
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Print the stage graph.
    Graph {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = commands::inspect::GraphFormat::Dot)]
        format: commands::inspect::GraphFormat,
    },
    /// Inspect or clean the cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Check a run's artifacts against its manifest (`latest`, a run id, or a manifest path),
    /// or every output a lock file names (here or on the remote).
    Audit {
        /// The run, or a lock file (`PIPELINE.lock`).
        run: String,
        /// Also rerun this stage into a scratch cache and compare its outputs with the run's.
        #[arg(long, value_name = "STAGE")]
        reproduce: Option<String>,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// Compare runs from their manifests: `exp show` (a table of runs or sweep columns),
    /// `exp diff A [B]`.
    Exp {
        #[command(subcommand)]
        action: ExpAction,
    },
    /// Score prediction columns of a CSV/JSONL/Parquet file with ROUGE.
    Score(commands::score::ScoreArgs),
    /// List the stage kinds, or print one kind's params (type, default, what it does).
    Stages {
        /// A stage kind.
        kind: Option<String>,
    },
    /// Measure training, generation and scoring speed on this machine (see benchmarks/).
    Bench(commands::bench::BenchArgs),
    /// Write a random-init model of a real architecture, with a tokenizer trained on local text.
    MakeModel(commands::models::MakeModelArgs),
    /// Merge a LoRA adapter into its base model: a standalone model folder.
    Merge(commands::models::MergeArgs),
    /// Count a model's parameters, like the lab's print_number_of_trainable_model_parameters.
    Params(commands::models::ParamsArgs),
    /// Summarize a dialogue (TEXT, or `-` for standard input) or every row of a table file.
    Summarize(commands::models::SummarizeArgs),
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// List cached stage runs.
    Ls,
    /// Remove artifacts no entry references and leftovers of interrupted runs; with --remote,
    /// the remote's records and objects no lock file and no recent record references.
    Gc {
        /// Collect the remote (NAME|URL, or the default remote) instead of the local cache.
        #[arg(long, value_name = "NAME|URL", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
        /// A lock file whose results stay (repeatable): every project sharing the remote.
        #[arg(long, value_name = "LOCK", requires = "remote")]
        keep: Vec<PathBuf>,
        /// Records and objects younger than this stay (pushes under way).
        #[arg(long, default_value = "1day", value_parser = humantime::parse_duration, requires = "remote")]
        grace: std::time::Duration,
        /// Delete (without it, say what would be deleted).
        #[arg(long, requires = "remote")]
        yes: bool,
    },
    /// Re-hash every artifact; fail on corruption or missing artifacts.
    Verify {
        /// Remove what is damaged (artifacts, the entries that name them, unreadable entries),
        /// so the next run recomputes it.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ExpAction {
    /// A row per run (vars that differ, each model's score) or per sweep column.
    Show(commands::exp::ShowArgs),
    /// Two runs' vars, scores and stage keys side by side.
    Diff(commands::exp::DiffArgs),
}

#[derive(Debug, Args)]
struct PipelineArgs {
    /// The pipeline file.
    file: PathBuf,
    /// Override a var: `--set NAME=VALUE` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    sets: Vec<String>,
}

#[derive(Debug, Args)]
struct SelectArgs {
    /// Rerun this stage even if cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
    /// Run only this stage and its ancestors (repeatable).
    #[arg(long, value_name = "STAGE")]
    only: Vec<String>,
}

/// The remote a command uses.
#[derive(Debug, Args)]
struct RemoteArg {
    /// The remote: a name from sumflow.toml, a URL (s3://, gs://, az://, https://) or a
    /// folder (default: the one sumflow.toml marks `default = true`).
    #[arg(long = "remote", env = "SUMFLOW_REMOTE", value_name = "NAME|URL")]
    name: Option<String>,
}

impl RemoteArg {
    /// The remote, if one is named or configured.
    fn open(&self) -> Result<Option<Arc<Remote>>, Error> {
        open_remote(self.name.as_deref())
    }

    /// The remote, which the command needs.
    fn required(&self) -> Result<Arc<Remote>, Error> {
        self.open()?.ok_or_else(|| {
            Error::Usage(
                "no remote: give --remote NAME|URL, set SUMFLOW_REMOTE, or mark one `default = true` in sumflow.toml"
                    .into(),
            )
        })
    }
}

fn open_remote(name: Option<&str>) -> Result<Option<Arc<Remote>>, Error> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    match remote::resolve(name, &cwd)? {
        Some(spec) => Ok(Some(Arc::new(Remote::open(spec)?))),
        None => Ok(None),
    }
}

#[derive(Debug, Args)]
struct CacheArg {
    /// Cache root.
    #[arg(long = "cache", env = "SUMFLOW_CACHE", default_value = "cache", global = true)]
    dir: PathBuf,
}

/// The runtime options, read once here from flags and the environment (see
/// [`RuntimeOptions`]).
#[derive(Debug, Args)]
struct RuntimeArgs {
    /// How attention is computed (`auto`: the fastest measured for the device). Changes numbers
    /// within rounding: enters model stages' cache keys when not `auto`.
    #[arg(long, env = "SUMFLOW_ATTENTION", value_enum, default_value_t, global = true, hide_env_values = true)]
    attention: AttentionBackend,
    /// Allow libtorch's cuDNN attention kernels on CUDA (slow to plan per batch shape).
    #[arg(long, env = "SUMFLOW_CUDNN_ATTENTION", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    cudnn_attention: bool,
    /// Print where each training step's time went (host issue vs device time, per phase).
    #[arg(long, env = "SUMFLOW_PROFILE", value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true", default_value = "false", global = true)]
    profile: bool,
    /// Save libtorch profiler traces (Chrome JSON) of training steps 3-5 and of a generation's
    /// first batch into DIR.
    #[arg(long, env = "SUMFLOW_TRACE", value_name = "DIR", global = true)]
    trace: Option<PathBuf>,
}

impl RuntimeArgs {
    /// The options, with the CUDA allocator's setting as this process runs with it.
    fn options(&self, cuda_alloc_conf: String) -> RuntimeOptions {
        RuntimeOptions {
            attention: self.attention,
            cudnn_attention: self.cudnn_attention,
            profile: self.profile,
            trace: self.trace.clone().filter(|t| !t.as_os_str().is_empty()),
            cuda_alloc_conf,
        }
    }
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection { force: self.force.clone(), only: self.only.clone() }
    }
}

fn load<'r>(args: &PipelineArgs, registry: &'r Registry) -> Result<Pipeline<'r>, Error> {
    pipeline::load(&args.file, &args.sets, registry)
}

/// The CUDA allocator's setting for this process: `PYTORCH_CUDA_ALLOC_CONF` when the user set
/// it, else sumflow's default, set here before anything runs (libtorch reads it at its first
/// CUDA allocation; no other thread exists yet).
fn cuda_alloc_conf() -> String {
    match std::env::var("PYTORCH_CUDA_ALLOC_CONF") {
        Ok(conf) => conf,
        Err(_) => {
            let conf = sumflow_stages::DEFAULT_CUDA_ALLOC_CONF;
            std::env::set_var("PYTORCH_CUDA_ALLOC_CONF", conf);
            conf.to_string()
        }
    }
}

/// Which binary is running a command line.
#[derive(Clone, Copy)]
pub enum Host {
    /// `sumflow`: no libtorch; it hands the model commands to the worker.
    Runner,
    /// `sumflow-worker`, the build with libtorch: it runs them with [`model_commands`] (given
    /// here, so that nothing the runner calls reaches libtorch).
    Worker(fn(ModelCommand, &RuntimeOptions) -> Result<ExitCode, Error>),
}

/// A model command line, parsed.
#[cfg_attr(not(feature = "torch"), allow(dead_code))] // read by `model_commands` only
pub struct ModelCommand(Command);

/// Runs a model command (`bench`, `make-model`, `merge`, `params`, `summarize`).
#[cfg(feature = "torch")]
pub fn model_commands(command: ModelCommand, runtime: &RuntimeOptions) -> Result<ExitCode, Error> {
    match command.0 {
        Command::Bench(args) => commands::bench::bench(&args, runtime),
        Command::MakeModel(args) => commands::models::make_model(&args),
        Command::Merge(args) => commands::models::merge(&args),
        Command::Params(args) => commands::models::params(&args),
        Command::Summarize(args) => commands::models::summarize(&args, runtime),
        _ => Err(Error::Usage("not a model command".into())),
    }
}

/// Prints an error with its causes (`error: …`, `caused by: …`) and gives the exit code.
pub fn exit(result: Result<ExitCode, Error>) -> ExitCode {
    match result {
        Ok(code) => code,
        // `sumflow cache ls | head -1`: the reader has what it wanted.
        Err(Error::ReaderGone) => ExitCode::SUCCESS,
        Err(e) => {
            crate::error::report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line.
pub fn main(cli: Cli, host: Host) -> Result<ExitCode, Error> {
    let model_command = matches!(
        cli.command,
        Command::Bench(_) | Command::MakeModel(_) | Command::Merge(_) | Command::Params(_) | Command::Summarize(_)
    );
    let runtime = cli.runtime.options(cuda_alloc_conf());
    if model_command {
        return match host {
            Host::Runner => crate::worker::spawn::forward(),
            Host::Worker(run) => run(ModelCommand(cli.command), &runtime),
        };
    }
    let registry = Registry::builtin();
    let cache_dir = &cli.cache.dir;
    match cli.command {
        Command::Run { pipeline, select, jobs, frozen, lock, pull, pull_all, push, remote } => {
            let p = load(&pipeline, &registry)?;
            let pull = match (pull, pull_all) {
                (_, true) => Pull::All,
                (true, false) => Pull::Needed,
                (false, false) => Pull::Off,
            };
            let remote = if pull != Pull::Off || push { Some(remote.required()?) } else { None };
            let request = commands::run::RunRequest {
                selection: select.selection(),
                jobs,
                frozen,
                lock,
                vars_set: !pipeline.sets.is_empty(),
                pull,
                push,
                remote,
            };
            commands::run::run(&p, &Cache::open(cache_dir)?, request, runtime)
        }
        Command::Push { file, sets, remote } => {
            let remote = remote.required()?;
            let p = match &file {
                Some(file) => Some(load(&PipelineArgs { file: file.clone(), sets }, &registry)?),
                None => None,
            };
            commands::remote::push(p.as_ref(), &Cache::open(cache_dir)?, &remote, &runtime)
        }
        Command::Pull { pipeline, remote } => {
            let remote = remote.required()?;
            let p = load(&pipeline, &registry)?;
            commands::remote::pull(&p, &Cache::open(cache_dir)?, &remote, &runtime)
        }
        Command::Plan { pipeline, select, format } => {
            let p = load(&pipeline, &registry)?;
            commands::inspect::plan(&p, &Cache::open(cache_dir)?, &select.selection(), &runtime, format)
        }
        Command::Validate { pipeline } => commands::inspect::validate(&load(&pipeline, &registry)?),
        Command::Graph { pipeline, format } => commands::inspect::graph(&load(&pipeline, &registry)?, format),
        Command::Stages { kind } => commands::inspect::stages(&registry, kind.as_deref()),
        Command::Cache { action } => {
            let cache = Cache::open(cache_dir)?;
            match action {
                CacheAction::Ls => commands::cache::ls(&cache),
                CacheAction::Gc { remote: None, .. } => commands::cache::gc(&cache),
                CacheAction::Gc { remote: Some(name), keep, grace, yes } => {
                    let name = Some(name).filter(|n| !n.is_empty()).or_else(|| std::env::var("SUMFLOW_REMOTE").ok());
                    let remote = open_remote(name.as_deref())?.ok_or_else(|| {
                        Error::Usage(
                            "--remote: no remote named and none marked `default = true` in sumflow.toml".into(),
                        )
                    })?;
                    commands::cache::gc_remote(&remote, &keep, grace, yes)
                }
                CacheAction::Verify { repair } => commands::cache::verify(&cache, repair),
            }
        }
        Command::Audit { run, reproduce, remote } if run.ends_with(".lock") && reproduce.is_none() => {
            commands::audit::audit_lock(&Cache::open(cache_dir)?, Path::new(&run), remote.open()?.as_deref())
        }
        Command::Audit { run, reproduce, .. } => {
            commands::audit::audit(&Cache::open(cache_dir)?, &run, reproduce.as_deref(), &registry, &runtime)
        }
        Command::Exp { action } => {
            let cache = Cache::open(cache_dir)?;
            match action {
                ExpAction::Show(args) => commands::exp::show(&cache, &args),
                ExpAction::Diff(args) => commands::exp::diff(&cache, &args),
            }
        }
        Command::Score(args) => commands::score::score(&args),
        Command::Bench(_) | Command::MakeModel(_) | Command::Merge(_) | Command::Params(_) | Command::Summarize(_) => {
            unreachable!("model commands are handled above")
        }
    }
}
