//! The `report` stage: the lab's comparison, for people. From the results table (the lab's
//! layout) and the training artifacts it writes `results.csv` (which `sumflow score` reads),
//! `report.md` and a self-contained `report.html`: ROUGE with confidence intervals, the lab's
//! "absolute percentage improvement" tables (each model vs the original, PEFT vs full), the
//! parameter table with artifact sizes, time and peak memory of every stage upstream (from this
//! run, or from the run that made a cached stage's outputs), plots (plotters, SVG: ROUGE bars
//! with CI, training loss curves, summary length histograms against the references, ROUGE-1 by
//! topic) and side-by-side examples.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::StageError;
use crate::rouge::RougeType;
use crate::score::{evaluate, ScoreParams, ScoreReport};
use crate::stage::{ArtifactKind, InputRef, InputSlot, OutputDecl, ParamError, Stage, StageContext, StageRecord};
use crate::table::Table;

/// Params of `report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// The results table, in the lab's layout.
    pub input: InputRef,
    /// Column of reference summaries.
    #[serde(default = "references")]
    pub references: String,
    /// Prediction columns: the original model (the baseline) first, then the others.
    #[serde(default = "models")]
    pub models: Vec<String>,
    /// Pairs (model, baseline) compared beyond "each vs the first", e.g. PEFT vs full.
    #[serde(default = "compare")]
    pub compare: Vec<(String, String)>,
    /// Training artifacts by label (a `train-full` model, a `train-lora` adapter).
    #[serde(default)]
    pub training: IndexMap<String, InputRef>,
    /// Row ids shown side by side (default: the lab's row 200, `test_66_3`, when present).
    #[serde(default = "examples")]
    pub examples: Vec<String>,
}

fn references() -> String {
    "human_baseline_summaries".into()
}
fn models() -> Vec<String> {
    ["original_model_summaries", "instruct_model_summaries", "peft_model_summaries"].map(String::from).to_vec()
}
fn compare() -> Vec<(String, String)> {
    vec![("peft_model_summaries".into(), "instruct_model_summaries".into())]
}
fn examples() -> Vec<String> {
    vec!["test_66_3".into(), "test_0_1".into(), "test_33_1".into()]
}

/// One training artifact, as the report shows it.
struct Trained {
    label: String,
    trainable: i64,
    total: i64,
    bytes: u64,
    losses: Vec<(f64, f64)>,
}

fn read_trained(label: &str, dir: &Path) -> Result<Trained, StageError> {
    let d = dir.join("training");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).map_err(|e| StageError::io(&d.join(f), e));
    let params: serde_json::Value = serde_json::from_str(&read("parameters.json")?)
        .map_err(|e| StageError::data(d.display().to_string(), e.to_string()))?;
    let losses = read("losses.csv")?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    // The weights' size on disk: the whole model, or just the adapter.
    let bytes = ["model.safetensors", "adapter_model.safetensors"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(Trained {
        label: label.to_string(),
        trainable: params["trainable_parameters"].as_i64().unwrap_or(0),
        total: params["all_parameters"].as_i64().unwrap_or(0),
        bytes,
        losses,
    })
}

const COLORS: [RGBColor; 4] =
    [RGBColor(120, 120, 120), RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

fn plot_err(e: impl std::fmt::Display) -> StageError {
    StageError::Internal(format!("plot: {e}"))
}

/// The charts' kind: SVG, both axes continuous.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the legend of `chart`'s labelled series at `position`.
fn legend<'a>(chart: &mut Chart<'a, 'a>, position: SeriesLabelPosition) -> Result<(), StageError> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

/// ROUGE bars per metric and model, with the bootstrap interval as a whisker.
fn rouge_plot(r: &ScoreReport) -> Result<String, StageError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let n = r.models.len() as f64;
        // Headroom above the bars for the legend.
        let top = r.models.iter().flat_map(|m| m.scores.values().map(|i| i.high)).fold(0.0, f64::max) * 1.45;
        let mut chart = ChartBuilder::on(&root)
            .caption("ROUGE F-measure (95% bootstrap CI)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..r.metrics.len() as f64, 0.0..top.max(0.01))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(r.metrics.len() * 2 + 1)
            .x_label_formatter(&|x| {
                r.metrics
                    .get(x.floor() as usize)
                    .filter(|_| x.fract() > 0.4)
                    .map_or(String::new(), |m| m.name().to_string())
            })
            .draw()
            .map_err(plot_err)?;
        for (mi, m) in r.models.iter().enumerate() {
            let color = COLORS[mi % COLORS.len()];
            let bars = r.metrics.iter().enumerate().map(|(k, metric)| {
                let x0 = k as f64 + 0.1 + 0.8 * mi as f64 / n;
                Rectangle::new([(x0, 0.0), (x0 + 0.8 / n * 0.9, m.scores[metric].mean)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(m.model.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
            let whiskers = r.metrics.iter().enumerate().map(|(k, metric)| {
                let x = k as f64 + 0.1 + 0.8 * (mi as f64 + 0.45) / n;
                PathElement::new(vec![(x, m.scores[metric].low), (x, m.scores[metric].high)], BLACK)
            });
            chart.draw_series(whiskers).map_err(plot_err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// A labelled line: legend text, colour, points.
type Line = (String, RGBColor, Vec<(f64, f64)>);

/// A chart of labelled lines with a legend (the loss curves, the length histograms).
fn lines_plot(
    caption: &str,
    x_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    lines: Vec<Line>,
) -> Result<String, StageError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc(x_desc).draw().map_err(plot_err)?;
        for (label, color, points) in lines {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2)));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Training loss per step, one line per training stage.
fn loss_plot(trained: &[Trained]) -> Result<String, StageError> {
    let steps = trained.iter().flat_map(|t| t.losses.iter().map(|l| l.0)).fold(1.0, f64::max);
    let (lo, hi) = trained
        .iter()
        .flat_map(|t| t.losses.iter().map(|l| l.1))
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    let lines = trained
        .iter()
        .enumerate()
        .map(|(i, t)| (t.label.clone(), COLORS[(i + 2) % COLORS.len()], t.losses.clone()))
        .collect();
    lines_plot("Training loss", "step", 0.0..steps, lo * 0.95..hi * 1.05, lines)
}

/// Histograms of summary length in words, one step outline per column (references and each
/// model), as the share of rows per 5-word bin.
fn length_plot(columns: &[(String, Vec<usize>)]) -> Result<String, StageError> {
    const BIN: usize = 5;
    let longest = columns.iter().flat_map(|(_, v)| v.iter().copied()).max().unwrap_or(0);
    let bins = longest / BIN + 1;
    let lines: Vec<Line> = columns
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let mut counts = vec![0usize; bins];
            for &n in v {
                counts[n / BIN] += 1;
            }
            let share = counts.iter().map(|&c| c as f64 / v.len().max(1) as f64);
            // Flat across each bin.
            let outline =
                share.enumerate().flat_map(|(b, y)| [((b * BIN) as f64, y), (((b + 1) * BIN) as f64, y)]).collect();
            (name.replace("_summaries", ""), COLORS[i % COLORS.len()], outline)
        })
        .collect();
    let top = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1)).fold(0.0, f64::max).max(0.01) * 1.15;
    let caption = "Summary length: share of rows per 5-word bin";
    lines_plot(caption, "words", 0.0..(bins * BIN) as f64, 0.0..top, lines)
}

/// ROUGE-1 by topic: a row per topic (name, rows, mean per model), most frequent first; a bar
/// per model.
fn topic_plot(topics: &[(String, usize, Vec<f64>)], models: &[String]) -> Result<String, StageError> {
    let mut svg = String::new();
    {
        let height = 80 + 28 * topics.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (720, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        // Room on the right for the legend.
        let top = topics.iter().flat_map(|t| t.2.iter().copied()).fold(0.0, f64::max).max(0.01) * 1.8;
        let n = models.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("ROUGE-1 by topic (most frequent topics)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..top, 0.0..topics.len() as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .max_light_lines(0)
            .y_labels(topics.len() * 2 + 1)
            .y_label_formatter(&|y| {
                // Row k spans [k, k+1) from the top.
                let k = topics.len() as f64 - y;
                topics.get(k.floor() as usize).filter(|_| k.fract() > 0.4).map_or(String::new(), |t| t.0.clone())
            })
            .draw()
            .map_err(plot_err)?;
        for (mi, model) in models.iter().enumerate() {
            let color = COLORS[mi % COLORS.len()];
            let bars = topics.iter().enumerate().map(|(k, (_, _, means))| {
                let y0 = (topics.len() - 1 - k) as f64 + 0.1 + 0.8 * (n - 1.0 - mi as f64) / n;
                Rectangle::new([(0.0, y0), (means[mi], y0 + 0.8 / n * 0.9)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(model.replace("_summaries", ""))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
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

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\n', "<br>")
}

/// A Markdown table (also rendered to HTML below).
struct Grid {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Grid {
    fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|{}|\n", self.header.join(" | "), vec!["---"; self.header.len()].join("|"));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }
    fn html(&self) -> String {
        let mut out = String::from("<table><tr>");
        for h in &self.header {
            let _ = write!(out, "<th>{}</th>", html_escape(h));
        }
        out.push_str("</tr>");
        for r in &self.rows {
            out.push_str("<tr>");
            for c in r {
                let _ = write!(out, "<td>{}</td>", html_escape(c));
            }
            out.push_str("</tr>");
        }
        out + "</table>"
    }
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

/// Writes every file of the report into `out`.
fn write_report(
    p: &ReportParams,
    table: &Table,
    trained: &[Trained],
    upstream: &[StageRecord],
    source: &str,
    out: &Path,
) -> Result<(), StageError> {
    let baseline = p.models.first().cloned();
    let spec = |predictions: Vec<String>, baseline: Option<String>| {
        let mut s = ScoreParams::new(p.input.clone(), p.references.clone(), predictions, baseline);
        s.metrics = RougeType::ALL.to_vec();
        s
    };
    let (main, per) = evaluate(table, source, &spec(p.models.clone(), baseline.clone()))?;
    let extra: Vec<ScoreReport> = p
        .compare
        .iter()
        .map(|(m, b)| evaluate(table, source, &spec(vec![b.clone(), m.clone()], Some(b.clone()))).map(|r| r.0))
        .collect::<Result<_, _>>()?;

    // results.csv: the lab's layout.
    let path = out.join("results.csv");
    let csv_err = |e: csv::Error| StageError::data(path.display().to_string(), e.to_string());
    let mut w = csv::Writer::from_path(&path).map_err(csv_err)?;
    let cols: Vec<&[String]> = table.names().iter().map(|n| table.column(n, source)).collect::<Result<_, _>>()?;
    w.write_record(table.names()).map_err(csv_err)?;
    for r in 0..table.num_rows() {
        w.write_record(cols.iter().map(|c| c[r].as_str())).map_err(csv_err)?;
    }
    w.flush().map_err(|e| StageError::io(&path, e))?;
    std::fs::write(out.join("metrics.json"), serde_json::to_string_pretty(&main).expect("serializes"))
        .map_err(|e| StageError::io(out, e))?;

    // Plots.
    let mut plots: Vec<(&str, String)> = vec![("rouge.svg", rouge_plot(&main)?)];
    if !trained.is_empty() {
        plots.push(("loss.svg", loss_plot(trained)?));
    }
    let lengths: Vec<(String, Vec<usize>)> = std::iter::once(&p.references)
        .chain(&p.models)
        .map(|c| Ok((c.clone(), table.column(c, source)?.iter().map(|s| words(s)).collect())))
        .collect::<Result<_, StageError>>()?;
    plots.push(("lengths.svg", length_plot(&lengths)?));
    // ROUGE-1 by topic, for the most frequent topics.
    let topics = table.names().iter().any(|n| n == "topic").then(|| table.column("topic", source)).transpose()?;
    let by_topic: Vec<(String, usize, Vec<f64>)> = topics.map_or_else(Vec::new, |topics| {
        let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (row, t) in topics.iter().enumerate() {
            by.entry(t.as_str()).or_default().push(row);
        }
        let mut frequent: Vec<(&str, Vec<usize>)> = by.into_iter().collect();
        frequent.sort_by_key(|(t, rows)| (std::cmp::Reverse(rows.len()), *t));
        frequent.truncate(10);
        frequent
            .iter()
            .map(|(t, rows)| {
                let means = (0..p.models.len())
                    .map(|m| rows.iter().map(|&i| per.f[m][0][i]).sum::<f64>() / rows.len() as f64)
                    .collect();
                (t.to_string(), rows.len(), means)
            })
            .collect()
    });
    if !by_topic.is_empty() {
        plots.push(("topics.svg", topic_plot(&by_topic, &p.models)?));
    }
    for (name, svg) in &plots {
        std::fs::write(out.join(name), svg).map_err(|e| StageError::io(&out.join(name), e))?;
    }

    // Tables.
    let params = Grid {
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
    };
    let topic_grid = (!by_topic.is_empty()).then(|| Grid {
        header: ["topic", "rows"].iter().map(|s| s.to_string()).chain(p.models.iter().cloned()).collect(),
        rows: by_topic
            .iter()
            .map(|(t, rows, means)| {
                let mut r = vec![t.clone(), rows.to_string()];
                r.extend(means.iter().map(|m| format!("{m:.3}")));
                r
            })
            .collect(),
    });
    let ids = table.column("id", source).ok();
    let example_rows: Vec<usize> =
        p.examples.iter().filter_map(|e| ids.and_then(|ids| ids.iter().position(|i| i == e))).collect();
    let example_rows = if example_rows.is_empty() { (0..table.num_rows().min(2)).collect() } else { example_rows };
    let examples: Vec<(String, Grid)> = example_rows
        .iter()
        .map(|&r| {
            let id = ids.map_or(r.to_string(), |ids| ids[r].clone());
            let mut rows = Vec::new();
            for c in std::iter::once(&p.references).chain(&p.models) {
                rows.push(vec![c.clone(), table.column(c, source).map(|v| v[r].clone()).unwrap_or_default()]);
            }
            let dialogue = table.column("dialogue", source).map(|d| d[r].clone()).unwrap_or_default();
            (format!("{id}\n\n{dialogue}"), Grid { header: vec!["summary by".into(), "text".into()], rows })
        })
        .collect();

    // report.md
    let mut md = format!("# DialogSum: FLAN-T5 zero-shot, full fine-tuning and LoRA\n\n{} test rows scored with ROUGE (rouge_score 0.1.2 compatible, stemmer on); mean F-measure [95% bootstrap CI].\n\n", table.num_rows());
    md += &score_grid(&main, false).markdown();
    if let Some(b) = &baseline {
        let _ = write!(md, "\n## Absolute percentage improvement over {b}\n\n{}", score_grid(&main, true).markdown());
    }
    for (r, (m, b)) in extra.iter().zip(&p.compare) {
        let _ = write!(md, "\n## {m} vs {b}\n\n{}", score_grid(r, true).markdown());
    }
    if !trained.is_empty() {
        let _ = write!(md, "\n## Parameters\n\n{}", params.markdown());
    }
    if let Some(g) = &topic_grid {
        let _ = write!(md, "\n## ROUGE-1 by topic (most frequent topics)\n\n{}", g.markdown());
    }
    if !upstream.is_empty() {
        let _ = write!(md, "\n## Stages\n\n{}\n\n{}", stage_summary(upstream), stage_grid(upstream).markdown());
    }
    md += "\n## Plots\n\n";
    for (name, _) in &plots {
        let _ = writeln!(md, "![{name}]({name})");
    }
    md += "\n## Examples\n";
    for (title, g) in &examples {
        let _ = write!(md, "\n### {}\n\n{}", title.lines().next().unwrap_or(""), g.markdown());
    }
    std::fs::write(out.join("report.md"), md).map_err(|e| StageError::io(&out.join("report.md"), e))?;

    // report.html: the same, self-contained (plots inline).
    let mut html = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>sumflow report</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f0f0f0}svg{max-width:100%;height:auto}.dialogue{font-size:90%;color:#555}</style></head><body>");
    let _ = write!(html, "<h1>DialogSum: FLAN-T5 zero-shot, full fine-tuning and LoRA</h1><p>{} test rows scored with ROUGE (rouge_score 0.1.2 compatible, stemmer on); mean F-measure [95% bootstrap CI].</p>{}", table.num_rows(), score_grid(&main, false).html());
    if let Some(b) = &baseline {
        let _ = write!(
            html,
            "<h2>Absolute percentage improvement over {}</h2>{}",
            html_escape(b),
            score_grid(&main, true).html()
        );
    }
    for (r, (m, b)) in extra.iter().zip(&p.compare) {
        let _ = write!(html, "<h2>{} vs {}</h2>{}", html_escape(m), html_escape(b), score_grid(r, true).html());
    }
    for (_, svg) in &plots {
        html.push_str(svg);
    }
    if !trained.is_empty() {
        let _ = write!(html, "<h2>Parameters</h2>{}", params.html());
    }
    if let Some(g) = &topic_grid {
        let _ = write!(html, "<h2>ROUGE-1 by topic</h2>{}", g.html());
    }
    if !upstream.is_empty() {
        let _ = write!(
            html,
            "<h2>Stages</h2><p>{}</p>{}",
            html_escape(&stage_summary(upstream)),
            stage_grid(upstream).html()
        );
    }
    html.push_str("<h2>Examples</h2>");
    for (title, g) in &examples {
        let (id, dialogue) = title.split_once("\n\n").unwrap_or((title, ""));
        let _ =
            write!(html, "<h3>{}</h3><p class=\"dialogue\">{}</p>{}", html_escape(id), html_escape(dialogue), g.html());
    }
    html.push_str("</body></html>\n");
    std::fs::write(out.join("report.html"), html).map_err(|e| StageError::io(&out.join("report.html"), e))
}

/// The `report` stage.
pub struct Report;

impl Stage for Report {
    type Params = ReportParams;
    const KIND: &'static str = "report";
    // 2: the stage table and the topic plot.
    const VERSION: u32 = 2;
    const ABOUT: &'static str = "results.csv, report.md and a self-contained report.html with tables and plots";

    fn inputs(&self, p: &ReportParams) -> Vec<InputSlot> {
        let mut slots =
            vec![InputSlot { field: "input".into(), reference: p.input.clone(), accepts: &[ArtifactKind::Table] }];
        slots.extend(p.training.iter().map(|(label, r)| InputSlot {
            field: format!("training/{label}"),
            reference: r.clone(),
            accepts: &[ArtifactKind::Model, ArtifactKind::Adapter],
        }));
        slots
    }
    fn outputs(&self, _: &ReportParams) -> Vec<OutputDecl> {
        vec![OutputDecl { name: "report".into(), kind: ArtifactKind::Report }]
    }
    fn check(&self, p: &ReportParams) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if p.models.is_empty() {
            errors.push(ParamError::new("models", "name at least one prediction column"));
        }
        for (i, (m, b)) in p.compare.iter().enumerate() {
            if !p.models.contains(m) || !p.models.contains(b) {
                errors.push(ParamError::new(format!("compare[{i}]"), "both columns must be among `models`"));
            }
        }
        errors
    }
    fn run(&self, p: &ReportParams, ctx: &StageContext) -> Result<(), StageError> {
        let table = Table::read_artifact(ctx.input("input")?)?;
        let trained: Vec<Trained> = p
            .training
            .keys()
            .map(|label| read_trained(label, ctx.input(&format!("training/{label}"))?))
            .collect::<Result<_, _>>()?;
        write_report(p, &table, &trained, ctx.upstream(), &format!("input {}", p.input), &ctx.output_dir("report")?)
    }
    /// The stage table's times and memory differ from run to run; the rest is reproducible.
    fn volatile_files(&self) -> &'static [&'static str] {
        &["report.md", "report.html"]
    }
    fn summary(&self, _: &ReportParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        Some(format!("{}", outputs.get("report")?.join("report.html").display()))
    }
}
