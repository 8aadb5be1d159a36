//! AdamW with decoupled weight decay, written out (the update of `torch.optim.AdamW`) so its
//! moments are plain tensors that checkpoints save and resumes restore exactly; and global
//! gradient-norm clipping as `torch.nn.utils.clip_grad_norm_` does it.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// AdamW over named parameters.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates taken so far.
    pub step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// An optimizer over `params` (PyTorch's defaults: betas 0.9, 0.999; eps 1e-8).
    pub fn new(params: BTreeMap<String, Tensor>, weight_decay: f64) -> Self {
        let params: Vec<(String, Tensor)> = params.into_iter().collect();
        let zeros = |p: &Tensor| p.zeros_like().to_kind(Kind::Float);
        let m = params.iter().map(|(_, p)| zeros(p)).collect();
        let v = params.iter().map(|(_, p)| zeros(p)).collect();
        AdamW { params, m, v, step: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    /// One update at learning rate `lr` from the parameters' gradients.
    pub fn update(&mut self, lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self.params.iter().zip(self.m.iter_mut().zip(self.v.iter_mut())) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                *m = &*m + (&g - &*m) * (1.0 - self.beta1);
                *v = &*v * self.beta2 + &g * &g * (1.0 - self.beta2);
                let denom = v.sqrt() / bc2.sqrt() + self.eps;
                let updated = p.to_kind(Kind::Float) * (1.0 - lr * self.weight_decay) - &*m / denom * (lr / bc1);
                p.shallow_clone().copy_(&updated.to_kind(p.kind()));
            }
        });
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global 2-norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
            if grads.is_empty() {
                return 0.0;
            }
            let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
            let total = Tensor::stack(&norms, 0).norm();
            if max_norm > 0.0 {
                let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_(&coef.to_kind(g.kind()));
                }
            }
            total.double_value(&[])
        })
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for ((name, _), (m, v)) in self.params.iter().zip(self.m.iter().zip(&self.v)) {
            out.insert(format!("m.{name}"), m.shallow_clone());
            out.insert(format!("v.{name}"), v.shallow_clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] after `step` updates.
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>, step: i64) -> Result<(), String> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let get = |k: String| state.get(&k).map(|t| t.to_device(p.device())).ok_or(format!("checkpoint lacks {k}"));
            self.m[i] = get(format!("m.{name}"))?;
            self.v[i] = get(format!("v.{name}"))?;
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then linear decay to 0 at `total` (transformers'
/// `get_linear_schedule_with_warmup`); `step` counts from 0.
pub fn linear_schedule(step: u64, warmup: u64, total: u64, peak: f64) -> f64 {
    if step < warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_schedule(0, 10, 110, 1.0), 0.0);
        assert_eq!(linear_schedule(5, 10, 110, 1.0), 0.5);
        assert_eq!(linear_schedule(10, 10, 110, 1.0), 1.0);
        assert_eq!(linear_schedule(60, 10, 110, 1.0), 0.5);
        assert_eq!(linear_schedule(110, 10, 110, 1.0), 0.0);
        assert_eq!(linear_schedule(0, 0, 4, 2.0), 2.0);
    }

    #[test]
    fn one_step_matches_the_adamw_formula() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new([("p".to_string(), p.shallow_clone())].into(), 0.1);
        (&p * &p).sum(Kind::Float).backward();
        opt.update(0.01);
        // Step 1: m̂ = g, v̂ = g², so p ← p(1 - lr·wd) - lr · g / (|g| + eps).
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01 * 2.0 / (2.0 + 1e-8), -2.0 * (1.0 - 0.001) + 0.01 * 4.0 / (4.0 + 1e-8)];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
