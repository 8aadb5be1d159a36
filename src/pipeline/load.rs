//! Reading a pipeline file: YAML (the only serde_yaml calls), `--set` overrides and `${var}`
//! substitution, then validation. Every problem becomes a [`Diagnostic`] pointing into the file.

use std::collections::HashSet;
use std::path::Path;

use indexmap::IndexMap;
use serde_yaml::Value;
use sumflow_stages::Registry;

use super::schema::RawPipeline;
use super::span::{Pos, SpanIndex};
use super::{validate, Pipeline};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::error::Error;

/// Reads, substitutes and validates the pipeline at `path`; `sets` are `name=value` overrides.
pub fn load<'r>(path: &Path, sets: &[String], registry: &'r Registry) -> Result<Pipeline<'r>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let text =
        String::from_utf8(bytes).map_err(|e| Error::Usage(format!("{}: not UTF-8 text ({e})", path.display())))?;
    let spans = SpanIndex::new(&text);
    let fail =
        |list: Vec<Diagnostic>| Error::Pipeline(Diagnostics { file: path.to_path_buf(), text: text.clone(), list });

    let raw: RawPipeline = serde_yaml::from_str(&text).map_err(|e| {
        let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() });
        fail(vec![Diagnostic { path: String::new(), message: e.to_string(), pos }])
    })?;

    let mut errors = Vec::new();
    let vars = apply_sets(raw.vars, sets, &mut errors, &spans);
    let mut stages = IndexMap::new();
    let mut reported = HashSet::new();
    for (id, value) in raw.stages {
        let path = format!("stages.{id}");
        let before = errors.len();
        let value = substitute(value, &vars, &path, &spans, &mut errors);
        // A stage with an unknown var is not validated further: its errors would be echoes.
        if errors.len() > before {
            reported.insert(id.clone());
        }
        stages.insert(id, value);
    }
    let raw = RawPipeline { stages, vars, ..raw };
    let file_hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    validate::validate(raw, path, file_hash, registry, &spans, &reported, errors).map_err(fail)
}

/// Applies `name=value` overrides; the value is read as YAML (`100` is a number).
fn apply_sets(
    mut vars: IndexMap<String, Value>,
    sets: &[String],
    errors: &mut Vec<Diagnostic>,
    spans: &SpanIndex,
) -> IndexMap<String, Value> {
    for set in sets {
        let Some((name, value)) = set.split_once('=') else {
            errors.push(Diagnostic {
                path: String::new(),
                message: format!("--set {set}: write --set NAME=VALUE"),
                pos: None,
            });
            continue;
        };
        if !vars.contains_key(name) {
            let known: Vec<&String> = vars.keys().collect();
            errors.push(Diagnostic {
                path: "vars".into(),
                message: format!("--set {set}: the pipeline has no var `{name}` (vars: {known:?})"),
                pos: spans.find("vars"),
            });
            continue;
        }
        let value = serde_yaml::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        vars.insert(name.to_string(), value);
    }
    vars
}

/// Replaces `${name}` in every string of `value`. A string that is exactly `${name}` takes the
/// var's value with its type; elsewhere the var is spliced in as text. `$${` stays `${`.
fn substitute(
    value: Value,
    vars: &IndexMap<String, Value>,
    path: &str,
    spans: &SpanIndex,
    errors: &mut Vec<Diagnostic>,
) -> Value {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                if let Some(v) = vars.get(name) {
                    return v.clone();
                }
            }
            match splice(&s, vars) {
                Ok(text) => Value::String(text),
                Err(name) => {
                    let known: Vec<&String> = vars.keys().collect();
                    errors.push(Diagnostic {
                        path: path.to_string(),
                        message: format!("unknown var `${{{name}}}` (vars: {known:?})"),
                        pos: spans.find_value(path),
                    });
                    Value::String(s)
                }
            }
        }
        Value::Sequence(items) => Value::Sequence(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| substitute(v, vars, &format!("{path}[{i}]"), spans, errors))
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| {
                    let child = match &k {
                        Value::String(key) => format!("{path}.{key}"),
                        _ => path.to_string(),
                    };
                    (k, substitute(v, vars, &child, spans, errors))
                })
                .collect(),
        ),
        other => other,
    }
}

/// Text with every `${name}` replaced; `Err(name)` for an unknown var.
fn splice(s: &str, vars: &IndexMap<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let (Some(r), Some(end)) = (rest.strip_prefix("${"), rest.find('}')) {
            let name = &r[..end - 2];
            let value = vars.get(name).ok_or_else(|| name.to_string())?;
            out.push_str(&match value {
                Value::String(v) => v.clone(),
                other => serde_yaml::to_string(other).unwrap_or_default().trim_end().to_string(),
            });
            rest = &rest[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_vars_keeping_escapes() {
        let vars: IndexMap<String, Value> =
            [("d".to_string(), Value::String("data".into())), ("n".to_string(), Value::from(100))]
                .into_iter()
                .collect();
        assert_eq!(splice("${d}/train.csv", &vars).unwrap(), "data/train.csv");
        assert_eq!(splice("every ${n} rows, $${literal} $5", &vars).unwrap(), "every 100 rows, ${literal} $5");
        assert_eq!(splice("${nope}", &vars), Err("nope".to_string()));
    }
}
