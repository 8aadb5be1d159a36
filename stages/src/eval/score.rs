//! The `score` stage: ROUGE of one or more prediction columns against a reference column,
//! aggregated (mean + bootstrap CI) and compared with a baseline column in percentage points,
//! as the lab's "absolute percentage improvement" tables do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::eval::rouge::aggregate::{intervals, Bootstrap, Interval};
use crate::eval::rouge::{RougeScorer, RougeType};
use crate::io::table::Table;
use crate::stage::{ArtifactKind, InputRef, InputSlot, OutputDecl, ParamError, Stage, StageContext};

/// File name of the aggregate scores inside a metrics artifact.
pub const METRICS_FILE: &str = "metrics.json";
/// File name of the per-example scores inside a metrics artifact.
pub const PER_EXAMPLE_FILE: &str = "per_example.csv";

/// How several references of one example combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceMode {
    /// Mean over an example's references (without `group_by`: every row scored on its own).
    #[default]
    Avg,
    /// Best reference per metric, like `RougeScorer.score_multi`.
    Max,
    /// Only the first reference of each group.
    First,
}

/// Params of `score` (also what `sumflow score` builds from its flags).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// The table holding references and predictions.
    pub input: InputRef,
    /// Column holding the reference summaries.
    pub references: String,
    /// Columns holding each model's summaries.
    pub predictions: Vec<String>,
    /// The column the others are compared with (one of `predictions`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// ROUGE variants to compute.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<RougeType>,
    /// Porter-stem tokens longer than 3 characters (rouge_score's `use_stemmer`).
    #[serde(default = "yes")]
    pub use_stemmer: bool,
    /// How the references of one example combine: `avg`, `max` or `first`.
    #[serde(default)]
    pub reference_mode: ReferenceMode,
    /// Column whose equal values mark rows of one example (e.g. `dialogue`).
    #[serde(default)]
    pub group_by: Option<String>,
    /// Bootstrap resamples for the confidence intervals.
    #[serde(default = "default_resamples")]
    pub bootstrap: u32,
    /// Seed of the bootstrap.
    #[serde(default)]
    pub seed: u64,
    /// Coverage of the confidence intervals.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

fn default_metrics() -> Vec<RougeType> {
    RougeType::ALL.to_vec()
}
fn yes() -> bool {
    true
}
/// Bootstrap resamples: the fewest that make an interval, and a bound on memory.
const MIN_RESAMPLES: u32 = 20;
const MAX_RESAMPLES: u32 = 100_000;

fn default_resamples() -> u32 {
    1000
}
fn default_confidence() -> f64 {
    0.95
}

impl ScoreParams {
    /// Params with every default: all four metrics, stemming, `avg`, 1,000 resamples.
    pub fn new(input: InputRef, references: String, predictions: Vec<String>, baseline: Option<String>) -> Self {
        ScoreParams {
            input,
            references,
            predictions,
            baseline,
            metrics: default_metrics(),
            use_stemmer: true,
            reference_mode: ReferenceMode::Avg,
            group_by: None,
            bootstrap: default_resamples(),
            seed: 0,
            confidence: default_confidence(),
        }
    }

    /// Problems with the params themselves (not the data).
    pub fn check(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if self.predictions.is_empty() {
            errors.push(ParamError::new("predictions", "name at least one prediction column"));
        }
        for (i, p) in self.predictions.iter().enumerate() {
            if self.predictions[..i].contains(p) {
                errors.push(ParamError::new(format!("predictions[{i}]"), format!("`{p}` is named twice")));
            }
        }
        if let Some(b) = &self.baseline {
            if !self.predictions.contains(b) {
                errors.push(ParamError::new("baseline", format!("`{b}` is not one of `predictions`")));
            }
        }
        if self.metrics.is_empty() {
            errors.push(ParamError::new("metrics", "name at least one metric"));
        }
        // Fewer resamples give intervals that mean nothing (0 or 1: zero width); more only cost
        // memory (each resample keeps a mean per model, metric and difference).
        if !(MIN_RESAMPLES..=MAX_RESAMPLES).contains(&self.bootstrap) {
            errors.push(ParamError::new(
                "bootstrap",
                format!("must be between {MIN_RESAMPLES} and {MAX_RESAMPLES} resamples, got {}", self.bootstrap),
            ));
        }
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            errors.push(ParamError::new("confidence", format!("must be in (0, 1), got {}", self.confidence)));
        }
        if self.reference_mode != ReferenceMode::Avg && self.group_by.is_none() {
            errors.push(ParamError::new(
                "group_by",
                "reference modes `max` and `first` need `group_by` (the column that groups references)",
            ));
        }
        errors
    }
}

/// How the scores were computed; stored with them so numbers are never read out of context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Protocol {
    /// The implementation and its reference.
    pub implementation: String,
    /// Whether tokens longer than 3 characters were stemmed.
    pub use_stemmer: bool,
    /// The stemmer.
    pub stemmer: String,
    /// `mean` of per-example F-measures.
    pub aggregation: String,
    /// The bootstrap behind the intervals.
    pub bootstrap: Bootstrap,
    /// How references combine.
    pub reference_mode: ReferenceMode,
    /// The reference column.
    pub references: String,
    /// (reference, prediction) pairs scored per model.
    pub pairs: usize,
    /// Examples averaged (groups, or rows without `group_by`).
    pub examples: usize,
}

/// One model's aggregate scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelScores {
    /// The prediction column.
    pub model: String,
    /// Per metric: mean F-measure and its interval.
    pub scores: BTreeMap<RougeType, Interval>,
}

/// Everything `score` computes, as stored in `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoreReport {
    /// How the scores were computed.
    pub protocol: Protocol,
    /// The metrics, in the order asked for.
    pub metrics: Vec<RougeType>,
    /// Scores per model, in the order of `predictions`.
    pub models: Vec<ModelScores>,
    /// The baseline column, if any.
    pub baseline: Option<String>,
    /// Each other model minus the baseline, in percentage points (paired bootstrap interval).
    pub improvements: Vec<ModelScores>,
}

/// Per-example F-measures: `[model][metric][example]`, with each example's key.
pub struct PerExample {
    /// The example keys (group value, or 1-based row number).
    pub keys: Vec<String>,
    /// F-measures.
    pub f: Vec<Vec<Vec<f64>>>,
}

/// Scores `table` (named `source` in errors) as `p` says.
pub fn evaluate(table: &Table, source: &str, p: &ScoreParams) -> Result<(ScoreReport, PerExample), StageError> {
    let references = table.column(&p.references, source)?;
    let predictions: Vec<&[String]> =
        p.predictions.iter().map(|c| table.column(c, source)).collect::<Result<_, _>>()?;

    // Group rows into examples, keeping first-appearance order.
    let (keys, groups): (Vec<String>, Vec<Vec<usize>>) = match &p.group_by {
        None => {
            ((1..=table.num_rows()).map(|r| r.to_string()).collect(), (0..table.num_rows()).map(|r| vec![r]).collect())
        }
        Some(col) => {
            let values = table.column(col, source)?;
            let mut index: BTreeMap<&str, usize> = BTreeMap::new();
            let mut keys = Vec::new();
            let mut groups: Vec<Vec<usize>> = Vec::new();
            for (row, v) in values.iter().enumerate() {
                let g = *index.entry(v).or_insert_with(|| {
                    keys.push(v.clone());
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(row);
            }
            (keys, groups)
        }
    };
    if p.reference_mode != ReferenceMode::Avg {
        for (model, col) in p.predictions.iter().zip(&predictions) {
            for g in &groups {
                if let Some(&row) = g.iter().find(|&&r| col[r] != col[g[0]]) {
                    return Err(StageError::data(
                        format!("{source}: row {}", row + 1),
                        format!("`{model}` differs from row {} of the same example; `{:?}` mode needs one prediction per example", g[0] + 1, p.reference_mode),
                    ));
                }
            }
        }
    }

    let scorer = RougeScorer::new(&p.metrics, p.use_stemmer);
    let rows_used: Vec<usize> = match p.reference_mode {
        ReferenceMode::First => groups.iter().map(|g| g[0]).collect(),
        _ => (0..table.num_rows()).collect(),
    };
    // F-measures of every (row, model) pair, computed in parallel: [model][row][metric].
    let pair_f: Vec<Vec<Vec<f64>>> = predictions
        .iter()
        .map(|col| {
            let mut by_row = vec![Vec::new(); table.num_rows()];
            let scored: Vec<(usize, Vec<f64>)> = rows_used
                .par_iter()
                .map(|&r| (r, scorer.score(&references[r], &col[r]).iter().map(|s| s.fmeasure).collect()))
                .collect();
            for (r, f) in scored {
                by_row[r] = f;
            }
            by_row
        })
        .collect();

    let combine = |model: usize, metric: usize, g: &[usize]| -> f64 {
        let vals = g.iter().map(|&r| pair_f[model][r][metric]);
        match p.reference_mode {
            ReferenceMode::Avg => vals.sum::<f64>() / g.len() as f64,
            // score_multi: the reference with the highest F-measure (first on ties).
            ReferenceMode::Max => vals.fold(f64::NEG_INFINITY, f64::max),
            ReferenceMode::First => pair_f[model][g[0]][metric],
        }
    };
    let f: Vec<Vec<Vec<f64>>> = (0..predictions.len())
        .map(|m| (0..p.metrics.len()).map(|k| groups.iter().map(|g| combine(m, k, g)).collect()).collect())
        .collect();

    // One paired bootstrap over every model's series and every difference from the baseline.
    let baseline = p.baseline.as_ref().and_then(|b| p.predictions.iter().position(|c| c == b));
    let others: Vec<usize> = (0..predictions.len()).filter(|&m| Some(m) != baseline).collect();
    let mut series: Vec<Vec<f64>> = f.iter().flatten().cloned().collect();
    if let Some(b) = baseline {
        for &m in &others {
            for (model, base) in f[m].iter().zip(&f[b]) {
                series.push(model.iter().zip(base).map(|(x, y)| 100.0 * (x - y)).collect());
            }
        }
    }
    let bootstrap = Bootstrap { resamples: p.bootstrap, seed: p.seed, confidence: p.confidence };
    let ivs = intervals(&series, bootstrap);
    let per_model = |chunk: &[Interval], model: &str| ModelScores {
        model: model.to_string(),
        scores: p.metrics.iter().copied().zip(chunk.iter().copied()).collect(),
    };
    let nk = p.metrics.len();
    let models =
        p.predictions.iter().enumerate().map(|(m, name)| per_model(&ivs[m * nk..(m + 1) * nk], name)).collect();
    let diff0 = predictions.len() * nk;
    let improvements = match baseline {
        None => Vec::new(),
        Some(_) => others
            .iter()
            .enumerate()
            .map(|(i, &m)| per_model(&ivs[diff0 + i * nk..diff0 + (i + 1) * nk], &p.predictions[m]))
            .collect(),
    };
    let report = ScoreReport {
        protocol: Protocol {
            implementation: "sumflow rouge, bit-exact with rouge_score 0.1.2".into(),
            use_stemmer: p.use_stemmer,
            stemmer: "nltk PorterStemmer (NLTK_EXTENSIONS), tokens longer than 3 characters".into(),
            aggregation: "mean of per-example F-measures".into(),
            bootstrap,
            reference_mode: p.reference_mode,
            references: p.references.clone(),
            pairs: rows_used.len(),
            examples: groups.len(),
        },
        metrics: p.metrics.clone(),
        models,
        baseline: p.baseline.clone(),
        improvements,
    };
    Ok((report, PerExample { keys, f }))
}

impl ScoreReport {
    /// The lab's comparison as text: a ROUGE table with intervals, then the improvements.
    pub fn render_table(&self) -> String {
        let p = &self.protocol;
        let mode = format!("{:?}", p.reference_mode).to_lowercase();
        let mut out = format!(
            "ROUGE F-measure, mean over {} examples ({} pairs, references: {mode}, stemmer {}) [{}% bootstrap CI]\n",
            p.examples,
            p.pairs,
            if p.use_stemmer { "on" } else { "off" },
            (p.bootstrap.confidence * 100.0).round()
        );
        let cell = |i: &Interval| format!("{:.4} [{:.4}, {:.4}]", i.mean, i.low, i.high);
        out.push_str(&self.grid("model", &self.models, cell));
        if let Some(b) = &self.baseline {
            out.push_str(&format!("\nAbsolute percentage improvement over {b} (percentage points):\n"));
            let cell = |i: &Interval| format!("{:+.2}% [{:+.2}, {:+.2}]", i.mean, i.low, i.high);
            out.push_str(&self.grid("model", &self.improvements, cell));
        }
        out
    }

    /// Rows of models × metrics, each column as wide as its widest cell.
    fn grid(&self, corner: &str, rows: &[ModelScores], cell: impl Fn(&Interval) -> String) -> String {
        let mut table: Vec<Vec<String>> = vec![std::iter::once(corner.to_string())
            .chain(self.metrics.iter().map(|m| m.name().to_string()))
            .collect()];
        for r in rows {
            table.push(
                std::iter::once(r.model.clone()).chain(self.metrics.iter().map(|k| cell(&r.scores[k]))).collect(),
            );
        }
        let widths: Vec<usize> =
            (0..table[0].len()).map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for row in &table {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (text, w))| if c == 0 { format!("{text:w$}") } else { format!("{text:>w$}") })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// Reads `metrics.json` from a metrics artifact folder.
    pub fn read(dir: &Path) -> Result<ScoreReport, StageError> {
        let path = dir.join(METRICS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| StageError::json(&path, e))
    }
}

/// Writes `metrics.json` and `per_example.csv` into `dir`.
pub fn write_artifact(dir: &Path, report: &ScoreReport, per: &PerExample, p: &ScoreParams) -> Result<(), StageError> {
    let path = dir.join(METRICS_FILE);
    let json = serde_json::to_string_pretty(report).expect("scores serialize");
    std::fs::write(&path, json + "\n").map_err(|e| StageError::io(&path, e))?;

    let path = dir.join(PER_EXAMPLE_FILE);
    let io = |e: csv::Error| StageError::csv(&path, e);
    let mut w = csv::Writer::from_path(&path).map_err(io)?;
    let mut header = vec!["example".to_string(), "model".to_string()];
    header.extend(p.metrics.iter().map(|m| m.name().to_string()));
    w.write_record(&header).map_err(io)?;
    for (m, model) in p.predictions.iter().enumerate() {
        for (e, key) in per.keys.iter().enumerate() {
            let mut row = vec![key.clone(), model.clone()];
            row.extend((0..p.metrics.len()).map(|k| per.f[m][k][e].to_string()));
            w.write_record(&row).map_err(io)?;
        }
    }
    w.flush().map_err(|e| StageError::io(&path, e))
}

/// The `score` stage.
pub struct Score;

impl Stage for Score {
    type Params = ScoreParams;
    const KIND: &'static str = "score";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "ROUGE of prediction columns against references, with CIs and improvements over a baseline";

    fn inputs(&self, p: &ScoreParams) -> Vec<InputSlot> {
        vec![InputSlot { field: "input".into(), reference: p.input.clone(), accepts: &[ArtifactKind::Table] }]
    }

    fn outputs(&self, _: &ScoreParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "metrics".into(), kind: ArtifactKind::Metrics }]
    }

    fn check(&self, p: &ScoreParams) -> Vec<ParamError> {
        p.check()
    }

    fn run(&self, p: &ScoreParams, ctx: &StageContext) -> Result<(), StageError> {
        let table = Table::read_artifact(ctx.input("input")?)?;
        ctx.progress.message(&format!("scoring {} rows × {} models", table.num_rows(), p.predictions.len()));
        let (report, per) = evaluate(&table, &format!("input {}", p.input), p)?;
        // Each mean, also as a figure of the run: `sumflow exp show` reads manifests only.
        for m in &report.models {
            for (metric, interval) in &m.scores {
                ctx.record(&format!("{}:{}", metric.name(), m.model), interval.mean);
            }
        }
        write_artifact(&ctx.output_dir("metrics")?, &report, &per, p)
    }

    fn summary(&self, _: &ScoreParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        ScoreReport::read(outputs.get("metrics")?).ok().map(|r| r.render_table())
    }
}
