//! The commands that look without running: `plan`, `validate`, `graph`, and `stages` — the
//! list of stage kinds, or one kind's params reference, generated from its params type's
//! JSON schema (types, defaults, doc comments). `docs/stages.md` is that reference for every
//! kind; a test keeps the two equal.

use std::process::ExitCode;

use serde_json::Value;
use sumflow_stages::{DynStage, Registry, RuntimeOptions};

use super::Format;
use crate::cache::Cache;
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::run::plan::{self, Selection};

/// `sumflow plan`.
pub fn plan(
    p: &Pipeline,
    cache: &Cache,
    selection: &Selection,
    runtime: &RuntimeOptions,
    format: Format,
) -> Result<ExitCode, Error> {
    let plans = plan::plan(p, cache, selection, runtime)?;
    match format {
        Format::Text => out!("{}", plan::render(p, &plans)),
        Format::Json => outln!("{}", serde_json::to_string_pretty(&plans).expect("plans serialize")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sumflow validate`.
pub fn validate(p: &Pipeline) -> Result<ExitCode, Error> {
    outln!("{}: valid pipeline `{}` with {} stages", p.path.display(), p.name, p.stages.len());
    Ok(ExitCode::SUCCESS)
}

/// Output format of `sumflow graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

/// `sumflow graph`: the stages and the outputs flowing between them.
pub fn graph(p: &Pipeline, format: GraphFormat) -> Result<ExitCode, Error> {
    let mut out = String::new();
    // (from, to, output) by stage index: Mermaid's node ids are the indices (`s3`), since stage
    // ids made by a sweep (`peft@r8`) are not Mermaid identifiers.
    let edges: Vec<(usize, usize, &str)> = p
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.inputs.iter().map(move |b| (b.stage, i, b.output.as_str())))
        .collect();
    match format {
        GraphFormat::Dot => {
            out.push_str(&format!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];\n", p.name));
            for s in &p.stages {
                out.push_str(&format!("  \"{}\" [label=\"{}\\n({})\"];\n", s.id, s.id, s.stage.kind()));
            }
            for (from, to, output) in edges {
                out.push_str(&format!(
                    "  \"{}\" -> \"{}\" [label=\"{output}\"];\n",
                    p.stages[from].id, p.stages[to].id
                ));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (i, s) in p.stages.iter().enumerate() {
                out.push_str(&format!("  s{i}[\"{}<br/>({})\"]\n", s.id, s.stage.kind()));
            }
            for (from, to, output) in edges {
                out.push_str(&format!("  s{from} -->|{output}| s{to}\n"));
            }
        }
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `sumflow stages [KIND]`.
pub fn stages(registry: &Registry, kind: Option<&str>) -> Result<ExitCode, Error> {
    match kind {
        None => {
            for s in registry.iter() {
                outln!("{:10} v{}  {}", s.kind(), s.version(), s.about());
            }
        }
        Some(kind) => {
            let stage = registry.get(kind).ok_or_else(|| {
                let known = registry.kinds().collect::<Vec<_>>().join(", ");
                Error::Usage(format!("unknown stage kind `{kind}` (known: {known})"))
            })?;
            out!("{}", reference(stage));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every kind's reference, as `docs/stages.md` holds it.
#[cfg(test)]
pub fn all_references(registry: &Registry) -> String {
    let mut out = String::from(
        "# Stage reference\n\nEach stage kind's params: type, default and what it does. Generated from the params \
         types by `sumflow stages KIND`; a test keeps this file equal to that output.\n",
    );
    for s in registry.iter() {
        out.push('\n');
        out.push_str(&reference(s));
    }
    out
}

/// One kind's params reference: a heading, the kind's line, then each param as a list item
/// (nested settings indented under theirs).
pub fn reference(stage: &dyn DynStage) -> String {
    let schema = stage.schema().to_value();
    let mut out = format!("## `{}` (version {})\n\n{}.\n\n", stage.kind(), stage.version(), stage.about());
    fields(&schema, &schema, 0, &mut out);
    out
}

/// The schema `s` stands for, following a `$ref` into the root's `$defs`.
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => &root["$defs"][name],
        None => s,
    }
}

/// The object schema among `s` and its `anyOf` alternatives (a nullable object), if any.
fn object<'a>(root: &'a Value, s: &'a Value) -> Option<&'a Value> {
    let s = resolve(root, s);
    if s.get("properties").is_some() {
        return Some(s);
    }
    s.get("anyOf")?.as_array()?.iter().map(|a| resolve(root, a)).find(|a| a.get("properties").is_some())
}

/// A value as a pipeline file would write it.
fn yaml(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        // Text with line breaks in a quoted, escaped form.
        Value::String(s) if s.contains('\n') => format!("{s:?}"),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(yaml).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {}", yaml(v))).collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// The type of schema `s` in words.
fn type_name(root: &Value, s: &Value) -> String {
    let s = resolve(root, s);
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        return values.iter().map(|v| format!("`{}`", yaml(v))).collect::<Vec<_>>().join(" | ");
    }
    if let Some(c) = s.get("const") {
        return format!("`{}`", yaml(c));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alternatives) = s.get(key).and_then(Value::as_array) {
            let alternatives: Vec<&Value> = alternatives
                .iter()
                .map(|a| resolve(root, a))
                .filter(|a| a.get("type") != Some(&Value::String("null".into())))
                .collect();
            // A tagged union's variants are listed below it.
            if alternatives.iter().all(|a| a.get("properties").is_some()) && alternatives.len() > 1 {
                return "one of the mappings below".into();
            }
            let names: Vec<String> = alternatives.iter().map(|a| type_name(root, a)).collect();
            return names.join(" | ");
        }
    }
    if let Some(format) = s.get("format").and_then(Value::as_str).filter(|f| f.contains("reference")) {
        return format.to_string();
    }
    match s.get("type") {
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            let mut one = s.clone();
            one["type"] = Value::String(names.join(" | "));
            type_name(root, &one)
        }
        Some(Value::String(t)) if t == "array" => match s.get("items") {
            Some(Value::Array(tuple)) => {
                format!("pair of {}", tuple.iter().map(|i| type_name(root, i)).collect::<Vec<_>>().join(", "))
            }
            Some(item) => format!("list of {}", type_name(root, item)),
            None => "list".into(),
        },
        Some(Value::String(t)) if t == "object" && s.get("properties").is_none() => {
            match s.get("additionalProperties") {
                Some(v @ Value::Object(_)) => format!("map of name → {}", type_name(root, v)),
                _ => "map".into(),
            }
        }
        Some(Value::String(t)) => t.clone(),
        _ if s.get("properties").is_some() => "settings (below)".into(),
        _ => "any".into(),
    }
}

/// One list item per property of `schema`, at `depth` (two spaces each): the required ones
/// first, then the rest, each group by name.
fn fields(root: &Value, schema: &Value, depth: usize, out: &mut String) {
    let schema = resolve(root, schema);
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return };
    let indent = "  ".repeat(depth);
    let mut properties: Vec<(&String, &Value)> = properties.iter().collect();
    properties.sort_by_key(|(name, _)| !required.contains(&name.as_str()));
    for (name, prop) in properties {
        let resolved = resolve(root, prop);
        let doc = prop
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ");
        let default = if required.contains(&name.as_str()) {
            "required".to_string()
        } else {
            match prop.get("default") {
                Some(Value::Null) | None if resolved.get("type") == Some(&Value::String("boolean".into())) => {
                    "default `false`".to_string()
                }
                Some(Value::Null) | None => "optional".to_string(),
                Some(v) => format!("default `{}`", yaml(v)),
            }
        };
        out.push_str(&format!("{indent}- `{name}`: {}, {default}. {doc}\n", type_name(root, prop)));
        if let Some(nested) = object(root, prop) {
            fields(root, nested, depth + 1, out);
        }
        variants(root, resolved, depth + 1, out);
    }
}

/// The documented alternatives of an enum or a tagged union, one item each.
fn variants(root: &Value, s: &Value, depth: usize, out: &mut String) {
    let Some(alternatives) = s.get("oneOf").and_then(Value::as_array) else { return };
    let indent = "  ".repeat(depth);
    for a in alternatives.iter().map(|a| resolve(root, a)) {
        let doc = a.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " ");
        if let Some(c) = a.get("const").or_else(|| a.get("enum").and_then(|e| e.get(0))) {
            out.push_str(&format!("{indent}- `{}`: {doc}\n", yaml(c)));
        } else if let Some(props) = a.get("properties").and_then(Value::as_object) {
            // A tagged variant: its tag value, then its own fields.
            let tag = props.iter().find_map(|(k, v)| v.get("const").map(|c| format!("{k}: {}", yaml(c))));
            out.push_str(&format!("{indent}- `{}`: {doc}\n", tag.unwrap_or_default()));
            let mut own = a.clone();
            if let Some(map) = own.get_mut("properties").and_then(Value::as_object_mut) {
                map.retain(|_, v| v.get("const").is_none());
            }
            fields(root, &own, depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_stages_md_is_the_generated_reference() {
        let generated = all_references(&Registry::builtin());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/stages.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated && std::env::var_os("SUMFLOW_WRITE_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        assert!(
            committed == generated,
            "docs/stages.md is not the output of `sumflow stages KIND` for every kind: \
             rerun with SUMFLOW_WRITE_DOCS=1 to rewrite it"
        );
    }
}
