//! `sumflow audit RUN --reproduce STAGE`: runs one stage of a recorded run again, from the same
//! pipeline file, vars and cached inputs, into a scratch cache, and compares what it writes
//! with what the run recorded — bit for bit, and for weights (safetensors) tensor by tensor.

use std::path::Path;

use sumflow_stages::{Registry, RuntimeOptions};

use crate::cache::{tree_digest, Cache};
use crate::error::Error;
use crate::pipeline;
use crate::run::executor::{self, Outcome, Reporter, RunOptions};
use crate::run::manifest::Manifest;
use crate::run::plan::{self, Selection, Status};

/// What reproducing a stage found.
pub struct Reproduction {
    /// Files whose bytes match.
    pub same: usize,
    /// Differences, one line each (which file, and by how much for weights).
    pub differences: Vec<String>,
    /// Differences in files that record timings (expected).
    pub volatile: Vec<String>,
}

/// Reruns `stage` of the run `m` (made with `cache`) and compares outputs, under the runtime
/// options the run recorded (those of this process, for runs from before they were recorded).
pub fn reproduce(
    cache: &Cache,
    m: &Manifest,
    stage: &str,
    registry: &Registry,
    reporter: &dyn Reporter,
    current: &RuntimeOptions,
) -> Result<Reproduction, Error> {
    let runtime = m.runtime_options.clone().unwrap_or_else(|| current.clone());
    let record = m.stages.iter().find(|s| s.id == stage).ok_or_else(|| {
        Error::Usage(format!(
            "run {} has no stage `{stage}` (stages: {})",
            m.run_id,
            m.stages.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    if record.outputs.is_empty() {
        return Err(Error::Audit(format!("stage `{stage}` produced nothing in run {} ({})", m.run_id, record.outcome)));
    }
    let path = &m.pipeline.path;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if blake3::hash(&bytes).to_hex().as_str() != m.pipeline.blake3 {
        return Err(Error::Audit(format!(
            "{} changed since run {}: the run cannot be reproduced from it",
            path.display(),
            m.run_id
        )));
    }
    let sets: Vec<String> = m
        .vars
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).expect("JSON serializes")))
        .collect();
    let p = pipeline::load(path, &sets, registry)?;
    let node = &p.stages
        [p.index_of(stage).ok_or_else(|| Error::Usage(format!("no stage `{stage}` in {}", path.display())))?];

    // A scratch cache that holds the stage's ancestors (entries copied, artifacts linked).
    // Outside the cache, which may be read-only (the ancestors' artifacts are linked in).
    let scratch_dir = std::env::temp_dir().join(format!("sumflow-reproduce-{}-{}", m.run_id, std::process::id()));
    let scratch = Cache::open(&scratch_dir)?;
    let selection = Selection { only: vec![stage.to_string()], force: vec![stage.to_string()] };
    let result = (|| {
        for plan in plan::plan(&p, cache, &selection, &runtime)? {
            if plan.id == stage || plan.status == Status::Skipped {
                continue;
            }
            let entry = plan.entry.ok_or_else(|| {
                Error::Audit(format!("input stage `{}` is not in the cache any more: run the pipeline first", plan.id))
            })?;
            let text = serde_json::to_vec_pretty(&entry).expect("entries serialize");
            let index = scratch.path("index").join(format!("{}.json", entry.key));
            std::fs::write(&index, text).map_err(|e| Error::io(&index, e))?;
            for out in entry.outputs.values() {
                link(&cache.artifact(&out.digest), &scratch.artifact(&out.digest))?;
            }
        }
        let opts = RunOptions { selection: selection.clone(), runtime: runtime.clone(), ..RunOptions::default() };
        let runs = executor::run(&p, &scratch, &opts, reporter)?;
        let run = &runs[p.index_of(stage).expect("present")];
        let entry = match (&run.outcome, &run.entry) {
            (Outcome::Ran, Some(entry)) => entry,
            (Outcome::Failed(e), _) => return Err(Error::Audit(format!("stage `{stage}` failed when rerun: {e}"))),
            (Outcome::Skipped(why), _) => return Err(Error::Audit(format!("stage `{stage}` could not rerun: {why}"))),
            (outcome, _) => return Err(Error::Audit(format!("stage `{stage}` did not rerun ({outcome:?})"))),
        };
        let volatile = node.stage.volatile_files();
        let mut r = Reproduction { same: 0, differences: Vec::new(), volatile: Vec::new() };
        for (name, old) in &record.outputs {
            let new_dir = scratch.artifact(&entry.outputs[name].digest);
            let new = tree_digest(&new_dir).map_err(|e| Error::io(&new_dir, e))?;
            let files: std::collections::BTreeSet<&String> = old.files.keys().chain(new.files.keys()).collect();
            for file in files {
                if old.files.get(file) == new.files.get(file) {
                    r.same += 1;
                    continue;
                }
                let line = describe(
                    &cache.artifact(&old.digest).join(file),
                    &new_dir.join(file),
                    &format!("{stage}.{name}/{file}"),
                );
                if volatile.contains(&file.as_str()) {
                    r.volatile.push(line);
                } else {
                    r.differences.push(line);
                }
            }
        }
        Ok(r)
    })();
    let _ = std::fs::remove_dir_all(&scratch_dir);
    result
}

/// Links the artifact `from` into the scratch cache at `to`, by its absolute path (a relative
/// link would resolve against the scratch folder).
#[cfg(unix)]
fn link(from: &Path, to: &Path) -> Result<(), Error> {
    let from = std::fs::canonicalize(from).map_err(|e| Error::io(from, e))?;
    std::os::unix::fs::symlink(from, to).map_err(|e| Error::io(to, e))
}

#[cfg(not(unix))]
fn link(from: &Path, to: &Path) -> Result<(), Error> {
    Err(Error::io(to, std::io::Error::other(format!("cannot link {}", from.display()))))
}

/// How two versions of a file differ: weights tensor by tensor, anything else by bytes.
fn describe(old: &Path, new: &Path, label: &str) -> String {
    if old.extension().is_some_and(|e| e == "safetensors") {
        if let Some(d) = weight_differences(old, new) {
            let worst = d.iter().fold(("", 0.0f64), |w, (n, x)| if *x > w.1 { (n.as_str(), *x) } else { w });
            let changed = d.iter().filter(|(_, x)| *x > 0.0).count();
            return format!(
                "{label}: {changed} of {} tensors differ; largest |Δ| {:.3e} in {}",
                d.len(),
                worst.1,
                worst.0
            );
        }
    }
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    format!("{label}: bytes differ ({} → {} bytes)", size(old), size(new))
}

fn weight_differences(old: &Path, new: &Path) -> Option<Vec<(String, f64)>> {
    sumflow_stages::tools::weight_differences(old, new).ok()
}
