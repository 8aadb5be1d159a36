//! An epoch's batches and how they reach the device: length-bucketed batches under a token
//! budget ([`batches`]) padded to their shape ([`collate`]), or packed rows ([`Packing`]);
//! [`Layout::epoch`] makes an epoch either way, and [`Collated`] is a batch on the device as the
//! loss takes it.

use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::packing::Packing;
use super::params::TrainParams;
use super::shapes::{Padding, Shape, ShapePlan};
use crate::data::tokenize::TokenTable;
use crate::t5::model::T5;

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

/// How training pads batches for `p`; with `graphs` (steps replayed as CUDA graphs) rows go to
/// multiples of 8 too, for fewer shapes.
pub fn padding(p: &TrainParams, graphs: bool) -> Padding {
    let sources = p.pad_to_multiple_of;
    let labels = p.pad_labels_to_multiple_of.unwrap_or(sources);
    if graphs {
        // At least 64-token sources, 16-token labels and 8 rows: 20 shapes in a DialogSum epoch
        // instead of 199, for 1.36 tokens computed per real one (1.12 unpadded); then the rare
        // ones run in larger shapes ([`ShapePlan`]): 9.
        return Padding { sources: sources.max(64), labels: labels.max(16), rows: 8 };
    }
    Padding { sources, labels, rows: 1 }
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
    pub fn over(&self, t: &[Tensor]) -> Collated {
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
    /// unpacked batches to few shapes ([`padding`], [`ShapePlan`]).
    pub fn epoch(tokens: &TokenTable, p: &TrainParams, epoch: u64, graphs: bool) -> (Vec<Vec<usize>>, Layout) {
        if p.pack {
            let packing = Packing::for_table(tokens, p.batch_tokens, p.max_batch_rows);
            return (packing.batches(tokens, p.seed, epoch), Layout::Packed(packing));
        }
        let list = batches(tokens, p.batch_tokens, p.max_batch_rows, p.seed, epoch);
        let plan = ShapePlan::new(padding(p, graphs), tokens, &list, graphs);
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
