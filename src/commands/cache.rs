//! `sumflow cache ls | gc | verify`.

use std::process::ExitCode;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{self, Cache, CacheLock};
use crate::error::Error;
use crate::remote::Remote;
use crate::run::lockfile::LockFile;

/// `sumflow cache ls`: one line per entry.
pub fn ls(cache: &Cache) -> Result<ExitCode, Error> {
    for e in cache::ls(cache)? {
        let bytes: u64 = e.outputs.values().map(|o| o.bytes).sum();
        outln!(
            "{}  {:24}  {:10}  {:>10} B  {}",
            &e.key[..12],
            format!("{}/{}", e.pipeline, e.stage),
            e.kind,
            bytes,
            e.created
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sumflow cache gc`: removes what no entry references, with the lock held.
pub fn gc(cache: &Cache) -> Result<ExitCode, Error> {
    let _lock =
        CacheLock::acquire(&cache.path("lock"), &|pid| eprintln!("waiting for the cache lock (held by pid {pid})…"))?;
    let r = cache::gc(cache)?;
    outln!("removed {} unreferenced artifacts ({} bytes) and {} scratch folders", r.artifacts, r.bytes, r.scratch);
    Ok(ExitCode::SUCCESS)
}

/// `sumflow cache verify [--repair]`: re-hashes every artifact; with `--repair`, removes what
/// is damaged so the next run recomputes it.
pub fn verify(cache: &Cache, repair: bool) -> Result<ExitCode, Error> {
    let _lock = if repair {
        Some(CacheLock::acquire(&cache.path("lock"), &|pid| {
            eprintln!("waiting for the cache lock (held by pid {pid})…")
        })?)
    } else {
        None
    };
    let r = cache::verify(cache, repair)?;
    outln!(
        "{} entries, {} artifacts re-hashed; {} unreferenced artifacts, {} scratch folders (harmless)",
        r.entries,
        r.artifacts,
        r.orphans,
        r.scratch
    );
    if repair && !r.problems.is_empty() {
        outln!("repaired: removed {} damaged files and folders:\n  {}", r.removed, r.problems.join("\n  "));
        outln!("the next run recomputes what they held");
        return Ok(ExitCode::SUCCESS);
    }
    if r.problems.is_empty() {
        outln!("cache {} is consistent", cache.root().display());
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::Cache {
            path: cache.root().to_path_buf(),
            message: format!(
                "{} problems (`sumflow cache verify --repair` removes them):\n  {}",
                r.problems.len(),
                r.problems.join("\n  ")
            ),
        })
    }
}

/// `sumflow cache gc --remote [--keep LOCK…] [--grace D] [--yes]`: deletes the records no
/// given lock names that are older than the grace period, then the objects no remaining record
/// names (and older than it too); a dry run unless `yes`.
pub fn gc_remote(remote: &Remote, keep: &[PathBuf], grace: Duration, yes: bool) -> Result<ExitCode, Error> {
    remote.check()?;
    let mut keys = BTreeSet::new();
    for path in keep {
        keys.extend(LockFile::read(path)?.stages.into_values().map(|s| s.key));
    }
    let r = remote.gc(&keys, grace, !yes)?;
    let verb = if yes { "deleted" } else { "would delete" };
    outln!(
        "remote `{}`: {verb} {} records and {} objects ({} bytes); kept {} records (named by {} lock file(s) or younger than {})",
        remote.name(),
        r.records.len(),
        r.objects,
        r.bytes,
        r.records_kept,
        keep.len(),
        humantime::format_duration(grace)
    );
    if !yes && (r.objects > 0 || !r.records.is_empty()) {
        outln!("(a dry run: --yes deletes them)");
    }
    Ok(ExitCode::SUCCESS)
}
