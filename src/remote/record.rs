//! What a remote's action-cache record may say. A record comes from outside the machine: before
//! anything of it is used, its key must be the one asked for and the hash of the recipe it
//! carries (so the params a lock file copies from it are the ones the key names), its outputs
//! the ones the stage declares, every digest a digest, every file's size given, and every file
//! path inside its artifact (`config.json`, `plots/loss.png`, never `../x` or `/etc/x`).

use crate::cache::Entry;

/// Whether `s` is a blake3 digest as sumflow writes them (64 lowercase hex digits).
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `rel` is a relative path that stays inside the folder it is joined to.
pub fn is_safe_path(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\\')
        && !rel.contains('\0')
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(':'))
}

/// The key `entry`'s recipe hashes to: the blake3 of its canonical JSON (sorted maps), as
/// the cache computes keys.
pub fn recipe_key(entry: &Entry) -> String {
    blake3::hash(&serde_json::to_vec(&entry.recipe).expect("JSON values serialize")).to_hex().to_string()
}

/// Checks a record fetched for `key` (of a stage declaring the outputs `expected`, where known);
/// the error says what is wrong with it.
pub fn check(entry: &Entry, key: &str, expected: Option<&[String]>) -> Result<(), String> {
    if entry.key != key {
        return Err(format!("it is the record of key {}, not {key}", entry.key));
    }
    if recipe_key(entry) != key {
        return Err("its recipe does not hash to its key".into());
    }
    if let Some(expected) = expected {
        let names: Vec<&String> = entry.outputs.keys().collect();
        let mut want: Vec<&String> = expected.iter().collect();
        want.sort();
        if names != want {
            return Err(format!(
                "its outputs ({}) are not the stage's ({})",
                names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
                want.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (name, out) in &entry.outputs {
        if !is_digest(&out.digest) {
            return Err(format!("output `{name}`: `{}` is not a digest", out.digest));
        }
        for (rel, digest) in &out.files {
            if !is_safe_path(rel) {
                return Err(format!("output `{name}`: file path `{rel}` escapes its artifact"));
            }
            if !is_digest(digest) {
                return Err(format!("output `{name}`: file `{rel}`: `{digest}` is not a digest"));
            }
        }
        if out.sizes.len() != out.files.len() || out.sizes.keys().any(|rel| !out.files.contains_key(rel)) {
            return Err(format!("output `{name}`: its file sizes do not match its files"));
        }
        if out.sizes.values().sum::<u64>() != out.bytes {
            return Err(format!("output `{name}`: its file sizes do not add up to its size"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::OutputRecord;
    use sumflow_stages::ArtifactKind;

    fn entry() -> Entry {
        let recipe = serde_json::json!({"kind": "load", "params": {"every": 100}});
        let key = blake3::hash(&serde_json::to_vec(&recipe).unwrap()).to_hex().to_string();
        let digest = "ab".repeat(32);
        let out = OutputRecord {
            digest: digest.clone(),
            kind: ArtifactKind::Table,
            bytes: 7,
            files: [("table.parquet".to_string(), digest)].into(),
            sizes: [("table.parquet".to_string(), 7)].into(),
        };
        Entry {
            key,
            pipeline: "p".into(),
            stage: "s".into(),
            kind: "load".into(),
            recipe,
            outputs: [("all".to_string(), out)].into(),
            created: String::new(),
            duration_s: 0.0,
            stats: Default::default(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn a_record_must_be_what_its_key_names() {
        let e = entry();
        assert_eq!(check(&e, &e.key, Some(&["all".to_string()])), Ok(()));
        let mut other = e.clone();
        other.recipe["params"]["every"] = 50.into();
        assert_eq!(check(&other, &e.key, None), Err("its recipe does not hash to its key".into()));
        assert_eq!(
            check(&e, &e.key, Some(&["output".to_string()])),
            Err("its outputs (all) are not the stage's (output)".into())
        );
        let mut no_sizes = e.clone();
        no_sizes.outputs.get_mut("all").unwrap().sizes.clear();
        assert_eq!(check(&no_sizes, &e.key, None), Err("output `all`: its file sizes do not match its files".into()));
    }

    #[test]
    fn paths_that_escape_are_refused() {
        for ok in ["config.json", "plots/loss.png", "a.b/c..d"] {
            assert!(is_safe_path(ok), "{ok}");
        }
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "C:x", "a/.."] {
            assert!(!is_safe_path(bad), "{bad}");
        }
        assert!(is_digest(&"ab".repeat(32)));
        assert!(!is_digest(&"AB".repeat(32)) && !is_digest("ab") && !is_digest(&"../".repeat(21)));
    }
}
