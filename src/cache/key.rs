//! Cache keys. A stage's key is the blake3 of its recipe: kind, implementation version, the
//! typed params after defaults are filled in (so key order, formatting and spelled-out
//! defaults never change it), the digests of its inputs and of the local files it reads, and —
//! for stages that compute with libtorch — the runtime options that change numbers, when they
//! differ from the defaults.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sumflow_stages::RuntimeOptions;

use crate::pipeline::StageNode;

/// What a stage's key hashes, kept as JSON so `plan` can show what changed, field by field.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// `{kind, version, params, inputs, files}`, and `runtime` where it counts.
    pub json: Value,
    /// blake3 of `json` (hex).
    pub key: String,
}

/// The digest an input contributes: the producing stage's key and the output's name.
pub fn input_digest(producer_key: &str, output: &str) -> String {
    blake3::hash(format!("{producer_key}/{output}").as_bytes()).to_hex().to_string()
}

impl Recipe {
    /// The recipe of `node`, given its inputs' digests (by field), its files' digests and the
    /// process's runtime options.
    pub fn new(
        node: &StageNode,
        inputs: BTreeMap<String, String>,
        files: BTreeMap<String, String>,
        runtime: &RuntimeOptions,
    ) -> Recipe {
        let mut params = node.params.canonical.clone();
        if let Value::Object(map) = &mut params {
            // A reference field or a file path enters through its digest, not its spelling.
            // (A map of references, `add/<name>`, stays: it holds other settings too.)
            for field in inputs.keys().filter(|f| !f.contains('/')) {
                map.remove(field);
            }
            for field in files.keys() {
                map.remove(field.split('/').next().unwrap_or(field));
            }
        }
        let mut json = json!({
            "kind": node.stage.kind(),
            "version": node.stage.version(),
            "params": params,
            "inputs": inputs,
            "files": files,
        });
        // Left out when empty, so the keys of results made under the default options stay.
        let options = runtime.key();
        if node.stage.runtime_in_key() && !options.is_empty() {
            json["runtime"] = json!(options);
        }
        // serde_json's maps are sorted, so this byte string is canonical.
        let key = blake3::hash(&serde_json::to_vec(&json).expect("JSON values serialize")).to_hex().to_string();
        Recipe { json, key }
    }
}
