//! `sumflow push [PIPELINE]` and `sumflow pull PIPELINE`: moving a pipeline's results between
//! the local cache and a remote.

use std::process::ExitCode;

use sumflow_stages::RuntimeOptions;

use crate::cache::{Cache, CacheLock, Entry};
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::remote::{Lookup, PullOutcome, Remote};
use crate::run::plan::{self, Selection, Status};

fn lock(cache: &Cache) -> Result<CacheLock, Error> {
    CacheLock::acquire(&cache.path("lock"), &|pid| eprintln!("waiting for the cache lock (held by pid {pid})…"))
}

/// `sumflow push`: uploads what the pipeline's current stages produced (every cached entry
/// without a pipeline), skipping the objects the remote has.
pub fn push(p: Option<&Pipeline>, cache: &Cache, remote: &Remote, runtime: &RuntimeOptions) -> Result<ExitCode, Error> {
    remote.check()?;
    let _lock = lock(cache)?;
    let entries: Vec<Entry> = match p {
        Some(p) => {
            let plans = plan::plan(p, cache, &Selection::default(), runtime)?;
            let missing: Vec<&str> = plans.iter().filter(|s| s.status != Status::Hit).map(|s| s.id.as_str()).collect();
            if !missing.is_empty() {
                eprintln!("not in the local cache (run them first): {}", missing.join(", "));
            }
            plans.into_iter().filter_map(|s| s.entry).collect()
        }
        // Every entry whose artifacts are all here.
        None => cache
            .entries()?
            .into_iter()
            .filter(|e| e.outputs.values().all(|o| cache.artifact(&o.digest).is_dir()))
            .collect(),
    };
    let r = remote.push(cache, &entries)?;
    outln!("{}", r.summary(remote.name()));
    Ok(ExitCode::SUCCESS)
}

/// `sumflow pull PIPELINE`: downloads every stage's outputs the local cache lacks and the remote
/// has.
pub fn pull(p: &Pipeline, cache: &Cache, remote: &Remote, runtime: &RuntimeOptions) -> Result<ExitCode, Error> {
    remote.check()?;
    let _lock = lock(cache)?;
    let t0 = std::time::Instant::now();
    let plans = plan::plan(p, cache, &Selection::default(), runtime)?;
    let mut records = Vec::new();
    let mut absent = Vec::new();
    let mut refused = Vec::new();
    for (i, s) in plans.iter().enumerate().filter(|(_, s)| s.status == Status::Miss) {
        let outputs: Vec<String> = p.stages[i].outputs.iter().map(|o| o.name.clone()).collect();
        match remote.record(&s.key, Some(&outputs))? {
            Lookup::Found(entry) => records.push((s.id.clone(), entry)),
            Lookup::Absent => absent.push(s.id.as_str()),
            Lookup::Refused(e) => {
                eprintln!("{e}");
                refused.push(s.id.clone());
            }
        }
    }
    let mut pulled = 0;
    for ((stage, _), outcome) in records.iter().zip(remote.pull(cache, &records)?) {
        match outcome {
            PullOutcome::Pulled(_) => pulled += 1,
            PullOutcome::Refused(e) => {
                eprintln!("{e}");
                refused.push(stage.clone());
            }
        }
    }
    let here = plans.iter().filter(|s| s.status == Status::Hit).count();
    outln!(
        "pulled {pulled} stages ({}) from remote `{}` in {:.2}s; {here} were here already",
        indicatif::HumanBytes(remote.downloaded()),
        remote.name(),
        t0.elapsed().as_secs_f64()
    );
    if !absent.is_empty() {
        outln!("not on the remote: {}", absent.join(", "));
    }
    if refused.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::Remote {
            remote: remote.name().to_string(),
            message: format!("{} stage(s) refused: {}", refused.len(), refused.join(", ")),
        })
    }
}
