//! LoRA as PEFT does it: `y = W x + (alpha / r) · B A dropout(x)` on the targeted attention
//! projections, A initialized like `nn.Linear` (kaiming-uniform), B zero, so a fresh adapter
//! changes nothing. The adapters live in their own `VarStore` under PEFT's key names
//! (`base_model.model.<module>.lora_A.weight`), so that store is what the optimizer sees and
//! what `adapter_model.safetensors` holds; the base model stays frozen in another.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::StageError;
use crate::t5::attention::Attention;
use crate::t5::{weights, T5};

/// LoRA settings (PEFT's `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank.
    #[serde(default = "r32")]
    pub r: i64,
    /// Scale numerator: the update is scaled by alpha / r.
    #[serde(default = "a32")]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[serde(default = "d005")]
    pub dropout: f64,
    /// Projections to adapt, by module name (`q`, `k`, `v`, `o`).
    #[serde(default = "qv")]
    pub targets: Vec<String>,
}

fn r32() -> i64 {
    32
}
fn a32() -> f64 {
    32.0
}
fn d005() -> f64 {
    0.05
}
fn qv() -> Vec<String> {
    vec!["q".into(), "v".into()]
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings { r: r32(), alpha: a32(), dropout: d005(), targets: qv() }
    }
}

impl LoraSettings {
    /// Problems with the settings, by field.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.r < 1 {
            errors.push(("r".into(), "must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            errors.push(("dropout".into(), "must be in [0, 1)".into()));
        }
        if self.targets.is_empty() {
            errors.push(("targets".into(), "name at least one of q, k, v, o".into()));
        }
        for t in &self.targets {
            if !Attention::PROJECTIONS.contains(&t.as_str()) {
                errors.push(("targets".into(), format!("`{t}` is not an attention projection (q, k, v, o)")));
            }
        }
        errors
    }
}

/// One adapter: `scale · B A dropout(x)`.
#[derive(Debug)]
pub struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
}

impl Lora {
    /// The adapter's output for `x`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.dropout(self.dropout, train).matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }

    /// `scale · B A`, the change it makes to the base weight.
    pub fn delta(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }
}

/// Every attention module of the model with its PEFT module path.
fn attention_modules(model: &mut T5) -> Vec<(String, &mut Attention)> {
    let mut out = Vec::new();
    for (stack, blocks) in [("encoder", &mut model.encoder.blocks), ("decoder", &mut model.decoder.blocks)] {
        for (i, block) in blocks.iter_mut().enumerate() {
            let (self_attn, cross) = block.attentions_mut();
            out.push((format!("{stack}.block.{i}.layer.0.SelfAttention"), self_attn));
            if let Some(cross) = cross {
                out.push((format!("{stack}.block.{i}.layer.1.EncDecAttention"), cross));
            }
        }
    }
    out
}

/// Adds adapters to the targeted projections of `model`, their variables in `adapters`
/// under PEFT's names. Returns the number of adapted projections.
pub fn apply(model: &mut T5, adapters: &nn::Path, s: &LoraSettings) -> usize {
    let mut n = 0;
    let root = adapters / "base_model" / "model";
    for (module, attn) in attention_modules(model) {
        let mut path = root.clone();
        for part in module.split('.') {
            path = &path / part;
        }
        for target in &s.targets {
            let p = &path / target.as_str();
            let added = attn.add_lora(target, |in_f, out_f| {
                // PEFT: A ~ kaiming_uniform(a=√5) = U(±1/√in), B = 0.
                let bound = 1.0 / (in_f as f64).sqrt();
                let a = (&p / "lora_A").var("weight", &[s.r, in_f], nn::Init::Uniform { lo: -bound, up: bound });
                let b = (&p / "lora_B").var("weight", &[out_f, s.r], nn::Init::Const(0.0));
                Lora { a, b, scale: s.alpha / s.r as f64, dropout: s.dropout }
            });
            n += usize::from(added.is_some());
        }
    }
    n
}

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
        "use_rslora": false,
        "use_dora": false,
    })
}

/// Reads the settings back from `adapter_config.json`.
pub fn read_config(dir: &Path) -> Result<(LoraSettings, String), StageError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| StageError::data(path.display().to_string(), e.to_string()))?;
    let bad = |m: &str| StageError::data(path.display().to_string(), m.to_string());
    if v["peft_type"] != "LORA" {
        return Err(bad("not a LoRA adapter (peft_type is not LORA)"));
    }
    let targets: Vec<String> = match &v["target_modules"] {
        serde_json::Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        serde_json::Value::String(t) => vec![t.clone()],
        _ => return Err(bad("no target_modules")),
    };
    let s = LoraSettings {
        r: v["r"].as_i64().ok_or_else(|| bad("no r"))?,
        alpha: v["lora_alpha"].as_f64().ok_or_else(|| bad("no lora_alpha"))?,
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        targets,
    };
    Ok((s, v["base_model_name_or_path"].as_str().unwrap_or("").to_string()))
}

/// Loads an adapter folder (PEFT layout) onto `model`; returns the store holding it.
pub fn load_adapter(model: &mut T5, dir: &Path, device: tch::Device) -> Result<nn::VarStore, StageError> {
    let (settings, _) = read_config(dir)?;
    let vs = nn::VarStore::new(device);
    apply(model, &vs.root(), &settings);
    weights::load(&vs, &dir.join("adapter_model.safetensors"))?;
    Ok(vs)
}

/// Folds every adapter of `model` into its base weights (`W + scale · B A`), in place, and
/// removes it: for inference ([`crate::generate::open`]) and for [`merge`].
pub fn fold(model: &mut T5) {
    for (_, attn) in attention_modules(model) {
        attn.fold_lora();
    }
}

/// Writes a standalone model: `base` with the adapter in `adapter` folded into its weights.
pub fn merge(adapter: &Path, base: &Path, out: &Path) -> Result<(), StageError> {
    let mut m = crate::t5::loader::load(base, tch::Device::Cpu, tch::Kind::Float)?.with_adapter(adapter)?;
    m.fold_adapter();
    std::fs::create_dir_all(out).map_err(|e| StageError::io(out, e))?;
    weights::save(&weights::variables(&m.vs), &out.join("model.safetensors"))?;
    crate::t5::loader::copy_model_files(base, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::t5::model::tiny;
    use tch::Device;

    #[test]
    fn a_fresh_adapter_changes_nothing_and_trains_only_itself() {
        let (mut base, mut m) = tiny();
        let x = Tensor::from_slice(&[5i64, 6, 7, 1]).view([1, 4]);
        let mask = x.ones_like();
        let y = Tensor::from_slice(&[8i64, 9, 1]).view([1, 3]);
        let before = tch::no_grad(|| m.decode(&m.shift_right(&y), &m.encode(&x, &mask, false), &mask, None, false));
        base.freeze();
        let adapters = nn::VarStore::new(Device::Cpu);
        let n = apply(&mut m, &adapters.root(), &LoraSettings { dropout: 0.0, ..Default::default() });
        assert_eq!(n, 12, "2 encoder + 2 decoder self-attentions + 2 cross-attentions, q and v each");
        let after = tch::no_grad(|| m.decode(&m.shift_right(&y), &m.encode(&x, &mask, false), &mask, None, false));
        assert!(before.equal(&after), "B = 0: the adapter adds exactly nothing");
        let loss = m.loss(&x, &mask, &y, false);
        assert!(loss.requires_grad());
        loss.backward();
        let (a, b) = (adapters.variables(), base.variables());
        assert!(a.values().all(|t| t.grad().defined()));
        assert!(b.values().all(|t| !t.grad().defined()), "the base is frozen");
        assert_eq!(a.len(), 24);
    }
}
