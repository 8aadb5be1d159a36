//! Reading and committing cache entries: atomic writes, tree digests of artifact folders, and
//! the commit protocol (artifacts first, index entry last).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
pub use sumflow_stages::tools::atomic_write;
use sumflow_stages::tools::{sync_dir, sync_tree, tree_digest, TreeDigest};
use sumflow_stages::{ArtifactKind, OutputDecl};

use crate::error::Error;

/// One output of a cached stage run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// blake3 tree digest; also the artifact folder's name.
    pub digest: String,
    /// What it holds.
    pub kind: ArtifactKind,
    /// Total size of its files.
    pub bytes: u64,
    /// blake3 of each file, by relative path (so an audit can name the file that changed).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Size of each file by relative path (entries written before sizes were kept lack them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, u64>,
}

/// An index entry: a recipe key and what running it produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The recipe key.
    pub key: String,
    /// The pipeline that produced it.
    pub pipeline: String,
    /// The stage id in that pipeline.
    pub stage: String,
    /// The stage kind.
    pub kind: String,
    /// The recipe (what the key hashes).
    pub recipe: serde_json::Value,
    /// Output name → artifact.
    pub outputs: BTreeMap<String, OutputRecord>,
    /// When it was committed (RFC 3339).
    pub created: String,
    /// How long the stage ran, in seconds.
    pub duration_s: f64,
    /// Figures the stage recorded (throughput, counts).
    #[serde(default)]
    pub stats: BTreeMap<String, f64>,
    /// What the stage warned about while it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A cache root.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// A file name made safe from any string (no separators, no `..`).
fn safe_name(s: &str) -> String {
    let name: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if name.trim_matches('.').is_empty() {
        format!("_{name}")
    } else {
        name
    }
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache, Error> {
        for sub in ["artifacts", "index", "history", "runs", "tmp", "work"] {
            let d = root.join(sub);
            match fs::create_dir_all(&d) {
                // A read-only cache is read as it is (what it lacks, it does not hold).
                Err(e) if super::read_only(&e) && root.is_dir() => {}
                made => made.map_err(|e| Error::io(&d, e))?,
            }
        }
        Ok(Cache { root: root.to_path_buf() })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a subfolder or file of the cache.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The folder of artifact `digest`.
    pub fn artifact(&self, digest: &str) -> PathBuf {
        self.root.join("artifacts").join(digest)
    }

    fn index_path(&self, key: &str) -> PathBuf {
        self.root.join("index").join(format!("{key}.json"))
    }

    fn history_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.root.join("history").join(safe_name(pipeline)).join(format!("{}.json", safe_name(stage)))
    }

    /// A stage's persistent scratch folder for recipe `key`.
    pub fn work_dir(&self, key: &str) -> PathBuf {
        self.root.join("work").join(key)
    }

    fn read_entry(path: &Path) -> Result<Option<Entry>, Error> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                what: "cache entry (run `sumflow cache verify --repair`)",
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The entry for `key` if it exists and all its artifact folders are present.
    pub fn entry(&self, key: &str) -> Result<Option<Entry>, Error> {
        Ok(Self::read_entry(&self.index_path(key))?
            .filter(|e| e.outputs.values().all(|o| self.artifact(&o.digest).is_dir())))
    }

    /// Every index entry, sorted by creation time.
    pub fn entries(&self) -> Result<Vec<Entry>, Error> {
        let dir = self.root.join("index");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = item.map_err(|e| Error::io(&dir, e))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.extend(Self::read_entry(&path)?);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(out)
    }

    /// The last entry recorded for `stage` of `pipeline`.
    pub fn history(&self, pipeline: &str, stage: &str) -> Result<Option<Entry>, Error> {
        Self::read_entry(&self.history_path(pipeline, stage))
    }

    /// Records `entry` as the last one of its stage (for `plan`'s reasons; on a cache that
    /// cannot be written, left as it was).
    pub fn set_history(&self, entry: &Entry) -> Result<(), Error> {
        let path = self.history_path(&entry.pipeline, &entry.stage);
        let text = serde_json::to_vec_pretty(entry).expect("entries serialize");
        match atomic_write(&path, &text) {
            Err(e) if super::read_only(&e) => Ok(()),
            written => written.map_err(|e| Error::io(&path, e)),
        }
    }

    /// A fresh, empty folder under `tmp/` for a stage run of `key` to write its outputs into.
    pub fn scratch(&self, key: &str) -> Result<PathBuf, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join("tmp").join(format!(
            "{key}.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Removes everything under `tmp/` (call with the lock held: no one else is writing).
    pub fn clear_scratch(&self) -> Result<(), Error> {
        let dir = self.root.join("tmp");
        for item in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = item.map_err(|e| Error::io(&dir, e))?.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
        Ok(())
    }

    /// Moves the outputs a stage wrote under `scratch` into `artifacts/`, then writes the index
    /// entry. `entry.outputs` is filled in here.
    pub fn commit(&self, scratch: &Path, outputs: &[OutputDecl], mut entry: Entry) -> Result<Entry, Error> {
        let artifacts = self.root.join("artifacts");
        for out in outputs {
            let dir = scratch.join(&out.name);
            if !dir.is_dir() {
                return Err(Error::Cache {
                    path: dir,
                    message: format!("the stage did not write its output `{}`", out.name),
                });
            }
            let io = |e| Error::io(&dir, e);
            sync_tree(&dir).map_err(io)?;
            let TreeDigest { digest, bytes, files, sizes } = tree_digest(&dir).map_err(io)?;
            self.place(&dir, &digest)?;
            entry.outputs.insert(out.name.clone(), OutputRecord { digest, kind: out.kind, bytes, files, sizes });
        }
        sync_dir(&artifacts).map_err(|e| Error::io(&artifacts, e))?;
        self.write_entry(&entry)?;
        let _ = fs::remove_dir_all(scratch);
        let _ = fs::remove_dir_all(self.work_dir(&entry.key));
        Ok(entry)
    }

    /// Moves the folder `dir` (written and synced) into `artifacts/<digest>`. An intact artifact
    /// already there is kept (a valid artifact is never replaced), a damaged one is.
    fn place(&self, dir: &Path, digest: &str) -> Result<(), Error> {
        let io = |e| Error::io(dir, e);
        let target = self.artifact(digest);
        let intact = target.is_dir() && tree_digest(&target).is_ok_and(|t| t.digest == digest);
        if intact {
            fs::remove_dir_all(dir).map_err(io)?;
            return Ok(());
        }
        // Whatever is there instead (a damaged folder, a dangling link) goes.
        if let Ok(meta) = fs::symlink_metadata(&target) {
            let _ = if meta.is_dir() { fs::remove_dir_all(&target) } else { fs::remove_file(&target) };
        }
        if let Err(e) = fs::rename(dir, &target) {
            // Another thread committed the same content first.
            if !target.is_dir() {
                return Err(io(e));
            }
            let _ = fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// Takes a folder that came from elsewhere (a remote) into `artifacts/<digest>` if it
    /// hashes to `digest`; returns false (and removes it) if it does not.
    pub fn adopt(&self, dir: &Path, digest: &str) -> Result<bool, Error> {
        sync_tree(dir).map_err(|e| Error::io(dir, e))?;
        let tree = tree_digest(dir).map_err(|e| Error::io(dir, e))?;
        if tree.digest != digest {
            let _ = fs::remove_dir_all(dir);
            return Ok(false);
        }
        self.place(dir, digest)?;
        let artifacts = self.root.join("artifacts");
        sync_dir(&artifacts).map_err(|e| Error::io(&artifacts, e))?;
        Ok(true)
    }

    /// Writes the index entry of `entry`, whose artifacts are all in place (last, so a reader
    /// never sees an entry without its artifacts).
    pub fn put_entry(&self, entry: &Entry) -> Result<(), Error> {
        if let Some((name, _)) = entry.outputs.iter().find(|(_, o)| !self.artifact(&o.digest).is_dir()) {
            return Err(Error::Cache {
                path: self.index_path(&entry.key),
                message: format!("output `{name}` of `{}` is not in the cache: entry not written", entry.stage),
            });
        }
        self.write_entry(entry)
    }

    fn write_entry(&self, entry: &Entry) -> Result<(), Error> {
        let path = self.index_path(&entry.key);
        let text = serde_json::to_vec_pretty(entry).expect("entries serialize");
        atomic_write(&path, &text).map_err(|e| Error::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_cannot_escape() {
        assert_eq!(safe_name("../../etc"), ".._.._etc");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name("lab-results"), "lab-results");
    }
}
