//! The lock file (`PIPELINE.lock` beside the pipeline, meant to be committed): for each stage
//! its kind, version, key, the params and file digests its key hashes, its inputs, and every
//! output file with its digest and size. Written after a run in which every stage succeeded;
//! YAML in a fixed order (stages in file order, maps sorted) so that a change is a small diff
//! in review. `run --frozen` holds the plan to it, naming the stage and field that differ;
//! `audit PIPELINE.lock` finds every output it names, locally or on the remote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cache::{atomic_write, Cache, Entry};
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::remote::{is_digest, is_safe_path};
use crate::run::plan::{self, StagePlan};

/// The format's version.
const FORMAT: u32 = 1;
const HEADER: &str = "# sumflow lock file: what `sumflow run` produced from this pipeline. Commit it;\n\
# `sumflow run --frozen` and `sumflow audit` check against it. Written by sumflow: do not edit.\n";

/// A lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// The format's version.
    pub sumflow_lock: u32,
    /// `name:` of the pipeline.
    pub pipeline: String,
    /// Every stage, in file order.
    pub stages: IndexMap<String, LockedStage>,
}

/// One stage, as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedStage {
    /// Stage kind.
    pub kind: String,
    /// Implementation version.
    pub version: u64,
    /// Recipe key.
    pub key: String,
    /// Input field → `stage.output`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// The params the key hashes (defaults filled in; references and file paths enter as
    /// `inputs` and `files`).
    pub params: Value,
    /// Local file field → blake3.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Runtime options that changed numbers, where any did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Value>,
    /// Output name → artifact.
    pub outputs: BTreeMap<String, LockedOutput>,
}

/// One output: its tree digest, total size, and each file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedOutput {
    /// Tree digest (the artifact's name).
    pub digest: String,
    /// Total bytes.
    pub bytes: u64,
    /// Relative path → file.
    pub files: BTreeMap<String, LockedFile>,
}

/// One file of an output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    /// blake3 of its bytes.
    pub blake3: String,
    /// Its size.
    pub bytes: u64,
}

/// `pipelines/x.yaml` → `pipelines/x.lock`.
pub fn default_path(pipeline: &Path) -> PathBuf {
    pipeline.with_extension("lock")
}

impl LockFile {
    /// The lock of a run in which every stage has its entry (`entries` in `p.stages` order);
    /// file sizes an old entry lacks are read from its artifact.
    pub fn new(p: &Pipeline, entries: &[&Entry], cache: &Cache) -> LockFile {
        let mut stages = IndexMap::new();
        for (node, entry) in p.stages.iter().zip(entries) {
            let recipe = &entry.recipe;
            let outputs = entry
                .outputs
                .iter()
                .map(|(name, out)| {
                    let size = |rel: &str| {
                        out.sizes.get(rel).copied().unwrap_or_else(|| {
                            std::fs::metadata(cache.artifact(&out.digest).join(rel)).map_or(0, |m| m.len())
                        })
                    };
                    let files = out
                        .files
                        .iter()
                        .map(|(rel, blake3)| (rel.clone(), LockedFile { blake3: blake3.clone(), bytes: size(rel) }))
                        .collect();
                    (name.clone(), LockedOutput { digest: out.digest.clone(), bytes: out.bytes, files })
                })
                .collect();
            let files = recipe["files"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            stages.insert(
                node.id.clone(),
                LockedStage {
                    kind: node.stage.kind().to_string(),
                    version: recipe["version"].as_u64().unwrap_or_default(),
                    key: entry.key.clone(),
                    inputs: node
                        .inputs
                        .iter()
                        .map(|b| (b.field.clone(), format!("{}.{}", p.stages[b.stage].id, b.output)))
                        .collect(),
                    params: recipe["params"].clone(),
                    files,
                    runtime: recipe.get("runtime").cloned(),
                    outputs,
                },
            );
        }
        LockFile { sumflow_lock: FORMAT, pipeline: p.name.clone(), stages }
    }

    /// Reads the lock at `path`.
    pub fn read(path: &Path) -> Result<LockFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let lock: LockFile = serde_yaml::from_str(&text)
            .map_err(|e| Error::Lock { path: path.to_path_buf(), message: format!("not a sumflow lock file: {e}") })?;
        if lock.sumflow_lock != FORMAT {
            return Err(Error::Lock {
                path: path.to_path_buf(),
                message: format!("lock format {} (this sumflow reads {FORMAT})", lock.sumflow_lock),
            });
        }
        // Keys and digests name files in caches and remotes: they must be digests.
        for (id, stage) in &lock.stages {
            let bad = |what: String| Error::Lock { path: path.to_path_buf(), message: format!("stage `{id}`: {what}") };
            if !is_digest(&stage.key) {
                return Err(bad(format!("key `{}` is not a digest", stage.key)));
            }
            for (name, out) in &stage.outputs {
                if !is_digest(&out.digest) {
                    return Err(bad(format!("output `{name}`: `{}` is not a digest", out.digest)));
                }
                if let Some((rel, _)) = out.files.iter().find(|(rel, f)| !is_safe_path(rel) || !is_digest(&f.blake3)) {
                    return Err(bad(format!("output `{name}`: file `{rel}` has a bad path or digest")));
                }
            }
        }
        Ok(lock)
    }

    /// The lock as written: the header, then YAML.
    pub fn text(&self) -> String {
        format!("{HEADER}{}", serde_yaml::to_string(self).expect("locks serialize"))
    }

    /// Writes the lock to `path` unless it holds this lock already; a file there that is not a
    /// sumflow lock is the user's and is left alone. Returns how many stages changed (`None`:
    /// the file is new).
    pub fn write(&self, path: &Path) -> Result<Option<usize>, Error> {
        let before = match std::fs::metadata(path) {
            // A lock of another format is replaced; anything else is the user's.
            Ok(_) => match LockFile::read(path) {
                Ok(old) => Some(old),
                Err(Error::Lock { message, .. }) if message.starts_with("lock format") => None,
                Err(_) => {
                    return Err(Error::Lock {
                        path: path.to_path_buf(),
                        message: "exists and is not a sumflow lock file: not overwritten (give --lock FILE)".into(),
                    })
                }
            },
            Err(_) => None,
        };
        let changed = before.as_ref().map(|old| {
            let keys = self.stages.keys().chain(old.stages.keys()).collect::<std::collections::BTreeSet<_>>();
            keys.into_iter().filter(|id| self.stages.get(*id) != old.stages.get(*id)).count()
        });
        if before.as_ref() != Some(self) {
            atomic_write(path, self.text().as_bytes()).map_err(|e| Error::io(path, e))?;
        }
        Ok(changed)
    }

    /// Checks a plan against the lock: every stage's key must be the locked one. The error
    /// names each stage that differs and why (its fields, or the input that changed).
    pub fn check(&self, path: &Path, p: &Pipeline, plans: &[StagePlan]) -> Result<(), Error> {
        let mut problems = Vec::new();
        for &i in &p.order {
            let (node, plan) = (&p.stages[i], &plans[i]);
            let Some(locked) = self.stages.get(&node.id) else {
                problems.push(format!("stage `{}` is not in the lock (added since it was written)", node.id));
                continue;
            };
            if locked.key == plan.key {
                continue;
            }
            let mut old = json!({
                "kind": locked.kind, "version": locked.version, "params": locked.params, "files": locked.files,
            });
            if let Some(runtime) = &locked.runtime {
                old["runtime"] = runtime.clone();
            }
            let mut new = plan.recipe.json.clone();
            if let Value::Object(map) = &mut new {
                map.remove("inputs");
            }
            let mut reasons = plan::diff(&old, &new, &BTreeMap::new());
            if reasons.is_empty() {
                // Only an input differs: name the ones whose producer's key moved.
                for b in &node.inputs {
                    let producer = &p.stages[b.stage].id;
                    if self.stages.get(producer).is_none_or(|s| s.key != plans[b.stage].key) {
                        reasons.push(format!("input {producer}.{} changed", b.output));
                    }
                }
            }
            if reasons.is_empty() {
                reasons.push("recipe changed".into());
            }
            problems.push(format!("stage `{}`: {}", node.id, reasons.join("; ")));
        }
        for id in self.stages.keys().filter(|id| p.index_of(id).is_none()) {
            problems.push(format!("stage `{id}` is in the lock but not in the pipeline"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Lock {
            path: path.to_path_buf(),
            message: format!(
                "the pipeline no longer matches its lock (run without --frozen to update it):\n  {}",
                problems.join("\n  ")
            ),
        })
    }
}
