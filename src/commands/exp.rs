//! `sumflow exp show` and `exp diff`: runs side by side, from their manifests alone (no
//! artifact is read, so hundreds of runs list at once). `show` gives a row per run — the vars
//! that differ between them and each model's score — or, for a run with a sweep, a row per
//! model column with the values its combination was made with; `diff` sets two runs' vars and
//! scores against each other and names the stages whose keys differ.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::cache::Cache;
use crate::error::Error;
use crate::run::manifest::{Manifest, StageRecord};

/// How `exp show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExpFormat {
    /// Aligned columns.
    Table,
    /// A Markdown table.
    Md,
    /// Comma-separated values.
    Csv,
    /// An array of rows.
    Json,
}

/// What a row of `exp show` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// A run.
    Run,
    /// A model column of the latest run (with its sweep combination's values).
    Column,
}

/// The flags of `sumflow exp show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Only the runs of this pipeline file.
    pipeline: Option<PathBuf>,
    /// A row per run, or per model column of the latest run (default: per column when the
    /// latest run has a sweep, else per run).
    #[arg(long, value_enum)]
    by: Option<By>,
    /// The metric shown per model column, in the per-run view.
    #[arg(long, default_value = "rouge1")]
    metric: String,
    /// Sort by this column (numbers descending, text ascending).
    #[arg(long)]
    sort: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExpFormat::Table)]
    format: ExpFormat,
}

/// The flags of `sumflow exp diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// A run: `latest`, `latest~N`, a run id, or a manifest path.
    a: String,
    /// The other run (default: the one before `a`).
    b: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    format: DiffFormat,
}

/// How `exp diff` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Every manifest of the cache, oldest first (read in parallel).
fn manifests(cache: &Cache) -> Result<Vec<Manifest>, Error> {
    let paths = Manifest::paths(cache)?;
    // A manifest that cannot be read is left out, said once, rather than hiding every other run.
    let read: Vec<Result<Manifest, Error>> = paths
        .par_iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&text).map_err(|source| Error::Json { path: p.clone(), what: "run manifest", source })
        })
        .collect();
    let mut runs = Vec::with_capacity(read.len());
    for r in read {
        match r {
            Ok(m) => runs.push(m),
            Err(e) => eprintln!("warning: left out: {}", crate::error::chain(&e).join(": ")),
        }
    }
    Ok(runs)
}

/// The scores a run recorded: (score stage, model column, metric) → mean.
fn scores(m: &Manifest) -> BTreeMap<ScoreKey, f64> {
    let mut out = BTreeMap::new();
    for s in m.stages.iter().filter(|s| s.kind == "score") {
        for (key, v) in &s.stats {
            if let Some((metric, column)) = key.split_once(':') {
                out.insert((s.id.clone(), column.to_string(), metric.to_string()), *v);
            }
        }
    }
    out
}

/// A var's value as text.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A score as `scores` keys it: (score stage, model column, metric).
type ScoreKey = (String, String, String);

/// A table: header and rows of cells (numbers kept as numbers for sorting and JSON); the
/// columns from `metrics` on are scores, printed to 4 decimals.
struct Rows {
    header: Vec<String>,
    rows: Vec<Vec<Value>>,
    metrics: usize,
}

impl Rows {
    fn sort(&mut self, by: &str) -> Result<(), Error> {
        let i = self.header.iter().position(|h| h == by).ok_or_else(|| {
            Error::Usage(format!("--sort {by}: no such column (columns: {})", self.header.join(", ")))
        })?;
        self.rows.sort_by(|a, b| match (&a[i], &b[i]) {
            (Value::Number(x), Value::Number(y)) => {
                y.as_f64().unwrap_or(f64::MIN).total_cmp(&x.as_f64().unwrap_or(f64::MIN))
            }
            (Value::Number(_), _) => std::cmp::Ordering::Less,
            (_, Value::Number(_)) => std::cmp::Ordering::Greater,
            (x, y) => text(x).cmp(&text(y)),
        });
        Ok(())
    }

    fn cell(&self, column: usize, v: &Value) -> String {
        match v {
            Value::Number(n) if column >= self.metrics => format!("{:.4}", n.as_f64().unwrap_or(0.0)),
            other => text(other),
        }
    }

    fn render(&self, format: ExpFormat) -> String {
        let cells: Vec<Vec<String>> =
            self.rows.iter().map(|r| r.iter().enumerate().map(|(c, v)| self.cell(c, v)).collect()).collect();
        match format {
            ExpFormat::Json => {
                let rows: Vec<Value> = self
                    .rows
                    .iter()
                    .map(|r| Value::Object(self.header.iter().cloned().zip(r.iter().cloned()).collect()))
                    .collect();
                serde_json::to_string_pretty(&rows).expect("rows serialize") + "\n"
            }
            ExpFormat::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(&self.header).expect("in memory");
                for r in &cells {
                    w.write_record(r).expect("in memory");
                }
                String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8")
            }
            ExpFormat::Md => {
                let mut out =
                    format!("| {} |\n|{}|\n", self.header.join(" | "), vec!["---"; self.header.len()].join("|"));
                for r in &cells {
                    let escaped: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
                    out.push_str(&format!("| {} |\n", escaped.join(" | ")));
                }
                out
            }
            ExpFormat::Table => {
                let widths: Vec<usize> = (0..self.header.len())
                    .map(|c| {
                        cells
                            .iter()
                            .map(|r| r[c].chars().count())
                            .chain([self.header[c].chars().count()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                let line = |r: &[String]| {
                    let padded: Vec<String> = r
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                        .collect();
                    padded.join("  ").trim_end().to_string() + "\n"
                };
                let mut out = line(&self.header);
                for r in &cells {
                    out.push_str(&line(r));
                }
                out
            }
        }
    }
}

/// `sumflow exp show`.
pub fn show(cache: &Cache, a: &ShowArgs) -> Result<ExitCode, Error> {
    let mut runs = manifests(cache)?;
    if let Some(path) = &a.pipeline {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let name = serde_yaml::from_str::<Value>(text.trim_start_matches('\u{feff}'))
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string))
            .ok_or_else(|| Error::Usage(format!("{}: a pipeline file has a `name:`", path.display())))?;
        runs.retain(|m| m.pipeline.name == name);
    }
    let Some(latest) = runs.last() else {
        return Err(Error::Usage(format!("no runs recorded in {}", cache.path("runs").display())));
    };
    let swept = latest.stages.iter().any(|s| s.sweep.is_some());
    let mut rows = match a.by.unwrap_or(if swept { By::Column } else { By::Run }) {
        By::Run => by_run(&runs, &a.metric),
        By::Column => by_column(latest),
    };
    if let Some(column) = &a.sort {
        rows.sort(column)?;
    }
    out!("{}", rows.render(a.format));
    Ok(ExitCode::SUCCESS)
}

/// What a model column is called in a table: its name, or `STAGE:COLUMN` where two score
/// stages scored columns of that name (a score stage swept with its inputs).
fn label(stage: &str, column: &str, stages_scoring: &BTreeMap<String, BTreeSet<String>>) -> String {
    if stages_scoring.get(column).is_some_and(|s| s.len() > 1) {
        format!("{stage}:{column}")
    } else {
        column.to_string()
    }
}

/// Column name → the score stages that scored it, over `runs`.
fn scoring(runs: &[&Manifest]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in runs {
        for (stage, column, _) in scores(m).keys() {
            out.entry(column.clone()).or_default().insert(stage.clone());
        }
    }
    out
}

/// A row per run: id, start, status, the vars that differ between the runs, and `metric` for
/// each model column any score stage scored.
fn by_run(runs: &[Manifest], metric: &str) -> Rows {
    let vars: BTreeSet<String> =
        runs.iter().flat_map(|m| m.vars.as_object().into_iter().flatten().map(|(k, _)| k.clone())).collect();
    let var = |m: &Manifest, k: &str| m.vars.get(k).cloned().unwrap_or(Value::Null);
    let varying: Vec<&String> =
        vars.iter().filter(|k| runs.iter().map(|m| var(m, k).to_string()).collect::<BTreeSet<_>>().len() > 1).collect();
    let stages_scoring = scoring(&runs.iter().collect::<Vec<_>>());
    // (score stage, column) pairs in the order runs first scored them.
    let mut columns: Vec<(String, String)> = Vec::new();
    for m in runs {
        for (stage, column, met) in scores(m).keys() {
            let pair = (stage.clone(), column.clone());
            if met == metric && !columns.contains(&pair) {
                columns.push(pair);
            }
        }
    }
    let position = |stage: &str| runs.iter().rev().find_map(|m| m.stages.iter().position(|st| st.id == stage));
    columns.sort_by_key(|(stage, _)| position(stage));
    let mut header = vec!["run".to_string(), "started".into(), "pipeline".into(), "status".into()];
    header.extend(varying.iter().map(|k| k.to_string()));
    let metrics = header.len();
    header.extend(columns.iter().map(|(st, c)| format!("{metric} {}", label(st, c, &stages_scoring))));
    let rows =
        runs.iter()
            .map(|m| {
                let s = scores(m);
                let mut row = vec![json!(m.run_id), json!(m.started), json!(m.pipeline.name), json!(m.status)];
                row.extend(varying.iter().map(|k| var(m, k)));
                row.extend(columns.iter().map(|(st, c)| {
                    s.get(&(st.clone(), c.clone(), metric.to_string())).map_or(Value::Null, |v| json!(v))
                }));
                row
            })
            .collect();
    Rows { header, rows, metrics }
}

/// A row per model column each score stage of the latest run scored, with the sweep values it
/// was made with — the column's own stage's combination (`peft@r8` gathered by one score
/// stage), else its score stage's (a score stage swept with its inputs) — and each metric.
fn by_column(m: &Manifest) -> Rows {
    let s = scores(m);
    let sweep_of = |id: &str| m.stages.iter().find(|st| st.id == id).and_then(|st| st.sweep.clone());
    let stages_scoring = scoring(&[m]);
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut metrics: Vec<String> = Vec::new();
    for (stage, column, metric) in s.keys() {
        let pair = (stage.clone(), column.clone());
        if !pairs.contains(&pair) {
            pairs.push(pair);
        }
        if !metrics.contains(metric) {
            metrics.push(metric.clone());
        }
    }
    // Pipeline order: of the score stages, then of the columns that are stages (`peft@r8`),
    // after those that are not; rouge_score's order of the metrics.
    let position = |id: &str| m.stages.iter().position(|st| st.id == id);
    pairs.sort_by_key(|(stage, column)| (position(stage), position(column)));
    metrics.sort_by_key(|m| ["rouge1", "rouge2", "rougeL", "rougeLsum"].iter().position(|x| x == m).unwrap_or(9));
    let item = |(stage, column): &(String, String)| sweep_of(column).or_else(|| sweep_of(stage)).map(|sw| sw.item);
    let mut keys: Vec<String> = Vec::new();
    for pair in &pairs {
        if let Some(item) = item(pair) {
            keys.extend(item.keys().filter(|k| !keys.contains(k)).cloned().collect::<Vec<_>>());
        }
    }
    let mut header = vec!["column".to_string()];
    header.extend(keys.iter().cloned());
    let first_metric = header.len();
    header.extend(metrics.iter().cloned());
    let rows =
        pairs
            .iter()
            .map(|pair| {
                let values = item(pair);
                let mut row = vec![json!(label(&pair.0, &pair.1, &stages_scoring))];
                row.extend(keys.iter().map(|k| values.as_ref().and_then(|i| i.get(k)).cloned().unwrap_or(Value::Null)));
                row.extend(metrics.iter().map(|met| {
                    s.get(&(pair.0.clone(), pair.1.clone(), met.clone())).map_or(Value::Null, |v| json!(v))
                }));
                row
            })
            .collect();
    Rows { header, rows, metrics: first_metric }
}

/// The run `which` names: `latest`, `latest~N`, a run id, or a manifest path.
fn find(cache: &Cache, runs: &[Manifest], which: &str) -> Result<Manifest, Error> {
    if let Some(back) = which.strip_prefix("latest~") {
        let n: usize = back.parse().map_err(|_| Error::Usage(format!("`{which}`: write latest~N")))?;
        return runs
            .len()
            .checked_sub(n + 1)
            .map(|i| runs[i].clone())
            .ok_or_else(|| Error::Usage(format!("`{which}`: only {} runs are recorded", runs.len())));
    }
    Ok(Manifest::find(cache, which)?.1)
}

/// `sumflow exp diff`.
pub fn diff(cache: &Cache, a: &DiffArgs) -> Result<ExitCode, Error> {
    let runs = manifests(cache)?;
    let x = find(cache, &runs, &a.a)?;
    let y = match &a.b {
        Some(b) => find(cache, &runs, b)?,
        None => {
            let i = runs.iter().position(|m| m.run_id == x.run_id).unwrap_or(0);
            i.checked_sub(1)
                .map(|j| runs[j].clone())
                .ok_or_else(|| Error::Usage(format!("run {} has none before it", x.run_id)))?
        }
    };
    let (old, new) = if x.run_id <= y.run_id { (&x, &y) } else { (&y, &x) };
    let var_names: BTreeSet<&String> =
        old.vars.as_object().into_iter().chain(new.vars.as_object()).flat_map(|o| o.keys()).collect();
    let vars: Vec<(String, Value, Value)> = var_names
        .into_iter()
        .filter_map(|k| {
            let (a, b) =
                (old.vars.get(k).cloned().unwrap_or(Value::Null), new.vars.get(k).cloned().unwrap_or(Value::Null));
            (a != b).then(|| (k.clone(), a, b))
        })
        .collect();
    let key = |m: &Manifest| -> BTreeMap<String, String> {
        m.stages.iter().map(|s: &StageRecord| (s.id.clone(), s.key.clone())).collect()
    };
    let (ka, kb) = (key(old), key(new));
    let stage_ids: BTreeSet<&String> = ka.keys().chain(kb.keys()).collect();
    let stages: Vec<&String> = stage_ids.into_iter().filter(|s| ka.get(*s) != kb.get(*s)).collect();
    let (sa, sb) = (scores(old), scores(new));
    let metric_keys: BTreeSet<&ScoreKey> = sa.keys().chain(sb.keys()).collect();
    let metrics: Vec<(&ScoreKey, Option<f64>, Option<f64>)> = metric_keys
        .into_iter()
        .map(|k| (k, sa.get(k).copied(), sb.get(k).copied()))
        .filter(|(_, a, b)| a != b)
        .collect();
    match a.format {
        DiffFormat::Json => {
            let doc = json!({
                "a": old.run_id, "b": new.run_id,
                "vars": vars.iter().map(|(k, a, b)| json!({"var": k, "a": a, "b": b})).collect::<Vec<_>>(),
                "stages": stages,
                "metrics": metrics.iter().map(|((st, c, m), a, b)| json!({"stage": st, "column": c, "metric": m, "a": a, "b": b})).collect::<Vec<_>>(),
            });
            outln!("{}", serde_json::to_string_pretty(&doc).expect("serializes"));
        }
        DiffFormat::Text => {
            outln!(
                "run {} ({}) → run {} ({}), pipeline `{}`",
                old.run_id,
                old.started,
                new.run_id,
                new.started,
                new.pipeline.name
            );
            outln!("vars:{}", if vars.is_empty() { " the same" } else { "" });
            for (k, a, b) in &vars {
                outln!("  {k}: {} → {}", text(a), text(b));
            }
            outln!("stages whose keys differ:{}", if stages.is_empty() { " none" } else { "" });
            for s in &stages {
                let state = match (ka.get(*s), kb.get(*s)) {
                    (None, _) => " (new)",
                    (_, None) => " (gone)",
                    _ => "",
                };
                outln!("  {s}{state}");
            }
            outln!("scores:{}", if metrics.is_empty() { " the same" } else { "" });
            for ((st, c, m), a, b) in &metrics {
                let delta = match (a, b) {
                    (Some(a), Some(b)) => format!(" ({:+.4})", b - a),
                    _ => String::new(),
                };
                let f = |v: &Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
                outln!("  {st} {c} {m}: {} → {}{delta}", f(a), f(b));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
