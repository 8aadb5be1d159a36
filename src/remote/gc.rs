//! `cache gc --remote`: what a shared remote may lose. Records no given lock names and older
//! than the grace period go first, then the objects no remaining record names (also older than
//! the grace period: a push under way uploads objects before its record). The records are
//! listed again just before objects are deleted, so a record written meanwhile keeps its
//! objects.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::{Lookup, Remote};
use crate::error::Error;

/// What `gc --remote` found, and removed unless it was a dry run.
#[derive(Debug, Default)]
pub struct RemoteGc {
    /// Records kept: named by a lock, or younger than the grace period.
    pub records_kept: usize,
    /// Records deleted (or that would be).
    pub records: Vec<String>,
    /// Objects deleted (or that would be).
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl Remote {
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error> {
        self.rt
            .block_on(self.store.list(Some(&ObjectPath::from(prefix))).try_collect::<Vec<_>>())
            .map_err(|e| self.error(&format!("listing {prefix}/"), e))
    }

    /// The objects the records in `keys` name; a record that fails the checks names none, a
    /// remote that fails to answer stops the collection.
    fn referenced(&self, keys: &[String]) -> Result<BTreeSet<String>, Error> {
        let mut out = BTreeSet::new();
        for key in keys {
            if let Lookup::Found(entry) = self.record(key, None)? {
                out.extend(entry.outputs.values().flat_map(|o| o.files.values().cloned()));
            }
        }
        Ok(out)
    }

    /// Collects the remote: records not in `keep` and older than `grace`, then unreferenced
    /// objects older than `grace`. Only counts when `dry_run`.
    pub fn gc(&self, keep: &BTreeSet<String>, grace: Duration, dry_run: bool) -> Result<RemoteGc, Error> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let old = |meta: &ObjectMeta| now - meta.last_modified.timestamp() >= grace.as_secs() as i64;
        let key_of =
            |meta: &ObjectMeta| meta.location.filename().unwrap_or_default().trim_end_matches(".json").to_string();
        let mut report = RemoteGc::default();
        let (mut kept, mut doomed) = (Vec::new(), Vec::new());
        for meta in self.list("ac")? {
            let key = key_of(&meta);
            if keep.contains(&key) || !old(&meta) {
                kept.push(key);
            } else {
                report.records.push(key);
                doomed.push(meta.location);
            }
        }
        report.records_kept = kept.len();
        if !dry_run {
            // Records first: a record never outlives its objects.
            self.delete(&doomed)?;
        }
        // Listed again: a record written since the first listing keeps its objects too.
        let doomed_keys: BTreeSet<&String> = report.records.iter().collect();
        let live: Vec<String> =
            self.list("ac")?.iter().map(key_of).filter(|k| !doomed_keys.contains(k) || keep.contains(k)).collect();
        let referenced = self.referenced(&live)?;
        let mut objects = Vec::new();
        for meta in self.list("cas")? {
            let digest = meta.location.filename().unwrap_or_default().to_string();
            if !referenced.contains(&digest) && old(&meta) {
                report.objects += 1;
                report.bytes += meta.size;
                objects.push(meta.location);
            }
        }
        if !dry_run {
            self.delete(&objects)?;
        }
        Ok(report)
    }

    fn delete(&self, paths: &[ObjectPath]) -> Result<(), Error> {
        for path in paths {
            match self.rt.block_on(self.store.delete(path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(&format!("deleting {path}"), e)),
            }
        }
        Ok(())
    }
}
