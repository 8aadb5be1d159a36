//! The report's plots (plotters, SVG strings): ROUGE bars with their intervals, training loss
//! curves, summary-length histograms against the references, ROUGE-1 by topic.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::StageError;
use crate::eval::score::ScoreReport;

const COLORS: [RGBColor; 4] =
    [RGBColor(120, 120, 120), RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44)];

fn plot_err(e: impl std::fmt::Display) -> StageError {
    // Drawing into a string fails only on a bug in the drawing code.
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
pub fn rouge_plot(r: &ScoreReport) -> Result<String, StageError> {
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

/// Training loss per step, one line per training stage: (label, (step, loss) points).
pub fn loss_plot(runs: &[(String, Vec<(f64, f64)>)]) -> Result<String, StageError> {
    let steps = runs.iter().flat_map(|(_, losses)| losses.iter().map(|l| l.0)).fold(1.0, f64::max);
    let (lo, hi) = runs
        .iter()
        .flat_map(|(_, losses)| losses.iter().map(|l| l.1))
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo < hi { (lo, hi) } else { (0.0, 1.0) };
    let lines = runs
        .iter()
        .enumerate()
        .map(|(i, (label, losses))| (label.clone(), COLORS[(i + 2) % COLORS.len()], losses.clone()))
        .collect();
    lines_plot("Training loss", "step", 0.0..steps, lo * 0.95..hi * 1.05, lines)
}

/// Histograms of summary length in words, one step outline per column (references and each
/// model), as the share of rows per 5-word bin.
pub fn length_plot(columns: &[(String, Vec<usize>)]) -> Result<String, StageError> {
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
pub fn topic_plot(topics: &[(String, usize, Vec<f64>)], models: &[String]) -> Result<String, StageError> {
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

/// A metric against one varied value of a sweep: the values along x (as labels, in their
/// order), a line per combination of the other varied values.
pub fn sweep_plot(
    metric: &str,
    key: &str,
    xs: &[String],
    lines: Vec<(String, Vec<(usize, f64)>)>,
) -> Result<String, StageError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (lo, hi) = lines
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.1))
            .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.15).max(0.005);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{metric} by {key}"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..xs.len() as f64 - 0.5, (lo - pad)..(hi + pad))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(xs.len().max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    xs.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(key)
            .draw()
            .map_err(plot_err)?;
        let many = lines.len() > 1;
        for (i, (label, points)) in lines.into_iter().enumerate() {
            let color = COLORS[(i + 1) % COLORS.len()];
            let points: Vec<(f64, f64)> = points.into_iter().map(|(x, y)| (x as f64, y)).collect();
            let series = chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2))).map_err(plot_err)?;
            if many {
                series
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2)));
            }
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(plot_err)?;
        }
        if many {
            legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}
