//! `sumflow run`: execute a pipeline (pulling from and pushing to a remote where asked), write
//! its manifest and its lock file, print the stages' summaries and a closing line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use sumflow_stages::RuntimeOptions;

use crate::cache::{read_only, Cache};
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::remote::Remote;
use crate::run::console::{self, Console};
use crate::run::executor::{self, Outcome, Pull, RunOptions};
use crate::run::lockfile::{self, LockFile};
use crate::run::manifest::Manifest;
use crate::run::plan::{self, Selection};
use crate::worker::torchrun::{self, Torchrun, World};

/// How `sumflow run` was asked to run, beyond the pipeline and the cache.
#[derive(Debug, Default)]
pub struct RunRequest {
    /// Stages to force and to restrict to.
    pub selection: Selection,
    /// Stages at once (default: the CPUs).
    pub jobs: Option<usize>,
    /// Hold the plan to the lock; compute nothing.
    pub frozen: bool,
    /// The lock file, when not the pipeline's own (`PIPELINE.lock`).
    pub lock: Option<PathBuf>,
    /// Whether `--set` changed the pipeline's vars (its lock is then written only to `lock`).
    pub vars_set: bool,
    /// What to pull from the remote.
    pub pull: Pull,
    /// Upload what the run produced.
    pub push: bool,
    /// The remote for `pull` and `push`.
    pub remote: Option<Arc<Remote>>,
}

/// Runs `p` against `cache`; under torchrun, as rank 0 with the other ranks joining its
/// distributed stages, or as one of those.
pub fn run(p: &Pipeline, cache: &Cache, req: RunRequest, runtime: RuntimeOptions) -> Result<ExitCode, Error> {
    let world = match Torchrun::from_env()? {
        Some(t) if t.rank != 0 => {
            // The keys this rank computes for its copy of the pipeline: rank 0 refuses a rank
            // whose key for a stage differs from its own. A rank that cannot plan (a file the
            // pipeline reads is missing here) still follows, to be refused at once each time
            // rather than leave rank 0 waiting.
            let keys = match plan::plan(p, cache, &Selection::default(), &runtime) {
                Ok(plans) => plans.into_iter().map(|s| (s.id, s.key)).collect(),
                Err(e) => {
                    crate::error::report(&e);
                    BTreeMap::new()
                }
            };
            eprintln!("rank {} of {}: joining rank 0's distributed stages", t.rank, t.world);
            return torchrun::follow(&t, keys);
        }
        Some(t) => {
            crate::worker::spawn::check_binary()?;
            eprintln!("rank 0 of {}: running {}; distributed stages on all {} ranks", t.world, p.name, t.world);
            Some(Arc::new(World::lead(t)?))
        }
        None => None,
    };
    let lock_path = req.lock.clone().unwrap_or_else(|| lockfile::default_path(&p.path));
    // Without a lock file, --frozen still holds: nothing may run.
    let locked = if req.frozen && lock_path.is_file() {
        Some(Arc::new((lock_path.clone(), LockFile::read(&lock_path)?)))
    } else {
        if req.frozen {
            eprintln!("no lock file {}: --frozen checks only that nothing would run", lock_path.display());
        }
        None
    };
    // An unreachable remote is not a reason to stop: the run computes what it would have pulled.
    let remote = match req.remote.clone() {
        Some(remote) if req.pull != Pull::Off || req.push => match remote.check() {
            Ok(()) => Some(remote),
            Err(e @ Error::RemoteUnreachable { .. }) if !req.push => {
                eprintln!("{e}; computing locally");
                None
            }
            Err(e) => return Err(e),
        },
        other => other,
    };
    let mut opts = RunOptions {
        selection: req.selection.clone(),
        frozen: req.frozen,
        locked,
        remote: remote.clone().filter(|_| req.pull != Pull::Off),
        pull: req.pull,
        runtime,
        world,
        ..RunOptions::default()
    };
    if let Some(j) = req.jobs {
        opts.jobs = j;
    }
    // Under torchrun the machine's other GPUs are the other local ranks'.
    if let Some(world) = &opts.world {
        opts.gpus.retain(|g| g.cuda == world.local_gpu());
    }
    let started = SystemTime::now();
    let runs = executor::run(p, cache, &opts, &Console::default())?;
    let manifest = Manifest::new(p, &runs, started, std::env::args().collect(), &opts.runtime);
    let manifest_path = match manifest.write(cache) {
        Err(Error::Io { source, .. }) if read_only(&source) => {
            eprintln!("the cache {} cannot be written: no run manifest kept", cache.root().display());
            None
        }
        written => Some(written?),
    };
    out!("{}", console::summaries(p, &runs, cache));
    let count = |f: fn(&Outcome) -> bool| runs.iter().filter(|r| f(&r.outcome)).count();
    eprintln!(
        "{} in {:.2}s: {} ran, {} cached, {} failed, {} skipped; manifest {}",
        p.name,
        manifest.duration_s,
        count(|o| *o == Outcome::Ran),
        count(|o| matches!(o, Outcome::Hit | Outcome::Remote)),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| matches!(o, Outcome::Skipped(_))),
        manifest_path.map_or("none".into(), |m| m.display().to_string())
    );
    if let (Some(remote), true) = (&opts.remote, req.pull != Pull::Off) {
        let n = remote.downloaded();
        eprintln!("remote `{}`: {} pulled ({n} bytes)", remote.name(), indicatif::HumanBytes(n));
    }
    let failed: Vec<String> = p
        .stages
        .iter()
        .zip(&runs)
        .filter(|(_, r)| matches!(r.outcome, Outcome::Failed(_)))
        .map(|(s, _)| s.id.clone())
        .collect();
    // The lock: a record of a whole, successful run of the pipeline file as it is.
    let complete = req.selection.only.is_empty() && runs.iter().all(|r| r.entry.is_some());
    if complete && !req.frozen {
        if req.vars_set && req.lock.is_none() {
            eprintln!(
                "lock {} not written: --set made a variant of the pipeline (give --lock FILE to lock it)",
                lock_path.display()
            );
        } else {
            let entries: Vec<_> = runs.iter().map(|r| r.entry.as_ref().expect("complete")).collect();
            match LockFile::new(p, &entries, cache).write(&lock_path) {
                Ok(Some(0)) => {}
                Ok(Some(n)) => eprintln!("lock {}: {n} stage(s) changed", lock_path.display()),
                Ok(None) => eprintln!("lock {} written", lock_path.display()),
                // The run's results stand; only their record beside the pipeline is missing.
                Err(e @ Error::Io { .. }) => {
                    eprintln!("warning: lock not written: {}", crate::error::chain(&e).join(": "))
                }
                Err(e) => return Err(e),
            }
        }
    }
    // What is here, failed stages aside: stages that ran, and hits (one request each if the
    // remote has them).
    if let (Some(remote), true) = (&remote, req.push) {
        let local: Vec<_> = runs
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Ran | Outcome::Hit))
            .filter_map(|r| r.entry.clone())
            .collect();
        let r = remote.push(cache, &local)?;
        eprintln!("{}", r.summary(remote.name()));
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::StagesFailed(failed))
    }
}
