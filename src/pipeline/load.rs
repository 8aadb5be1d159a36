//! Reading a pipeline file: YAML (the only serde_yaml calls), `--set` overrides and `${var}`
//! substitution, then validation. Every problem becomes a [`Diagnostic`] pointing into the file.

use std::collections::HashSet;
use std::path::Path;

use indexmap::IndexMap;
use serde_yaml::Value;
use sumflow_stages::Registry;

use super::defaults::{self, Origins};
use super::matrix;
use super::schema::RawPipeline;
use super::span::SpanIndex;
use super::validate;
use super::validated::Pipeline;
use crate::diagnostic::{Diagnostic, Diagnostics, Pos};
use crate::error::Error;

/// Reads, substitutes and validates the pipeline at `path`; `sets` are `name=value` overrides.
pub fn load<'r>(path: &Path, sets: &[String], registry: &'r Registry) -> Result<Pipeline<'r>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let file_hash = blake3::hash(&bytes).to_hex().to_string();
    let text =
        String::from_utf8(bytes).map_err(|e| Error::Usage(format!("{}: not UTF-8 text ({e})", path.display())))?;
    // A byte-order mark means nothing to YAML (some editors write one).
    let text = text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text);
    let spans = SpanIndex::new(&text);
    let fail =
        |list: Vec<Diagnostic>| Error::Pipeline(Diagnostics { file: path.to_path_buf(), text: text.clone(), list });

    let raw: RawPipeline = serde_yaml::from_str(&text).map_err(|e| {
        let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() });
        fail(vec![Diagnostic { path: String::new(), message: e.to_string(), pos }])
    })?;

    let mut errors = duplicates(&spans);
    let vars = apply_sets(raw.vars, sets, &mut errors, &spans);
    let (vars, broken) = resolve_vars(vars, &spans, &mut errors);
    let defaults: IndexMap<String, Value> = raw
        .defaults
        .into_iter()
        .map(|(kind, mut v)| {
            let at = format!("defaults.{kind}");
            if let Err(e) = v.apply_merge() {
                errors.push(Diagnostic { path: at.clone(), message: e.to_string(), pos: spans.find(&at) });
            }
            (kind, substitute(v, &vars, &at, &spans, &mut errors))
        })
        .collect();
    let mut stages = IndexMap::new();
    let mut reported = HashSet::new();
    for (id, mut value) in raw.stages {
        let path = format!("stages.{id}");
        let before = errors.len();
        if id.contains('@') {
            let message = "`@` names the expansions of a sweep; a stage id holds letters, digits, `_` and `-`";
            errors.push(Diagnostic { path: path.clone(), message: message.into(), pos: spans.find(&path) });
        }
        // YAML merge keys (`<<: *base`) are expanded before anything reads the stage.
        if let Err(e) = value.apply_merge() {
            errors.push(Diagnostic { path: path.clone(), message: e.to_string(), pos: spans.find(&path) });
        }
        let uses_broken =
            strings(&value).iter().any(|s| references(s).unwrap_or_default().iter().any(|r| broken.contains(r)));
        let value = substitute(value, &vars, &path, &spans, &mut errors);
        // A stage with an unknown or broken var is not validated further: its errors would be
        // echoes.
        if errors.len() > before || uses_broken {
            reported.insert(id.clone());
        }
        stages.insert(id, value);
    }
    let mut origins = Origins::default();
    let stages = defaults::apply(stages, &defaults, registry, &spans, &mut origins, &mut errors);
    let swept = matrix::sweep(stages, registry, &spans, &mut errors);
    // An expansion of a stage already reported is not validated either.
    reported.extend(swept.refused);
    let base = |id: &str| swept.expansions.get(id).map_or(id.to_string(), |e| e.base.clone());
    let reported: HashSet<String> = swept
        .stages
        .keys()
        .filter(|id| {
            reported.contains(id.as_str()) || reported.contains(&base(id)) || reported.contains(&base(&base(id)))
        })
        .cloned()
        .collect();
    origins.expansions = swept.expansions;
    let raw = RawPipeline { stages: swept.stages, vars, defaults, ..raw };
    validate::validate(raw, path, file_hash, registry, &spans, &origins, &reported, errors)
        .map_err(|list| fail(once_per_place(list)))
}

/// One error per place and message: a mistake in a swept stage is made once in the file, not
/// once per expansion (the first expansion's error stands for the rest, and says how many).
fn once_per_place(list: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<(Diagnostic, usize)> = Vec::new();
    for d in list {
        match out.iter_mut().find(|(o, _)| o.pos.is_some() && o.pos == d.pos && o.message == d.message) {
            Some((_, more)) => *more += 1,
            None => out.push((d, 0)),
        }
    }
    out.into_iter()
        .map(|(mut d, more)| {
            if more > 0 {
                d.path = format!("{} (and {more} more expansion{})", d.path, if more == 1 { "" } else { "s" });
            }
            d
        })
        .collect()
}

/// A key given twice in one mapping: YAML keeps the last silently, so it is an error here
/// (only the outermost, where keys inside a repeated mapping repeat too).
fn duplicates(spans: &SpanIndex) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for (path, at, first) in &spans.duplicates {
        if out.iter().any(|d| path.starts_with(&format!("{}.", d.path))) {
            continue;
        }
        out.push(Diagnostic {
            path: path.clone(),
            message: format!("given twice (first at line {})", first.line),
            pos: Some(*at),
        });
    }
    out
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
                Err(e) => {
                    let message = match e {
                        SpliceError::Unknown(name) => {
                            let known: Vec<&String> = vars.keys().collect();
                            format!("unknown var `${{{name}}}` (vars: {known:?})")
                        }
                        SpliceError::Unterminated => "`${` without its `}` (write `$${` for a literal `${`)".into(),
                    };
                    errors.push(Diagnostic { path: path.to_string(), message, pos: spans.find_value(path) });
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

/// Why a string's `${…}` could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SpliceError {
    /// `${name}` names no var.
    Unknown(String),
    /// `${` with no `}` after it.
    Unterminated,
}

/// `item` or `item.KEY`: a sweep's values, not a var.
fn is_item(name: &str) -> bool {
    name == "item" || name.starts_with("item.")
}

/// The names a string's `${name}`s refer to (escaped `$${` and a sweep's `${item…}` left out).
fn references(s: &str) -> Result<Vec<String>, SpliceError> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}').ok_or(SpliceError::Unterminated)?;
            if !is_item(&r[..end]) {
                out.push(r[..end].to_string());
            }
            rest = &r[end + 1..];
        } else {
            rest = &rest[1..];
        }
    }
    Ok(out)
}

/// Text with every `${name}` replaced.
fn splice(s: &str, vars: &IndexMap<String, Value>) -> Result<String, SpliceError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r.find('}').ok_or(SpliceError::Unterminated)?;
            let name = &r[..end];
            // A sweep's `${item…}` is replaced when the sweep is expanded.
            if is_item(name) {
                out.push_str(&rest[..end + 3]);
                rest = &r[end + 1..];
                continue;
            }
            let value = vars.get(name).ok_or_else(|| SpliceError::Unknown(name.to_string()))?;
            out.push_str(&match value {
                Value::String(v) => v.clone(),
                other => serde_yaml::to_string(other).unwrap_or_default().trim_end().to_string(),
            });
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Every string inside a value.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        Value::Mapping(map) => map.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Vars with the `${other}` vars they refer to replaced, in an order where each comes after the
/// vars it uses; a var that refers to itself, or vars that refer to each other in a circle, are
/// errors naming them.
fn resolve_vars(
    vars: IndexMap<String, Value>,
    spans: &SpanIndex,
    errors: &mut Vec<Diagnostic>,
) -> (IndexMap<String, Value>, HashSet<String>) {
    let names: Vec<&String> = vars.keys().collect();
    let mut edges = Vec::new();
    for (i, value) in vars.values().enumerate() {
        for s in strings(value) {
            // Unknown names and unterminated `${` are reported when the var is substituted.
            for r in references(s).unwrap_or_default() {
                if let Some(j) = names.iter().position(|n| **n == r) {
                    edges.push((j, i));
                }
            }
        }
    }
    let order = match crate::graph::order(names.len(), &edges) {
        Ok(order) => order,
        Err(cycle) => {
            let at = format!("vars.{}", names[cycle[0]]);
            let message = if cycle.len() == 2 {
                "refers to itself".to_string()
            } else {
                let chain: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
                format!("vars refer to each other in a circle: {}", chain.join(" → "))
            };
            errors.push(Diagnostic { path: at.clone(), message, pos: spans.find(&at) });
            let broken = cycle.iter().map(|&i| names[i].clone()).collect();
            return (vars, broken);
        }
    };
    // Each var replaced in place, after the vars it uses.
    let mut resolved = vars.clone();
    for i in order {
        let name = names[i];
        let value = substitute(vars[name].clone(), &resolved, &format!("vars.{name}"), spans, errors);
        resolved.insert(name.clone(), value);
    }
    (resolved, HashSet::new())
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
        assert_eq!(splice("${nope}", &vars), Err(SpliceError::Unknown("nope".to_string())));
        assert_eq!(splice("a ${d", &vars), Err(SpliceError::Unterminated));
        assert_eq!(references("${a}/$${b}/${c}"), Ok(vec!["a".to_string(), "c".to_string()]));
    }
}
