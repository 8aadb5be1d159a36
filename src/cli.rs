//! The command line (clap): `run`, `plan`, `validate`, `graph`, `cache`, `audit`, `score`,
//! `stages`. Each command returns its exit code; errors go back to `main` to be printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sumflow_stages::load::read_table;
use sumflow_stages::score::{evaluate, ReferenceMode, ScoreParams};
use sumflow_stages::{InputRef, Registry};

use crate::cache::{self, Cache, CacheLock};
use crate::error::Error;
use crate::executor::{self, Outcome, RunOptions};
use crate::graph::{self, GraphFormat};
use crate::manifest::{self, Manifest};
use crate::models;
use crate::pipeline::{self, Pipeline};
use crate::plan::{self, Selection};
use crate::report::{self, Console};

/// sumflow: declarative, cached pipelines for fine-tuning experiments.
#[derive(Debug, Parser)]
#[command(name = "sumflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    cache: CacheArg,
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
        /// Fail if any stage would run (CI: check that nothing changed).
        #[arg(long)]
        frozen: bool,
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
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Inspect or clean the cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Check a run's artifacts against its manifest (`latest`, a run id, or a manifest path).
    Audit {
        /// The run.
        run: String,
        /// Also rerun this stage into a scratch cache and compare its outputs with the run's.
        #[arg(long, value_name = "STAGE")]
        reproduce: Option<String>,
    },
    /// Score prediction columns of a CSV/JSONL/Parquet file with ROUGE.
    Score {
        /// The table.
        file: PathBuf,
        /// Column of reference summaries.
        #[arg(long)]
        references: String,
        /// Columns of predicted summaries.
        #[arg(long, num_args = 1.., required = true)]
        predictions: Vec<String>,
        /// Column the others are compared with.
        #[arg(long)]
        baseline: Option<String>,
        /// How several references of one example combine.
        #[arg(long, value_enum, default_value_t = Mode::Avg)]
        reference_mode: Mode,
        /// Column whose equal values mark one example's rows.
        #[arg(long)]
        group_by: Option<String>,
        /// Do not stem tokens.
        #[arg(long)]
        no_stemmer: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ScoreFormat::Table)]
        format: ScoreFormat,
    },
    /// List the stage kinds.
    Stages,
    /// Measure training, generation and scoring speed on this machine (see benchmarks/).
    Bench {
        #[command(flatten)]
        options: crate::bench::BenchOptions,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write a random-init model of a real architecture, with a tokenizer trained on local text.
    MakeModel {
        /// tiny, flan-t5-small, flan-t5-base or flan-t5-large.
        #[arg(long)]
        arch: String,
        /// A CSV/JSONL/Parquet file, or a folder whose train split is used.
        #[arg(long)]
        tokenizer_data: PathBuf,
        /// Tokenizer pieces (before the 100 sentinels).
        #[arg(long, default_value_t = 32000)]
        vocab_size: u32,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge a LoRA adapter into its base model: a standalone model folder.
    Merge {
        /// The adapter folder (PEFT layout).
        adapter: PathBuf,
        /// The base model: a folder or hf://OWNER/NAME.
        #[arg(long)]
        base: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Count a model's parameters, like the lab's print_number_of_trainable_model_parameters.
    Params {
        /// A model folder, hf://OWNER/NAME, or an architecture name (tiny, flan-t5-base, ...).
        #[arg(long)]
        model: String,
        /// Count with LoRA adapters: `r=32,alpha=32,targets=q,v`.
        #[arg(long)]
        lora: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Summarize a dialogue (TEXT, or `-` for standard input) or every row of a table file.
    Summarize {
        /// A model folder or hf://OWNER/NAME.
        #[arg(long)]
        model: String,
        /// A LoRA adapter folder (PEFT layout) to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The dialogue; `-` reads standard input.
        text: Option<String>,
        /// A CSV/JSONL/Parquet file of dialogues.
        #[arg(long, requires = "output", conflicts_with = "text")]
        input: Option<PathBuf>,
        /// Where to write the input rows plus a `summary` column (CSV).
        #[arg(long, requires = "input")]
        output: Option<PathBuf>,
        /// Column of dialogues in --input.
        #[arg(long, default_value = "dialogue")]
        column: String,
        /// Most tokens per summary.
        #[arg(long, default_value_t = 200)]
        max_new_tokens: i64,
        /// Beam search with this many beams (1: greedy).
        #[arg(long, default_value_t = 1)]
        num_beams: i64,
        /// cpu, cuda or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// List cached stage runs.
    Ls,
    /// Remove artifacts no entry references and leftovers of interrupted runs.
    Gc,
    /// Re-hash every artifact; fail on corruption or missing artifacts.
    Verify,
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

#[derive(Debug, Args)]
struct CacheArg {
    /// Cache root.
    #[arg(long = "cache", env = "SUMFLOW_CACHE", default_value = "cache", global = true)]
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScoreFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Avg,
    Max,
    First,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection { force: self.force.clone(), only: self.only.clone() }
    }
}

fn load<'r>(args: &PipelineArgs, registry: &'r Registry) -> Result<Pipeline<'r>, Error> {
    pipeline::load(&args.file, &args.sets, registry)
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> Result<ExitCode, Error> {
    let registry = Registry::builtin();
    match cli.command {
        Command::Run { pipeline, select, jobs, frozen } => {
            let p = load(&pipeline, &registry)?;
            let cache = Cache::open(&cli.cache.dir)?;
            let mut opts = RunOptions { selection: select.selection(), frozen, ..RunOptions::default() };
            if let Some(j) = jobs {
                opts.jobs = j;
            }
            run(&p, &cache, &opts)
        }
        Command::Plan { pipeline, select, format } => {
            let p = load(&pipeline, &registry)?;
            let cache = Cache::open(&cli.cache.dir)?;
            let plans = plan::plan(&p, &cache, &select.selection())?;
            match format {
                Format::Text => print!("{}", plan::render(&p, &plans)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&plans).expect("plans serialize")),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { pipeline } => {
            let p = load(&pipeline, &registry)?;
            println!("{}: valid pipeline `{}` with {} stages", p.path.display(), p.name, p.stages.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph { pipeline, format } => {
            let p = load(&pipeline, &registry)?;
            print!("{}", graph::render(&p, format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { action } => cache_command(action, &Cache::open(&cli.cache.dir)?),
        Command::Audit { run, reproduce } => {
            let cache = Cache::open(&cli.cache.dir)?;
            let (path, m) = Manifest::find(&cache, &run)?;
            if let Some(stage) = reproduce {
                let r = crate::reproduce::reproduce(&cache, &m, &stage, &registry, &Console::default())?;
                for line in &r.volatile {
                    println!("timing record (expected to differ): {line}");
                }
                if !r.differences.is_empty() {
                    return Err(Error::Audit(format!(
                        "stage `{stage}` of run {} did not reproduce:\n  {}",
                        m.run_id,
                        r.differences.join("\n  ")
                    )));
                }
                println!("stage `{stage}` of run {} reproduced bit-exactly ({} files)", m.run_id, r.same);
                return Ok(ExitCode::SUCCESS);
            }
            let (checked, problems) = manifest::audit(&cache, &m);
            if !problems.is_empty() {
                return Err(Error::Audit(format!(
                    "{} ({} artifacts checked):\n  {}",
                    path.display(),
                    checked,
                    problems.join("\n  ")
                )));
            }
            println!(
                "{}: run {} of `{}`: all {checked} artifacts match the manifest",
                path.display(),
                m.run_id,
                m.pipeline.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Score { file, references, predictions, baseline, reference_mode, group_by, no_stemmer, format } => {
            score(&file, references, predictions, baseline, reference_mode, group_by, no_stemmer, format)
        }
        Command::MakeModel { arch, tokenizer_data, vocab_size, seed, out } => {
            models::make_model(&arch, &tokenizer_data, vocab_size, seed, &out)?;
            println!(
                "{}: random-init {arch} with a {vocab_size}-piece tokenizer trained on {}",
                out.display(),
                tokenizer_data.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Merge { adapter, base, out } => {
            models::merge(&adapter, &base, &out)?;
            println!("{}: {base} with {} merged in", out.display(), adapter.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Params { model, lora, format } => {
            let count = models::params(&model, lora.as_deref())?;
            match format {
                Format::Text => print!("{}", count.render()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&count).expect("counts serialize")),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Summarize { model, adapter, text, input, output, column, max_new_tokens, num_beams, device } => {
            let adapter = adapter.as_deref();
            if let (Some(input), Some(output)) = (input, output) {
                let rows = models::summarize_file(
                    &model,
                    adapter,
                    &input,
                    &output,
                    &column,
                    max_new_tokens,
                    num_beams,
                    &device,
                )?;
                eprintln!("{}: {rows} rows summarized", output.display());
                return Ok(ExitCode::SUCCESS);
            }
            let text = match text.as_deref() {
                None | Some("-") => std::io::read_to_string(std::io::stdin()).map_err(|e| Error::io("<stdin>", e))?,
                Some(t) => t.to_string(),
            };
            let summary = models::summarize(&model, adapter, &[text], max_new_tokens, num_beams, &device)?;
            println!("{}", summary[0]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { options, json } => {
            let report = crate::bench::bench(&options)?;
            print!("{}", report.render());
            if let Some(path) = json {
                let text = serde_json::to_vec_pretty(&report).expect("reports serialize");
                crate::cache::atomic_write(&path, &text).map_err(|e| Error::io(&path, e))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stages => {
            for s in registry.iter() {
                println!("{:10} v{}  {}", s.kind(), s.version(), s.about());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(p: &Pipeline, cache: &Cache, opts: &RunOptions) -> Result<ExitCode, Error> {
    let started = SystemTime::now();
    let console = Console::default();
    let runs = executor::run(p, cache, opts, &console)?;
    let manifest = Manifest::new(p, &runs, started, std::env::args().collect());
    let manifest_path = manifest.write(cache)?;
    print!("{}", report::summaries(p, &runs, cache));
    let count = |f: fn(&Outcome) -> bool| runs.iter().filter(|r| f(&r.outcome)).count();
    eprintln!(
        "{} in {:.2}s: {} ran, {} cached, {} failed, {} skipped; manifest {}",
        p.name,
        manifest.duration_s,
        count(|o| *o == Outcome::Ran),
        count(|o| *o == Outcome::Hit),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| matches!(o, Outcome::Skipped(_))),
        manifest_path.display()
    );
    let failed: Vec<String> = p
        .stages
        .iter()
        .zip(&runs)
        .filter(|(_, r)| matches!(r.outcome, Outcome::Failed(_)))
        .map(|(s, _)| s.id.clone())
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::StagesFailed(failed))
    }
}

fn cache_command(action: CacheAction, cache: &Cache) -> Result<ExitCode, Error> {
    match action {
        CacheAction::Ls => {
            for e in cache::ls(cache)? {
                let bytes: u64 = e.outputs.values().map(|o| o.bytes).sum();
                println!(
                    "{}  {:24}  {:10}  {:>10} B  {}",
                    &e.key[..12],
                    format!("{}/{}", e.pipeline, e.stage),
                    e.kind,
                    bytes,
                    e.created
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheAction::Gc => {
            let _lock = CacheLock::acquire(&cache.path("lock"), &|pid| {
                eprintln!("waiting for the cache lock (held by pid {pid})…")
            })?;
            let r = cache::gc(cache)?;
            println!(
                "removed {} unreferenced artifacts ({} bytes) and {} scratch folders",
                r.artifacts, r.bytes, r.scratch
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheAction::Verify => {
            let r = cache::verify(cache)?;
            println!(
                "{} entries, {} artifacts re-hashed; {} unreferenced artifacts, {} scratch folders (harmless)",
                r.entries, r.artifacts, r.orphans, r.scratch
            );
            if r.problems.is_empty() {
                println!("cache {} is consistent", cache.root().display());
                Ok(ExitCode::SUCCESS)
            } else {
                Err(Error::Cache {
                    path: cache.root().to_path_buf(),
                    message: format!("{} problems:\n  {}", r.problems.len(), r.problems.join("\n  ")),
                })
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn score(
    file: &Path,
    references: String,
    predictions: Vec<String>,
    baseline: Option<String>,
    mode: Mode,
    group_by: Option<String>,
    no_stemmer: bool,
    format: ScoreFormat,
) -> Result<ExitCode, Error> {
    // The params name their table as a stage input; here the table is the file itself.
    let input = InputRef { stage: "file".into(), output: None };
    let mut params = ScoreParams::new(input, references, predictions, baseline);
    params.use_stemmer = !no_stemmer;
    params.group_by = group_by;
    params.reference_mode = match mode {
        Mode::Avg => ReferenceMode::Avg,
        Mode::Max => ReferenceMode::Max,
        Mode::First => ReferenceMode::First,
    };
    if let Some(e) = params.check().into_iter().next() {
        return Err(Error::Usage(format!("--{}: {}", e.field.replace('_', "-"), e.message)));
    }
    let source = file.display().to_string();
    let stage_error = |source| Error::Stage { stage: "score".into(), kind: "score".into(), source };
    let table = read_table(file, None).map_err(stage_error)?;
    let (report, _) = evaluate(&table, &source, &params).map_err(stage_error)?;
    match format {
        ScoreFormat::Table => print!("{}", report.render_table()),
        ScoreFormat::Json => println!("{}", serde_json::to_string_pretty(&report).expect("reports serialize")),
    }
    Ok(ExitCode::SUCCESS)
}
