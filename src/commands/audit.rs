//! `sumflow audit RUN [--reproduce STAGE]`: a run's artifacts against its manifest, and a stage
//! rerun into a scratch cache and compared; `sumflow audit PIPELINE.lock`: every output a lock
//! file names, found locally (re-hashed) or on the remote (its record and objects).

use std::process::ExitCode;

use sumflow_stages::{Registry, RuntimeOptions};

use std::collections::BTreeMap;
use std::path::Path;

use crate::cache::{tree_digest, Cache};
use crate::error::Error;
use crate::remote::{Lookup, Remote};
use crate::run::console::Console;
use crate::run::lockfile::LockFile;
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

/// `sumflow audit PIPELINE.lock`: each output the lock names must be in the local cache with its
/// digest, or (with a remote) recorded there under the same key with every object present.
pub fn audit_lock(cache: &Cache, path: &Path, remote: Option<&Remote>) -> Result<ExitCode, Error> {
    let lock = LockFile::read(path)?;
    let (mut local, mut remote_count, mut problems) = (0, 0, Vec::new());
    if let Some(remote) = remote {
        remote.check()?;
    }
    for (id, stage) in &lock.stages {
        let mut away = Vec::new();
        for (name, out) in &stage.outputs {
            match tree_digest(&cache.artifact(&out.digest)) {
                Ok(t) if t.digest == out.digest => local += 1,
                _ => away.push((name, out)),
            }
        }
        if away.is_empty() {
            continue;
        }
        let Some(remote) = remote else {
            problems.extend(away.iter().map(|(name, out)| {
                format!(
                    "{id}.{name}: artifact {} is not in the local cache (and no remote was given)",
                    &out.digest[..12]
                )
            }));
            continue;
        };
        let record = match remote.record(&stage.key, None)? {
            Lookup::Found(record) => record,
            Lookup::Absent => {
                problems.extend(away.iter().map(|(name, out)| {
                    format!(
                        "{id}.{name}: artifact {} is neither here nor on remote `{}`",
                        &out.digest[..12],
                        remote.name()
                    )
                }));
                continue;
            }
            Lookup::Refused(e) => {
                problems.push(format!("{id}: {e}"));
                continue;
            }
        };
        for (name, out) in away {
            if record.outputs.get(name.as_str()).map(|o| &o.digest) != Some(&out.digest) {
                problems.push(format!(
                    "{id}.{name}: remote `{}` records another artifact for key {}",
                    remote.name(),
                    &stage.key[..12]
                ));
                continue;
            }
            let objects: BTreeMap<String, u64> = out.files.values().map(|f| (f.blake3.clone(), f.bytes)).collect();
            let missing = remote.missing_objects(&objects)?;
            if missing.is_empty() {
                remote_count += 1;
            } else {
                for (rel, f) in out.files.iter().filter(|(_, f)| missing.contains(&f.blake3)) {
                    problems.push(format!(
                        "{id}.{name}: {rel} (object cas/{}) is missing on remote `{}`",
                        &f.blake3[..12],
                        remote.name()
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Audit(format!("{}:\n  {}", path.display(), problems.join("\n  "))));
    }
    let on_remote = remote.map_or(String::new(), |r| format!(", {remote_count} on remote `{}`", r.name()));
    outln!("{}: all {} outputs present ({local} here, re-hashed{on_remote})", path.display(), local + remote_count);
    Ok(ExitCode::SUCCESS)
}
