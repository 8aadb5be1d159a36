//! The training loop, one for both methods (the method only changed how the model was built).
//! It reads top to bottom like nanoGPT's `train.py`: set up — optimizer, the step runner,
//! checkpoints, the runtime's hooks — then, per step: the batch, the step (a CUDA graph replay or
//! an eager step), the loss check, the record, and what is due (validation, a checkpoint).
//!
//! What the lab gets wrong is done right here: label padding is ignored (-100), batches are
//! length-bucketed under a token budget, weights stay fp32 (bf16 autocast on CUDA) and weight
//! decay is decoupled. Nothing in a step waits for the device until its loss is read, once.

use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::batches::{batches, collate, padding, Collated, Layout};
use super::checkpoints::{Checkpoints, Progress, Resumed};
use super::model::Built;
use super::optim::{linear_schedule, AdamW, Part};
use super::params::{Precision, TrainParams};
use crate::data::tokenize::TokenTable;
use crate::error::StageError;
use crate::runtime::RuntimeOptions;
use crate::stage::StageContext;
use crate::t5::model::T5;
use crate::t5::weights;
use crate::torch::autocast;
use crate::torch::cuda_graph::CudaGraphs;
use crate::torch::dist::{self, Group};
use crate::torch::profile::StepProfile;
use crate::torch::trace::StepTrace;

/// Trains `b` on `train` as `p` says, checkpointing into `work`; returns the progress record.
/// The trained weights are fp32 afterwards, also with bf16 weights (the masters; a LoRA base
/// stays bf16).
pub fn fit(
    b: &Built,
    train: &TokenTable,
    validation: Option<&TokenTable>,
    p: &TrainParams,
    work: &Path,
    ctx: &StageContext,
) -> Result<Progress, StageError> {
    if train.ids.is_empty() {
        return Err(StageError::param("train", "the training tokens have no rows"));
    }
    let device = b.trainable().device();
    let peak_lr = p.lr.expect("defaults filled");
    // On several devices: every rank starts from rank 0's weights, takes its share of each
    // batch, and keeps and updates one slice of the optimizer's state (ZeRO stage 1).
    let group = match &ctx.ranks {
        Some(ranks) if ranks.world > 1 => Some(Group::join(ranks)?),
        _ => None,
    };
    let part = group.as_ref().map_or(Part::WHOLE, |g| Part { rank: g.rank, world: g.world });
    let mut opt = optimizer(b, p, device, part);
    ctx.record("optimizer_state_mb", opt.state_bytes() as f64 / 1e6);
    if let Some(g) = &group {
        opt.broadcast_weights(g)?;
        ctx.record("devices", g.world as f64);
        if device == Device::Cpu {
            dist::share_cores(g.world);
        }
    }
    let mut stepper = Stepper::new(p, device, group)?;
    let mut epochs = Epochs::new(train, p, stepper.graphed());
    // Like transformers' Trainer, `max_steps` overrides the epochs.
    let total = p.max_steps.unwrap_or(epochs.batches.len() as u64 * p.epochs);
    let checkpoints = Checkpoints::open(work)?;
    let mut progress = resume(&checkpoints, &mut opt, ctx)?;
    if let Some(g) = &stepper.group {
        same_step(g, progress.step, work)?;
    }
    ctx.progress.set_total(total);
    ctx.progress.inc(progress.step);
    let mut hooks = Hooks::new(ctx.runtime, device);
    let mut cadence = Cadence::new();
    let mut nonfinite = NonFinite { patience: p.nonfinite_patience, run: 0 };
    let mut spent = Spent::default();

    while progress.step < total {
        let (rows, layout) = epochs.batch(&mut progress, stepper.graphed());
        // Real (non-pad) tokens, counted on the host: no device sync for a figure.
        let tokens: usize = rows.iter().map(|&r| train.input_ids[r].len() + train.labels[r].len()).sum();
        let rows_taken = rows.len();
        hooks.step_begins();
        let t0 = Instant::now();
        let share = Share::of(train, rows, stepper.group.as_ref());
        let batch = (!share.rows.is_empty()).then(|| Collated::new(train, &share.rows, layout, device));
        hooks.mark("batch");
        // The schedule counts optimizer steps; a batch whose loss is not finite is not one.
        let lr = linear_schedule(progress.step, p.warmup_steps, total, peak_lr);
        let clock = cadence.clock_due(p);
        let Taken { loss, captured, clock } =
            stepper.step(&b.model, &mut opt, p, batch.as_ref(), share.weight, progress.step, lr, clock, &mut hooks, ctx)?;
        let seconds = t0.elapsed().as_secs_f64();
        spent.step(seconds, captured);
        progress.batch += 1;
        if !nonfinite.allows(loss, &mut opt, progress.step, work)? {
            continue;
        }
        hooks.step_ends();
        progress.step += 1;
        spent.dialogues += rows_taken;
        progress.losses.push((progress.step, loss, lr, tokens as f64 / seconds));
        ctx.progress.inc(1);
        ctx.progress.message(&format!("loss {loss:.4}"));
        if cadence.validation_due(p, &progress) && validation.is_some() {
            spent.validation += timed(|| progress.validation.push((progress.step, validation_loss(b, validation, p))));
        }
        if cadence.checkpoint_due(p, &progress, total, clock) {
            let t = Instant::now();
            // Every rank takes part in gathering sharded moments; rank 0 writes them.
            let state = opt.state(stepper.group.as_ref())?;
            if ctx.writes_outputs() {
                checkpoints.save(&opt, &state, &progress)?;
            }
            spent.checkpoints += t.elapsed().as_secs_f64();
            cadence.checkpointed();
        }
    }

    if validation.is_some() && progress.validation.last().is_none_or(|(s, _)| *s != progress.step) {
        spent.validation += timed(|| progress.validation.push((progress.step, validation_loss(b, validation, p))));
    }
    spent.record(ctx, &stepper);
    hooks.finish();
    // The trained weights are the fp32 ones (with bf16 weights, the masters) for what follows.
    drop(stepper);
    opt.finish();
    Ok(progress)
}

/// AdamW over the trainable weights. With bf16 weights the model computes with bf16 copies of
/// fp32 masters; a LoRA base, which does not train, goes to bf16 for good (it needs no masters).
fn optimizer(b: &Built, p: &TrainParams, device: Device, part: Part) -> AdamW {
    let compute = match p.precision(device) {
        Precision::Bf16Weights => Kind::BFloat16,
        Precision::Fp32 | Precision::Autocast => Kind::Float,
    };
    if compute == Kind::BFloat16 && b.adapters.is_some() {
        tch::no_grad(|| {
            for (_, mut w) in b.base.variables() {
                let low = w.to_kind(Kind::BFloat16);
                w.set_data(&low);
            }
        });
    }
    AdamW::new(weights::variables(b.trainable()), p.weight_decay.expect("defaults filled"), compute, part)
}

/// The progress to continue from: the latest intact checkpoint's, or a fresh start (a damaged
/// checkpoint is discarded, with a warning).
fn resume(checkpoints: &Checkpoints, opt: &mut AdamW, ctx: &StageContext) -> Result<Progress, StageError> {
    Ok(match checkpoints.resume(opt, ctx.writes_outputs())? {
        Resumed::Fresh => Progress::default(),
        Resumed::At(progress) => {
            ctx.progress.message(&format!("resumed at step {}", progress.step));
            progress
        }
        Resumed::Discarded(why) => {
            ctx.warn(format!("checkpoint discarded ({why}); training starts over"));
            Progress::default()
        }
    })
}

/// Every rank resumed from the same step (each reads rank 0's checkpoints), or the stage fails
/// before the first collective that would mix two different runs.
fn same_step(group: &Group, step: u64, work: &Path) -> Result<(), StageError> {
    let mut bounds = Tensor::from_slice(&[step as f64, -(step as f64)]);
    group.max(&mut bounds)?;
    let (most, least) = (bounds.double_value(&[0]), -bounds.double_value(&[1]));
    if most != least {
        return Err(StageError::Distributed(format!(
            "the ranks resumed from different steps ({least} to {most}; this rank: {step}): every rank reads the \
             checkpoints in {}, which must be the same folder on every machine",
            work.display()
        )));
    }
    Ok(())
}

/// The current epoch's batches and their layout, made again when the epoch changes.
struct Epochs<'a> {
    tokens: &'a TokenTable,
    p: &'a TrainParams,
    number: u64,
    batches: Vec<Vec<usize>>,
    layout: Layout,
}

impl<'a> Epochs<'a> {
    /// Epoch 0; `graphs`: steps replayed as CUDA graphs (batches padded to few shapes).
    fn new(tokens: &'a TokenTable, p: &'a TrainParams, graphs: bool) -> Self {
        let (batches, layout) = Layout::epoch(tokens, p, 0, graphs);
        Epochs { tokens, p, number: 0, batches, layout }
    }

    /// The batch `progress` is at, and its layout; past an epoch's last batch, `progress` moves
    /// to the next epoch's first.
    fn batch(&mut self, progress: &mut Progress, graphs: bool) -> (&[usize], &Layout) {
        loop {
            if self.number != progress.epoch {
                (self.batches, self.layout) = Layout::epoch(self.tokens, self.p, progress.epoch, graphs);
                self.number = progress.epoch;
            }
            if progress.batch < self.batches.len() {
                return (&self.batches[progress.batch], &self.layout);
            }
            progress.epoch += 1;
            progress.batch = 0;
        }
    }
}

/// What a step gave: its loss, read once the whole step is issued (the step's one wait for the
/// device), whether it captured a new CUDA graph shape, and whether a checkpoint is due by the
/// clock (on several ranks: by any rank's).
struct Taken {
    loss: f64,
    captured: bool,
    clock: bool,
}

/// One training step: replayed as a CUDA graph once a step of its batch shape was captured
/// (`cuda_graphs` on CUDA), else issued eagerly — also, for the rest of the run, once a capture
/// has failed.
struct Stepper {
    device: Device,
    graphs: Option<CudaGraphs>,
    /// The ranks training together, on several devices.
    group: Option<Group>,
    /// Seconds spent in the ranks' collectives.
    reducing: f64,
    taken: u64,
}

impl Stepper {
    fn new(p: &TrainParams, device: Device, group: Option<Group>) -> Result<Self, StageError> {
        let graphs = match device {
            // A graph cannot hold the collectives between backward and the update.
            Device::Cuda(_) if p.cuda_graphs && group.is_none() => Some(CudaGraphs::new(device)?),
            _ => None,
        };
        Ok(Stepper { device, graphs, group, reducing: 0.0, taken: 0 })
    }

    fn graphed(&self) -> bool {
        self.graphs.is_some()
    }

    fn captured(&self) -> usize {
        self.graphs.as_ref().map_or(0, CudaGraphs::captured)
    }

    /// Step `step` (from 0) on `batch` (this rank's share of it, `weight` of its label tokens;
    /// none when the share is empty) at learning rate `lr`, `clock` saying whether this
    /// process's clock has a checkpoint due. A non-finite loss (or gradient) skipped the update
    /// on the device.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &T5,
        opt: &mut AdamW,
        p: &TrainParams,
        batch: Option<&Collated>,
        weight: f64,
        step: u64,
        lr: f64,
        clock: bool,
        hooks: &mut Hooks,
        ctx: &StageContext,
    ) -> Result<Taken, StageError> {
        self.taken += 1;
        let device = self.device;
        seed_step(p, step, self.group.as_ref().map_or(0, |g| g.rank));
        opt.prepare(lr);
        if let Some(group) = &self.group {
            let mark = &mut |phase| hooks.mark(phase);
            let (loss, clock, reducing) = issue_shared_step(model, opt, p, device, batch, weight, clock, group, mark)?;
            self.reducing += reducing;
            let loss = loss.double_value(&[]);
            hooks.mark("loss read");
            return Ok(Taken { loss, captured: false, clock });
        }
        let batch = batch.expect("one process takes the whole batch");
        let before = self.captured();
        let graphed = match &mut self.graphs {
            // The run's first step is eager: libtorch sets up cuBLAS and autograd's device
            // threads lazily, which a capture cannot hold.
            Some(g) if self.taken > 1 => {
                Some(g.step(&batch.tensors(), |t| issue_step(model, opt, p, device, &batch.over(t), &mut |_| ())))
            }
            _ => None,
        };
        let loss = match graphed {
            Some(Ok(loss)) => loss,
            failed_or_eager => {
                if let Some(Err(e)) = failed_or_eager {
                    // A capture runs nothing: the step is taken again, eagerly, with the same
                    // dropout draws, and so are the rest.
                    ctx.warn(format!("step {}: `cuda_graphs`: {e}; training goes on without CUDA graphs", step + 1));
                    self.graphs = None;
                    seed_step(p, step, 0);
                }
                issue_step(model, opt, p, device, batch, &mut |phase| hooks.mark(phase))
            }
        };
        let value = loss.double_value(&[]);
        hooks.mark("loss read");
        Ok(Taken { loss: value, captured: self.captured() > before, clock })
    }
}

/// This rank's part of a batch: its rows and the fraction of the batch's label tokens they hold
/// (the whole batch, weight 1, for one process).
struct Share {
    rows: Vec<usize>,
    weight: f64,
}

impl Share {
    /// Rank `group.rank`'s share of `rows`: the rows cut into one run per rank, in order, with
    /// about as many tokens each.
    fn of(tokens: &TokenTable, rows: &[usize], group: Option<&Group>) -> Share {
        let Some(g) = group else { return Share { rows: rows.to_vec(), weight: 1.0 } };
        let size = |r: usize| tokens.input_ids[r].len() + tokens.labels[r].len();
        let total: usize = rows.iter().map(|&r| size(r)).sum();
        let (mut mine, mut seen) = (Vec::new(), 0usize);
        for &r in rows {
            // The rank whose stretch of tokens this row's middle falls in.
            let middle = seen * 2 + size(r);
            let rank = (middle * g.world / (2 * total.max(1))).min(g.world - 1);
            if rank == g.rank {
                mine.push(r);
            }
            seen += size(r);
        }
        let labels = |rows: &[usize]| rows.iter().map(|&r| tokens.labels[r].len()).sum::<usize>();
        let weight = labels(&mine) as f64 / labels(rows).max(1) as f64;
        Share { rows: mine, weight }
    }
}

/// One step as one of several ranks: backward on this rank's share of the batch, its loss
/// weighted by its share of the label tokens; the gradients summed over the ranks into each
/// rank's slice — so the ranks hold, between them, the gradient of the whole batch's token-mean
/// loss, as one process would — then the same clipping (by the global norm) and each rank's
/// update of its slice, and the updated slices gathered into every rank's weights. The loss's
/// all-reduce also carries each rank's `clock` (a checkpoint due by time), so that the ranks,
/// which gather the moments for a checkpoint together, agree on it at no extra collective.
/// Returns the whole batch's loss, whether any rank's clock has a checkpoint due, and the
/// seconds the collectives took.
#[allow(clippy::too_many_arguments)]
fn issue_shared_step(
    model: &T5,
    opt: &mut AdamW,
    p: &TrainParams,
    device: Device,
    batch: Option<&Collated>,
    weight: f64,
    clock: bool,
    group: &Group,
    mark: &mut dyn FnMut(&'static str),
) -> Result<(Tensor, bool, f64), StageError> {
    let loss = match batch {
        Some(batch) => {
            let loss = autocast::bf16(device, p.autocast(device), || batch.loss(model, true)) * weight;
            mark("forward");
            loss.backward();
            mark("backward");
            loss.detach().to_kind(Kind::Float)
        }
        // A batch with fewer rows than ranks: this one adds nothing.
        None => Tensor::zeros([], (Kind::Float, device)),
    };
    let t = Instant::now();
    opt.reduce_gradients(group)?;
    let clock = Tensor::from(f32::from(u8::from(clock))).to_device(device);
    let mut shared = Tensor::stack(&[loss, clock], 0);
    group.sum(&mut shared)?;
    let loss = shared.get(0);
    let _norm = opt.clip_grad_norm_over(p.grad_clip, group)?;
    let mut reducing = t.elapsed().as_secs_f64();
    mark("reduce-scatter");
    opt.apply(&loss);
    mark("clip, update");
    let t = Instant::now();
    opt.gather_weights(group)?;
    reducing += t.elapsed().as_secs_f64();
    opt.zero_grad();
    mark("all-gather");
    let any_clock = shared.double_value(&[1]) > 0.0;
    Ok((loss, any_clock, reducing))
}

/// Issues one training step on `batch` — forward, backward, clipping, the update `opt` was
/// prepared for, zeroing — without waiting for the device, and returns the loss: run eagerly,
/// or captured into a CUDA graph. `mark` ends each phase for the profile.
fn issue_step(
    model: &T5,
    opt: &mut AdamW,
    p: &TrainParams,
    device: Device,
    batch: &Collated,
    mark: &mut dyn FnMut(&'static str),
) -> Tensor {
    let loss = autocast::bf16(device, p.autocast(device), || batch.loss(model, true));
    mark("forward");
    loss.backward();
    mark("backward");
    let _norm = opt.clip_grad_norm(p.grad_clip);
    opt.apply(&loss);
    opt.zero_grad();
    mark("clip, update");
    loss
}

/// Seeds the generator dropout draws from for step `step` (from 0) on rank `rank`, so that a
/// resumed run, or a step taken again, repeats its draws exactly, and no two ranks share masks.
fn seed_step(p: &TrainParams, step: u64, rank: usize) {
    let seed = (p.seed as i64).wrapping_mul(7919).wrapping_add(step as i64);
    tch::manual_seed(seed.wrapping_add((rank as i64) << 40));
}

/// The runtime's observers of the steps, both passive and both optional: a per-phase profile
/// (`--profile`) and libtorch's trace of a few steps (`--trace DIR`).
struct Hooks {
    profile: Option<StepProfile>,
    trace: Option<StepTrace>,
    taken: u64,
}

impl Hooks {
    fn new(options: &RuntimeOptions, device: Device) -> Self {
        Hooks {
            profile: options.profile.then(|| StepProfile::new(device)),
            trace: StepTrace::training(options.trace.as_deref(), device),
            taken: 0,
        }
    }

    fn step_begins(&mut self) {
        self.taken += 1;
        if let Some(t) = &mut self.trace {
            t.before_step(self.taken);
        }
        if let Some(p) = &mut self.profile {
            p.start();
        }
    }

    /// Ends phase `phase` of the step (the profile's mark).
    fn mark(&mut self, phase: &'static str) {
        if let Some(p) = &mut self.profile {
            p.mark(phase);
        }
    }

    fn step_ends(&mut self) {
        if let Some(t) = &mut self.trace {
            t.after_step(self.taken, false);
        }
    }

    /// Prints the profile, when there is one.
    fn finish(self) {
        if let Some(profile) = &self.profile {
            eprint!("{}", profile.report());
        }
    }
}

/// Consecutive non-finite losses. Such a step changed nothing (its update was skipped on the
/// device) and does not count; after `patience` in a row the stage stops.
struct NonFinite {
    patience: u32,
    run: u32,
}

impl NonFinite {
    /// Whether the step whose loss is `loss` counts; an error once too many in a row did not.
    fn allows(&mut self, loss: f64, opt: &mut AdamW, step: u64, work: &Path) -> Result<bool, StageError> {
        if loss.is_finite() {
            self.run = 0;
            return Ok(true);
        }
        self.run += 1;
        opt.skipped();
        if self.run >= self.patience {
            return Err(StageError::data(
                format!("step {step}"),
                format!(
                    "loss was not finite for {} consecutive steps; the last good checkpoint is kept in {}",
                    self.run,
                    work.display()
                ),
            ));
        }
        Ok(false)
    }
}

/// When validation and checkpoints are due: validation every `eval_every` steps (and once at
/// the end); a checkpoint every `checkpoint_every` steps or once `checkpoint_minutes` passed
/// since the last, never at the last step (the artifact follows at once).
struct Cadence {
    last_checkpoint: Instant,
}

impl Cadence {
    fn new() -> Self {
        Cadence { last_checkpoint: Instant::now() }
    }

    fn validation_due(&self, p: &TrainParams, progress: &Progress) -> bool {
        p.eval_every > 0 && progress.step.is_multiple_of(p.eval_every)
    }

    /// Whether `checkpoint_minutes` have passed on this process's clock since the last one.
    fn clock_due(&self, p: &TrainParams) -> bool {
        let minutes = self.last_checkpoint.elapsed().as_secs_f64() / 60.0;
        p.checkpoint_minutes > 0.0 && minutes >= p.checkpoint_minutes
    }

    /// `clock`: a checkpoint is due by time — on several ranks, which must agree (they gather
    /// the moments together), on any rank's clock, as the step's all-reduce found.
    fn checkpoint_due(&self, p: &TrainParams, progress: &Progress, total: u64, clock: bool) -> bool {
        let by_steps = p.checkpoint_every > 0 && progress.step.is_multiple_of(p.checkpoint_every);
        (by_steps || clock) && progress.step < total
    }

    fn checkpointed(&mut self) {
        self.last_checkpoint = Instant::now();
    }
}

/// The seconds `f` took.
fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Mean loss over `tokens` in eval mode, summed on the device and read once.
fn validation_loss(b: &Built, tokens: Option<&TokenTable>, p: &TrainParams) -> f64 {
    let tokens = tokens.expect("validation is due only with validation tokens");
    let device = b.trainable().device();
    let bf16 = p.autocast(device);
    tch::no_grad(|| {
        let mut sum = Tensor::zeros([], (Kind::Double, device));
        let mut n = 0usize;
        for rows in batches(tokens, p.batch_tokens, p.max_batch_rows, 0, 0) {
            let shape = padding(p, false).shape(tokens, &rows);
            let (x, mask, y) = collate(tokens, &rows, shape, device);
            // Every label token counts (padding is -100 and not in `labels`).
            let targets: usize = rows.iter().map(|&r| tokens.labels[r].len()).sum();
            let loss = autocast::bf16(device, bf16, || b.model.loss(&x, &mask, &y, false));
            sum += loss.to_kind(Kind::Double) * targets as f64;
            n += targets;
        }
        sum.double_value(&[]) / n.max(1) as f64
    })
}

/// Where a training run's time went (seconds), for the run's manifest and the report.
#[derive(Default)]
struct Spent {
    /// Every step: issuing it and waiting for its loss.
    steps: f64,
    /// Of those, the steps that captured a new shape's CUDA graph.
    captures: f64,
    validation: f64,
    checkpoints: f64,
    /// Dialogues the counted steps trained on (all ranks').
    dialogues: usize,
}

impl Spent {
    fn step(&mut self, seconds: f64, captured: bool) {
        self.steps += seconds;
        if captured {
            self.captures += seconds;
        }
    }

    fn record(&self, ctx: &StageContext, stepper: &Stepper) {
        ctx.record("step_seconds", self.steps);
        ctx.record("dialogues_per_s", self.dialogues as f64 / self.steps.max(1e-9));
        ctx.record("capture_seconds", self.captures);
        ctx.record("validation_seconds", self.validation);
        ctx.record("checkpoint_seconds", self.checkpoints);
        if stepper.graphed() {
            ctx.record("graph_shapes", stepper.captured() as f64);
        }
        if stepper.group.is_some() {
            ctx.record("collective_seconds", stepper.reducing);
        }
    }
}
