//! Run manifests (`runs/<run-id>.json`): what ran, from which pipeline file and vars, on which
//! host, and the digest of every artifact — and `audit`, which checks them against the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sumflow_stages::tools::describe_gpus;
use sumflow_stages::RuntimeOptions;

use crate::cache::{atomic_write, tree_digest, Cache, OutputRecord};
use crate::error::Error;
use crate::pipeline::{Pipeline, SweepItem};
use crate::run::executor::{Outcome, StageRun};

/// One run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// `YYYYMMDDTHHMMSSmmmZ-xxxxxx`, sortable by time.
    pub run_id: String,
    /// sumflow's version.
    pub sumflow_version: String,
    /// The command line.
    pub command: Vec<String>,
    /// Start time (RFC 3339).
    pub started: String,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// `ok` or `failed`.
    pub status: String,
    /// The pipeline file.
    pub pipeline: PipelineRecord,
    /// Vars after `--set`.
    pub vars: serde_json::Value,
    /// The machine.
    pub host: Host,
    /// libtorch, CUDA and GPU facts (libtorch's as the run's workers found it; none when no
    /// model stage ran).
    #[serde(default)]
    pub runtime: BTreeMap<String, String>,
    /// The process-wide switches the run ran with (attention backend, profiling, …).
    #[serde(default)]
    pub runtime_options: Option<RuntimeOptions>,
    /// Every stage, in file order.
    pub stages: Vec<StageRecord>,
}

/// The pipeline file a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// `name:` in the file.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// blake3 of its bytes.
    pub blake3: String,
}

/// The machine a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// Host name.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: usize,
}

/// One stage of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Implementation version.
    pub version: u32,
    /// Recipe key.
    pub key: String,
    /// `hit`, `ran`, `remote` (left on the remote), `failed` or `skipped`.
    pub outcome: String,
    /// Seconds spent running.
    pub duration_s: f64,
    /// Output name → artifact.
    pub outputs: BTreeMap<String, OutputRecord>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why it failed: the error, then each cause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    /// What it warned about when it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The params the key hashes (seeds and settings included).
    #[serde(default)]
    pub params: serde_json::Value,
    /// Figures the stage recorded when it ran (throughput, counts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
    /// The combination of a sweep this stage is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepItem>,
}

impl Host {
    fn current() -> Host {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Host {
            hostname,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A new run id for a run started at `t`.
pub fn run_id(t: SystemTime) -> String {
    let stamp: String =
        humantime::format_rfc3339_millis(t).to_string().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let salt = blake3::hash(format!("{:?}{}", t, std::process::id()).as_bytes()).to_hex();
    format!("{stamp}-{}", &salt[..6])
}

impl Manifest {
    /// The manifest of a finished run.
    pub fn new(
        p: &Pipeline,
        runs: &[StageRun],
        started: SystemTime,
        command: Vec<String>,
        options: &RuntimeOptions,
    ) -> Manifest {
        let stages: Vec<StageRecord> = p
            .stages
            .iter()
            .zip(runs)
            .map(|(node, run)| {
                let (outcome, note, error) = match &run.outcome {
                    Outcome::Hit => ("hit", None, Vec::new()),
                    Outcome::Remote => ("remote", None, Vec::new()),
                    Outcome::Ran => ("ran", None, Vec::new()),
                    Outcome::Failed(e) => ("failed", None, e.chain()),
                    Outcome::Skipped(why) => ("skipped", Some(why.clone()), Vec::new()),
                };
                StageRecord {
                    id: node.id.clone(),
                    kind: node.stage.kind().into(),
                    version: node.stage.version(),
                    key: run.key.clone(),
                    outcome: outcome.into(),
                    duration_s: run.duration.as_secs_f64(),
                    outputs: run.entry.as_ref().map(|e| e.outputs.clone()).unwrap_or_default(),
                    note,
                    error,
                    warnings: run.entry.as_ref().map(|e| e.warnings.clone()).unwrap_or_default(),
                    stats: run.entry.as_ref().map(|e| e.stats.clone()).unwrap_or_default(),
                    params: node.params.canonical.clone(),
                    sweep: node.sweep.clone(),
                }
            })
            .collect();
        let failed = stages.iter().any(|s| s.outcome == "failed");
        Manifest {
            run_id: run_id(started),
            sumflow_version: env!("CARGO_PKG_VERSION").into(),
            command,
            started: humantime::format_rfc3339_millis(started).to_string(),
            duration_s: started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            status: if failed { "failed" } else { "ok" }.into(),
            pipeline: PipelineRecord { name: p.name.clone(), path: p.path.clone(), blake3: p.file_hash.clone() },
            vars: serde_json::to_value(&p.vars).unwrap_or_default(),
            host: Host::current(),
            // The GPUs, and libtorch as the workers of this run found it.
            runtime: runs.iter().fold(describe_gpus(), |mut facts, run| {
                facts.extend(run.runtime.clone());
                facts
            }),
            runtime_options: Some(options.clone()),
            stages,
        }
    }

    /// Writes it to `runs/<run-id>.json`; returns the path.
    pub fn write(&self, cache: &Cache) -> Result<PathBuf, Error> {
        let path = cache.path("runs").join(format!("{}.json", self.run_id));
        let text = serde_json::to_vec_pretty(self).expect("manifests serialize");
        atomic_write(&path, &text).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// The paths of every manifest in the cache, oldest first (run ids sort by time).
    pub fn paths(cache: &Cache) -> Result<Vec<PathBuf>, Error> {
        let runs = cache.path("runs");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&runs)
            .map_err(|e| Error::io(&runs, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Reads a manifest: `latest`, a run id, or a path to a manifest file.
    pub fn find(cache: &Cache, run: &str) -> Result<(PathBuf, Manifest), Error> {
        let runs = cache.path("runs");
        let path = if run == "latest" {
            Manifest::paths(cache)?
                .pop()
                .ok_or_else(|| Error::Usage(format!("no runs recorded in {}", runs.display())))?
        } else if Path::new(run).is_file() {
            PathBuf::from(run)
        } else {
            runs.join(format!("{run}.json"))
        };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            what: "run manifest",
            source,
        })?;
        Ok((path, m))
    }
}

/// Checks every artifact a run recorded: present, and each file still hashes to the digest
/// recorded when it was written. Returns (artifacts checked, problems, each naming the file).
pub fn audit(cache: &Cache, m: &Manifest) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut problems = Vec::new();
    // Outputs left on the remote were never here.
    for s in m.stages.iter().filter(|s| s.outcome != "remote") {
        for (name, rec) in &s.outputs {
            checked += 1;
            let dir = cache.artifact(&rec.digest);
            let Ok(now) = tree_digest(&dir) else {
                problems.push(format!("{}.{name}: artifact {} is missing", s.id, &rec.digest[..12]));
                continue;
            };
            if now.digest == rec.digest {
                continue;
            }
            let mut files: Vec<&String> = rec.files.keys().chain(now.files.keys()).collect();
            files.sort();
            files.dedup();
            for file in files {
                match (rec.files.get(file), now.files.get(file)) {
                    (Some(a), Some(b)) if a == b => {}
                    (Some(_), Some(_)) => problems.push(format!(
                        "{}.{name}: {} changed (content no longer matches its digest)",
                        s.id,
                        dir.join(file).display()
                    )),
                    (Some(_), None) => {
                        problems.push(format!("{}.{name}: {} is missing", s.id, dir.join(file).display()))
                    }
                    (None, _) => problems.push(format!(
                        "{}.{name}: {} was not part of the artifact",
                        s.id,
                        dir.join(file).display()
                    )),
                }
            }
        }
    }
    (checked, problems)
}
