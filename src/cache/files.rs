//! Digests of local input files, memoized by (path, size, mtime, inode) in `files.json` so an
//! unchanged 11 MB CSV is not re-read on every run.
//!
//! A digest names the bytes a stage will read only while the file stays as it was: each digest
//! comes with the file's [`Stamp`], the executor checks that stamp again before and after the
//! stage reads the file, and a file that changed underneath fails the stage instead of caching
//! one version's output under the other's key.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sumflow_stages::tools::atomic_write;

use crate::error::Error;

/// What tells two versions of a file apart without reading it: size, modification time,
/// inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode (0 where there is none).
    pub inode: u64,
}

impl Stamp {
    /// The file's stamp now.
    pub fn of(path: &Path) -> Result<Stamp, Error> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::io(path, std::io::Error::other("not a file")));
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Stamp { size: meta.len(), mtime_ns, inode })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Memo {
    #[serde(flatten)]
    stamp: Stamp,
    blake3: String,
}

/// File digests, memoized on disk.
pub struct FileDigests {
    path: PathBuf,
    memo: BTreeMap<String, Memo>,
    changed: bool,
}

impl FileDigests {
    /// Loads the memo at `path` (a missing or unreadable memo starts empty).
    pub fn open(path: PathBuf) -> FileDigests {
        let memo = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        FileDigests { path, memo, changed: false }
    }

    /// The blake3 of the file at `path` and the stamp it had, re-read only when its stamp
    /// changed; a file that changes while it is hashed is an error.
    pub fn digest(&mut self, path: &Path) -> Result<(String, Stamp), Error> {
        let canonical = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let stamp = Stamp::of(&canonical)?;
        let name = canonical.to_string_lossy().into_owned();
        if let Some(m) = self.memo.get(&name) {
            if m.stamp == stamp {
                return Ok((m.blake3.clone(), stamp));
            }
        }
        let mut hasher = blake3::Hasher::new();
        let file = File::open(&canonical).map_err(|e| Error::io(path, e))?;
        hasher.update_reader(file).map_err(|e| Error::io(path, e))?;
        if Stamp::of(&canonical)? != stamp {
            return Err(Error::InputChanged { path: path.to_path_buf() });
        }
        let blake3 = hasher.finalize().to_hex().to_string();
        self.memo.insert(name, Memo { stamp, blake3: blake3.clone() });
        self.changed = true;
        Ok((blake3, stamp))
    }

    /// Writes the memo back if it changed. It only saves time: on a read-only cache it is
    /// left as it was.
    pub fn save(&self) -> Result<(), Error> {
        if !self.changed {
            return Ok(());
        }
        let text = serde_json::to_vec_pretty(&self.memo).expect("memo serializes");
        match atomic_write(&self.path, &text) {
            Err(e) if read_only(&e) => Ok(()),
            written => written.map_err(|e| Error::io(&self.path, e)),
        }
    }
}

/// Whether an error says the cache cannot be written (a read-only mount, no permission).
pub fn read_only(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied)
}
