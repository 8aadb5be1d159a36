//! Digests of local input files, memoized by (path, size, mtime, inode) in `files.json` so an
//! unchanged 11 MB CSV is not re-read on every run.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::atomic_write;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    blake3: String,
}

/// File digests, memoized on disk.
pub struct FileDigests {
    path: PathBuf,
    memo: BTreeMap<String, Stamp>,
    changed: bool,
}

fn stamp_of(meta: &std::fs::Metadata) -> (u64, i128, u64) {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    (meta.len(), mtime_ns, inode)
}

impl FileDigests {
    /// Loads the memo at `path` (a missing or unreadable memo starts empty).
    pub fn open(path: PathBuf) -> FileDigests {
        let memo = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        FileDigests { path, memo, changed: false }
    }

    /// The blake3 of the file at `path`, re-read only when its size, mtime or inode changed.
    pub fn digest(&mut self, path: &Path) -> Result<String, Error> {
        let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let meta = std::fs::metadata(&canonical).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::io(path, std::io::Error::other("not a file")));
        }
        let (size, mtime_ns, inode) = stamp_of(&meta);
        let name = canonical.to_string_lossy().into_owned();
        if let Some(s) = self.memo.get(&name) {
            if (s.size, s.mtime_ns, s.inode) == (size, mtime_ns, inode) {
                return Ok(s.blake3.clone());
            }
        }
        let mut hasher = blake3::Hasher::new();
        let file = File::open(&canonical).map_err(|e| Error::io(path, e))?;
        hasher.update_reader(file).map_err(|e| Error::io(path, e))?;
        let blake3 = hasher.finalize().to_hex().to_string();
        self.memo.insert(name, Stamp { size, mtime_ns, inode, blake3: blake3.clone() });
        self.changed = true;
        Ok(blake3)
    }

    /// Writes the memo back if it changed.
    pub fn save(&self) -> Result<(), Error> {
        if !self.changed {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&self.memo).expect("memo serializes");
        atomic_write(&self.path, &text).map_err(|e| Error::io(&self.path, e))
    }
}
