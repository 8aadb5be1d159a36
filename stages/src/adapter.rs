//! PEFT adapter folders: `adapter_config.json` (written for PEFT to read, read back with every
//! field that changes the weights checked), `adapter_model.safetensors` loaded onto a model, and
//! `merge` — a standalone model with an adapter folded in. The LoRA layer itself is
//! `crate::t5::lora`.

use std::path::Path;

use tch::nn;

use crate::error::StageError;
use crate::t5::adapt;
use crate::t5::lora::{LoraSettings, PROJECTIONS};
use crate::t5::loader::{self, Loaded};
use crate::t5::model::T5;
use crate::t5::weights;

/// PEFT's `adapter_config.json` for these settings.
pub fn adapter_config(s: &LoraSettings, base: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": base,
        "r": s.r,
        "lora_alpha": s.alpha,
        "lora_dropout": s.dropout,
        "target_modules": s.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": s.rslora,
        "use_dora": false,
    })
}

/// PEFT config fields that change what an adapter computes, with the value that means "off":
/// an adapter that sets one is refused by name rather than applied as a plain one.
const UNSUPPORTED: [(&str, &str); 10] = [
    ("use_dora", "DoRA"),
    ("fan_in_fan_out", "transposed (Conv1D) weights"),
    ("modules_to_save", "fully trained extra modules"),
    ("rank_pattern", "per-module ranks"),
    ("alpha_pattern", "per-module alphas"),
    ("layers_to_transform", "a subset of layers"),
    ("layers_pattern", "a subset of layers"),
    ("exclude_modules", "excluded modules"),
    ("lora_bias", "LoRA biases"),
    ("trainable_token_indices", "trained token embeddings"),
];

/// Whether a config value means "off": absent, null, false, empty.
fn off(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null | serde_json::Value::Bool(false) => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        serde_json::Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Reads the settings back from `adapter_config.json`, with every field that changes the
/// weights either honoured (`use_rslora`) or refused by name; returns them and the base
/// model's name.
pub fn read_config(dir: &Path) -> Result<(LoraSettings, String), StageError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| StageError::json(&path, e))?;
    let bad = |m: String| StageError::data(path.display().to_string(), m);
    if v["peft_type"] != "LORA" {
        return Err(bad("not a LoRA adapter (peft_type is not LORA)".into()));
    }
    for (field, what) in UNSUPPORTED {
        if !off(&v[field]) {
            return Err(bad(format!("`{field}` asks for {what}, which sumflow does not apply")));
        }
    }
    if !matches!(v["bias"].as_str(), None | Some("none")) {
        return Err(bad(format!("`bias` is {}: trained biases, which sumflow does not apply", v["bias"])));
    }
    let targets: Vec<String> = match &v["target_modules"] {
        serde_json::Value::Array(a) => {
            a.iter().map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad(format!("target_modules: {t}")))).collect::<Result<_, _>>()?
        }
        // PEFT reads a string as a regular expression over module names; only a plain name is
        // taken here.
        serde_json::Value::String(t) if PROJECTIONS.contains(&t.as_str()) => vec![t.clone()],
        serde_json::Value::String(t) => {
            return Err(bad(format!("target_modules `{t}` is a regular expression: list the projections (q, k, v, o)")))
        }
        _ => return Err(bad("no target_modules".into())),
    };
    let s = LoraSettings {
        r: v["r"].as_i64().ok_or_else(|| bad("no r".into()))?,
        alpha: v["lora_alpha"].as_f64().ok_or_else(|| bad("no lora_alpha".into()))?,
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        targets,
        rslora: v["use_rslora"].as_bool().unwrap_or(false),
    };
    if let Some(e) = s.check().into_iter().next() {
        let field = match e.field.as_str() {
            "targets" => "target_modules",
            "alpha" => "lora_alpha",
            "dropout" => "lora_dropout",
            other => other,
        };
        return Err(bad(format!("`{field}` {}", e.message)));
    }
    Ok((s, v["base_model_name_or_path"].as_str().unwrap_or("").to_string()))
}

/// Loads an adapter folder (PEFT layout) onto `model`; returns the store holding it. Every
/// tensor of `adapter_model.safetensors` must be one of the adapters the config describes.
pub fn load_adapter(model: &mut T5, dir: &Path, device: tch::Device) -> Result<nn::VarStore, StageError> {
    let (settings, _) = read_config(dir)?;
    if let Some(e) = settings.check_rank(&model.config) {
        return Err(StageError::data(dir.join("adapter_config.json").display().to_string(), format!("`{}`: {}", e.field, e.message)));
    }
    let vs = nn::VarStore::new(device);
    adapt::apply(model, &vs.root(), &settings);
    let path = dir.join("adapter_model.safetensors");
    let expected = vs.variables();
    let stored = weights::names(&path)?;
    if let Some(extra) = stored.iter().find(|n| !expected.contains_key(*n)) {
        return Err(StageError::data(
            path.display().to_string(),
            format!("holds `{extra}`, which the config's targets ({}) do not make", settings.targets.join(", ")),
        ));
    }
    weights::load(&vs, &path)?;
    Ok(vs)
}

/// Applies the adapter in `dir` to a loaded model (same device and precision as its weights).
pub fn apply_to(m: &mut Loaded, dir: &Path) -> Result<(), StageError> {
    let mut vs = load_adapter(&mut m.model, dir, m.vs.device())?;
    if let Some(kind) = m.vs.variables().values().next().map(tch::Tensor::kind) {
        if kind != tch::Kind::Float {
            vs.set_kind(kind);
        }
    }
    m.adapters = Some(vs);
    Ok(())
}

/// Writes a standalone model: `base` with the adapter in `adapter` folded into its weights.
pub fn merge(adapter: &Path, base: &Path, out: &Path) -> Result<(), StageError> {
    let mut m = loader::load(base, tch::Device::Cpu, tch::Kind::Float)?;
    apply_to(&mut m, adapter)?;
    m.fold_adapter();
    std::fs::create_dir_all(out).map_err(|e| StageError::io(out, e))?;
    weights::save(&weights::variables(&m.vs), &out.join("model.safetensors"))?;
    loader::copy_model_files(base, out)
}
