//! One training loop for full fine-tuning and LoRA: the method only changes how the model is
//! built (which variables the optimizer sees). Reads like nanoGPT's `train.py`: build, batch,
//! resume, then step — loss, backward, clip, AdamW, schedule — with validation and atomic
//! checkpoints on a cadence. What the lab gets wrong is done right here: label padding is
//! ignored (-100), batches are length-bucketed under a token budget, weights stay fp32 (bf16
//! autocast on CUDA, see `autocast`), and weight decay is decoupled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::atomic::{atomic_write, sync_tree};
use crate::autocast;
use crate::cuda_graph::CudaGraphs;
use crate::error::StageError;
use crate::lora::{self, LoraSettings};
use crate::model_ref;
use crate::optim::{linear_schedule, AdamW};
use crate::packing::Packing;
pub use crate::shapes::Padding;
use crate::shapes::{Shape, ShapePlan};
use crate::stage::{
    ArtifactKind, FileInput, InputRef, InputSlot, OutputDecl, ParamError, Resource, Stage, StageContext,
};
use crate::step_profile::StepProfile;
use crate::t5::device::{self, DeviceChoice, DtypeChoice};
use crate::t5::{loader, weights, T5};
use crate::tokenize::TokenTable;
use crate::trace::StepTrace;

/// Params of `train-full` and `train-lora`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Training tokens (a `tokenize` output).
    pub train: InputRef,
    /// Validation tokens, for the validation loss.
    #[serde(default)]
    pub validation: Option<InputRef>,
    /// The base model: a folder or `hf://OWNER/NAME`.
    #[serde(default)]
    pub model: Option<String>,
    /// Or the `model` output of a stage.
    #[serde(default)]
    pub model_from: Option<InputRef>,
    /// LoRA settings (`train-lora` only; defaults r 32, alpha 32, dropout 0.05, targets q, v).
    #[serde(default)]
    pub lora: Option<LoraSettings>,
    /// Peak learning rate (defaults: full 1e-5, LoRA 1e-3 — the lab's).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Decoupled weight decay (defaults: full 0.01, LoRA 0).
    #[serde(default)]
    pub weight_decay: Option<f64>,
    /// Passes over the training data.
    #[serde(default = "one")]
    pub epochs: u64,
    /// Train exactly this many steps, overriding `epochs` (default: the epochs' worth).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Linear warm-up steps, then linear decay to 0.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (0: off).
    #[serde(default = "one_f")]
    pub grad_clip: f64,
    /// Tokens per batch: rows × (longest source + longest target).
    #[serde(default = "d16k")]
    pub batch_tokens: usize,
    /// Most rows per batch.
    #[serde(default = "d64")]
    pub max_batch_rows: usize,
    /// Round each batch's source and target widths up to a multiple of this (1: pad to the
    /// longest row only). Fewer distinct shapes for the device — its allocator and its kernel
    /// choices work per shape — for some padding; the padding is masked, so the loss is the same
    /// (only dropout's draws land elsewhere).
    #[serde(default = "d1")]
    pub pad_to_multiple_of: usize,
    /// The labels' multiple, when it should differ from the sources' (summaries are short:
    /// DialogSum's average 26 tokens, so 64 would pad them 2.5×; 16 suits them).
    #[serde(default)]
    pub pad_labels_to_multiple_of: Option<usize>,
    /// Capture each batch shape's step as a CUDA graph and replay it (CUDA only; ignored on the
    /// CPU): the host stops issuing every kernel of every step. So that an epoch has few shapes,
    /// batches are then padded to at least 64-token sources, 16-token labels and 8 rows (empty
    /// rows, out of the loss). Should a capture fail, training goes on eagerly and says so.
    /// See `stages/src/cuda_graph.rs`.
    #[serde(default)]
    pub cuda_graphs: bool,
    /// Seed of batch order, dropout and LoRA initialization.
    #[serde(default)]
    pub seed: u64,
    /// Validation every this many steps (0: at the end only).
    #[serde(default)]
    pub eval_every: u64,
    /// A checkpoint every this many steps (0: not by steps).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// A checkpoint once this many minutes passed since the last one, or since training began
    /// (0: not by time). By time rather than steps by default: a flan-t5-base checkpoint (fp32
    /// weights and AdamW moments, 3 GB, fsynced) takes seconds to write, which on a GPU is the
    /// time of dozens of steps; a run killed loses at most this long.
    #[serde(default = "d10")]
    pub checkpoint_minutes: f64,
    /// Override the model's dropout rate (e.g. 0 for reproducible comparisons).
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Stop after this many consecutive non-finite losses.
    #[serde(default = "d5")]
    pub nonfinite_patience: u32,
    /// `auto`, `cpu` or `cuda`.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Compute precision: `auto` (bf16 on CUDA, fp32 on the CPU), `fp32` or `bf16`. bf16 is
    /// autocast: matrix products in bf16, norms and the loss in fp32, and weights, gradients
    /// and AdamW's moments fp32 throughout. `fp16` is refused (T5 overflows in it).
    #[serde(default)]
    pub dtype: DtypeChoice,
    /// With bf16 compute: the model's weights themselves in bf16 — copies of fp32 master
    /// weights, which AdamW updates — instead of autocast over fp32 weights. Activations and
    /// gradients stay bf16 (no casts at every operation); norms, attention's softmax and the
    /// loss still accumulate in fp32; the artifact holds the fp32 masters. (Left out of the
    /// canonical params when off, so the caches of runs from before it still hit.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bf16_weights: bool,
    /// Several examples per row ("packing"): dialogues fill rows as wide as the longest one,
    /// their summaries the label rows beside them, and each attends only within itself. The
    /// loss is the one unpacked rows give; rows are full instead of padded, and batches have
    /// one shape (a second for the few longest summaries: with `cuda_graphs`, two captures per
    /// run). Batches still hold `batch_tokens` tokens, padding included. See
    /// `stages/src/packing.rs`. (Left out of the canonical params when off.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pack: bool,
}

fn one() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn d1() -> usize {
    1
}
fn d16k() -> usize {
    16384
}
fn d64() -> usize {
    64
}
fn d10() -> f64 {
    10.0
}
fn d5() -> u32 {
    5
}

/// Full fine-tuning or LoRA: the only thing that differs between the two stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every weight trains.
    Full,
    /// Only adapters train; the base is frozen.
    Lora,
}

/// How a training step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// fp32 throughout.
    Fp32,
    /// bf16 autocast over fp32 weights.
    Autocast,
    /// bf16 weights, copies of fp32 masters (`bf16_weights`).
    Bf16Weights,
}

impl TrainParams {
    /// How steps compute on `device`.
    pub fn precision(&self, device: Device) -> Precision {
        let bf16 = match self.dtype {
            DtypeChoice::Auto => device.is_cuda(),
            DtypeChoice::Bf16 => true,
            DtypeChoice::Fp32 | DtypeChoice::Fp16 => false,
        };
        match (bf16, self.bf16_weights) {
            (false, _) => Precision::Fp32,
            (true, false) => Precision::Autocast,
            (true, true) => Precision::Bf16Weights,
        }
    }

    /// Whether the forward pass runs under bf16 autocast on `device`.
    fn autocast(&self, device: Device) -> bool {
        self.precision(device) == Precision::Autocast
    }
}

impl Method {
    fn defaults(self, p: &mut TrainParams) {
        let (lr, wd) = match self {
            Method::Full => (1e-5, 0.01),
            Method::Lora => (1e-3, 0.0),
        };
        p.lr.get_or_insert(lr);
        p.weight_decay.get_or_insert(wd);
        if self == Method::Lora {
            p.lora.get_or_insert_with(LoraSettings::default);
        }
    }
}

/// A model ready to train: the optimizer sees `trainable` only.
pub struct Built {
    /// The network (with adapters for LoRA).
    pub model: T5,
    /// The base model's variables.
    pub base: nn::VarStore,
    /// The adapters' variables (LoRA).
    pub adapters: Option<nn::VarStore>,
    /// The base model's folder.
    pub dir: PathBuf,
}

impl Built {
    /// The store the optimizer updates and the artifact saves.
    pub fn trainable(&self) -> &nn::VarStore {
        self.adapters.as_ref().unwrap_or(&self.base)
    }

    /// (trainable, total) parameters — the lab's printout.
    pub fn parameter_report(&self) -> (i64, i64) {
        let count = |vs: &nn::VarStore| vs.variables().values().map(|t| t.numel() as i64).sum::<i64>();
        let base = count(&self.base);
        match &self.adapters {
            Some(a) => (count(a), base + count(a)),
            None => (base, base),
        }
    }
}

/// Builds the model for `method`: fp32 weights; LoRA freezes the base and adds adapters.
pub fn build(method: Method, dir: &Path, p: &TrainParams, device: Device) -> Result<Built, StageError> {
    let mut loaded = loader::load(dir, device, Kind::Float)?;
    if let Some(d) = p.dropout {
        loaded.model.set_dropout(d);
    }
    let adapters = match method {
        Method::Full => None,
        Method::Lora => {
            loaded.vs.freeze();
            let vs = nn::VarStore::new(device);
            tch::manual_seed(p.seed as i64);
            let settings = p.lora.clone().unwrap_or_default();
            lora::apply(&mut loaded.model, &vs.root(), &settings);
            Some(vs)
        }
    };
    Ok(Built { model: loaded.model, base: loaded.vs, adapters, dir: dir.to_path_buf() })
}

/// Length-bucketed batches for `epoch`: rows shuffled with the seed, sorted by length so each
/// batch pads little, cut under the token budget, then the batches themselves shuffled.
pub fn batches(tokens: &TokenTable, budget: usize, max_rows: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch));
    let mut rows: Vec<usize> = (0..tokens.ids.len()).collect();
    rows.shuffle(&mut rng);
    let cost = |r: usize| tokens.input_ids[r].len() + tokens.labels[r].len();
    rows.sort_by_key(|&r| std::cmp::Reverse(cost(r)));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut widest = 0;
    for r in rows {
        let w = widest.max(cost(r));
        if !current.is_empty() && ((current.len() + 1) * w > budget || current.len() >= max_rows) {
            out.push(std::mem::take(&mut current));
            widest = 0;
        }
        widest = widest.max(cost(r));
        current.push(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.shuffle(&mut rng);
    out
}

impl Padding {
    /// How training pads batches for `p`; with `graphs` (steps replayed as CUDA graphs) rows go
    /// to multiples of 8 too, for fewer shapes.
    pub fn for_training(p: &TrainParams, graphs: bool) -> Padding {
        let sources = p.pad_to_multiple_of;
        let labels = p.pad_labels_to_multiple_of.unwrap_or(sources);
        if graphs {
            // At least 64-token sources, 16-token labels and 8 rows: 20 shapes in a DialogSum
            // epoch instead of 199, for 1.36 tokens computed per real one (1.12 unpadded); then
            // the rare ones run in larger shapes ([`ShapePlan`]): 9.
            return Padding { sources: sources.max(64), labels: labels.max(16), rows: 8 };
        }
        Padding { sources, labels, rows: 1 }
    }
}

/// Pads a batch to `shape` (at least its own, e.g. [`Padding::shape`] or [`ShapePlan::shape`]):
/// sources with 0 (and a 1/0 mask), labels with -100 (ignored by the loss), then empty rows (a
/// lone pad token unmasked, so attention has a key, and only ignored labels: they change no
/// loss and no gradient).
pub fn collate(tokens: &TokenTable, rows: &[usize], shape: Shape, device: Device) -> (Tensor, Tensor, Tensor) {
    let [n, source_width, label_width] = shape;
    let fits = |table: &[Vec<i32>], width: usize| rows.iter().all(|&r| table[r].len() <= width);
    assert!(
        n >= rows.len() && fits(&tokens.input_ids, source_width) && fits(&tokens.labels, label_width),
        "collate: shape {shape:?} is smaller than its batch"
    );
    let empty: Vec<i32> = Vec::new();
    let pad = |seqs: Vec<&Vec<i32>>, fill: i64, w: usize| {
        let flat: Vec<i64> = seqs
            .iter()
            .flat_map(|s| s.iter().map(|&t| t as i64).chain(std::iter::repeat_n(fill, w - s.len())))
            .collect();
        Tensor::from_slice(&flat).view([seqs.len() as i64, w as i64]).to_device(device)
    };
    let extra = n - rows.len();
    let x = pad(
        rows.iter().map(|&r| &tokens.input_ids[r]).chain(std::iter::repeat_n(&empty, extra)).collect(),
        0,
        source_width,
    );
    let y = pad(
        rows.iter().map(|&r| &tokens.labels[r]).chain(std::iter::repeat_n(&empty, extra)).collect(),
        -100,
        label_width,
    );
    let mask = x.ne(0).to_kind(Kind::Int64);
    if n > rows.len() {
        let _ = mask.narrow(0, rows.len() as i64, (n - rows.len()) as i64).narrow(1, 0, 1).fill_(1);
    }
    (x, mask, y)
}

/// A batch on the device, as the loss takes it.
pub enum Collated {
    /// One example per row: sources, their 1/0 mask, labels ([`collate`]).
    Padded([Tensor; 3]),
    /// Packed rows: sources, their segment numbers, labels, theirs ([`Packing::collate`]).
    Packed([Tensor; 4]),
}

impl Collated {
    /// `examples` laid out as `layout` says: packed, or padded to their shape in the plan.
    pub fn new(tokens: &TokenTable, examples: &[usize], layout: &Layout, device: Device) -> Collated {
        match layout {
            Layout::Packed(packing) => {
                let b = packing.collate(tokens, examples);
                let [rows, sources, labels] = b.shape.map(|n| n as i64);
                let t = |v: &[i64], width: i64| Tensor::from_slice(v).view([rows, width]).to_device(device);
                Collated::Packed([
                    t(&b.sources, sources),
                    t(&b.source_segments, sources),
                    t(&b.labels, labels),
                    t(&b.label_segments, labels),
                ])
            }
            Layout::Padded(plan) => {
                let (x, mask, y) = collate(tokens, examples, plan.shape(tokens, examples), device);
                Collated::Padded([x, mask, y])
            }
        }
    }

    /// Its tensors (a CUDA graph's inputs).
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Collated::Padded(t) => t.iter().collect(),
            Collated::Packed(t) => t.iter().collect(),
        }
    }

    /// The same layout over `t`, tensors like [`Collated::tensors`] (a CUDA graph's copies).
    fn over(&self, t: &[Tensor]) -> Collated {
        let c = |i: usize| t[i].shallow_clone();
        match self {
            Collated::Padded(_) => Collated::Padded([c(0), c(1), c(2)]),
            Collated::Packed(_) => Collated::Packed([c(0), c(1), c(2), c(3)]),
        }
    }

    /// The model's mean loss over the batch's labels.
    pub fn loss(&self, model: &T5, train: bool) -> Tensor {
        match self {
            Collated::Padded([x, mask, y]) => model.loss(x, mask, y, train),
            Collated::Packed([x, xs, y, ys]) => model.packed_loss(x, xs, y, ys, train),
        }
    }
}

/// How an epoch's batches are laid out.
pub enum Layout {
    /// One example per row, each batch padded to its shape in the plan.
    Padded(ShapePlan),
    /// Several examples per row (`pack`).
    Packed(Packing),
}

impl Layout {
    /// Epoch `epoch` of `tokens` as `p` makes it: its batches, each a list of examples —
    /// length-bucketed ([`batches`]) or, with `pack`, packed ([`Packing::batches`], in row
    /// order) — and how they are laid out. `graphs`: steps replayed as CUDA graphs, which pad
    /// unpacked batches to few shapes ([`Padding::for_training`], [`ShapePlan`]).
    pub fn epoch(tokens: &TokenTable, p: &TrainParams, epoch: u64, graphs: bool) -> (Vec<Vec<usize>>, Layout) {
        if p.pack {
            let packing = Packing::for_table(tokens, p.batch_tokens, p.max_batch_rows);
            return (packing.batches(tokens, p.seed, epoch), Layout::Packed(packing));
        }
        let list = batches(tokens, p.batch_tokens, p.max_batch_rows, p.seed, epoch);
        let plan = ShapePlan::new(Padding::for_training(p, graphs), tokens, &list, graphs);
        (list, Layout::Padded(plan))
    }

    /// The shape the batch `examples` runs in.
    pub fn shape(&self, tokens: &TokenTable, examples: &[usize]) -> Shape {
        match self {
            Layout::Padded(plan) => plan.shape(tokens, examples),
            Layout::Packed(packing) => packing.shape(tokens, examples),
        }
    }
}

/// Where a run is: enough to continue exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Next batch within the epoch.
    pub batch: usize,
    /// Per step: (step, loss, lr, tokens/s).
    pub losses: Vec<(u64, f64, f64, f64)>,
    /// (step, validation loss).
    pub validation: Vec<(u64, f64)>,
}

/// Checkpoints in a work folder: `ckpt-<step>/` (trainable weights, optimizer moments,
/// progress), `latest` naming the newest complete one; older ones go only after it is written.
struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    fn io(&self, e: std::io::Error) -> StageError {
        StageError::io(&self.dir, e)
    }

    fn save(&self, opt: &AdamW, progress: &Progress) -> Result<(), StageError> {
        let name = format!("ckpt-{}", progress.step);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| self.io(e))?;
        // The fp32 weights: with bf16 weights, the masters.
        weights::save(&opt.masters(), &tmp.join("trainable.safetensors"))?;
        weights::save(&opt.state(), &tmp.join("optimizer.safetensors"))?;
        std::fs::write(tmp.join("progress.json"), serde_json::to_vec(progress).expect("progress serializes"))
            .map_err(|e| self.io(e))?;
        sync_tree(&tmp).map_err(|e| self.io(e))?;
        let done = self.dir.join(&name);
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&tmp, &done).map_err(|e| self.io(e))?;
        atomic_write(&self.dir.join("latest"), name.as_bytes()).map_err(|e| self.io(e))?;
        // Only now may older checkpoints go.
        for entry in std::fs::read_dir(&self.dir).map_err(|e| self.io(e))?.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n.starts_with("ckpt-") && n != name {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn load(&self, opt: &mut AdamW) -> Result<Option<Progress>, StageError> {
        let Ok(name) = std::fs::read_to_string(self.dir.join("latest")) else { return Ok(None) };
        let dir = self.dir.join(name.trim());
        weights::load_into(opt.masters(), &dir.join("trainable.safetensors"))?;
        opt.masters_changed();
        let state: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join("optimizer.safetensors"))
            .map_err(|e| StageError::data(dir.display().to_string(), e.to_string()))?
            .into_iter()
            .collect();
        let text = std::fs::read_to_string(dir.join("progress.json")).map_err(|e| self.io(e))?;
        let progress: Progress =
            serde_json::from_str(&text).map_err(|e| StageError::data(dir.display().to_string(), e.to_string()))?;
        opt.restore(&state, progress.step as i64).map_err(|m| StageError::data(dir.display().to_string(), m))?;
        Ok(Some(progress))
    }
}

/// Mean loss over `tokens` in eval mode, summed on the device and read once.
fn validation_loss(b: &Built, tokens: &TokenTable, p: &TrainParams, device: Device) -> f64 {
    let bf16 = p.autocast(device);
    tch::no_grad(|| {
        let mut sum = Tensor::zeros([], (Kind::Double, device));
        let mut n = 0usize;
        for rows in batches(tokens, p.batch_tokens, p.max_batch_rows, 0, 0) {
            let shape = Padding::for_training(p, false).shape(tokens, &rows);
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

/// Trains `b` on `train` as `p` says, checkpointing into `work`; returns the progress record.
/// The trained weights are fp32 afterwards, also with bf16 weights (the masters; a LoRA base
/// stays bf16).
pub fn train(
    b: &Built,
    train: &TokenTable,
    validation: Option<&TokenTable>,
    p: &TrainParams,
    work: &Path,
    ctx: &StageContext,
) -> Result<Progress, StageError> {
    let device = b.trainable().device();
    let lr = p.lr.expect("defaults filled");
    let compute = match p.precision(device) {
        Precision::Bf16Weights => Kind::BFloat16,
        Precision::Fp32 | Precision::Autocast => Kind::Float,
    };
    if compute == Kind::BFloat16 && b.adapters.is_some() {
        // A frozen base computes in bf16 too, for good: it does not train, so it needs no masters.
        tch::no_grad(|| {
            for (_, mut w) in b.base.variables() {
                let low = w.to_kind(Kind::BFloat16);
                w.set_data(&low);
            }
        });
    }
    let mut opt = AdamW::new(weights::variables(b.trainable()), p.weight_decay.expect("defaults filled"), compute);
    let mut graphs = match device {
        Device::Cuda(_) if p.cuda_graphs => {
            Some(CudaGraphs::new(device).map_err(|e| StageError::data("cuda_graphs", e))?)
        }
        _ => None,
    };
    // The epoch's batches and how they are laid out (with graphs, rare shapes in larger ones).
    let mut epoch = Layout::epoch(train, p, 0, graphs.is_some());
    let mut epoch_number = 0;
    let per_epoch = epoch.0.len() as u64;
    // Like transformers' Trainer, `max_steps` overrides the epochs.
    let total = p.max_steps.unwrap_or(per_epoch * p.epochs);
    let ckpt = Checkpoints { dir: work.to_path_buf() };
    std::fs::create_dir_all(work).map_err(|e| StageError::io(work, e))?;
    let mut progress = ckpt.load(&mut opt)?.unwrap_or_default();
    if progress.step > 0 {
        ctx.progress.message(&format!("resumed at step {}", progress.step));
    }
    ctx.progress.set_total(total);
    ctx.progress.inc(progress.step);
    let mut bad = 0;
    let mut profile = StepProfile::from_env(device);
    let mut trace = StepTrace::from_env(device);
    let mut spent = Spent::default();
    let mut last_checkpoint = Instant::now();
    let mut taken = 0;
    while progress.step < total {
        if epoch_number != progress.epoch {
            epoch = Layout::epoch(train, p, progress.epoch, graphs.is_some());
            epoch_number = progress.epoch;
        }
        let (epoch_batches, layout) = &epoch;
        if progress.batch >= epoch_batches.len() {
            progress.epoch += 1;
            progress.batch = 0;
            continue;
        }
        taken += 1;
        if let Some(t) = &mut trace {
            t.before_step(taken);
        }
        let t0 = Instant::now();
        if let Some(p) = &mut profile {
            p.start();
        }
        let mut mark = |phase: &'static str| {
            if let Some(p) = profile.as_mut() {
                p.mark(phase)
            }
        };
        let rows = &epoch_batches[progress.batch];
        // Real (non-pad) tokens, counted on the host: no device sync for a figure.
        let tokens: usize = rows.iter().map(|&r| train.input_ids[r].len() + train.labels[r].len()).sum();
        let batch = Collated::new(train, rows, layout, device);
        mark("batch");
        seed_step(p, progress.step);
        // The schedule counts optimizer steps; a batch whose loss is not finite is not one.
        let step_lr = linear_schedule(progress.step, p.warmup_steps, total, lr);
        opt.prepare(step_lr);
        let shapes_before = graphs.as_ref().map_or(0, CudaGraphs::captured);
        let captured = match &mut graphs {
            // The run's first step is eager: libtorch sets up cuBLAS and autograd's device
            // threads lazily, which a capture cannot hold.
            Some(g) if taken > 1 => Some(
                g.step(&batch.tensors(), |t| issue_step(&b.model, &mut opt, p, device, &batch.over(t), &mut |_| ())),
            ),
            _ => None,
        };
        let loss = match captured {
            Some(Ok(loss)) => loss,
            eager => {
                if let Some(Err(e)) = eager {
                    // A capture runs nothing: the step is taken again, eagerly, with the same
                    // dropout draws, and so are the rest.
                    ctx.progress.message(&format!(
                        "step {}: `cuda_graphs`: {e}; training goes on without CUDA graphs",
                        progress.step + 1
                    ));
                    graphs = None;
                    seed_step(p, progress.step);
                }
                issue_step(&b.model, &mut opt, p, device, &batch, &mut mark)
            }
        };
        // The step's one wait for the device: the loss, read once the whole step is issued. A
        // non-finite loss (or gradient) skipped the update on the device, so the weights never
        // see its gradients.
        let value = loss.double_value(&[]);
        mark("loss read");
        let seconds = t0.elapsed().as_secs_f64();
        spent.steps += seconds;
        if graphs.as_ref().map_or(0, CudaGraphs::captured) > shapes_before {
            spent.captures += seconds;
        }
        progress.batch += 1;
        if !value.is_finite() {
            bad += 1;
            opt.skipped();
            if bad >= p.nonfinite_patience {
                return Err(StageError::data(
                    format!("step {}", progress.step),
                    format!(
                        "loss was not finite for {bad} consecutive steps; the last good checkpoint is kept in {}",
                        work.display()
                    ),
                ));
            }
            continue;
        }
        bad = 0;
        if let Some(t) = &mut trace {
            t.after_step(taken, false);
        }
        progress.step += 1;
        progress.losses.push((progress.step, value, step_lr, tokens as f64 / seconds));
        ctx.progress.inc(1);
        ctx.progress.message(&format!("loss {value:.4}"));
        if let Some(v) = validation {
            if p.eval_every > 0 && progress.step % p.eval_every == 0 {
                let t = Instant::now();
                progress.validation.push((progress.step, validation_loss(b, v, p, device)));
                spent.validation += t.elapsed().as_secs_f64();
            }
        }
        let by_steps = p.checkpoint_every > 0 && progress.step % p.checkpoint_every == 0;
        let by_time =
            p.checkpoint_minutes > 0.0 && last_checkpoint.elapsed().as_secs_f64() >= p.checkpoint_minutes * 60.0;
        if (by_steps || by_time) && progress.step < total {
            let t = Instant::now();
            ckpt.save(&opt, &progress)?;
            spent.checkpoints += t.elapsed().as_secs_f64();
            last_checkpoint = Instant::now();
        }
    }
    if let Some(v) = validation {
        if progress.validation.last().is_none_or(|(s, _)| *s != progress.step) {
            let t = Instant::now();
            progress.validation.push((progress.step, validation_loss(b, v, p, device)));
            spent.validation += t.elapsed().as_secs_f64();
        }
    }
    spent.record(ctx);
    if let Some(profile) = &profile {
        eprint!("{}", profile.report());
    }
    if let Some(g) = &graphs {
        ctx.progress.message(&format!("{} batch shapes captured as CUDA graphs", g.captured()));
    }
    // The trained weights are the fp32 ones (with bf16 weights, the masters) for what follows.
    drop(graphs);
    opt.finish();
    Ok(progress)
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
}

impl Spent {
    fn record(&self, ctx: &StageContext) {
        ctx.record("step_seconds", self.steps);
        ctx.record("capture_seconds", self.captures);
        ctx.record("validation_seconds", self.validation);
        ctx.record("checkpoint_seconds", self.checkpoints);
    }
}

/// Issues one training step on `batch` — forward, backward, clipping,
/// the update `opt` was prepared for, zeroing — without waiting for the device, and returns the
/// loss: run eagerly, or captured into a CUDA graph. `mark` ends each phase for the profile.
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

/// Seeds the generator dropout draws from for step `step` (from 0), so that a resumed run, or a
/// step taken again, repeats its draws exactly.
fn seed_step(p: &TrainParams, step: u64) {
    tch::manual_seed((p.seed as i64).wrapping_mul(7919).wrapping_add(step as i64));
}

/// Writes the training record into `dir/training/`: parameter report, loss curve, throughput,
/// validation losses.
fn write_record(dir: &Path, b: &Built, progress: &Progress) -> Result<(), StageError> {
    let d = dir.join("training");
    std::fs::create_dir_all(&d).map_err(|e| StageError::io(&d, e))?;
    let (trainable, total) = b.parameter_report();
    let report = serde_json::json!({
        "trainable_parameters": trainable,
        "all_parameters": total,
        "percent_trainable": 100.0 * trainable as f64 / total as f64,
        "steps": progress.step,
    });
    let write =
        |name: &str, text: String| std::fs::write(d.join(name), text).map_err(|e| StageError::io(&d.join(name), e));
    write("parameters.json", serde_json::to_string_pretty(&report).expect("report serializes"))?;
    // The loss curve is deterministic on the CPU; throughput (a timing) goes apart.
    let mut losses = String::from("step,loss,lr\n");
    let mut throughput = String::from("step,tokens_per_s\n");
    for (s, l, lr, tps) in &progress.losses {
        losses.push_str(&format!("{s},{l},{lr}\n"));
        throughput.push_str(&format!("{s},{tps}\n"));
    }
    write("losses.csv", losses)?;
    write("throughput.csv", throughput)?;
    let mut val = String::from("step,validation_loss\n");
    for (s, l) in &progress.validation {
        val.push_str(&format!("{s},{l}\n"));
    }
    write("validation.csv", val)
}

/// Writes the trained weights: a full model folder (fp32 safetensors, the base's configs and
/// tokenizer), or a PEFT adapter folder (`adapter_model.safetensors`, `adapter_config.json`).
pub fn save(built: &Built, p: &TrainParams, out: &Path) -> Result<(), StageError> {
    match &built.adapters {
        None => {
            weights::save(&weights::variables(&built.base), &out.join("model.safetensors"))?;
            loader::copy_model_files(&built.dir, out)
        }
        Some(adapters) => {
            weights::save(&weights::variables(adapters), &out.join("adapter_model.safetensors"))?;
            let base = p.model.clone().unwrap_or_else(|| built.dir.display().to_string());
            let config = lora::adapter_config(p.lora.as_ref().expect("defaults filled"), &base);
            let path = out.join("adapter_config.json");
            std::fs::write(&path, serde_json::to_string_pretty(&config).expect("config serializes"))
                .map_err(|e| StageError::io(&path, e))
        }
    }
}

/// Runs either stage: build for the method, train, write the artifact.
fn run(method: Method, p: &TrainParams, ctx: &StageContext) -> Result<(), StageError> {
    let start = Instant::now();
    let device = device::device(p.device)?;
    let dir = model_ref::resolve(&p.model, ctx)?;
    let train_tokens = TokenTable::read(ctx.input("train")?)?;
    let validation = match &p.validation {
        Some(_) => Some(TokenTable::read(ctx.input("validation")?)?),
        None => None,
    };
    let built = build(method, &dir, p, device)?;
    ctx.record("load_seconds", start.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let progress = train(&built, &train_tokens, validation.as_ref(), p, &ctx.work_dir, ctx)?;
    let seconds = t0.elapsed().as_secs_f64();
    let (trainable, total) = built.parameter_report();
    ctx.record("steps", progress.step as f64);
    ctx.record("seconds", seconds);
    let tokens_per_s: Vec<f64> = progress.losses.iter().map(|l| l.3).collect();
    ctx.record("mean_tokens_per_s", tokens_per_s.iter().sum::<f64>() / tokens_per_s.len().max(1) as f64);
    ctx.record("trainable_parameters", trainable as f64);
    ctx.record("all_parameters", total as f64);
    if let Some((_, l, _, _)) = progress.losses.last() {
        ctx.record("final_loss", *l);
    }
    let out = ctx.output_dir(match method {
        Method::Full => "model",
        Method::Lora => "adapter",
    })?;
    let t = Instant::now();
    save(&built, p, &out)?;
    write_record(&out, &built, &progress)?;
    ctx.record("save_seconds", t.elapsed().as_secs_f64());
    Ok(())
}

fn inputs(p: &TrainParams) -> Vec<InputSlot> {
    let mut slots =
        vec![InputSlot { field: "train".into(), reference: p.train.clone(), accepts: &[ArtifactKind::Tokens] }];
    if let Some(v) = &p.validation {
        slots.push(InputSlot { field: "validation".into(), reference: v.clone(), accepts: &[ArtifactKind::Tokens] });
    }
    slots.extend(model_ref::inputs(&p.model_from));
    slots
}

/// The params' problems for `method`, before anything runs (also for `sumflow bench`).
pub fn check(method: Method, p: &TrainParams) -> Vec<ParamError> {
    let mut errors = model_ref::check(&p.model, &p.model_from);
    if method == Method::Full && p.lora.is_some() {
        errors.push(ParamError::new("lora", "is for `train-lora`; `train-full` trains every weight"));
    }
    if let Some(l) = &p.lora {
        errors.extend(l.check().into_iter().map(|(f, m)| ParamError::new(format!("lora.{f}"), m)));
    }
    if p.lr.is_some_and(|lr| lr.is_nan() || lr <= 0.0) {
        errors.push(ParamError::new("lr", "must be positive"));
    }
    if p.bf16_weights && p.dtype == DtypeChoice::Fp32 {
        errors.push(ParamError::new("bf16_weights", "needs bf16 compute (`dtype: bf16`, or `auto` on CUDA)"));
    }
    if p.dtype == DtypeChoice::Fp16 {
        errors.push(ParamError::new("dtype", "fp16 overflows in T5 and training has no loss scaling; use bf16"));
    }
    if p.epochs == 0 && p.max_steps.is_none() {
        errors.push(ParamError::new("epochs", "must be at least 1"));
    }
    if p.dropout.is_some_and(|d| !(0.0..1.0).contains(&d)) {
        errors.push(ParamError::new("dropout", "must be in [0, 1)"));
    }
    if !(p.checkpoint_minutes >= 0.0 && p.checkpoint_minutes.is_finite()) {
        errors.push(ParamError::new("checkpoint_minutes", "must be a number of minutes, 0 or more"));
    }
    if p.pad_to_multiple_of == 0 {
        errors.push(ParamError::new("pad_to_multiple_of", "must be at least 1"));
    }
    if p.pad_labels_to_multiple_of == Some(0) {
        errors.push(ParamError::new("pad_labels_to_multiple_of", "must be at least 1"));
    }
    if p.pack && (p.pad_to_multiple_of > 1 || p.pad_labels_to_multiple_of.is_some_and(|m| m > 1)) {
        let field = if p.pad_to_multiple_of > 1 { "pad_to_multiple_of" } else { "pad_labels_to_multiple_of" };
        errors.push(ParamError::new(field, "has no effect with `pack: true` (packed batches have fixed shapes)"));
    }
    errors
}

/// The `train-full` stage.
pub struct TrainFull;

/// The `train-lora` stage.
pub struct TrainLora;

macro_rules! train_stage {
    ($ty:ty, $method:expr, $kind:literal, $output:literal, $artifact:expr, $about:literal) => {
        impl Stage for $ty {
            type Params = TrainParams;
            const KIND: &'static str = $kind;
            // 3: the fused norm on CUDA (the same within bf16 rounding; the CPU is unchanged).
            // 4: the update's scalars as fp32 device tensors (the last bits of the weights).
            const VERSION: u32 = 4;
            const ABOUT: &'static str = $about;

            fn defaults(&self, p: &mut TrainParams) {
                $method.defaults(p)
            }
            fn inputs(&self, p: &TrainParams) -> Vec<InputSlot> {
                inputs(p)
            }
            fn outputs(&self, _: &TrainParams) -> Vec<OutputDecl> {
                vec![OutputDecl { name: $output.into(), kind: $artifact }]
            }
            fn check(&self, p: &TrainParams) -> Vec<ParamError> {
                check($method, p)
            }
            fn files(&self, p: &TrainParams) -> Vec<FileInput> {
                model_ref::files(&p.model)
            }
            fn resource(&self, p: &TrainParams) -> Resource {
                if p.device == DeviceChoice::Cpu {
                    Resource::Cpu
                } else {
                    Resource::Gpu
                }
            }
            fn volatile_files(&self) -> &'static [&'static str] {
                &["training/throughput.csv"]
            }
            fn run(&self, p: &TrainParams, ctx: &StageContext) -> Result<(), StageError> {
                run($method, p, ctx)
            }
            fn summary(&self, _: &TrainParams, outputs: &BTreeMap<String, PathBuf>) -> Option<String> {
                let d = outputs.get($output)?.join("training");
                let r: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(d.join("parameters.json")).ok()?).ok()?;
                let losses = std::fs::read_to_string(d.join("losses.csv")).ok()?;
                let last = losses.lines().last()?.split(',').nth(1)?.to_string();
                Some(format!(
                    "{} steps, final loss {last}; trainable model parameters: {} of {} ({:.2}%)",
                    r["steps"],
                    r["trainable_parameters"],
                    r["all_parameters"],
                    r["percent_trainable"].as_f64()?
                ))
            }
        }
    };
}

train_stage!(
    TrainFull,
    Method::Full,
    "train-full",
    "model",
    ArtifactKind::Model,
    "full fine-tuning (lab defaults: lr 1e-5, weight decay 0.01)"
);
train_stage!(
    TrainLora,
    Method::Lora,
    "train-lora",
    "adapter",
    ArtifactKind::Adapter,
    "LoRA fine-tuning, PEFT-layout adapter (lab defaults: r 32, alpha 32, dropout 0.05, q and v, lr 1e-3)"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// `pad_to_multiple_of` (and the empty rows CUDA graphs add) change the batch's shape, not
    /// its loss or gradients (dropout off), also under bf16 autocast, where a fully masked row
    /// would turn to NaN.
    #[test]
    fn padding_changes_shapes_not_the_loss_or_gradients() {
        let (vs, m) = crate::t5::model::tiny();
        let tokens = TokenTable {
            ids: vec!["a".into(), "b".into()],
            input_ids: vec![vec![5, 6, 7, 8, 9, 1], vec![8, 9, 1]],
            labels: vec![vec![10, 11, 12, 1], vec![12, 1]],
        };
        let (x, mask, y) = collate(&tokens, &[0, 1], Padding::NONE.shape(&tokens, &[0, 1]), Device::Cpu);
        let padding = Padding { sources: 16, labels: 8, rows: 8 };
        let (x16, mask16, y16) = collate(&tokens, &[0, 1], padding.shape(&tokens, &[0, 1]), Device::Cpu);
        assert_eq!((x.size(), y.size()), (vec![2, 6], vec![2, 4]));
        assert_eq!((x16.size(), y16.size()), (vec![8, 16], vec![8, 8]));
        assert_eq!(mask16.sum(Kind::Int64).int64_value(&[]), 9 + 6, "padding is masked; an empty row keeps one key");
        let grads = |loss: Tensor| {
            let value = loss.double_value(&[]);
            loss.backward();
            let g: Vec<Tensor> = vs.trainable_variables().iter().map(|v| v.grad().copy()).collect();
            vs.trainable_variables().iter().for_each(|v| v.shallow_clone().zero_grad());
            (value, g)
        };
        let (plain, plain_g) = grads(m.loss(&x, &mask, &y, false));
        let (padded, padded_g) = grads(m.loss(&x16, &mask16, &y16, false));
        assert!((plain - padded).abs() < 1e-5 * plain.abs(), "{plain} vs {padded}");
        for (a, b) in plain_g.iter().zip(&padded_g) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-5 * (1.0 + a.abs().max().double_value(&[])), "gradient off by {d}");
        }
        let (bf16, bf16_g) = grads(autocast::bf16(Device::Cpu, true, || m.loss(&x16, &mask16, &y16, false)));
        assert!((bf16 - plain).abs() < 0.02 * plain.abs(), "bf16 {bf16} vs {plain}");
        assert!(bf16_g.iter().all(|g| g.isfinite().all().int64_value(&[]) == 1), "finite gradients in bf16");
    }

    /// Packed rows give the loss and gradients the same examples give one per row (fp32,
    /// dropout off), also through the training stage's own collation, and stay finite in bf16.
    #[test]
    fn packing_changes_rows_not_the_loss_or_gradients() {
        let tokens = three_lengths();
        let packing = Packing::for_table(&tokens, 4096, 64);
        let epoch = packing.batches(&tokens, 0, 0);
        let examples = &epoch[0];
        assert_eq!((epoch.len(), examples.len()), (1, 32));
        assert!(packing.rows(&tokens, examples).len() <= 16, "several examples share rows");
        let plan = ShapePlan::new(Padding::NONE, &tokens, &[], false);
        let padded = Collated::new(&tokens, examples, &Layout::Padded(plan), Device::Cpu);
        let packed = Collated::new(&tokens, examples, &Layout::Packed(packing), Device::Cpu);
        let b = fresh(Method::Full, Device::Cpu);
        let grads = |loss: Tensor| {
            let value = loss.double_value(&[]);
            loss.backward();
            let g: Vec<Tensor> = b.base.trainable_variables().iter().map(|v| v.grad().copy()).collect();
            b.base.trainable_variables().iter().for_each(|v| v.shallow_clone().zero_grad());
            (value, g)
        };
        let (plain, plain_g) = grads(padded.loss(&b.model, true));
        let (packed_loss, packed_g) = grads(packed.loss(&b.model, true));
        assert!((plain - packed_loss).abs() < 1e-5 * plain.abs(), "{plain} vs packed {packed_loss}");
        for (a, g) in plain_g.iter().zip(&packed_g) {
            let d = (a - g).abs().max().double_value(&[]);
            assert!(d < 1e-5 * (1.0 + a.abs().max().double_value(&[])), "gradient off by {d}");
        }
        let (bf16, bf16_g) = grads(autocast::bf16(Device::Cpu, true, || packed.loss(&b.model, true)));
        assert!((bf16 - plain).abs() < 0.02 * plain.abs(), "bf16 {bf16} vs {plain}");
        assert!(bf16_g.iter().all(|g| g.isfinite().all().int64_value(&[]) == 1), "finite gradients in bf16");
    }

    /// Training packed learns as unpacked training does, and resumes exactly.
    #[test]
    fn packed_training_learns_and_resumes() {
        let tokens = three_lengths();
        let reference = fresh(Method::Full, Device::Cpu);
        let dir = tempfile::tempdir().unwrap();
        let unpacked = losses(Method::Full, &like(Method::Full, &reference), &tokens, "", &dir.path().join("u"));
        let yaml = "pack: true
checkpoint_every: 4";
        let work = dir.path().join("p");
        let packed = losses(Method::Full, &like(Method::Full, &reference), &tokens, yaml, &work);
        let per_epoch = packed.len() / 3;
        let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
        assert!(mean(&packed[2 * per_epoch..]) < mean(&packed[..per_epoch]), "learns: {packed:?}");
        assert!((mean(&packed) - mean(&unpacked)).abs() < 0.1 * mean(&unpacked), "{packed:?}\nvs {unpacked:?}");
        let resumed = losses(Method::Full, &like(Method::Full, &reference), &tokens, yaml, &work);
        assert_eq!(resumed, packed, "resumed from its last checkpoint");
    }

    /// 32 rows in three length groups: sources of 6, 40 or 90 tokens, labels of 3 to 9 (with
    /// graphs, batches of two padded shapes: 64- and 128-token sources).
    fn three_lengths() -> TokenTable {
        let rows = 32;
        TokenTable {
            ids: (0..rows).map(|i| i.to_string()).collect(),
            input_ids: (0..rows)
                .map(|i| (0..[6, 40, 90][i % 3]).map(|t| 2 + ((i * 7 + t * 3) % 97) as i32).chain([1]).collect())
                .collect(),
            labels: (0..rows)
                .map(|i| (0..3 + i % 7).map(|t| 2 + ((i * 5 + t) % 97) as i32).chain([1]).collect())
                .collect(),
        }
    }

    /// A tiny model without dropout, with adapters for `method`, randomly initialized. The
    /// global generator is shared with tests on other threads: runs copy one such model's
    /// weights ([`like`]) rather than draw their own.
    fn fresh(method: Method, device: Device) -> Built {
        let mut base = nn::VarStore::new(device);
        let mut config = crate::t5::config::T5Config::preset("tiny").unwrap();
        config.vocab_size = 100;
        let mut model = T5::new(&base.root(), config);
        model.set_dropout(0.0);
        let adapters = (method == Method::Lora).then(|| {
            base.freeze();
            let adapters = nn::VarStore::new(device);
            let settings = LoraSettings { r: 4, dropout: 0.0, ..Default::default() };
            lora::apply(&mut model, &adapters.root(), &settings);
            adapters
        });
        Built { model, base, adapters, dir: PathBuf::new() }
    }

    /// A fresh model with `reference`'s weights.
    fn like(method: Method, reference: &Built) -> Built {
        let mut b = fresh(method, reference.base.device());
        b.base.copy(&reference.base).unwrap();
        if let (Some(a), Some(r)) = (&mut b.adapters, &reference.adapters) {
            a.copy(r).unwrap();
        }
        b
    }

    /// Trains `b` with the params `yaml` adds to a small setup, in `work`; the step losses.
    fn losses(method: Method, b: &Built, tokens: &TokenTable, yaml: &str, work: &Path) -> Vec<f64> {
        let lr = if method == Method::Lora { 0.005 } else { 0.001 };
        let p: TrainParams = serde_yaml::from_str(&format!(
            "train: t\nmodel: m\nbatch_tokens: 400\nmax_batch_rows: 6\nlr: {lr}\nweight_decay: 0.01\nepochs: 3\n{yaml}"
        ))
        .unwrap();
        assert!(check(method, &p).is_empty());
        let ctx = StageContext::new("t", Default::default(), work.join("out"), work.to_path_buf(), &crate::NoProgress);
        let progress = train(b, tokens, None, &p, work, &ctx).unwrap();
        progress.losses.iter().map(|l| l.1).collect()
    }

    /// The trainable weights, by name, as fp32.
    fn trained(b: &Built) -> Vec<(String, Tensor)> {
        weights::variables(b.trainable()).into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float))).collect()
    }

    /// CUDA graphs replay the eager step: step by step the same losses (dropout off, bf16
    /// autocast as shipped, bf16 weights, and packed rows), full and LoRA, over batches of a few shapes that
    /// each come back.
    /// Needs CUDA (a GPU session runs it: `benchmarks/gpu-session.sh … graphs`); on the CPU,
    /// where `cuda_graphs` is ignored, it checks only its own setup.
    #[test]
    fn cuda_graph_steps_give_the_eager_steps_losses() {
        let device = if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu };
        if device == Device::Cpu {
            eprintln!("no CUDA device: both runs are eager; the CUDA graph test checks only its setup");
        }
        let tokens = three_lengths();
        let run = |method: Method, reference: &Built, precision: &str, graphs: bool| -> Vec<f64> {
            let dir = tempfile::tempdir().unwrap();
            // Packed batches have fixed shapes of their own; the others are padded for graphs.
            let padding =
                if precision.contains("pack") { "" } else { "pad_to_multiple_of: 64\npad_labels_to_multiple_of: 16\n" };
            let yaml = format!("max_steps: 12\n{padding}cuda_graphs: {graphs}\ncheckpoint_every: 0\n{precision}");
            losses(method, &like(method, reference), &tokens, &yaml, &dir.path().join("work"))
        };
        for precision in ["", "dtype: bf16\nbf16_weights: true", "pack: true"] {
            for method in [Method::Full, Method::Lora] {
                let reference = fresh(method, device);
                let setting = match precision {
                    "" => "as shipped",
                    "pack: true" => "packed",
                    _ => "bf16 weights",
                };
                let what = format!("{method:?}, {setting}");
                let (eager, graphed) =
                    (run(method, &reference, precision, false), run(method, &reference, precision, true));
                assert_eq!((eager.len(), graphed.len()), (12, 12));
                for (step, (e, g)) in eager.iter().zip(&graphed).enumerate() {
                    assert!((e - g).abs() <= 2e-3 * e.abs(), "{what} step {}: eager {e}, graphed {g}", step + 1);
                }
                let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
                assert!(mean(&eager[8..]) < mean(&eager[..4]), "{what} trains: {eager:?}");
                eprintln!("{what}: eager {eager:?}\n{what}: graphed {graphed:?}");
            }
        }
    }

    /// Checkpoints come by time by default (`checkpoint_minutes`, 10), by steps when asked, and
    /// never at the last step: a short run writes none; a run whose minutes are up after every
    /// step writes one after each but the last (the folder keeps the newest); `0` turns the time off.
    #[test]
    fn checkpoints_come_by_time_or_by_steps() {
        let tokens = three_lengths();
        let reference = fresh(Method::Lora, Device::Cpu);
        let latest = |yaml: &str| {
            let dir = tempfile::tempdir().unwrap();
            let work = dir.path().join("work");
            losses(Method::Lora, &like(Method::Lora, &reference), &tokens, &format!("max_steps: 4\n{yaml}"), &work);
            std::fs::read_to_string(work.join("latest")).ok()
        };
        assert_eq!(latest(""), None, "10 minutes are not up");
        assert_eq!(latest("checkpoint_minutes: 0.000001").as_deref(), Some("ckpt-3"));
        assert_eq!(latest("checkpoint_every: 2").as_deref(), Some("ckpt-2"));
        assert_eq!(latest("checkpoint_every: 0\ncheckpoint_minutes: 0").as_deref(), None);
        let p: TrainParams = serde_yaml::from_str("train: t\nmodel: m\ncheckpoint_minutes: -1").unwrap();
        assert_eq!(check(Method::Full, &p)[0].field, "checkpoint_minutes");
    }

    /// bf16 weights (`bf16_weights`): losses track autocast's, the trained weights come back as
    /// the fp32 masters, and a run resumed from a checkpoint continues exactly — the masters,
    /// not their bf16 copy, are what checkpoints hold.
    #[test]
    fn bf16_weights_track_autocast_and_resume_exactly() {
        let tokens = three_lengths();
        let bf16 = "dtype: bf16\nbf16_weights: true\nmax_steps: 6\ncheckpoint_every: 3";
        for method in [Method::Full, Method::Lora] {
            let reference = fresh(method, Device::Cpu);
            let dir = tempfile::tempdir().unwrap();
            let autocast =
                losses(method, &like(method, &reference), &tokens, "dtype: bf16\nmax_steps: 6", &dir.path().join("a"));
            let whole = like(method, &reference);
            let work = dir.path().join("b");
            let straight = losses(method, &whole, &tokens, bf16, &work);
            for (step, (a, b)) in autocast.iter().zip(&straight).enumerate() {
                assert!(
                    (a - b).abs() <= 0.02 * a.abs(),
                    "{method:?} step {}: autocast {a}, bf16 weights {b}",
                    step + 1
                );
            }
            assert!(trained(&whole).iter().all(|(_, t)| t.kind() == Kind::Float));
            // Its work folder keeps the step-3 checkpoint: a second run resumes there.
            let resumed = like(method, &reference);
            assert_eq!(losses(method, &resumed, &tokens, bf16, &work), straight, "{method:?}");
            for ((name, a), (_, b)) in trained(&whole).iter().zip(trained(&resumed)) {
                assert_eq!((a - b).abs().max().double_value(&[]), 0.0, "{method:?} {name}");
            }
            // The masters hold what bf16 cannot: not every trained weight is a bf16 value.
            let (_, w) = &trained(&whole)[0];
            assert!(w.ne_tensor(&w.to_kind(Kind::BFloat16).to_kind(Kind::Float)).any().int64_value(&[]) == 1);
        }
    }
}
