//! Pipeline `defaults:` — params per stage kind, merged under each stage's own (a stage's own
//! param wins, whole: a default `lora: {…}` is replaced, not merged key by key) — and
//! [`Origins`]: where a param of a stage came from (the stage, a default, a sweep), so that an
//! error points at the line that wrote it.

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_yaml::Value;
use sumflow_stages::Registry;

use super::matrix::{origin, Expansion};
use super::span::SpanIndex;
use crate::diagnostic::{Diagnostic, Pos};

/// Where each stage's params were written.
#[derive(Default)]
pub struct Origins {
    /// (stage id, param) → the kind whose defaults gave it.
    defaulted: HashMap<(String, String), String>,
    /// Expansion ids → their sweep.
    pub expansions: HashMap<String, Expansion>,
}

impl Origins {
    /// Where the problem at `path` (`stages.ID.FIELD…`) was written: the path to show, its
    /// position, and a note for the message (which stage a default served).
    pub fn locate(&self, spans: &SpanIndex, path: &str) -> (String, Option<Pos>, String) {
        let written = origin(path, &self.expansions);
        let find = |p: &str| if p.ends_with(".kind") { spans.find_value(p) } else { spans.find(p) };
        if let Some(rest) = written.strip_prefix("stages.") {
            let id_end = rest.find('.').unwrap_or(rest.len());
            let (id, fields) = (&rest[..id_end], rest.get(id_end + 1..).unwrap_or(""));
            let field = fields.split(['.', '[']).next().unwrap_or("");
            if let Some(kind) = self.defaulted.get(&(id.to_string(), field.to_string())) {
                let stage = path.strip_prefix("stages.").map_or("", |r| &r[..r.find('.').unwrap_or(r.len())]);
                let shown = format!("defaults.{kind}.{fields}");
                return (shown.clone(), find(&shown), format!(" (for stage `{stage}`)"));
            }
        }
        (path.to_string(), find(&written), String::new())
    }
}

/// Merges `defaults` (kind → params) under each stage of that kind, and records which params
/// came from them; a default for a kind there is not is an error.
pub fn apply(
    stages: IndexMap<String, Value>,
    defaults: &IndexMap<String, Value>,
    registry: &Registry,
    spans: &SpanIndex,
    origins: &mut Origins,
    errors: &mut Vec<Diagnostic>,
) -> IndexMap<String, Value> {
    for (kind, params) in defaults {
        let at = format!("defaults.{kind}");
        if registry.get(kind).is_none() {
            let known = registry.kinds().collect::<Vec<_>>().join(", ");
            errors.push(Diagnostic {
                path: at.clone(),
                message: format!("no stage kind `{kind}` (known: {known})"),
                pos: spans.find(&at),
            });
        } else if !matches!(params, Value::Mapping(_)) {
            errors.push(Diagnostic {
                path: at.clone(),
                message: "holds the kind's params: a mapping".into(),
                pos: spans.find(&at),
            });
        }
    }
    stages
        .into_iter()
        .map(|(id, value)| {
            let Value::Mapping(mut map) = value else { return (id, value) };
            let kind = map.get("kind").and_then(Value::as_str).map(str::to_string);
            if let Some(Value::Mapping(given)) = kind.as_ref().and_then(|k| defaults.get(k)) {
                for (k, v) in given {
                    if !map.contains_key(k) {
                        map.insert(k.clone(), v.clone());
                        if let Value::String(field) = k {
                            origins.defaulted.insert((id.clone(), field.clone()), kind.clone().expect("a kind"));
                        }
                    }
                }
            }
            (id, Value::Mapping(map))
        })
        .collect()
}
