//! Sweeps. A stage with `matrix:` becomes one stage per combination of its values, named
//! `STAGE@SUFFIX` (`lora@r8-lr1e-3`, or as its `name:` template says), with `${item.KEY}`
//! replaced by that combination's values. A stage that reads a swept stage is swept with it
//! (one `peft@…` per `lora@…`, the same suffixes), unless it gathers: `STAGE@*` in a list
//! stands for every expansion, and a map entry whose key holds `STAGE@*` is repeated for each
//! (with `${item}` and `${item.KEY}` its values). What cannot be expanded is an error naming
//! the place: an empty matrix, two expansions of one name, `${item.KEY}` outside a sweep.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use serde_yaml::{Mapping, Value};
use sumflow_stages::{InputRef, Registry};

use super::span::SpanIndex;
use crate::diagnostic::Diagnostic;

/// One combination of a sweep, as a stage carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// The swept stage as the file names it (`lora`).
    pub base: String,
    /// What follows its `@` (`r8-lr1e-3`).
    pub suffix: String,
    /// The combination: matrix key → value.
    pub item: Mapping,
}

/// Every expansion of each swept stage, in order: base → (suffix, item).
type Groups = IndexMap<String, Vec<(String, Mapping)>>;

/// The stages after sweeping: expansions in place of the stages they came from, and what each
/// expansion is.
pub struct Swept {
    /// Stage id → its YAML, in file order.
    pub stages: IndexMap<String, Value>,
    /// Expansion ids → their sweep and combination.
    pub expansions: HashMap<String, Expansion>,
    /// The stages (or the swept stages) a sweep error was reported for: not validated further,
    /// where their errors would be echoes.
    pub refused: HashSet<String>,
}

/// A value as it reads in a stage name: integers as they are, fractions in exponent form
/// (`1e-3`), lists joined with `_`; anything but letters, digits, `-` and `_` becomes `_`.
pub fn name_text(v: &Value) -> String {
    let text = match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let e = format!("{x:e}");
            // Whole numbers and those exponent form cannot write shorter (`2.5`) as they are;
            // the rest in exponent form (`3e-4`).
            if (x.fract() == 0.0 && x.abs() < 1e15) || e.contains('.') {
                format!("{x}")
            } else {
                e
            }
        }
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Sequence(items) => items.iter().map(name_text).collect::<Vec<_>>().join("_"),
        Value::Mapping(map) => {
            map.iter().map(|(k, v)| format!("{}{}", name_text(k), name_text(v))).collect::<Vec<_>>().join("_")
        }
        _ => String::new(),
    };
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A value spliced into text: as [`name_text`], but strings as they are.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => serde_yaml::to_string(other).unwrap_or_default().trim_end().to_string(),
    }
}

/// Replaces `${item}` and `${item.KEY}` in every string of `v` with `item`'s values (a string
/// that is exactly one of them takes the value with its type); a key the item lacks is an
/// error message.
pub fn substitute_item(v: Value, item: &Mapping) -> Result<Value, String> {
    let lookup = |name: &str| -> Result<Value, String> {
        if name == "item" {
            return Ok(Value::Mapping(item.clone()));
        }
        let key = name.strip_prefix("item.").unwrap_or(name);
        item.get(key).cloned().ok_or_else(|| {
            let keys: Vec<String> = item.keys().map(text).collect();
            format!("`${{{name}}}`: the sweep has no `{key}` (its keys: {})", keys.join(", "))
        })
    };
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')).filter(|n| is_item(n)) {
                return lookup(name);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${item") {
                out.push_str(&rest[..i]);
                let r = &rest[i + 2..];
                let Some(end) = r.find('}') else { break };
                let name = &r[..end];
                if is_item(name) {
                    out.push_str(&text(&lookup(name)?));
                } else {
                    out.push_str(&rest[i..i + 3 + end]);
                }
                rest = &r[end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Sequence(items) => {
            Value::Sequence(items.into_iter().map(|x| substitute_item(x, item)).collect::<Result<_, _>>()?)
        }
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, x)| Ok((substitute_item(k, item)?, substitute_item(x, item)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other,
    })
}

/// An expansion's name from the `name:` template: each `${item.KEY}` (or `${item}`) as
/// [`name_text`] writes it (`r${item.r}-lr${item.lr}` → `r8-lr1e-3`).
fn name_from(template: &Value, item: &Mapping) -> Result<String, String> {
    let Value::String(t) = template else {
        return Err("`name:` is a text template such as `r${item.r}-lr${item.lr}`".into());
    };
    let named: Mapping = item.iter().map(|(k, v)| (k.clone(), Value::String(name_text(v)))).collect();
    let t = t.replace("${item}", &name_text(&Value::Mapping(item.clone())));
    Ok(name_text(&substitute_item(Value::String(t), &named)?))
}

/// `item` or `item.KEY`.
fn is_item(name: &str) -> bool {
    name == "item" || name.starts_with("item.")
}

/// Every string in `v`, with its dotted path under `path`.
fn strings<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((path.to_string(), s)),
        Value::Sequence(items) => items.iter().enumerate().for_each(|(i, x)| strings(x, &format!("{path}[{i}]"), out)),
        Value::Mapping(map) => {
            for (k, x) in map {
                if let Value::String(key) = k {
                    out.push((format!("{path}.{key}"), key));
                }
                strings(x, &format!("{path}.{}", text(k)), out);
            }
        }
        _ => {}
    }
}

/// Replaces every `from` in the strings of `v` (keys too) with `to`.
fn replace(v: Value, from: &str, to: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace(from, to)),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(|x| replace(x, from, to)).collect()),
        Value::Mapping(map) => {
            Value::Mapping(map.into_iter().map(|(k, x)| (replace(k, from, to), replace(x, from, to))).collect())
        }
        other => other,
    }
}

/// Sweeps `stages`: expands matrices, fans out the stages that read them, gathers `@*`.
pub fn sweep(
    stages: IndexMap<String, Value>,
    registry: &Registry,
    spans: &SpanIndex,
    errors: &mut Vec<Diagnostic>,
) -> Swept {
    let mut refused = HashSet::new();
    let mut err = |path: String, message: String| {
        let at = spans.find(&path);
        if let Some(rest) = path.strip_prefix("stages.") {
            refused.insert(rest[..rest.find(['.', '[']).unwrap_or(rest.len())].to_string());
        }
        errors.push(Diagnostic { path, message, pos: at });
    };
    let mut groups: Groups = IndexMap::new();
    let mut expansions = HashMap::new();

    // 1. Matrices.
    let mut out: IndexMap<String, Value> = IndexMap::new();
    for (id, value) in stages {
        let Value::Mapping(mut map) = value else {
            out.insert(id, value);
            continue;
        };
        let Some(matrix) = map.remove("matrix") else {
            out.insert(id, Value::Mapping(map));
            continue;
        };
        let template = map.remove("name");
        let at = format!("stages.{id}.matrix");
        let Some(axes) = axes(&matrix, &at, &mut err) else { continue };
        let mut combos: Vec<Mapping> = vec![Mapping::new()];
        for (key, values) in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(Value::String(key.clone()), v.clone());
                        c
                    })
                })
                .collect();
        }
        let mut members = Vec::new();
        for item in combos {
            let suffix = match &template {
                Some(t) => match name_from(t, &item) {
                    Ok(named) => named,
                    Err(e) => {
                        err(format!("stages.{id}.name"), e);
                        break;
                    }
                },
                None => name_text(&Value::Mapping(item.clone())).replace('_', "-"),
            };
            if let Some((_, first)) = members.iter().find(|(s, _): &&(String, Mapping)| *s == suffix) {
                err(
                    format!("stages.{id}.name"),
                    format!(
                        "two combinations are both named `{id}@{suffix}` ({} and {}): name them apart with `${{item.KEY}}`",
                        text(&Value::Mapping(first.clone())),
                        text(&Value::Mapping(item.clone()))
                    ),
                );
                break;
            }
            match substitute_item(Value::Mapping(map.clone()), &item) {
                Ok(v) => {
                    let exp = format!("{id}@{suffix}");
                    out.insert(exp.clone(), v);
                    expansions.insert(exp, Expansion { base: id.clone(), suffix: suffix.clone(), item: item.clone() });
                    members.push((suffix, item));
                }
                Err(e) => {
                    err(format!("stages.{id}"), e);
                    break;
                }
            }
        }
        groups.insert(id, members);
    }

    // 2. The stages that read a swept stage, swept with it (until none is left: fanned-out
    //    stages are swept stages in turn).
    loop {
        let mut fanned = None;
        for (id, value) in &out {
            if expansions.contains_key(id) || groups.contains_key(id) {
                continue;
            }
            let read: Vec<InputRef> =
                references(value, registry).into_iter().filter(|r| groups.contains_key(&r.stage)).collect();
            if read.is_empty() {
                continue;
            }
            let suffixes = |base: &str| groups[base].iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
            if let Some(other) = read.iter().find(|r| suffixes(&r.stage) != suffixes(&read[0].stage)) {
                err(
                    format!("stages.{id}"),
                    format!(
                        "reads two different sweeps, `{}` and `{}`: gather one of them with `{}@*`",
                        read[0].stage, other.stage, other.stage
                    ),
                );
                continue;
            }
            fanned = Some((id.clone(), read.iter().map(|r| r.stage.clone()).collect::<Vec<_>>()));
            break;
        }
        let Some((id, bases)) = fanned else { break };
        let members = groups[&bases[0]].clone();
        let index = out.get_index_of(&id).expect("present");
        let value = out.shift_remove(&id).expect("present");
        let mut rebuilt = IndexMap::new();
        for (suffix, item) in &members {
            let mut v = value.clone();
            for base in &bases {
                v = rename_reference(v, base, &format!("{base}@{suffix}"));
            }
            let exp = format!("{id}@{suffix}");
            rebuilt.insert(exp.clone(), v);
            expansions.insert(exp, Expansion { base: id.clone(), suffix: suffix.clone(), item: item.clone() });
        }
        // Where the stage was, in the file's order.
        let tail = out.split_off(index);
        out.extend(rebuilt);
        out.extend(tail);
        groups.insert(id, members);
    }

    // 3. Gathers, then anything of `${item…}` or `@*` left over.
    let mut swept = IndexMap::new();
    for (id, value) in out {
        let path = format!("stages.{id}");
        let v = gather(value, &groups, &path, &mut err);
        let mut found = Vec::new();
        strings(&v, &path, &mut found);
        for (at, s) in found {
            if s.contains("${item") {
                let at = origin(&at, &expansions);
                err(
                    at,
                    "`${item…}` is defined only in a stage with `matrix:`, or in an entry that gathers `STAGE@*`"
                        .into(),
                );
            }
        }
        swept.insert(id, v);
    }
    Swept { stages: swept, expansions, refused }
}

/// `stages.lora@r8.lr` → `stages.lora.lr`: where an expansion's params are in the file.
pub fn origin(path: &str, expansions: &HashMap<String, Expansion>) -> String {
    let Some(rest) = path.strip_prefix("stages.") else { return path.to_string() };
    let id_end = rest.find(['.', '[']).unwrap_or(rest.len());
    match expansions.get(&rest[..id_end]) {
        Some(e) => format!("stages.{}{}", e.base, &rest[id_end..]),
        None => path.to_string(),
    }
}

/// The axes of a matrix: (key, its values), each with at least one value.
fn axes(matrix: &Value, at: &str, err: &mut impl FnMut(String, String)) -> Option<Vec<(String, Vec<Value>)>> {
    let Value::Mapping(map) = matrix else {
        err(at.to_string(), "a matrix maps each key to a list of values: `matrix: {r: [8, 16]}`".into());
        return None;
    };
    if map.is_empty() {
        err(at.to_string(), "is empty: give at least one key and its values".into());
        return None;
    }
    let mut out = Vec::new();
    for (k, v) in map {
        let key = text(k);
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            err(format!("{at}.{key}"), "a matrix key holds only letters, digits and `_`".into());
            return None;
        }
        match v {
            Value::Sequence(values) if !values.is_empty() => out.push((key, values.clone())),
            Value::Sequence(_) => {
                err(format!("{at}.{key}"), "has no values".into());
                return None;
            }
            _ => {
                err(format!("{at}.{key}"), "must be a list of values (one is `[value]`)".into());
                return None;
            }
        }
    }
    Some(out)
}

/// The references a stage's params make, as its kind reads them (none when they do not parse:
/// validation says why).
fn references(value: &Value, registry: &Registry) -> Vec<InputRef> {
    let Value::Mapping(map) = value else { return Vec::new() };
    let Some(stage) = map.get("kind").and_then(Value::as_str).and_then(|k| registry.get(k)) else { return Vec::new() };
    let mut params = map.clone();
    params.remove("kind");
    match stage.parse(Value::Mapping(params)) {
        Ok(p) => stage.inputs(&p).into_iter().map(|slot| slot.reference).collect(),
        Err(_) => Vec::new(),
    }
}

/// Renames references to stage `from` (`from` or `from.OUTPUT`, a whole string) to `to`.
fn rename_reference(v: Value, from: &str, to: &str) -> Value {
    match v {
        Value::String(s) if s == from => Value::String(to.to_string()),
        Value::String(s) => match s.strip_prefix(from).and_then(|r| r.strip_prefix('.')) {
            Some(output) if !output.contains('.') => Value::String(format!("{to}.{output}")),
            _ => Value::String(s),
        },
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(|x| rename_reference(x, from, to)).collect()),
        Value::Mapping(map) => {
            Value::Mapping(map.into_iter().map(|(k, x)| (k, rename_reference(x, from, to))).collect())
        }
        other => other,
    }
}

/// The sweep a string gathers (`peft@*` or `peft@*.predictions`): its base.
fn gathered(s: &str) -> Option<&str> {
    s.find("@*").map(|i| &s[..i])
}

/// Expands the gathers in `v`: a list item naming `STAGE@*` becomes one item per expansion, a
/// map entry whose key names it one entry per expansion (its `${item…}` that expansion's).
fn gather(v: Value, groups: &Groups, path: &str, err: &mut impl FnMut(String, String)) -> Value {
    let unknown = |base: &str| {
        format!("`{base}@*`: `{base}` is not a swept stage (a stage with `matrix:`, or one that reads it)")
    };
    match v {
        Value::Sequence(items) => {
            let mut out = Vec::new();
            for (i, x) in items.into_iter().enumerate() {
                match &x {
                    Value::String(s) if gathered(s).is_some() => {
                        let base = gathered(s).expect("just checked");
                        match groups.get(base) {
                            Some(members) => {
                                for (suffix, _) in members {
                                    out.push(Value::String(
                                        s.replace(&format!("{base}@*"), &format!("{base}@{suffix}")),
                                    ));
                                }
                            }
                            None => err(format!("{path}[{i}]"), unknown(base)),
                        }
                    }
                    _ => out.push(gather(x, groups, &format!("{path}[{i}]"), err)),
                }
            }
            Value::Sequence(out)
        }
        Value::Mapping(map) => {
            let mut out = Mapping::new();
            for (k, x) in map {
                let key = text(&k);
                let Some(base) = gathered(&key).map(str::to_string) else {
                    let child = format!("{path}.{key}");
                    out.insert(k, gather(x, groups, &child, err));
                    continue;
                };
                let Some(members) = groups.get(&base) else {
                    err(format!("{path}.{key}"), unknown(&base));
                    continue;
                };
                for (suffix, item) in members {
                    let (from, to) = (format!("{base}@*"), format!("{base}@{suffix}"));
                    let entry = replace(x.clone(), &from, &to);
                    match substitute_item(entry, item) {
                        Ok(entry) => {
                            out.insert(Value::String(key.replace(&from, &to)), entry);
                        }
                        Err(e) => err(format!("{path}.{key}"), e),
                    }
                }
            }
            Value::Mapping(out)
        }
        Value::String(s) if gathered(&s).is_some() => {
            err(
                path.to_string(),
                format!("`{s}` stands for every expansion of a sweep: use it as a list item or in a map key"),
            );
            Value::String(s)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_names() {
        let v = |y: &str| serde_yaml::from_str::<Value>(y).unwrap();
        assert_eq!(name_text(&v("8")), "8");
        assert_eq!(name_text(&v("0.0003")), "3e-4");
        assert_eq!(name_text(&v("1e-3")), "1e-3");
        assert_eq!(name_text(&v("2.5")), "2_5");
        assert_eq!(name_text(&v("[q, v]")), "q_v");
        assert_eq!(name_text(&v("{r: 8, lr: 0.001}")), "r8_lr1e-3");
    }

    #[test]
    fn items_replace_whole_values_with_their_type_and_splice_into_text() {
        let item: Mapping = serde_yaml::from_str("{r: 8, targets: [q, v]}").unwrap();
        let v: Value = serde_yaml::from_str(
            "{r: '${item.r}', t: '${item.targets}', name: 'r${item.r}', all: '${item}', other: '${x}'}",
        )
        .unwrap();
        let got = substitute_item(v, &item).unwrap();
        let want: Value =
            serde_yaml::from_str("{r: 8, t: [q, v], name: r8, all: {r: 8, targets: [q, v]}, other: '${x}'}").unwrap();
        assert_eq!(got, want);
        let missing = substitute_item(Value::String("${item.lr}".into()), &item).unwrap_err();
        assert_eq!(missing, "`${item.lr}`: the sweep has no `lr` (its keys: r, targets)");
    }
}
