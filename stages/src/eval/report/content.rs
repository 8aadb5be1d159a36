//! What the report says, as a [`Document`]: the ROUGE table with intervals, the lab's
//! "absolute percentage improvement" tables (each model vs the first, and the `compare` pairs),
//! the parameters of the trained models with their weights' size on disk, summary lengths, ROUGE-1
//! by topic, time and peak memory of every stage upstream (from this run, or from the run that
//! made a cached stage's outputs), and side-by-side examples.

use std::collections::BTreeMap;

use super::document::{Block, Document, Grid, Section};
use super::params::ReportParams;
use super::plots::{length_plot, loss_plot, rouge_plot, sweep_plot, topic_plot};
use crate::error::StageError;
use crate::eval::rouge::RougeType;
use crate::eval::score::{evaluate, ScoreParams, ScoreReport};
use crate::io::table::Table;
use crate::stage::StageRecord;

/// One training artifact, as the report shows it.
pub struct Trained {
    /// Its label in the report.
    pub label: String,
    /// Trainable parameters.
    pub trainable: i64,
    /// All parameters.
    pub total: i64,
    /// The weights' size on disk: the whole model, or just the adapter.
    pub bytes: u64,
    /// (step, loss) of its loss curve.
    pub losses: Vec<(f64, f64)>,
}

/// What the report is made from.
pub struct Inputs<'a> {
    /// The results table.
    pub table: &'a Table,
    /// Its name in errors.
    pub source: &'a str,
    /// The training artifacts.
    pub trained: &'a [Trained],
    /// The stages upstream of the report.
    pub upstream: &'a [StageRecord],
}

/// The report as [`Document`], and the main scores (also written as `metrics.json`).
pub fn document(p: &ReportParams, i: &Inputs) -> Result<(Document, ScoreReport), StageError> {
    let (table, source) = (i.table, i.source);
    let baseline = p.models.first().cloned();
    let spec = |predictions: Vec<String>, baseline: Option<String>| {
        let mut s = ScoreParams::new(p.input.clone(), p.references.clone(), predictions, baseline);
        s.metrics = RougeType::ALL.to_vec();
        s
    };
    let (main, per) = evaluate(table, source, &spec(p.models.clone(), baseline.clone()))?;
    let mut sections = Vec::new();

    let mut intro = Vec::new();
    if let Some(d) = &p.description {
        intro.push(Block::Text(d.clone()));
    }
    intro.push(Block::Text(format!(
        "{} rows scored with ROUGE (rouge_score 0.1.2 compatible, stemmer on); mean F-measure [95% bootstrap CI].",
        table.num_rows()
    )));
    intro.push(Block::Table(score_grid(&main, false)));
    intro.push(Block::Plot { file: "rouge.svg".into(), svg: rouge_plot(&main)? });
    sections.push(Section { heading: None, blocks: intro });

    if let Some(b) = &baseline {
        sections.push(Section {
            heading: Some(format!("Absolute percentage improvement over {b}")),
            blocks: vec![Block::Table(score_grid(&main, true))],
        });
    }
    for (m, b) in p.compare.iter().flatten() {
        let (r, _) = evaluate(table, source, &spec(vec![b.clone(), m.clone()], Some(b.clone())))?;
        sections
            .push(Section { heading: Some(format!("{m} vs {b}")), blocks: vec![Block::Table(score_grid(&r, true))] });
    }

    if !p.sweep.is_empty() {
        sections.push(sweep_section(p, &main)?);
    }

    if !i.trained.is_empty() {
        let runs: Vec<(String, Vec<(f64, f64)>)> =
            i.trained.iter().map(|t| (t.label.clone(), t.losses.clone())).collect();
        sections.push(Section {
            heading: Some("Parameters".into()),
            blocks: vec![
                Block::Table(parameter_grid(i.trained)),
                Block::Plot { file: "loss.svg".into(), svg: loss_plot(&runs)? },
            ],
        });
    }

    let lengths: Vec<(String, Vec<usize>)> = std::iter::once(&p.references)
        .chain(&p.models)
        .map(|c| Ok((c.clone(), table.column(c, source)?.iter().map(|s| words(s)).collect())))
        .collect::<Result<_, StageError>>()?;
    sections.push(Section {
        heading: Some("Summary lengths".into()),
        blocks: vec![Block::Plot { file: "lengths.svg".into(), svg: length_plot(&lengths)? }],
    });

    let by_topic = topics(p, table, source, &per.f)?;
    if !by_topic.is_empty() {
        sections.push(Section {
            heading: Some("ROUGE-1 by topic (most frequent topics)".into()),
            blocks: vec![
                Block::Table(topic_grid(p, &by_topic)),
                Block::Plot { file: "topics.svg".into(), svg: topic_plot(&by_topic, &p.models)? },
            ],
        });
    }

    if !i.upstream.is_empty() {
        sections.push(Section {
            heading: Some("Stages".into()),
            blocks: vec![Block::Text(stage_summary(i.upstream)), Block::Table(stage_grid(i.upstream))],
        });
    }

    sections.push(Section { heading: Some("Examples".into()), blocks: examples(p, table, source) });
    Ok((Document { title: p.title.clone(), sections }, main))
}

/// A value of a sweep as the report shows it.
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// The sweep: a row per combination (the values that vary, then each metric with its
/// interval), the best by `best_by` marked, and each metric plotted against each varied value.
fn sweep_section(p: &ReportParams, main: &ScoreReport) -> Result<Section, StageError> {
    // The keys whose values differ between combinations.
    let mut keys: Vec<&String> = Vec::new();
    for item in p.sweep.values() {
        for k in item.keys() {
            let values: std::collections::BTreeSet<String> = p.sweep.values().map(|i| shown(&i[k])).collect();
            if values.len() > 1 && !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let scores = |column: &str| main.models.iter().find(|m| m.model == column);
    // The best mean, and every combination that reaches it (each marked, as tied, when several).
    let mean = |c: &str| scores(c).map(|m| m.scores[&p.best_by].mean);
    let top = p.sweep.keys().filter_map(|c| mean(c)).max_by(f64::total_cmp);
    let best: Vec<&String> = p.sweep.keys().filter(|c| top.is_some() && mean(c) == top).collect();
    let mut header = vec!["combination".to_string()];
    header.extend(keys.iter().map(|k| k.to_string()));
    header.extend(main.metrics.iter().map(|m| m.name().to_string()));
    let rows = p
        .sweep
        .iter()
        .filter_map(|(column, item)| {
            let m = scores(column)?;
            let mark = match (best.contains(&column), best.len()) {
                (false, _) => String::new(),
                (true, 1) => format!(" (best {})", p.best_by.name()),
                (true, _) => format!(" (best {}, tied)", p.best_by.name()),
            };
            let mut row = vec![format!("{column}{mark}")];
            row.extend(keys.iter().map(|k| item.get(*k).map(shown).unwrap_or_default()));
            row.extend(main.metrics.iter().map(|k| {
                let i = m.scores[k];
                format!("{:.4} [{:.4}, {:.4}]", i.mean, i.low, i.high)
            }));
            Some(row)
        })
        .collect();
    let mut blocks = vec![
        Block::Text(format!(
            "{} combinations; ROUGE F-measure, mean [95% bootstrap CI]; the best by {} marked.",
            p.sweep.len(),
            p.best_by.name()
        )),
        Block::Table(Grid { header, rows }),
    ];
    for metric in &main.metrics {
        for key in &keys {
            let mut xs: Vec<String> = Vec::new();
            for item in p.sweep.values() {
                let x = item.get(*key).map(shown).unwrap_or_default();
                if !xs.contains(&x) {
                    xs.push(x);
                }
            }
            // A line per combination of the other varied values.
            let mut lines: Vec<(String, Vec<(usize, f64)>)> = Vec::new();
            for (column, item) in &p.sweep {
                let Some(m) = scores(column) else { continue };
                let others: Vec<String> = keys
                    .iter()
                    .filter(|k| *k != key)
                    .map(|k| format!("{k} {}", item.get(*k).map(shown).unwrap_or_default()))
                    .collect();
                let label = if others.is_empty() { metric.name().to_string() } else { others.join(", ") };
                let x = xs.iter().position(|v| *v == item.get(*key).map(shown).unwrap_or_default()).unwrap_or(0);
                match lines.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, points)) => points.push((x, m.scores[metric].mean)),
                    None => lines.push((label, vec![(x, m.scores[metric].mean)])),
                }
            }
            lines.iter_mut().for_each(|(_, points)| points.sort_by_key(|p| p.0));
            let file = format!("sweep-{}-{}.svg", metric.name(), key);
            blocks.push(Block::Plot { file, svg: sweep_plot(metric.name(), key, &xs, lines)? });
        }
    }
    let varied: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    Ok(Section { heading: Some(format!("Sweep over {}", varied.join(", "))), blocks })
}

/// ROUGE-1 by topic for the most frequent topics: (topic, rows, mean per model); none without a
/// `topic` column. `f` is the per-example F-measures, `[model][metric][row]`.
fn topics(
    p: &ReportParams,
    table: &Table,
    source: &str,
    f: &[Vec<Vec<f64>>],
) -> Result<Vec<(String, usize, Vec<f64>)>, StageError> {
    if !table.names().iter().any(|n| n == "topic") {
        return Ok(Vec::new());
    }
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (row, t) in table.column("topic", source)?.iter().enumerate() {
        by.entry(t.as_str()).or_default().push(row);
    }
    let mut frequent: Vec<(&str, Vec<usize>)> = by.into_iter().collect();
    frequent.sort_by_key(|(t, rows)| (std::cmp::Reverse(rows.len()), *t));
    frequent.truncate(10);
    Ok(frequent
        .iter()
        .map(|(t, rows)| {
            let means = (0..p.models.len())
                .map(|m| rows.iter().map(|&i| f[m][0][i]).sum::<f64>() / rows.len() as f64)
                .collect();
            (t.to_string(), rows.len(), means)
        })
        .collect())
}

fn topic_grid(p: &ReportParams, by_topic: &[(String, usize, Vec<f64>)]) -> Grid {
    Grid {
        header: ["topic", "rows"].iter().map(|s| s.to_string()).chain(p.models.iter().cloned()).collect(),
        rows: by_topic
            .iter()
            .map(|(t, rows, means)| {
                let mut r = vec![t.clone(), rows.to_string()];
                r.extend(means.iter().map(|m| format!("{m:.3}")));
                r
            })
            .collect(),
    }
}

fn parameter_grid(trained: &[Trained]) -> Grid {
    Grid {
        header: ["model", "trainable parameters", "all parameters", "% trainable", "weights on disk"]
            .map(String::from)
            .to_vec(),
        rows: trained
            .iter()
            .map(|t| {
                vec![
                    t.label.clone(),
                    t.trainable.to_string(),
                    t.total.to_string(),
                    format!("{:.2}%", 100.0 * t.trainable as f64 / t.total.max(1) as f64),
                    format!("{:.1} MB", t.bytes as f64 / 1e6),
                ]
            })
            .collect(),
    }
}

/// The rows `p.examples` names (the first two rows when none is there), side by side.
fn examples(p: &ReportParams, table: &Table, source: &str) -> Vec<Block> {
    let ids = table.column("id", source).ok();
    let rows: Vec<usize> =
        p.examples.iter().filter_map(|e| ids.and_then(|ids| ids.iter().position(|i| i == e))).collect();
    let rows = if rows.is_empty() { (0..table.num_rows().min(2)).collect() } else { rows };
    rows.iter()
        .map(|&r| {
            let id = ids.map_or(r.to_string(), |ids| ids[r].clone());
            let summaries = Grid {
                header: vec!["summary by".into(), "text".into()],
                rows: std::iter::once(&p.references)
                    .chain(&p.models)
                    .map(|c| vec![c.clone(), table.column(c, source).map(|v| v[r].clone()).unwrap_or_default()])
                    .collect(),
            };
            let dialogue = table.column("dialogue", source).map(|d| d[r].clone()).unwrap_or_default();
            Block::Example { id, dialogue, summaries }
        })
        .collect()
}

/// The parts of a model stage's time its figures give: (figure, name in the report).
const TIME_PARTS: [(&str, &str); 7] = [
    ("load_seconds", "loading"),
    ("step_seconds", "steps"),
    ("capture_seconds", "of which captures"),
    ("validation_seconds", "validation"),
    ("checkpoint_seconds", "checkpoints"),
    ("save_seconds", "saving"),
    ("generation_seconds", "generating"),
];

/// Time and peak memory of the stages upstream of the report.
fn stage_grid(upstream: &[StageRecord]) -> Grid {
    Grid {
        header: ["stage", "kind", "this run", "time", "peak memory (process)", "figures"].map(String::from).to_vec(),
        rows: upstream
            .iter()
            .map(|r| {
                let mut figures: Vec<String> = ["steps", "final_loss", "mean_tokens_per_s", "dialogues_per_s"]
                    .iter()
                    .filter_map(|k| r.stats.get(*k).map(|v| format!("{} {}", k.replace('_', " "), round(*v))))
                    .collect();
                // Where the stage's time went, where it says (model stages).
                let parts: Vec<String> = TIME_PARTS
                    .iter()
                    .filter_map(|(k, name)| r.stats.get(*k).filter(|v| **v >= 0.005).map(|v| format!("{name} {v:.2}")))
                    .collect();
                if !parts.is_empty() {
                    figures.push(format!("seconds: {}", parts.join(", ")));
                }
                vec![
                    r.id.clone(),
                    r.kind.clone(),
                    if r.cached { "cached" } else { "ran" }.into(),
                    format!("{:.2} s", r.seconds),
                    match (r.stats.get("peak_rss_mb"), r.stats.get("peak_gpu_mb")) {
                        (Some(cpu), Some(gpu)) => format!("{cpu:.0} MB; GPU {gpu:.0} MB"),
                        (Some(cpu), None) => format!("{cpu:.0} MB"),
                        _ => "–".into(),
                    },
                    figures.join(", "),
                ]
            })
            .collect(),
    }
}

fn round(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// One line on the stages' time: what this run spent, and what a run from nothing costs.
fn stage_summary(upstream: &[StageRecord]) -> String {
    let ran: Vec<&StageRecord> = upstream.iter().filter(|r| !r.cached).collect();
    format!(
        "{} stages upstream: {} ran in this run ({:.2} s of stage time), {} came from the cache. All of them, run from nothing one after another: {:.2} s.",
        upstream.len(),
        ran.len(),
        ran.iter().map(|r| r.seconds).sum::<f64>(),
        upstream.len() - ran.len(),
        upstream.iter().map(|r| r.seconds).sum::<f64>(),
    )
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn score_grid(r: &ScoreReport, improvements: bool) -> Grid {
    let rows = if improvements { &r.improvements } else { &r.models };
    Grid {
        header: std::iter::once("model".to_string()).chain(r.metrics.iter().map(|m| m.name().to_string())).collect(),
        rows: rows
            .iter()
            .map(|m| {
                std::iter::once(m.model.clone())
                    .chain(r.metrics.iter().map(|k| {
                        let i = m.scores[k];
                        if improvements {
                            format!("{:+.2}% [{:+.2}, {:+.2}]", i.mean, i.low, i.high)
                        } else {
                            format!("{:.4} [{:.4}, {:.4}]", i.mean, i.low, i.high)
                        }
                    }))
                    .collect()
            })
            .collect(),
    }
}
