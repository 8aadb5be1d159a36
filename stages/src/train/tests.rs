//! The training loop's own tests: padding and packing change shapes, not the loss; packed
//! training learns and resumes; checkpoints' cadence; bf16 weights; CUDA graphs replay eager
//! steps (with a GPU).

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};

use super::batches::{collate, Collated, Layout};
use super::fit::fit;
use super::model::Built;
use super::packing::Packing;
use super::params::{check, Method, TrainParams};
use super::shapes::{Padding, ShapePlan};
use crate::data::tokenize::TokenTable;
use crate::runtime::RuntimeOptions;
use crate::stage::StageContext;
use crate::t5::adapt;
use crate::t5::lora::LoraSettings;
use crate::t5::model::T5;
use crate::t5::weights;
use crate::torch::autocast;

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
        labels: (0..rows).map(|i| (0..3 + i % 7).map(|t| 2 + ((i * 5 + t) % 97) as i32).chain([1]).collect()).collect(),
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
        adapt::apply(&mut model, &adapters.root(), &settings);
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
    let runtime = RuntimeOptions::default();
    let ctx =
        StageContext::new("t", Default::default(), work.join("out"), work.to_path_buf(), &crate::NoProgress, &runtime);
    let progress = fit(b, tokens, None, &p, work, &ctx).unwrap();
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
            assert!((a - b).abs() <= 0.02 * a.abs(), "{method:?} step {}: autocast {a}, bf16 weights {b}", step + 1);
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
