//! `sumflow cache ls | gc | verify`: listing entries, removing what no entry references, and
//! re-hashing every artifact.

use std::collections::BTreeSet;
use std::fs;

use sumflow_stages::tools::tree_digest;

use super::store::{Cache, Entry};
use crate::error::Error;

/// What `verify` found (and, with `repair`, removed).
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Artifact folders re-hashed.
    pub artifacts: usize,
    /// Index entries read.
    pub entries: usize,
    /// Problems: corrupted artifacts, entries whose artifacts are missing or corrupted,
    /// unreadable entries and history records.
    pub problems: Vec<String>,
    /// Files and folders removed by `repair` (each problem's culprit).
    pub removed: usize,
    /// Artifacts no entry references (harmless; `gc` removes them).
    pub orphans: usize,
    /// Leftovers of interrupted writes under `tmp/` (harmless; the next run clears them).
    pub scratch: usize,
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Artifact folders removed.
    pub artifacts: usize,
    /// Bytes freed by them.
    pub bytes: u64,
    /// Scratch and stale work folders removed.
    pub scratch: usize,
}

/// Every index entry (for `cache ls`).
pub fn ls(cache: &Cache) -> Result<Vec<Entry>, Error> {
    cache.entries()
}

fn dir_names(cache: &Cache, sub: &str) -> Result<Vec<String>, Error> {
    let dir = cache.path(sub);
    let mut names = Vec::new();
    for item in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        names.push(item.map_err(|e| Error::io(&dir, e))?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Re-hashes every artifact and checks every entry and history record; with `repair`
/// (the cache lock held), removes what is damaged — corrupted artifacts, the entries that name
/// them or missing ones, unreadable entries and history records — so the next run recomputes
/// it.
pub fn verify(cache: &Cache, repair: bool) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport::default();
    let remove = |path: &std::path::Path, report: &mut VerifyReport| -> Result<(), Error> {
        if repair {
            let gone = if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
            gone.map_err(|e| Error::io(path, e))?;
            report.removed += 1;
        }
        Ok(())
    };
    let mut damaged = BTreeSet::new();
    for digest in dir_names(cache, "artifacts")? {
        let dir = cache.artifact(&digest);
        report.artifacts += 1;
        let problem = match tree_digest(&dir) {
            Ok(t) if t.digest == digest => continue,
            Ok(t) => format!("artifacts/{digest}: content hashes to {}: corrupted", t.digest),
            Err(e) => format!("artifacts/{digest}: unreadable ({e})"),
        };
        report.problems.push(problem);
        damaged.insert(digest);
        remove(&dir, &mut report)?;
    }
    let mut referenced = BTreeSet::new();
    for name in dir_names(cache, "index")? {
        if !name.ends_with(".json") {
            continue;
        }
        let path = cache.path("index").join(&name);
        let entry: Entry = match fs::read_to_string(&path).map(|t| serde_json::from_str(&t)) {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                report.problems.push(format!("index/{name}: unreadable ({e})"));
                remove(&path, &mut report)?;
                continue;
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        report.entries += 1;
        let mut broken = false;
        for (output, rec) in &entry.outputs {
            referenced.insert(rec.digest.clone());
            let what = if damaged.contains(&rec.digest) {
                "is corrupted"
            } else if !cache.artifact(&rec.digest).is_dir() {
                "is missing"
            } else {
                continue;
            };
            report.problems.push(format!(
                "{}.{output} (key {}): artifact {} {what}",
                entry.stage,
                &entry.key[..12],
                &rec.digest[..12]
            ));
            broken = true;
        }
        if broken {
            remove(&path, &mut report)?;
        }
    }
    for pipeline in dir_names(cache, "history")? {
        let dir = cache.path("history").join(&pipeline);
        for item in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = item.map_err(|e| Error::io(&dir, e))?.path();
            let readable = fs::read_to_string(&path).ok().is_some_and(|t| serde_json::from_str::<Entry>(&t).is_ok());
            if !readable {
                report.problems.push(format!(
                    "history/{pipeline}/{}: unreadable",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
                remove(&path, &mut report)?;
            }
        }
    }
    report.orphans = dir_names(cache, "artifacts")?.iter().filter(|d| !referenced.contains(*d)).count();
    report.scratch = dir_names(cache, "tmp")?.len();
    Ok(report)
}

/// Removes artifacts no entry references, scratch under `tmp/`, and work folders of recipes
/// that have completed (call with the lock held).
pub fn gc(cache: &Cache) -> Result<GcReport, Error> {
    let mut report = GcReport::default();
    let entries = cache.entries()?;
    let referenced: BTreeSet<&str> =
        entries.iter().flat_map(|e| e.outputs.values().map(|o| o.digest.as_str())).collect();
    for digest in dir_names(cache, "artifacts")? {
        if !referenced.contains(digest.as_str()) {
            let dir = cache.artifact(&digest);
            report.bytes += tree_digest(&dir).map_or(0, |t| t.bytes);
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            report.artifacts += 1;
        }
    }
    report.scratch += dir_names(cache, "tmp")?.len();
    cache.clear_scratch()?;
    let done: BTreeSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    for key in dir_names(cache, "work")? {
        if done.contains(key.as_str()) {
            let dir = cache.work_dir(&key);
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            report.scratch += 1;
        }
    }
    Ok(report)
}
