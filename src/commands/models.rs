//! The model commands — `make-model`, `merge`, `params`, `summarize` — through the stages
//! crate's tools (the `make-model` and `generate` stages' code). They need libtorch: the runner
//! hands them to `sumflow-worker` (see `crate::worker`).

use std::path::PathBuf;
#[cfg(feature = "torch")]
use std::process::ExitCode;

use clap::Args;
#[cfg(feature = "torch")]
use sumflow_stages::RuntimeOptions;

use super::Format;
#[cfg(feature = "torch")]
use crate::error::Error;

/// The flags of `sumflow make-model`.
#[derive(Debug, Args)]
pub struct MakeModelArgs {
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
    /// Output folder (new).
    #[arg(long)]
    out: PathBuf,
}

/// The flags of `sumflow merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The adapter folder (PEFT layout).
    adapter: PathBuf,
    /// The base model: a folder or hf://OWNER/NAME.
    #[arg(long)]
    base: String,
    /// Output folder (new; not the base, the adapter, or inside either).
    #[arg(long)]
    out: PathBuf,
}

/// The flags of `sumflow params`.
#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// A model folder, hf://OWNER/NAME, or an architecture name (tiny, flan-t5-base, ...).
    #[arg(long)]
    model: String,
    /// Count with LoRA adapters: `r=32,alpha=32,targets=q,v`.
    #[arg(long)]
    lora: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// The flags of `sumflow summarize`.
#[derive(Debug, Args)]
pub struct SummarizeArgs {
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
    /// Where to write the input rows plus a `prediction` column: a new .csv, .jsonl or .parquet
    /// file.
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
}

#[cfg(feature = "torch")]
mod imp {
    use super::*;
    use sumflow_stages::tools;

    pub fn make_model(a: &MakeModelArgs) -> Result<ExitCode, Error> {
        tools::make_model(&a.arch, &a.tokenizer_data, a.vocab_size, a.seed, &a.out)?;
        outln!(
            "{}: random-init {} with a {}-piece tokenizer trained on {}",
            a.out.display(),
            a.arch,
            a.vocab_size,
            a.tokenizer_data.display()
        );
        Ok(ExitCode::SUCCESS)
    }

    pub fn merge(a: &MergeArgs) -> Result<ExitCode, Error> {
        tools::merge(&a.adapter, &a.base, &a.out)?;
        outln!("{}: {} with {} merged in", a.out.display(), a.base, a.adapter.display());
        Ok(ExitCode::SUCCESS)
    }

    pub fn params(a: &ParamsArgs) -> Result<ExitCode, Error> {
        let count = tools::params(&a.model, a.lora.as_deref())?;
        match a.format {
            Format::Text => out!("{}", count.render()),
            Format::Json => outln!("{}", serde_json::to_string_pretty(&count).expect("counts serialize")),
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn summarize(a: &SummarizeArgs, runtime: &RuntimeOptions) -> Result<ExitCode, Error> {
        let adapter = a.adapter.as_deref();
        if let (Some(input), Some(output)) = (&a.input, &a.output) {
            let (n, beams) = (a.max_new_tokens, a.num_beams);
            let rows =
                tools::summarize_file(&a.model, adapter, input, output, &a.column, n, beams, &a.device, runtime)?;
            eprintln!("{}: {rows} rows summarized", output.display());
            return Ok(ExitCode::SUCCESS);
        }
        let text = match a.text.as_deref() {
            None | Some("-") => std::io::read_to_string(std::io::stdin()).map_err(|e| Error::io("<stdin>", e))?,
            Some(t) => t.to_string(),
        };
        let summary = tools::summarize(&a.model, adapter, &[text], a.max_new_tokens, a.num_beams, &a.device, runtime)?;
        outln!("{}", summary[0]);
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(feature = "torch")]
pub use imp::{make_model, merge, params, summarize};
