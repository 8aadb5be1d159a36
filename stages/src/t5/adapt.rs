//! Adding LoRA adapters to a model as PEFT does — on the targeted attention projections, A
//! initialized like `nn.Linear` (kaiming-uniform), B zero, so a fresh adapter changes nothing —
//! with their variables in their own `VarStore` under PEFT's key names
//! (`base_model.model.<module>.lora_A.weight`): that store is what the optimizer sees and what
//! `adapter_model.safetensors` holds, the base staying frozen in another. Also folding adapters
//! into the base weights, and counting parameters as the lab prints them.

use tch::nn;

use super::attention::Attention;
use super::config::T5Config;
use super::lora::{Lora, LoraSettings};
use super::model::T5;

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
                Lora { a, b, scale: s.scale(), dropout: s.dropout }
            });
            n += usize::from(added.is_some());
        }
    }
    n
}
/// Folds every adapter of `model` into its base weights (`W + scale · B A`), in place, and
/// removes it: for inference (the `generate` stage) and for `crate::adapter::merge`.
pub fn fold(model: &mut T5) {
    for (_, attn) in attention_modules(model) {
        attn.fold_lora();
    }
}

/// (trainable, total) parameters of a model with `config`, built on the CPU; with LoRA, only
/// the adapters train and the total counts them too (the lab's printout).
pub fn count_parameters(config: &T5Config, lora: Option<&LoraSettings>) -> (i64, i64) {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mut model = T5::new(&vs.root(), config.clone());
    let count = |vs: &nn::VarStore| vs.variables().values().map(|t| t.numel() as i64).sum::<i64>();
    match lora {
        None => (count(&vs), count(&vs)),
        Some(s) => {
            let adapters = nn::VarStore::new(tch::Device::Cpu);
            apply(&mut model, &adapters.root(), s);
            (count(&adapters), count(&vs) + count(&adapters))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::t5::model::tiny;
    use tch::{Device, Tensor};

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

    #[test]
    fn flan_t5_base_has_the_labs_parameter_count() {
        let base = T5Config::preset("flan-t5-base").unwrap();
        assert_eq!(count_parameters(&base, None), (247_577_856, 247_577_856));
        // The lab's LoRA printout: r 32 on q and v.
        assert_eq!(count_parameters(&base, Some(&LoraSettings::default())), (3_538_944, 251_116_800));
    }
}
