//! Which remote a command uses: `--remote NAME|URL`, else `SUMFLOW_REMOTE`, else the remote
//! `sumflow.toml` marks `default = true`. `sumflow.toml` lives at the project root (the
//! current folder or the nearest one above it that has the file):
//!
//! ```toml
//! [remote.lab]
//! url = "s3://lab-bucket/sumflow"
//! default = true
//!
//! [remote.nfs]
//! url = "/mnt/shared/sumflow-cache"
//! ```
//!
//! Credentials never appear here: each backend reads its own environment and credential chain
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// The project file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    #[serde(default)]
    remote: BTreeMap<String, RemoteEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteEntry {
    url: String,
    #[serde(default)]
    default: bool,
}

/// A remote, resolved: its name (the URL itself when given as one) and its URL, a local
/// folder's made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// What messages call it.
    pub name: String,
    /// `s3://…`, `gs://…`, `az://…`, `https://…` or an absolute folder path.
    pub url: String,
}

/// The nearest `sumflow.toml` at or above `dir`.
fn find_project_file(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join("sumflow.toml")).find(|f| f.is_file())
}

/// A URL as messages may show it: without a user, password or query (where tokens go).
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if url.contains("://") => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

/// A URL as given, or a folder path made absolute against `base`.
fn absolute(url: &str, base: &Path) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        base.join(url).to_string_lossy().into_owned()
    }
}

/// The remote to use: `chosen` (from `--remote` or `SUMFLOW_REMOTE`: a name in
/// `sumflow.toml`, a URL or a folder), else `sumflow.toml`'s default; `None` when neither.
pub fn resolve(chosen: Option<&str>, cwd: &Path) -> Result<Option<RemoteSpec>, Error> {
    let file = find_project_file(cwd);
    let project = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            toml::from_str::<ProjectFile>(&text)
                .map_err(|e| Error::Usage(format!("{}: {}", path.display(), e.to_string().trim_end())))?
        }
        None => ProjectFile::default(),
    };
    let root = file.as_deref().and_then(Path::parent).unwrap_or(cwd);
    if let Some(chosen) = chosen.filter(|c| !c.is_empty()) {
        if let Some(entry) = project.remote.get(chosen) {
            return Ok(Some(RemoteSpec { name: chosen.to_string(), url: absolute(&entry.url, root) }));
        }
        if chosen.contains("://") || chosen.contains('/') || chosen.starts_with('.') {
            let url = absolute(chosen, cwd);
            return Ok(Some(RemoteSpec { name: redacted(&url), url }));
        }
        let names: Vec<&str> = project.remote.keys().map(String::as_str).collect();
        return Err(Error::Usage(format!(
            "no remote `{chosen}` in {} (remotes: {}); give a URL (s3://…, gs://…, az://…, https://…) or a folder",
            file.as_deref().map_or("sumflow.toml (none found)".into(), |f| f.display().to_string()),
            if names.is_empty() { "none".into() } else { names.join(", ") }
        )));
    }
    let defaults: Vec<(&String, &RemoteEntry)> = project.remote.iter().filter(|(_, r)| r.default).collect();
    match defaults.as_slice() {
        [] => Ok(None),
        [(name, entry)] => Ok(Some(RemoteSpec { name: (*name).clone(), url: absolute(&entry.url, root) })),
        several => Err(Error::Usage(format!(
            "{}: {} remotes are marked `default = true` ({}); mark one",
            file.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
            several.len(),
            several.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_urls_folders_and_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("pipelines");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(
            dir.path().join("sumflow.toml"),
            "[remote.lab]\nurl = \"s3://bucket/sumflow\"\ndefault = true\n\n[remote.nfs]\nurl = \"shared-cache\"\n",
        )
        .unwrap();
        let lab = RemoteSpec { name: "lab".into(), url: "s3://bucket/sumflow".into() };
        assert_eq!(resolve(None, &sub).unwrap(), Some(lab.clone()));
        assert_eq!(resolve(Some("lab"), &sub).unwrap(), Some(lab));
        // A folder in sumflow.toml is relative to sumflow.toml; one given directly, to the cwd.
        let nfs = resolve(Some("nfs"), &sub).unwrap().unwrap();
        assert_eq!(nfs.url, dir.path().join("shared-cache").to_string_lossy());
        let direct = resolve(Some("./here"), &sub).unwrap().unwrap();
        assert_eq!(direct.url, sub.join("./here").to_string_lossy());
        // A URL's credentials never reach a message.
        let secret = resolve(Some("https://me:token@dav.example/cache?sig=abc"), &sub).unwrap().unwrap();
        assert_eq!(secret.name, "https://dav.example/cache");
        let err = resolve(Some("nope"), &sub).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "no remote `nope` in {} (remotes: lab, nfs); give a URL (s3://…, gs://…, az://…, https://…) or a folder",
                dir.path().join("sumflow.toml").display()
            )
        );
        let bare = tempfile::tempdir().unwrap();
        assert_eq!(resolve(None, bare.path()).unwrap(), None);
    }
}
