//! `sumflow score FILE`: ROUGE of a table file's columns, through the `score` stage's own code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use sumflow_stages::tools::{score_file, ReferenceMode, ScoreParams};
use sumflow_stages::InputRef;

use crate::error::Error;

/// The flags of `sumflow score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
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

/// `sumflow score`.
pub fn score(a: &ScoreArgs) -> Result<ExitCode, Error> {
    // The params name their table as a stage input; here the table is the file itself.
    let input = InputRef { stage: "file".into(), output: None };
    let mut params = ScoreParams::new(input, a.references.clone(), a.predictions.clone(), a.baseline.clone());
    params.use_stemmer = !a.no_stemmer;
    params.group_by = a.group_by.clone();
    params.reference_mode = match a.reference_mode {
        Mode::Avg => ReferenceMode::Avg,
        Mode::Max => ReferenceMode::Max,
        Mode::First => ReferenceMode::First,
    };
    if let Some(e) = params.check().into_iter().next() {
        return Err(Error::Usage(format!("--{}: {}", e.field.replace('_', "-"), e.message)));
    }
    let report = score_file(&a.file, &params)?;
    match a.format {
        ScoreFormat::Table => out!("{}", report.render_table()),
        ScoreFormat::Json => outln!("{}", serde_json::to_string_pretty(&report).expect("reports serialize")),
    }
    Ok(ExitCode::SUCCESS)
}
