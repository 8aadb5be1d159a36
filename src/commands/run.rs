//! `sumflow run`: execute a pipeline, write its manifest, print the stages' summaries and a
//! closing line.

use std::process::ExitCode;
use std::time::SystemTime;

use sumflow_stages::RuntimeOptions;

use crate::cache::{read_only, Cache};
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::run::console::{self, Console};
use crate::run::executor::{self, Outcome, RunOptions};
use crate::run::manifest::Manifest;
use crate::run::plan::Selection;

/// Runs `p` against `cache`.
pub fn run(
    p: &Pipeline,
    cache: &Cache,
    selection: Selection,
    jobs: Option<usize>,
    frozen: bool,
    runtime: RuntimeOptions,
) -> Result<ExitCode, Error> {
    let mut opts = RunOptions { selection, frozen, runtime, ..RunOptions::default() };
    if let Some(j) = jobs {
        opts.jobs = j;
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
        count(|o| *o == Outcome::Hit),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| matches!(o, Outcome::Skipped(_))),
        manifest_path.map_or("none".into(), |m| m.display().to_string())
    );
    let failed: Vec<String> = p
        .stages
        .iter()
        .zip(&runs)
        .filter(|(_, r)| matches!(r.outcome, Outcome::Failed(_)))
        .map(|(s, _)| s.id.clone())
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::StagesFailed(failed))
    }
}
