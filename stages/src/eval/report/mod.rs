//! The `report` stage: the comparison, for people. From a results table (the lab's layout: a
//! reference column and one column per model) and the training artifacts it writes
//! `results.csv` (which `sumflow score` reads), `metrics.json`, the plots as SVG files,
//! `report.md` and a self-contained `report.html` — one [`document::Document`] rendered twice.
//!
//! ```text
//! params    what the stage takes (and the lab's column names)
//! content   what the report says, as sections
//! document  the section model and its Markdown and HTML renderings
//! plots     the SVG charts (plotters)
//! ```

pub mod content;
pub mod document;
pub mod params;
pub mod plots;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::StageError;
use crate::io::table::{Format, Table};
use crate::stage::{ArtifactKind, InputSlot, OutputDecl, ParamError, Stage, StageContext};
use content::{Inputs, Trained};
use document::Block;
use params::ReportParams;

/// A training artifact's parameter report, loss curve and weights' size.
fn read_trained(label: &str, dir: &Path) -> Result<Trained, StageError> {
    let d = dir.join("training");
    let read = |f: &str| std::fs::read_to_string(d.join(f)).map_err(|e| StageError::io(&d.join(f), e));
    let params: serde_json::Value =
        serde_json::from_str(&read("parameters.json")?).map_err(|e| StageError::json(&d.join("parameters.json"), e))?;
    let losses = read("losses.csv")?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
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

/// Writes every file of the report into `out`.
fn write_report(p: &ReportParams, inputs: &Inputs, out: &Path) -> Result<(), StageError> {
    let (doc, main) = content::document(p, inputs)?;
    inputs.table.write_file(&out.join("results.csv"), Format::Csv)?;
    let metrics = out.join("metrics.json");
    std::fs::write(&metrics, serde_json::to_string_pretty(&main).expect("scores serialize"))
        .map_err(|e| StageError::io(&metrics, e))?;
    let plots = doc.sections.iter().flat_map(|s| &s.blocks).filter_map(|b| match b {
        Block::Plot { file, svg } => Some((file, svg)),
        _ => None,
    });
    let files = plots
        .map(|(f, svg)| (f.clone(), svg.clone()))
        .chain([("report.md".to_string(), doc.markdown()), ("report.html".to_string(), doc.html())]);
    for (name, text) in files {
        std::fs::write(out.join(&name), text).map_err(|e| StageError::io(&out.join(&name), e))?;
    }
    Ok(())
}

/// The `report` stage.
pub struct Report;

impl Stage for Report {
    type Params = ReportParams;
    const KIND: &'static str = "report";
    // 2: the stage table and the topic plot.
    // 3: one section list for report.md and report.html; title and description from params.
    const VERSION: u32 = 3;
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
    fn defaults(&self, p: &mut ReportParams) {
        p.compare.get_or_insert_with(|| params::default_compare(&p.models));
    }
    fn check(&self, p: &ReportParams) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if p.models.is_empty() {
            errors.push(ParamError::new("models", "name at least one prediction column"));
        }
        for (i, (m, b)) in p.compare.iter().flatten().enumerate() {
            if !p.models.contains(m) || !p.models.contains(b) {
                errors.push(ParamError::new(format!("compare[{i}]"), "both columns must be among `models`"));
            }
        }
        for column in p.sweep.keys() {
            if !p.models.contains(column) {
                errors.push(ParamError::new(format!("sweep.{column}"), "is not among `models`"));
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
        let source = format!("input {}", p.input);
        let inputs = Inputs { table: &table, source: &source, trained: &trained, upstream: ctx.upstream() };
        write_report(p, &inputs, &ctx.output_dir("report")?)
    }
    /// The stage table's times and memory differ from run to run; the rest is reproducible.
    fn volatile_files(&self) -> &'static [&'static str] {
        &["report.md", "report.html"]
    }
    fn summary(&self, _: &ReportParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
        Some(format!("{}", outputs.get("report")?.join("report.html").display()))
    }
}
