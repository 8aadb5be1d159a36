//! Reading and committing cache entries: atomic writes, tree digests of artifact folders, and
//! the commit protocol (artifacts first, index entry last).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
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
}

/// The digest of an artifact folder and of each file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    /// Digest of the whole folder.
    pub digest: String,
    /// Total bytes.
    pub bytes: u64,
    /// blake3 of each file by relative path.
    pub files: BTreeMap<String, String>,
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
}

/// A cache root.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

pub use sumflow_stages::atomic::atomic_write;
use sumflow_stages::atomic::sync_dir;

/// Files under `dir`, as sorted `/`-separated relative paths.
fn files_under(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if entry.file_type()?.is_dir() {
                stack.push((rel, entry.path()));
            } else {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The blake3 digest of a folder (each file's relative path, length and content hash, in
/// path order), with its total size and per-file digests.
pub fn tree_digest(dir: &Path) -> std::io::Result<TreeDigest> {
    let mut tree = blake3::Hasher::new();
    let mut bytes = 0;
    let mut files = BTreeMap::new();
    for (rel, path) in files_under(dir)? {
        let mut h = blake3::Hasher::new();
        h.update_reader(File::open(&path)?)?;
        let hash = h.finalize();
        let len = fs::metadata(&path)?.len();
        bytes += len;
        tree.update(rel.as_bytes());
        tree.update(&[0]);
        tree.update(&len.to_le_bytes());
        tree.update(hash.as_bytes());
        files.insert(rel, hash.to_hex().to_string());
    }
    Ok(TreeDigest { digest: tree.finalize().to_hex().to_string(), bytes, files })
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
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
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
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::Cache {
                path: path.to_path_buf(),
                message: format!("unreadable entry ({e}); run `sumflow cache verify`"),
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

    /// Records `entry` as the last one of its stage.
    pub fn set_history(&self, entry: &Entry) -> Result<(), Error> {
        let path = self.history_path(&entry.pipeline, &entry.stage);
        let text = serde_json::to_vec_pretty(entry).expect("entries serialize");
        atomic_write(&path, &text).map_err(|e| Error::io(&path, e))
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
            sumflow_stages::atomic::sync_tree(&dir).map_err(io)?;
            let TreeDigest { digest, bytes, files } = tree_digest(&dir).map_err(io)?;
            let target = self.artifact(&digest);
            // An artifact already there is kept only if it is intact: a valid artifact is never
            // replaced, a corrupted one is.
            let intact = target.is_dir() && tree_digest(&target).is_ok_and(|t| t.digest == digest);
            if intact {
                fs::remove_dir_all(&dir).map_err(io)?;
            } else {
                if target.exists() {
                    let _ = fs::remove_dir_all(&target);
                }
                if let Err(e) = fs::rename(&dir, &target) {
                    // Another thread committed the same content first.
                    if !target.is_dir() {
                        return Err(io(e));
                    }
                    let _ = fs::remove_dir_all(&dir);
                }
            }
            entry.outputs.insert(out.name.clone(), OutputRecord { digest, kind: out.kind, bytes, files });
        }
        sync_dir(&artifacts).map_err(|e| Error::io(&artifacts, e))?;
        let path = self.index_path(&entry.key);
        let text = serde_json::to_vec_pretty(&entry).expect("entries serialize");
        atomic_write(&path, &text).map_err(|e| Error::io(&path, e))?;
        let _ = fs::remove_dir_all(scratch);
        let _ = fs::remove_dir_all(self.work_dir(&entry.key));
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_digest_sees_names_and_contents() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("sub")).unwrap();
        fs::write(a.path().join("sub/x"), "1").unwrap();
        fs::write(a.path().join("y"), "2").unwrap();
        let t1 = tree_digest(a.path()).unwrap();
        assert_eq!(t1.bytes, 2);
        assert_eq!(t1.files.keys().collect::<Vec<_>>(), ["sub/x", "y"]);
        fs::write(a.path().join("y"), "3").unwrap();
        let d2 = tree_digest(a.path()).unwrap().digest;
        fs::rename(a.path().join("y"), a.path().join("z")).unwrap();
        let d3 = tree_digest(a.path()).unwrap().digest;
        let d1 = t1.digest;
        assert!(d1 != d2 && d2 != d3);
    }

    #[test]
    fn safe_names_cannot_escape() {
        assert_eq!(safe_name("../../etc"), ".._.._etc");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name("lab-results"), "lab-results");
    }
}
