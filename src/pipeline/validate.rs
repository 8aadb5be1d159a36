//! Validation: every stage's kind and typed params, every reference and its kind, and the
//! absence of cycles — all problems collected, none run until there are none.

use std::collections::HashSet;
use std::path::Path;

use serde_yaml::Value;
use sumflow_stages::{InputRef, Registry};

use super::defaults::Origins;
use super::schema::RawPipeline;
use super::span::SpanIndex;
use super::validated::{BoundInput, Pipeline, StageNode, SweepItem};
use crate::diagnostic::Diagnostic;
use crate::graph;

/// The most processes one stage may run in (`devices:`).
const MAX_DEVICES: u64 = 64;

#[allow(clippy::too_many_arguments)]
pub(super) fn validate<'r>(
    raw: RawPipeline,
    path: &Path,
    file_hash: String,
    registry: &'r Registry,
    spans: &SpanIndex,
    origins: &Origins,
    already_reported: &HashSet<String>,
    mut errors: Vec<Diagnostic>,
) -> Result<Pipeline<'r>, Vec<Diagnostic>> {
    let mut error = |path: String, message: String| {
        // At the line that wrote it: the stage's, a default's, the swept stage's.
        let (path, pos, note) = origins.locate(spans, &path);
        errors.push(Diagnostic { path: path + &note, message, pos });
    };

    // 1. Each stage on its own: id, kind, devices, typed params, the stage's own checks.
    let mut parsed: Vec<Option<StageNode>> = Vec::new();
    let ids: Vec<String> = raw.stages.keys().cloned().collect();
    for (id, value) in raw.stages {
        let at = format!("stages.{id}");
        parsed.push(None);
        if already_reported.contains(&id) {
            continue;
        }
        if !InputRef::is_stage_id(&id) {
            error(at.clone(), format!("stage id `{id}` may hold only letters, digits, `_` and `-`"));
            continue;
        }
        let Value::Mapping(mut map) = value else {
            error(at, "a stage is a mapping with `kind:` and its params".into());
            continue;
        };
        let kind = match map.remove("kind") {
            Some(Value::String(kind)) => kind,
            Some(_) => {
                error(format!("{at}.kind"), "must be a string".into());
                continue;
            }
            None => {
                error(at, format!("missing `kind` (one of: {})", registry.kinds().collect::<Vec<_>>().join(", ")));
                continue;
            }
        };
        let Some(stage) = registry.get(&kind) else {
            let message = format!("unknown kind `{kind}` (known: {})", registry.kinds().collect::<Vec<_>>().join(", "));
            error(format!("{at}.kind"), message);
            continue;
        };
        // How many processes run the stage: how it runs, not what it computes (not a param).
        let devices = match map.remove("devices") {
            None => 1,
            Some(Value::Number(n))
                if n.as_u64().is_some_and(|d| (1..=MAX_DEVICES).contains(&d)) && stage.distributed() =>
            {
                n.as_u64().expect("checked") as usize
            }
            Some(Value::Number(n)) if n.as_u64().is_some_and(|d| (1..=MAX_DEVICES).contains(&d)) => {
                error(
                    format!("{at}.devices"),
                    format!("`{kind}` runs on one device (`devices:` is for train-full, train-lora and generate)"),
                );
                continue;
            }
            Some(_) => {
                error(format!("{at}.devices"), format!("must be a whole number from 1 to {MAX_DEVICES}"));
                continue;
            }
        };
        let params = match stage.parse(Value::Mapping(map)) {
            Ok(p) => p,
            Err(e) => {
                let field = if e.field.is_empty() { at } else { format!("{at}.{}", e.field) };
                error(field, e.message);
                continue;
            }
        };
        let problems = stage.check(&params);
        if !problems.is_empty() {
            for e in problems {
                let field = if e.field.is_empty() { at.clone() } else { format!("{at}.{}", e.field) };
                error(field, e.message);
            }
            continue;
        }
        // The local files the stage reads must be there (their content enters its key).
        let mut missing = false;
        for f in stage.files(&params) {
            if !f.path.is_file() {
                let field = format!("{at}.{}", f.field.split('/').next().unwrap_or(&f.field));
                let why = if f.path.exists() { "is not a file" } else { "does not exist" };
                error(field, format!("`{}` {why}", f.path.display()));
                missing = true;
            }
        }
        if missing {
            continue;
        }
        let last = parsed.last_mut().expect("pushed above");
        let sweep = origins.expansions.get(&id).map(|e| SweepItem {
            base: e.base.clone(),
            suffix: e.suffix.clone(),
            item: e
                .item
                .iter()
                .map(|(k, v)| {
                    let key = k.as_str().map_or_else(
                        || serde_yaml::to_string(k).unwrap_or_default().trim().to_string(),
                        str::to_string,
                    );
                    (key, serde_json::to_value(v).unwrap_or_default())
                })
                .collect(),
        });
        *last = Some(StageNode {
            sweep,
            outputs: stage.outputs(&params),
            files: stage.files(&params),
            resource: stage.resource(&params),
            devices,
            inputs: Vec::new(),
            id,
            stage,
            params,
        });
    }

    // 2. References: the stage exists, the output exists, its kind is accepted.
    let mut edges = Vec::new();
    for i in 0..parsed.len() {
        let Some(node) = &parsed[i] else { continue };
        let slots = node.stage.inputs(&node.params);
        let mut bound = Vec::new();
        for slot in slots {
            let at = format!("stages.{}.{}", node.id, slot.field);
            let r = &slot.reference;
            let Some(j) = ids.iter().position(|id| *id == r.stage) else {
                error(at, format!("no stage `{}` (stages: {})", r.stage, ids.join(", ")));
                continue;
            };
            let Some(producer) = &parsed[j] else { continue }; // its own error is reported
            let names: Vec<&str> = producer.outputs.iter().map(|o| o.name.as_str()).collect();
            let output = match (&r.output, producer.outputs.as_slice()) {
                (Some(name), _) => producer.outputs.iter().find(|o| &o.name == name),
                (None, [only]) => Some(only),
                (None, _) => {
                    error(
                        at,
                        format!(
                            "stage `{}` has outputs {}: say which, e.g. `{}.{}`",
                            r.stage,
                            names.join(", "),
                            r.stage,
                            names[0]
                        ),
                    );
                    continue;
                }
            };
            let Some(output) = output else {
                error(
                    at,
                    format!(
                        "stage `{}` has no output `{}` (outputs: {})",
                        r.stage,
                        r.output.as_deref().unwrap_or(""),
                        names.join(", ")
                    ),
                );
                continue;
            };
            if !slot.accepts.contains(&output.kind) {
                let accepts: Vec<String> = slot.accepts.iter().map(|k| k.to_string()).collect();
                error(at, format!("`{r}` is a {} but `{}` takes a {}", output.kind, slot.field, accepts.join(" or ")));
                continue;
            }
            edges.push((j, i));
            bound.push(BoundInput {
                field: slot.field.clone(),
                stage: j,
                output: output.name.clone(),
                kind: output.kind,
            });
        }
        if let Some(node) = &mut parsed[i] {
            node.inputs = bound;
        }
    }

    // 3. No cycles.
    let order = match graph::order(parsed.len(), &edges) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| ids[i].as_str()).collect();
            error(format!("stages.{}", names[0]), format!("cycle: {}", names.join(" → ")));
            Vec::new()
        }
    };

    if !errors.is_empty() {
        errors.sort_by_key(|d| d.pos.map(|p| (p.line, p.col)));
        return Err(errors);
    }
    Ok(Pipeline {
        name: raw.name,
        path: path.to_path_buf(),
        file_hash,
        vars: raw.vars,
        stages: parsed.into_iter().map(|n| n.expect("no errors means every stage parsed")).collect(),
        order,
    })
}
