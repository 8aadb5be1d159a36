//! AdamW with decoupled weight decay, written out (the update of `torch.optim.AdamW`) so its
//! moments are plain tensors that checkpoints save and resumes restore exactly; and global
//! gradient-norm clipping as `torch.nn.utils.clip_grad_norm_` does it.
//!
//! The update is "multi-tensor": the trainable parameters are views into one flat buffer, and
//! so are their gradients (backward adds into them in place), so zeroing, clipping and the
//! update are about fifteen whole-buffer operations instead of a dozen per parameter
//! (flan-t5-base has 282 parameter tensors: ≈ 3,400 kernel launches per step on a GPU
//! otherwise).
//!
//! With bf16 weights ([`AdamW::new`] with `Kind::BFloat16`) the model computes with a bf16 copy
//! of fp32 master weights: its parameters view a bf16 flat buffer, backward writes bf16
//! gradients, and the update reads them as fp32, updates the masters and refreshes the copy —
//! two more whole-buffer casts per step instead of autocast's casts at every operation.
//!
//! Nothing in a step waits for the device: the learning rate and bias corrections reach the
//! kernels as device tensors, and a step whose loss or gradient is not finite is skipped *on
//! the device* (the weights and moments stay as they were). The caller reads the loss once the
//! step is issued and calls [`AdamW::skipped`] when it was not finite. The same step can then be
//! captured and replayed as a CUDA graph.
//!
//! On several ranks the optimizer's state is sharded (ZeRO stage 1): the flat buffers are padded
//! to a multiple of the rank count and cut into equal slices, rank `r` keeps the moments (and,
//! with bf16 weights, the fp32 gradient) of slice `r` only, and a step is: reduce-scatter the
//! gradients (each rank receives the sum of its slice), the global norm from the slices' sums
//! of squares, the update of the rank's slice of the masters, and an all-gather of the updated
//! slices into every rank's weights. Each rank holds 1/world of the moments; the update is the
//! same arithmetic, element by element, as one process's.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::error::StageError;
use crate::torch::dist::Group;

/// Which slice of the flat buffers a process updates: rank `rank` of `world` equal slices (the
/// whole buffer for one process).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Part {
    pub rank: usize,
    pub world: usize,
}

impl Part {
    /// One process: the whole buffer.
    pub const WHOLE: Part = Part { rank: 0, world: 1 };
}

/// AdamW over named parameters.
pub struct AdamW {
    /// Name, shape and offset in the flat buffers of each parameter.
    layout: Vec<(String, Vec<i64>, i64)>,
    /// The parameters as the model holds them.
    params: Vec<Tensor>,
    /// The fp32 weights: the parameters' own storage, or the masters of their bf16 copy.
    flat: Tensor,
    /// With bf16 weights: the copy the parameters view, refreshed after each update.
    copy: Option<Tensor>,
    /// The gradients, in the parameters' precision: each parameter's `.grad` is a view into it.
    grad: Tensor,
    /// With bf16 weights: this process's slice of the gradients as fp32, once per step, for
    /// clipping and the update.
    grad32: Option<(Tensor, bool)>,
    /// The slice this process updates, and its length (the flat buffers are `world` of them,
    /// padded with zeros that no parameter views).
    part: Part,
    len: i64,
    /// The moments of this process's slice.
    m: Tensor,
    v: Tensor,
    /// The global gradient norm of the current step, once clipping computed it.
    norm: Option<Tensor>,
    /// Per-step scalars on the device, filled before each update: lr · weight decay,
    /// -lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t).
    lr_decay: Tensor,
    step_size: Tensor,
    v_correction: Tensor,
    /// Updates taken so far.
    pub step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// An optimizer over `params` (PyTorch's defaults: betas 0.9, 0.999; eps 1e-8), which must
    /// be fp32 and on one device. They are moved into a flat buffer they then view, and their
    /// gradients into another. `compute`: `Kind::Float`, or `Kind::BFloat16` for bf16 weights —
    /// the parameters become bf16 copies of the fp32 values, which stay here as masters (until
    /// [`AdamW::finish`]). `part`: the slice of the state this process keeps and updates
    /// ([`Part::WHOLE`] for one process).
    pub fn new(params: BTreeMap<String, Tensor>, weight_decay: f64, compute: Kind, part: Part) -> Self {
        assert!(matches!(compute, Kind::Float | Kind::BFloat16), "AdamW: fp32 or bf16 weights, not {compute:?}");
        assert!(part.rank < part.world, "{part:?}");
        let device = params.values().next().map_or(Device::Cpu, |p| p.device());
        let total: i64 = params.values().map(|p| p.numel() as i64).sum();
        let world = part.world as i64;
        let len = (total + world - 1) / world;
        let zeros = |kind, n| Tensor::zeros([n], (kind, device));
        let flat = zeros(Kind::Float, len * world);
        let mut layout = Vec::new();
        let mut views = Vec::new();
        let mut offset = 0;
        tch::no_grad(|| {
            for (name, p) in params {
                assert_eq!((p.kind(), p.device()), (Kind::Float, device), "`{name}`: fp32, on one device");
                let n = p.numel() as i64;
                flat.narrow(0, offset, n).copy_(&p.reshape([-1]));
                layout.push((name, p.size(), offset));
                views.push(p);
                offset += n;
            }
        });
        let copy = (compute == Kind::BFloat16).then(|| tch::no_grad(|| flat.to_kind(compute)));
        tch::no_grad(|| set_views(&views, copy.as_ref().unwrap_or(&flat), &layout));
        let grad = zeros(compute, len * world);
        attach_gradients(&views, &grad, &layout);
        let grad32 = copy.is_some().then(|| (zeros(Kind::Float, len), false));
        let scalar = || Tensor::zeros([], (Kind::Float, device));
        AdamW {
            layout,
            params: views,
            flat,
            copy,
            grad,
            grad32,
            part,
            len,
            m: zeros(Kind::Float, len),
            v: zeros(Kind::Float, len),
            norm: None,
            lr_decay: scalar(),
            step_size: scalar(),
            v_correction: scalar(),
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// The fp32 weights by name (views): the parameters themselves, or their masters.
    pub fn masters(&self) -> BTreeMap<String, Tensor> {
        views(&self.flat, &self.layout).map(|(name, t)| (name.clone(), t)).collect()
    }

    /// After the masters were written (a resumed checkpoint): the parameters' bf16 copy
    /// follows them.
    pub fn masters_changed(&mut self) {
        if let Some(copy) = &self.copy {
            tch::no_grad(|| copy.shallow_clone().copy_(&self.flat));
        }
    }

    /// Training is over: the parameters are the fp32 weights again (with bf16 weights, they
    /// leave their copy for the masters), as a model loaded in fp32 holds them.
    pub fn finish(self) {
        if self.copy.is_some() {
            tch::no_grad(|| set_views(&self.params, &self.flat, &self.layout));
        }
    }

    /// This process's slice of `flat` (one of the flat buffers): all of it for one process.
    fn mine(&self, flat: &Tensor) -> Tensor {
        flat.narrow(0, self.part.rank as i64 * self.len, self.len)
    }

    fn sharded(&self) -> bool {
        self.part.world > 1
    }

    /// This process's slice of the gradients as fp32: the buffer backward wrote (on several
    /// ranks: summed by [`AdamW::reduce_gradients`]), or (bf16 weights) its fp32 copy, made once
    /// per step.
    fn gradient(&mut self) -> Tensor {
        let mine = self.mine(&self.grad);
        match &mut self.grad32 {
            None => mine,
            Some((g32, fresh)) => {
                if !*fresh {
                    tch::no_grad(|| g32.copy_(&mine));
                    *fresh = true;
                }
                g32.shallow_clone()
            }
        }
    }

    /// Bytes of state this process keeps for the update: the moments of its slice (and, with
    /// bf16 weights, the slice's fp32 gradient) — 1/world of one process's.
    pub fn state_bytes(&self) -> usize {
        let fp32 = self.m.numel() + self.v.numel() + self.grad32.as_ref().map_or(0, |(g, _)| g.numel());
        fp32 * 4
    }

    /// One update at learning rate `lr` from the parameters' gradients: [`AdamW::prepare`],
    /// then [`AdamW::apply`].
    #[cfg(test)]
    pub fn update(&mut self, lr: f64, loss: &Tensor) {
        self.prepare(lr);
        self.apply(loss);
    }

    /// Counts the next update (step `self.step + 1`) and sets its scalars on the device: the
    /// part of an update that happens outside a captured step.
    pub fn prepare(&mut self, lr: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            let _ = self.lr_decay.fill_(lr * self.weight_decay);
            let _ = self.step_size.fill_(-lr / bc1);
            let _ = self.v_correction.fill_(1.0 / bc2.sqrt());
        });
    }

    /// The update [`AdamW::prepare`] set up, all on the device, of this process's slice: it does
    /// nothing when `loss` or the gradient norm is not finite (call [`AdamW::skipped`] once the
    /// loss is read). On several ranks, [`AdamW::gather_weights`] follows.
    pub fn apply(&mut self, loss: &Tensor) {
        let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
        let g = self.gradient();
        assert!(!self.sharded() || self.norm.is_some(), "sharded state: the global norm comes first (clip_grad_norm_over)");
        let w = self.mine(&self.flat);
        let norm = self.norm.take().unwrap_or_else(|| tch::no_grad(|| g.norm()));
        // In place, as `torch.optim.AdamW`'s multi-tensor path does it, with the step's scalars
        // (and whether it counts) as device tensors.
        tch::no_grad(|| {
            let ok = loss.isfinite().logical_and(&norm.isfinite());
            let _ = g.shallow_clone().masked_fill_(&ok.logical_not(), 0.0);
            let ok = ok.to_kind(Kind::Float);
            let _ = self.m.lerp_tensor_(&g, &(&ok * (1.0 - beta1)));
            let _ = self.v.g_mul_(&(&ok * -(1.0 - beta2) + 1.0));
            let _ = self.v.addcmul_(&(&g * (1.0 - beta2)), &g);
            let denom = self.v.sqrt().g_mul_(&self.v_correction).g_add_scalar_(eps);
            let _ = w.shallow_clone().g_mul_(&(&ok * &self.lr_decay).neg().g_add_scalar_(1.0));
            let _ = w.shallow_clone().addcdiv_(&(&self.m * (&ok * &self.step_size)), &denom);
        });
        if !self.sharded() {
            self.masters_changed();
        }
    }

    /// The last [`AdamW::update`] was skipped on the device (its loss was not finite): it does
    /// not count.
    pub fn skipped(&mut self) {
        self.step -= 1;
    }

    /// Makes every rank's weights rank 0's (the optimizer's state is fresh, or resumed from the
    /// same checkpoint, on every rank).
    pub fn broadcast_weights(&mut self, group: &Group) -> Result<(), StageError> {
        group.broadcast(&mut self.flat, 0)?;
        if let Some(copy) = &self.copy {
            tch::no_grad(|| copy.shallow_clone().copy_(&self.flat));
        }
        Ok(())
    }

    /// Sums the gradients over the ranks into this rank's slice (the rest of the buffer is left
    /// as backward wrote it): one reduce-scatter over the flat buffer.
    pub fn reduce_gradients(&mut self, group: &Group) -> Result<(), StageError> {
        let mut mine = self.mine(&self.grad);
        group.sum_scattered(&mut mine, &mut self.grad.shallow_clone())?;
        if let Some((_, fresh)) = &mut self.grad32 {
            *fresh = false;
        }
        Ok(())
    }

    /// After [`AdamW::apply`] on several ranks: every rank's updated slice into every rank's
    /// weights (one all-gather), and the bf16 copy refreshed.
    pub fn gather_weights(&mut self, group: &Group) -> Result<(), StageError> {
        let mut mine = self.mine(&self.flat);
        group.gather_into(&mut self.flat.shallow_clone(), &mut mine)?;
        self.masters_changed();
        Ok(())
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        let _ = tch::no_grad(|| self.grad.zero_());
        if let Some((_, fresh)) = &mut self.grad32 {
            *fresh = false;
        }
        self.norm = None;
    }

    /// Scales gradients so their global 2-norm is at most `max_norm` (0: no clipping); returns
    /// the norm before, as a tensor on the parameters' device (reading it waits for the device:
    /// the training step does not).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        assert!(!self.sharded(), "sharded state: clip_grad_norm_over");
        let g = self.gradient();
        let total = tch::no_grad(|| g.norm());
        self.clip(g, total, max_norm)
    }

    /// [`AdamW::clip_grad_norm`] on several ranks, each holding a slice of the summed gradients:
    /// the global norm from the slices' sums of squares (one small all-reduce).
    pub fn clip_grad_norm_over(&mut self, max_norm: f64, group: &Group) -> Result<Tensor, StageError> {
        let g = self.gradient();
        let mut squares = tch::no_grad(|| g.square().sum(Kind::Float));
        group.sum(&mut squares)?;
        let total = tch::no_grad(|| squares.sqrt());
        Ok(self.clip(g, total, max_norm))
    }

    /// Scales `g` by `max_norm / total` when that is below 1 (`max_norm` 0: never); `total`.
    fn clip(&mut self, g: Tensor, total: Tensor, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            if max_norm > 0.0 {
                let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
                let _ = g.shallow_clone().g_mul_(&coef);
            }
        });
        self.norm = Some(total.shallow_clone());
        total
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint. With sharded state they
    /// are gathered on rank 0 (a collective that every rank of `group` calls); the other ranks,
    /// which write no checkpoint, get an empty map and hold no more than their slice.
    pub fn state(&self, group: Option<&Group>) -> Result<BTreeMap<String, Tensor>, StageError> {
        let whole = |moment: &Tensor| -> Result<Option<Tensor>, StageError> {
            if !self.sharded() {
                return Ok(Some(moment.shallow_clone()));
            }
            let group = group.expect("sharded state is gathered over its group");
            let mut all = (self.part.rank == 0)
                .then(|| Tensor::zeros([self.len * self.part.world as i64], (Kind::Float, moment.device())));
            group.gather_to_first(all.as_mut(), &mut moment.shallow_clone())?;
            Ok(all)
        };
        let (Some(m), Some(v)) = (whole(&self.m)?, whole(&self.v)?) else { return Ok(BTreeMap::new()) };
        let m = views(&m, &self.layout).map(|(name, t)| (format!("m.{name}"), t));
        let v = views(&v, &self.layout).map(|(name, t)| (format!("v.{name}"), t));
        Ok(m.chain(v).collect())
    }

    /// Restores moments saved by [`AdamW::state`] after `step` updates (this process's slice of
    /// them).
    pub fn restore(&mut self, state: &BTreeMap<String, Tensor>, step: i64) -> Result<(), StageError> {
        let padded = self.len * self.part.world as i64;
        let zeros = || Tensor::zeros([padded], (Kind::Float, self.m.device()));
        let (m, v) = (zeros(), zeros());
        tch::no_grad(|| {
            let wanted = views(&m, &self.layout)
                .map(|(name, t)| (format!("m.{name}"), t))
                .chain(views(&v, &self.layout).map(|(name, t)| (format!("v.{name}"), t)));
            for (key, mut view) in wanted {
                let saved = state.get(&key).ok_or_else(|| StageError::Internal(format!("checkpoint lacks {key}")))?;
                if saved.size() != view.size() {
                    return Err(StageError::Internal(format!(
                        "{key} has shape {:?}, the parameter {:?}",
                        saved.size(),
                        view.size()
                    )));
                }
                view.copy_(saved);
            }
            self.m.shallow_clone().copy_(&self.mine(&m));
            self.v.shallow_clone().copy_(&self.mine(&v));
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Each parameter's view into a flat buffer laid out as `layout`, with its name.
fn views<'a>(flat: &'a Tensor, layout: &'a [(String, Vec<i64>, i64)]) -> impl Iterator<Item = (&'a String, Tensor)> {
    layout.iter().map(move |(name, shape, offset)| {
        let n: i64 = shape.iter().product();
        (name, flat.narrow(0, *offset, n).view(shape.as_slice()))
    })
}

/// Makes each parameter a view into `flat` (its values copied there already).
fn set_views(params: &[Tensor], flat: &Tensor, layout: &[(String, Vec<i64>, i64)]) {
    for (p, (_, view)) in params.iter().zip(views(flat, layout)) {
        p.shallow_clone().set_data(&view);
    }
}

/// Makes each parameter's gradient a view into `grad`, so backward accumulates into the flat
/// buffer in place (libtorch adds into a defined gradient outside create-graph mode). tch binds
/// no setter for `.grad`: one backward of a zero creates the gradients, then each is re-pointed
/// at its view, as the parameters were.
fn attach_gradients(params: &[Tensor], grad: &Tensor, layout: &[(String, Vec<i64>, i64)]) {
    if params.is_empty() {
        return;
    }
    let sums: Vec<Tensor> = params.iter().map(|p| p.sum(Kind::Float)).collect();
    tch::with_grad(|| (Tensor::stack(&sums, 0).sum(Kind::Float) * 0.0).backward());
    tch::no_grad(|| {
        for (p, (name, view)) in params.iter().zip(views(grad, layout)) {
            let mut g = p.grad();
            assert!(g.defined(), "`{name}` is trainable and gets a gradient");
            g.set_data(&view);
        }
        let _ = grad.shallow_clone().zero_();
    });
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

    /// The flat update equals libtorch's own (per-tensor) AdamW and clipping, step after step,
    /// and the model's variables see it (they are views into the flat buffer).
    #[test]
    fn the_flat_update_matches_libtorchs_adamw_over_several_tensors() {
        use tch::nn::{self, OptimizerConfig};
        // Fixed values, not the global RNG: tests run on parallel threads.
        let a0 = Tensor::from_slice(&[0.3f32, -1.2, 0.8, 2.0, -0.5, 1.1]).view([2, 3]);
        let b0 = Tensor::from_slice(&[0.1f32, -0.7, 1.5, -2.2]);
        let make = || {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let a = vs.root().var_copy("a", &a0);
            let b = vs.root().var_copy("b", &b0);
            (vs, a, b)
        };
        let loss = |a: &Tensor, b: &Tensor| (a * a).sum(Kind::Float) * 3.0 + b.sin().sum(Kind::Float);
        let (ours_vs, a1, b1) = make();
        let (theirs_vs, a2, b2) = make();
        let mut ours = AdamW::new(ours_vs.variables().into_iter().collect(), 0.05, Kind::Float, Part::WHOLE);
        let mut theirs = nn::AdamW { wd: 0.05, ..Default::default() }.build(&theirs_vs, 0.1).unwrap();
        for step in 0..4 {
            let lr = 0.1 / (step + 1) as f64;
            let l = loss(&a1, &b1);
            l.backward();
            let norm = ours.clip_grad_norm(0.5).double_value(&[]);
            ours.update(lr, &l);
            ours.zero_grad();
            theirs.set_lr(lr);
            theirs.zero_grad();
            loss(&a2, &b2).backward();
            theirs.clip_grad_norm(0.5);
            theirs.step();
            assert!(norm > 0.5, "clipping is exercised");
            for (x, y) in [(&a1, &a2), (&b1, &b2)] {
                let d = (x - y).abs().max().double_value(&[]);
                assert!(d < 1e-6, "step {step}: {d}");
            }
        }
        // The variable store holds the updated values, and the moments round-trip.
        let stored = ours_vs.variables()["a"].shallow_clone();
        assert_eq!((stored - &a1).abs().max().double_value(&[]), 0.0);
        let state = ours.state(None).unwrap();
        let mut again = AdamW::new(ours_vs.variables().into_iter().collect(), 0.05, Kind::Float, Part::WHOLE);
        again.restore(&state, ours.step).unwrap();
        for (k, t) in again.state(None).unwrap() {
            assert_eq!((t - &state[&k]).abs().max().double_value(&[]), 0.0, "{k}");
        }
    }

    #[test]
    fn one_step_matches_the_adamw_formula() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new([("p".to_string(), p.shallow_clone())].into(), 0.1, Kind::Float, Part::WHOLE);
        let loss = (&p * &p).sum(Kind::Float);
        loss.backward();
        opt.update(0.01, &loss);
        // Step 1: m̂ = g, v̂ = g², so p ← p(1 - lr·wd) - lr · g / (|g| + eps).
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01 * 2.0 / (2.0 + 1e-8), -2.0 * (1.0 - 0.001) + 0.01 * 4.0 / (4.0 + 1e-8)];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// A step whose loss is not finite changes nothing on the device — weights, moments — and,
    /// once reported skipped, does not count; the next finite step is the first.
    #[test]
    fn a_non_finite_step_is_skipped_on_the_device() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new([("p".to_string(), p.shallow_clone())].into(), 0.1, Kind::Float, Part::WHOLE);
        let before = p.detach().copy();
        // A NaN loss with NaN gradients (and clipping on, whose coefficient is NaN too).
        let loss = (&p * f64::NAN).sum(Kind::Float);
        loss.backward();
        let _ = opt.clip_grad_norm(1.0);
        opt.update(0.01, &loss);
        opt.skipped();
        opt.zero_grad();
        assert_eq!((p.detach() - &before).abs().max().double_value(&[]), 0.0, "weights unchanged");
        for (k, t) in opt.state(None).unwrap() {
            assert_eq!(t.abs().max().double_value(&[]), 0.0, "{k} unchanged");
        }
        assert_eq!(opt.step, 0);
        // Then an ordinary step is step 1 of the formula.
        let loss = (&p * &p).sum(Kind::Float);
        loss.backward();
        opt.update(0.01, &loss);
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!((got[0] as f64 - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6, "{got:?}");
    }

    /// bf16 weights: the parameters are bf16 copies of fp32 masters; the update is the fp32
    /// one on the masters (from bf16 gradients), so a change below bf16's resolution is kept
    /// there while the copy rounds it away; [`AdamW::finish`] hands back the fp32 values.
    #[test]
    fn bf16_weights_update_fp32_masters() {
        let start = [1.0f32, -2.0, 0.3];
        let p = Tensor::from_slice(&start).set_requires_grad(true);
        let mut opt = AdamW::new([("p".to_string(), p.shallow_clone())].into(), 0.0, Kind::BFloat16, Part::WHOLE);
        assert_eq!(p.kind(), Kind::BFloat16);
        let theirs = Tensor::from_slice(&start).set_requires_grad(true);
        let mut fp32 = AdamW::new([("p".to_string(), theirs.shallow_clone())].into(), 0.0, Kind::Float, Part::WHOLE);
        for step in 0..3 {
            for (opt, p) in [(&mut opt, &p), (&mut fp32, &theirs)] {
                let loss = (p * p).sum(Kind::Float);
                loss.backward();
                let _ = opt.clip_grad_norm(1.0);
                opt.update(1e-4, &loss);
                opt.zero_grad();
            }
            let masters = opt.masters()["p"].shallow_clone();
            assert_eq!(masters.kind(), Kind::Float);
            // The same update (bf16 gradients of ±2, ±4, ±0.6 are exact; AdamW's first steps
            // move by lr whatever the gradient's size).
            let d = (&masters - &theirs.detach()).abs().max().double_value(&[]);
            assert!(d < 1e-7, "step {step}: masters {masters:?} vs fp32 {theirs:?}");
            // 3 × 1e-4 is below bf16's step at 1.0 (2^-7): the copy still reads 1.0 and -2.0.
            let copy: Vec<f32> = Vec::try_from(&p.detach().to_kind(Kind::Float)).unwrap();
            assert_eq!(&copy[..2], &[1.0, -2.0], "step {step}");
        }
        let moved: Vec<f32> = Vec::try_from(&opt.masters()["p"]).unwrap();
        assert!(moved[0] < 1.0 && moved[1] > -2.0, "the masters moved: {moved:?}");
        opt.finish();
        assert_eq!(p.kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(&p.detach()).unwrap(), moved);
    }

    /// Sharded state (ZeRO stage 1) on two ranks — two threads meeting over Gloo — takes one
    /// process's steps: each rank's loss is half of the whole one, the ranks hold half the
    /// moments each (7 values: one slice is padded), and the moments gathered on rank 0 are the
    /// whole process's; restored from those into fresh sharded optimizers, each rank takes its
    /// slice (gathered again: exactly them).
    #[test]
    fn sharded_state_on_two_ranks_takes_one_process_s_steps() {
        let a0 = [0.3f32, -1.2, 0.8, 2.0, -0.5, 1.1];
        let b0 = [0.1f32];
        let loss = |a: &Tensor, b: &Tensor, rank: Option<usize>| {
            let parts = [(a * a).sum(Kind::Float) * 3.0, (b.sin() * a.sum(Kind::Float)).sum(Kind::Float)];
            match rank {
                Some(r) => parts[r].shallow_clone(),
                None => &parts[0] + &parts[1],
            }
        };
        let make = move |part: Part| {
            let a = Tensor::from_slice(&a0).view([2, 3]).set_requires_grad(true);
            let b = Tensor::from_slice(&b0).set_requires_grad(true);
            let params = [("a".to_string(), a.shallow_clone()), ("b".to_string(), b.shallow_clone())];
            (AdamW::new(params.into(), 0.05, Kind::Float, part), a, b)
        };
        let steps = 3;
        let (mut whole, a, b) = make(Part::WHOLE);
        for step in 0..steps {
            let l = loss(&a, &b, None);
            l.backward();
            let _ = whole.clip_grad_norm(0.5);
            whole.update(0.1 / (step + 1) as f64, &l);
            whole.zero_grad();
        }
        let expected = whole.state(None).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                let checkpoint: BTreeMap<String, Tensor> = expected.iter().map(|(k, t)| (k.clone(), t.copy())).collect();
                std::thread::spawn(move || {
                    let host = "127.0.0.1".to_string();
                    let (prefix, key) = (String::new(), String::new());
                    let ranks = crate::runtime::Ranks { rank, world: 2, host, port, timeout_s: 30, prefix, key };
                    let group = Group::join(&ranks).unwrap();
                    let (mut opt, a, b) = make(Part { rank, world: 2 });
                    for step in 0..steps {
                        let mut l = loss(&a, &b, Some(rank)).detach();
                        loss(&a, &b, Some(rank)).backward();
                        opt.prepare(0.1 / (step + 1) as f64);
                        opt.reduce_gradients(&group).unwrap();
                        group.sum(&mut l).unwrap();
                        let _ = opt.clip_grad_norm_over(0.5, &group).unwrap();
                        opt.apply(&l);
                        opt.gather_weights(&group).unwrap();
                        opt.zero_grad();
                    }
                    let state = opt.state(Some(&group)).unwrap();
                    let (mut again, _, _) = make(Part { rank, world: 2 });
                    again.restore(&checkpoint, opt.step).unwrap();
                    let restored = again.state(Some(&group)).unwrap();
                    let flat = |t: &Tensor| Vec::<f32>::try_from(&t.detach().reshape([-1])).unwrap();
                    (rank, flat(&a), flat(&b), opt.state_bytes(), state, restored)
                })
            })
            .collect();
        for rank in ranks {
            let (rank, ra, rb, bytes, state, restored) = rank.join().unwrap();
            for (x, y) in ra.iter().chain(&rb).zip(Vec::<f32>::try_from(&a.detach().reshape([-1])).unwrap().iter().chain(&Vec::<f32>::try_from(&b.detach()).unwrap())) {
                assert!((x - y).abs() < 1e-6, "{ra:?} {rb:?} vs {a:?} {b:?}");
            }
            assert_eq!(bytes, 2 * 4 * 4, "two moments of a 4-value slice");
            assert_eq!(whole.state_bytes(), 2 * 7 * 4);
            if rank != 0 {
                assert!(state.is_empty() && restored.is_empty(), "only rank 0 holds the whole moments");
                continue;
            }
            for (k, t) in &expected {
                assert!((&state[k] - t).abs().max().double_value(&[]) < 1e-7, "{k}");
                assert_eq!((&restored[k] - t).abs().max().double_value(&[]), 0.0, "{k}");
            }
        }
    }

    /// Backward writes straight into the flat gradient buffer: each parameter's `.grad` is a view
    /// of it, across steps and zeroing.
    #[test]
    fn gradients_accumulate_in_the_flat_buffer() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
        let mut opt = AdamW::new(
            [("a".to_string(), a.shallow_clone()), ("b".to_string(), b.shallow_clone())].into(),
            0.0,
            Kind::Float,
            Part::WHOLE,
        );
        for _ in 0..2 {
            opt.zero_grad();
            ((&a * &a).sum(Kind::Float) + &b * 3.0).sum(Kind::Float).backward();
            let flat: Vec<f32> = Vec::try_from(&opt.grad).unwrap();
            assert_eq!(flat, [2.0, 4.0, 6.0, 3.0]);
            let via_param: Vec<f32> = Vec::try_from(&a.grad()).unwrap();
            assert_eq!(via_param, [2.0, 4.0, 6.0]);
        }
    }
}
