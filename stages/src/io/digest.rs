//! Content digests (blake3) of files and of folders of files: what names a cache artifact,
//! what a checkpoint records of its files, and what a reader checks before it trusts either.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The blake3 of a file's bytes (hex).
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// The digest of a folder and of each file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    /// Digest of the whole folder: each file's relative path, length and content hash, in path
    /// order.
    pub digest: String,
    /// Total bytes.
    pub bytes: u64,
    /// blake3 of each file by relative path.
    pub files: BTreeMap<String, String>,
    /// Size of each file by relative path.
    pub sizes: BTreeMap<String, u64>,
}

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

/// The blake3 digest of a folder (see [`TreeDigest`]), with its total size and per-file digests.
pub fn tree_digest(dir: &Path) -> std::io::Result<TreeDigest> {
    let mut tree = blake3::Hasher::new();
    let mut bytes = 0;
    let mut files = BTreeMap::new();
    let mut sizes = BTreeMap::new();
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
        files.insert(rel.clone(), hash.to_hex().to_string());
        sizes.insert(rel, len);
    }
    Ok(TreeDigest { digest: tree.finalize().to_hex().to_string(), bytes, files, sizes })
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
        assert_eq!(t1.files["y"], file_digest(&a.path().join("y")).unwrap());
        fs::write(a.path().join("y"), "3").unwrap();
        let d2 = tree_digest(a.path()).unwrap().digest;
        fs::rename(a.path().join("y"), a.path().join("z")).unwrap();
        let d3 = tree_digest(a.path()).unwrap().digest;
        let d1 = t1.digest;
        assert!(d1 != d2 && d2 != d3);
    }
}
