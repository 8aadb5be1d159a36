//! What a run would do: each stage's recipe key, whether the cache has it, and if not, why —
//! field by field against the last entry of that stage id (`lr: 1e-05 → 0.0001`).
//! The executor runs exactly the misses this computes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;
use sumflow_stages::RuntimeOptions;

use crate::cache::{input_digest, tree_digest, Cache, Entry, FileDigests, Recipe, Stamp};
use crate::error::Error;
use crate::pipeline::Pipeline;

/// Which stages to consider, and which to rerun regardless.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stages to rerun even when cached.
    pub force: Vec<String>,
    /// Only these stages and their ancestors (empty: all).
    pub only: Vec<String>,
}

/// Hit, miss, or left out by `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The cache has the outputs.
    Hit,
    /// The stage must run.
    Miss,
    /// The local cache lacks it; the remote has it (a run with `--pull` only).
    Remote,
    /// Not selected.
    Skipped,
}

/// The plan for one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    /// Stage id.
    pub id: String,
    /// Stage kind.
    pub kind: String,
    /// Recipe key.
    pub key: String,
    /// Hit, miss or skipped.
    pub status: Status,
    /// Why it misses (empty for hits).
    pub reasons: Vec<String>,
    /// The recipe behind the key.
    #[serde(skip)]
    pub recipe: Recipe,
    /// The cache entry, for hits (for remote hits, the remote's record).
    #[serde(skip)]
    pub entry: Option<Entry>,
    /// The local files the key covers, with the stamps they had when hashed: the executor
    /// checks them again around the stage's run.
    #[serde(skip)]
    pub files: Vec<(PathBuf, Stamp)>,
}

/// Plans every stage of `p` in topological order (results are indexed like `p.stages`), under
/// the process's runtime options (those that change numbers are in model stages' keys).
pub fn plan(p: &Pipeline, cache: &Cache, sel: &Selection, runtime: &RuntimeOptions) -> Result<Vec<StagePlan>, Error> {
    for id in sel.force.iter().chain(&sel.only) {
        if p.index_of(id).is_none() {
            let ids: Vec<&str> = p.stages.iter().map(|s| s.id.as_str()).collect();
            return Err(Error::Usage(format!("no stage `{id}` in {} (stages: {})", p.path.display(), ids.join(", "))));
        }
    }
    let selected = select(p, &sel.only);
    let mut files = FileDigests::open(cache.path("files.json"));
    let mut plans: Vec<Option<StagePlan>> = vec![None; p.stages.len()];
    for &i in &p.order {
        let node = &p.stages[i];
        let inputs: BTreeMap<String, String> = node
            .inputs
            .iter()
            .map(|b| {
                let producer = plans[b.stage].as_ref().expect("topological order");
                (b.field.clone(), input_digest(&producer.key, &b.output))
            })
            .collect();
        let mut file_digests = BTreeMap::new();
        let mut stamps = Vec::new();
        for f in &node.files {
            let (digest, stamp) = files.digest(&f.path).map_err(|e| match e {
                Error::Io { path, source } => {
                    Error::Usage(format!("stage `{}`: {}: {source}", node.id, path.display()))
                }
                other => other,
            })?;
            file_digests.insert(f.field.clone(), digest);
            stamps.push((f.path.clone(), stamp));
        }
        let recipe = Recipe::new(node, inputs, file_digests, runtime);
        let forced = sel.force.contains(&node.id);
        let entry = if forced { None } else { cache.entry(&recipe.key)? };
        let (status, reasons) = match (&entry, selected[i]) {
            (Some(_), _) => (Status::Hit, Vec::new()),
            (None, false) => (Status::Skipped, vec!["not selected by --only".into()]),
            (None, true) if forced => (Status::Miss, vec!["forced (--force)".into()]),
            (None, true) => (Status::Miss, why_miss(cache, p, i, &recipe)?),
        };
        plans[i] = Some(StagePlan {
            id: node.id.clone(),
            kind: node.stage.kind().to_string(),
            key: recipe.key.clone(),
            status,
            reasons,
            recipe,
            entry,
            files: stamps,
        });
    }
    files.save()?;
    let mut plans: Vec<StagePlan> = plans.into_iter().map(|p| p.expect("every stage planned")).collect();
    check_consumed_hits(p, cache, &mut plans);
    Ok(plans)
}

/// Every cached output a stage that runs will read is checked against its digest first: a
/// damaged one is recomputed (its stage becomes a miss, and so the outputs that stage reads are
/// checked in turn), never consumed. Outputs nothing reads now are left for `cache verify`.
pub fn check_consumed_hits(p: &Pipeline, cache: &Cache, plans: &mut [StagePlan]) {
    let mut checked = vec![false; plans.len()];
    let mut queue: Vec<usize> = (0..plans.len()).filter(|&i| plans[i].status == Status::Miss).collect();
    while let Some(i) = queue.pop() {
        for b in &p.stages[i].inputs {
            let j = b.stage;
            if plans[j].status != Status::Hit || std::mem::replace(&mut checked[j], true) {
                continue;
            }
            let entry = plans[j].entry.as_ref().expect("a hit has its entry");
            let damaged = entry
                .outputs
                .iter()
                .find(|(_, rec)| tree_digest(&cache.artifact(&rec.digest)).map_or(true, |t| t.digest != rec.digest));
            if let Some((name, rec)) = damaged {
                plans[j].status = Status::Miss;
                plans[j].reasons = vec![format!(
                    "its cached output `{name}` is damaged (artifacts/{} no longer hashes to its name): recomputed",
                    &rec.digest[..12]
                )];
                plans[j].entry = None;
                queue.push(j);
            }
        }
    }
}

/// Selected stages: all, or the `only` ones and their ancestors.
fn select(p: &Pipeline, only: &[String]) -> Vec<bool> {
    if only.is_empty() {
        return vec![true; p.stages.len()];
    }
    let mut selected = vec![false; p.stages.len()];
    let mut stack: Vec<usize> = only.iter().filter_map(|id| p.index_of(id)).collect();
    while let Some(i) = stack.pop() {
        if !selected[i] {
            selected[i] = true;
            stack.extend(p.stages[i].inputs.iter().map(|b| b.stage));
        }
    }
    selected
}

fn why_miss(cache: &Cache, p: &Pipeline, i: usize, recipe: &Recipe) -> Result<Vec<String>, Error> {
    let node = &p.stages[i];
    let Some(last) = cache.history(&p.name, &node.id)? else {
        return Ok(vec!["never run".into()]);
    };
    if last.key == recipe.key {
        return Ok(vec!["cached outputs are gone (removed by gc or by hand)".into()]);
    }
    let refs: BTreeMap<String, String> =
        node.inputs.iter().map(|b| (b.field.clone(), format!("{}.{}", p.stages[b.stage].id, b.output))).collect();
    let reasons = diff(&last.recipe, &recipe.json, &refs);
    Ok(if reasons.is_empty() { vec!["recipe changed".into()] } else { reasons })
}

/// Human-readable differences between two recipes; `refs` names each input field's source.
pub fn diff(old: &Value, new: &Value, refs: &BTreeMap<String, String>) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let short = |v: Option<&String>| v.map_or("(none)".to_string(), |s| s.clone());
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        let line = if let Some(field) = k.strip_prefix("params.") {
            format!("{field}: {} → {}", short(x), short(y))
        } else if let Some(field) = k.strip_prefix("inputs.") {
            let source = refs.get(field).unwrap_or(&field.to_string()).clone();
            format!("input {source} changed: {} → {}", abbrev(x), abbrev(y))
        } else if let Some(field) = k.strip_prefix("files.") {
            format!("file {field} changed: {} → {}", abbrev(x), abbrev(y))
        } else if let Some(option) = k.strip_prefix("runtime.") {
            let value = |v: Option<&String>| v.map_or("default".to_string(), |s| s.trim_matches('"').to_string());
            format!("runtime option {option}: {} → {}", value(x), value(y))
        } else {
            format!("{k}: {} → {}", short(x), short(y))
        };
        out.push(line);
    }
    out
}

fn abbrev(v: Option<&String>) -> String {
    v.map_or("(none)".into(), |s| s.trim_matches('"').chars().take(12).collect())
}

/// Leaves of a JSON value by dotted path; lists stay whole (`[p, q] → [p]` reads better).
fn flatten(v: &Value) -> BTreeMap<String, String> {
    fn walk(v: &Value, path: String, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(child, p, out);
                }
            }
            other => {
                out.insert(path, other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, String::new(), &mut out);
    out
}

/// The plan as text, one stage a line with its reasons.
pub fn render(p: &Pipeline, plans: &[StagePlan]) -> String {
    let width = plans.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let kind_width = plans.iter().map(|s| s.kind.len()).max().unwrap_or(0);
    let mut out = format!("plan for {} ({})\n", p.name, p.path.display());
    for &i in &p.order {
        let s = &plans[i];
        let status = match s.status {
            Status::Hit => "hit ",
            Status::Miss => "miss",
            Status::Remote => "remote",
            Status::Skipped => "skip",
        };
        out.push_str(&format!("  {status}  {:width$}  {:kind_width$}  {}", s.id, s.kind, &s.key[..12]));
        if !s.reasons.is_empty() {
            out.push_str(&format!("  {}", s.reasons.join("; ")));
        }
        out.push('\n');
    }
    let misses = plans.iter().filter(|s| s.status == Status::Miss).count();
    out.push_str(&format!("{misses} of {} stages would run\n", plans.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_each_changed_field() {
        let old = json!({"kind": "t", "version": 1, "params": {"lr": 1e-5, "cols": ["a"]}, "inputs": {"input": "aaaaaaaaaaaaaaaa"}, "files": {}});
        let new = json!({"kind": "t", "version": 2, "params": {"lr": 1e-4, "cols": ["a"]}, "inputs": {"input": "bbbbbbbbbbbbbbbb"}, "files": {}});
        assert_eq!(
            diff(&old, &new, &[("input".to_string(), "data.train".to_string())].into()),
            ["input data.train changed: aaaaaaaaaaaa → bbbbbbbbbbbb", "lr: 0.00001 → 0.0001", "version: 1 → 2"]
        );
        // A runtime option enters a model stage's recipe only when it is not the default.
        let sdpa = json!({"kind": "t", "version": 2, "params": {}, "runtime": {"attention": "sdpa"}});
        let plain = json!({"kind": "t", "version": 2, "params": {}});
        assert_eq!(diff(&plain, &sdpa, &BTreeMap::new()), ["runtime option attention: default → sdpa"]);
    }
}
