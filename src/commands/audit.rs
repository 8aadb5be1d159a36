//! `sumflow audit RUN [--reproduce STAGE]`: a run's artifacts against its manifest, and a stage
//! rerun into a scratch cache and compared.

use std::process::ExitCode;

use sumflow_stages::{Registry, RuntimeOptions};

use crate::cache::Cache;
use crate::error::Error;
use crate::run::console::Console;
use crate::run::manifest::{self, Manifest};
use crate::run::reproduce::reproduce;

/// `sumflow audit`.
pub fn audit(
    cache: &Cache,
    run: &str,
    stage: Option<&str>,
    registry: &Registry,
    runtime: &RuntimeOptions,
) -> Result<ExitCode, Error> {
    let (path, m) = Manifest::find(cache, run)?;
    if let Some(stage) = stage {
        let r = reproduce(cache, &m, stage, registry, &Console::default(), runtime)?;
        for line in &r.volatile {
            outln!("timing record (expected to differ): {line}");
        }
        if !r.differences.is_empty() {
            return Err(Error::Audit(format!(
                "stage `{stage}` of run {} did not reproduce:\n  {}",
                m.run_id,
                r.differences.join("\n  ")
            )));
        }
        outln!("stage `{stage}` of run {} reproduced bit-exactly ({} files)", m.run_id, r.same);
        return Ok(ExitCode::SUCCESS);
    }
    let (checked, problems) = manifest::audit(cache, &m);
    if !problems.is_empty() {
        return Err(Error::Audit(format!(
            "{} ({} artifacts checked):\n  {}",
            path.display(),
            checked,
            problems.join("\n  ")
        )));
    }
    outln!("{}: run {} of `{}`: all {checked} artifacts match the manifest", path.display(), m.run_id, m.pipeline.name);
    Ok(ExitCode::SUCCESS)
}
