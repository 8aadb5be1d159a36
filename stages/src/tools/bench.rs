//! `sumflow bench`: on one device, one model shape and DialogSum: training (full and LoRA) —
//! dialogues/s, real (non-pad) tokens/s, achieved TFLOP/s and MFU against the card's peak, the
//! epoch time it implies; generation — batched vs one at a time; scoring — pairs/s. Each is
//! measured through the stage's own code with the stage's own params type (defaults and all):
//! the training loop, `generate`'s batching, `score`'s evaluation. A table and JSON;
//! `benchmarks/bench.sh` puts the lab's Python settings beside it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::data::load::read_table;
use crate::data::tokenize::{render, tokenize, TokenTable, TokenizeParams};
use crate::error::StageError;
use crate::eval::report::params::{LAB_MODELS, LAB_REFERENCES};
use crate::eval::score::{evaluate, ScoreParams};
use crate::generate::{open, summarize, GenerateParams};
use crate::runtime::RuntimeOptions;
use crate::stage::{InputRef, NoProgress, StageContext};
use crate::tools::describe_runtime;
use crate::torch::device::{DeviceChoice, DtypeChoice};
use crate::train::batches::Layout;
use crate::train::fit::fit;
use crate::train::model::build;
use crate::train::params::{check, Method, Precision, TrainParams};
use crate::train::shapes::Shape;

/// What to measure (the flags of `sumflow bench`).
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// A model folder (e.g. `sumflow make-model --arch flan-t5-base ...`).
    pub model: PathBuf,
    /// DialogSum folder (train/test CSVs).
    pub data: PathBuf,
    /// The lab's precomputed results file, for the scoring figure.
    pub results: PathBuf,
    /// `cpu`, `cuda` or `auto`.
    pub device: String,
    /// Training steps per method (the first warms up and is not timed).
    pub train_steps: u64,
    /// Tokens per training batch.
    pub batch_tokens: usize,
    /// Rows per training batch at most.
    pub max_batch_rows: usize,
    /// Training batches padded to a multiple of this many tokens (1: to the longest row).
    pub pad_to_multiple_of: usize,
    /// The labels' multiple, when it differs from the sources'.
    pub pad_labels_to_multiple_of: Option<usize>,
    /// CUDA graphs, in training and in greedy decoding.
    pub cuda_graphs: bool,
    /// Tokens per generation batch (default: the `generate` stage's for the device).
    pub generate_batch_tokens: Option<usize>,
    /// Distinct test dialogues generated in batches.
    pub generate: usize,
    /// Of those, generated one at a time (the lab's loop).
    pub generate_one_at_a_time: usize,
    /// New tokens per summary.
    pub max_new_tokens: i64,
    /// Precision: `auto`, `fp32` or `bf16`.
    pub dtype: String,
    /// Training with bf16 weights over fp32 masters.
    pub bf16_weights: bool,
    /// Training packs several dialogues per row.
    pub pack: bool,
}

/// One measured figure set.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// What was measured.
    pub what: String,
    /// Dialogues (or pairs) per second.
    pub per_s: f64,
    /// Real tokens per second (training: source + target, no padding; generation: new tokens).
    pub tokens_per_s: f64,
    /// Achieved TFLOP/s (training: 6·N·T full, 4·N·T LoRA; else 0).
    pub tflops: f64,
    /// Fraction of the card's bf16 peak, when known.
    pub mfu: Option<f64>,
    /// Seconds for one epoch of DialogSum's train split at this rate (training only).
    pub epoch_s: Option<f64>,
    /// Seconds measured.
    pub seconds: f64,
    /// Peak resident memory of the process while measuring, MB.
    pub peak_rss_mb: Option<f64>,
    /// Peak GPU memory of the process while measuring (NVML), MB.
    pub peak_gpu_mb: Option<f64>,
    /// Training: tokens computed (padding included) per real token.
    pub computed_per_real: Option<f64>,
}

/// Everything `sumflow bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Device and runtime facts.
    pub runtime: BTreeMap<String, String>,
    /// The card's bf16 dense peak in TFLOP/s, when known.
    pub peak_tflops: Option<f64>,
    /// Parameters of the model.
    pub parameters: i64,
    /// The figures.
    pub figures: Vec<Figures>,
}

/// The bf16 dense peak of known cards, by name.
pub fn peak_tflops(gpus: &str) -> Option<f64> {
    [("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0)]
        .iter()
        .find(|(n, _)| gpus.contains(n))
        .map(|(_, p)| *p)
}

impl BenchReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "sumflow bench: {} parameters; {}; peak {}\n{:64} {:>10} {:>12} {:>9} {:>7} {:>9} {:>15}\n",
            self.parameters,
            self.runtime.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
            self.peak_tflops.map_or("unknown".into(), |p| format!("{p} TFLOP/s")),
            "measurement",
            "per s",
            "tokens/s",
            "TFLOP/s",
            "MFU",
            "epoch s",
            "peak MB cpu/gpu"
        );
        for f in &self.figures {
            out.push_str(&format!(
                "{:64} {:>10.2} {:>12.0} {:>9.3} {:>7} {:>9} {:>15}\n",
                f.what,
                f.per_s,
                f.tokens_per_s,
                f.tflops,
                f.mfu.map_or("-".into(), |m| format!("{:.1}%", 100.0 * m)),
                f.epoch_s.map_or("-".into(), |e| format!("{e:.1}")),
                format!(
                    "{}/{}",
                    f.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}")),
                    f.peak_gpu_mb.map_or("-".into(), |m| format!("{m:.0}"))
                )
            ));
        }
        out
    }
}

/// One measured training step: its batch shape as the training loop pads it, its real (non-pad)
/// tokens and its seconds.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// (rows, source width, label width) after padding.
    pub shape: Shape,
    /// Real tokens.
    pub tokens: usize,
    /// Seconds it took.
    pub seconds: f64,
}

/// How long an epoch takes with CUDA graphs, projected from measured steps — `(seconds,
/// captures)`. The first step of each batch shape is a capture: it issues the whole step from
/// the host, then replays it once; every later step of that shape is a replay. A short bench
/// meets most shapes for the first time, so its average overstates what an epoch pays for
/// captures (an epoch of DialogSum has 207 batches in about 20 shapes). Here each shape of
/// `epoch` ((shape, real tokens) of every batch) costs one capture at the mean of the measured
/// captures, and the other batches run at the replays' measured tokens/s. `None` without both.
pub fn graphs_epoch(measured: &[Step], epoch: &[(Shape, usize)]) -> Option<(f64, usize)> {
    let mut seen = HashSet::new();
    let (captures, replays): (Vec<&Step>, Vec<&Step>) = measured.iter().partition(|s| seen.insert(s.shape));
    if captures.is_empty() || replays.is_empty() {
        return None;
    }
    let capture_s = captures.iter().map(|s| s.seconds).sum::<f64>() / captures.len() as f64;
    let replay_tokens_per_s =
        replays.iter().map(|s| s.tokens).sum::<usize>() as f64 / replays.iter().map(|s| s.seconds).sum::<f64>();
    let mut shapes = HashSet::new();
    let replayed: usize = epoch.iter().filter(|(shape, _)| !shapes.insert(*shape)).map(|(_, n)| n).sum();
    Some((shapes.len() as f64 * capture_s + replayed as f64 / replay_tokens_per_s, shapes.len()))
}

/// Peak memory over one measurement, as the runner measures it for stages (resident memory
/// and, on NVIDIA machines, GPU memory).
pub trait PeakMemory {
    /// Starts a new peak.
    fn start(&self);
    /// The peaks since [`PeakMemory::start`], in MB: (resident, GPU).
    fn stop(&self) -> (Option<f64>, Option<f64>);
}

fn dtype(name: &str) -> Result<DtypeChoice, StageError> {
    match name {
        "auto" => Ok(DtypeChoice::Auto),
        "fp32" => Ok(DtypeChoice::Fp32),
        "bf16" => Ok(DtypeChoice::Bf16),
        other => Err(StageError::param("--dtype", format!("`{other}`: use auto, fp32 or bf16"))),
    }
}

fn device(name: &str) -> Result<DeviceChoice, StageError> {
    match name {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda),
        "auto" => Ok(DeviceChoice::Auto),
        other => Err(StageError::param("--device", format!("`{other}`: use cpu, cuda or auto"))),
    }
}

/// The training stage's params for `method` as `o`'s flags set them; the rest are the stage's
/// defaults, the method's (the lab's learning rates, LoRA settings) included.
fn train_params(method: Method, o: &BenchSettings) -> Result<TrainParams, StageError> {
    let mut p = TrainParams::new(InputRef { stage: "bench".into(), output: None }, o.model.display().to_string());
    p.max_steps = Some(o.train_steps);
    p.batch_tokens = o.batch_tokens;
    p.max_batch_rows = o.max_batch_rows;
    p.pad_to_multiple_of = o.pad_to_multiple_of;
    p.pad_labels_to_multiple_of = o.pad_labels_to_multiple_of;
    p.cuda_graphs = o.cuda_graphs;
    p.pack = o.pack;
    p.bf16_weights = o.bf16_weights;
    (p.device, p.dtype) = (device(&o.device)?, dtype(&o.dtype)?);
    // Measured steps only: no checkpoints.
    (p.checkpoint_every, p.checkpoint_minutes) = (0, 0.0);
    method.defaults(&mut p);
    if let Some(e) = check(method, &p).first() {
        return Err(StageError::param(format!("--{}", e.field.replace('_', "-")), e.message.clone()));
    }
    Ok(p)
}

fn train_figures(
    method: Method,
    o: &BenchSettings,
    tokens: &TokenTable,
    peak: Option<f64>,
    work: &Path,
    runtime: &RuntimeOptions,
    memory: &dyn PeakMemory,
) -> Result<(Vec<Figures>, i64), StageError> {
    let p = train_params(method, o)?;
    let b = build(method, &o.model, &p, crate::torch::device::device(p.device, runtime, None)?, runtime)?;
    let (trainable, total) = b.parameter_report();
    let ctx = StageContext::new("bench", Default::default(), work.join("out"), work.join("work"), &NoProgress, runtime);
    memory.start();
    let progress = fit(&b, tokens, None, &p, &work.join("work"), &ctx)?;
    let (peak_rss_mb, peak_gpu_mb) = memory.stop();
    // The first step warms up (kernel choice, the allocator's first growth) and is not timed,
    // as on the Python side; a later step's time is its real tokens over the tokens/s it
    // recorded (its forward and backward, and the previous step's update). Steps past the
    // first epoch are left out (the next epoch's batches come in another order).
    let device = b.trainable().device();
    // The first epoch's batches, laid out as the training loop laid them out.
    let (epoch, layout) = Layout::epoch(tokens, &p, 0, p.cuda_graphs && device.is_cuda());
    let timed: Vec<(&Vec<usize>, f64)> =
        epoch.iter().zip(&progress.losses).skip(1).map(|(batch, l)| (batch, l.3)).collect();
    let all: usize = tokens.input_ids.iter().chain(&tokens.labels).map(Vec::len).sum();
    let flops_per_token = if method == Method::Full { 6.0 } else { 4.0 }
        * (total - if method == Method::Lora { trainable } else { 0 }) as f64;
    let what = match method {
        Method::Full => "train, full fine-tuning".to_string(),
        Method::Lora => {
            let l = p.lora.as_ref().expect("defaults filled");
            format!("train, LoRA r{} {}", l.r, l.targets.join(","))
        }
    };
    let mut what = match p.precision(device) {
        Precision::Bf16Weights => format!("{what}, bf16 weights"),
        Precision::Fp32 | Precision::Autocast => what,
    };
    if p.pack {
        what.push_str(", packed");
    }
    let shape = |rows: &[usize]| layout.shape(tokens, rows);
    // Real (non-pad) tokens of a batch.
    let real_tokens =
        |rows: &[usize]| -> usize { rows.iter().map(|&r| tokens.input_ids[r].len() + tokens.labels[r].len()).sum() };
    let figure = |label: String, steps: &[(&Vec<usize>, f64)]| {
        let (mut rows, mut real, mut computed, mut seconds) = (0, 0, 0, 0.0);
        for (batch, tokens_per_s) in steps {
            let n = real_tokens(batch);
            let [r, s, l] = shape(batch);
            rows += batch.len();
            real += n;
            computed += r * (s + l);
            seconds += n as f64 / tokens_per_s;
        }
        let computed_per_real = computed as f64 / real.max(1) as f64;
        let tflops = flops_per_token * real as f64 / seconds / 1e12;
        Figures {
            what: format!("{what} ({label}; {computed_per_real:.2} tokens computed per real one)"),
            per_s: rows as f64 / seconds,
            tokens_per_s: real as f64 / seconds,
            tflops,
            mfu: peak.map(|p| tflops / p),
            epoch_s: Some(all as f64 / (real as f64 / seconds)),
            seconds,
            peak_rss_mb,
            peak_gpu_mb,
            computed_per_real: Some(computed_per_real),
        }
    };
    let mut figures = vec![figure(format!("{} steps after 1 warm-up", timed.len()), &timed)];
    if p.cuda_graphs && device.is_cuda() {
        // Also the steady state: the steps that replayed a graph captured by an earlier step of
        // the same batch shape (padded as the training loop pads it).
        let mut seen = HashSet::new();
        let replays: Vec<(&Vec<usize>, f64)> =
            timed.iter().filter(|(rows, _)| !seen.insert(shape(rows))).copied().collect();
        if !replays.is_empty() {
            figures
                .push(figure(format!("CUDA graph replays only: {} of {} steps", replays.len(), timed.len()), &replays));
        }
        // And a whole epoch as graphs run it: each shape captured once, the rest replayed.
        let measured: Vec<Step> = timed
            .iter()
            .map(|(rows, tokens_per_s)| {
                let n = real_tokens(rows);
                Step { shape: shape(rows), tokens: n, seconds: n as f64 / tokens_per_s }
            })
            .collect();
        let whole: Vec<(Shape, usize)> = epoch.iter().map(|rows| (shape(rows), real_tokens(rows))).collect();
        if let Some((seconds, captures)) = graphs_epoch(&measured, &whole) {
            let tflops = flops_per_token * all as f64 / seconds / 1e12;
            figures.push(Figures {
                what: format!("{what} (an epoch projected: {captures} captures, {} replays)", epoch.len() - captures),
                per_s: tokens.input_ids.len() as f64 / seconds,
                tokens_per_s: all as f64 / seconds,
                tflops,
                mfu: peak.map(|p| tflops / p),
                epoch_s: Some(seconds),
                seconds,
                peak_rss_mb,
                peak_gpu_mb,
                computed_per_real: None,
            });
        }
    }
    Ok((figures, total))
}

/// Runs every measurement, `memory` measuring each one's peaks.
pub fn bench(o: &BenchSettings, runtime: &RuntimeOptions, memory: &dyn PeakMemory) -> Result<BenchReport, StageError> {
    if o.train_steps < 2 {
        return Err(StageError::param("--train-steps", "at least 2 (the first warms up and is not timed)"));
    }
    let mut report_runtime = describe_runtime();
    let peak = report_runtime.get("gpus").and_then(|g| peak_tflops(g)).filter(|_| o.device != "cpu");
    // The training stages' params, checked before anything runs.
    train_params(Method::Full, o)?;
    let work = std::env::temp_dir().join(format!("sumflow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| StageError::io(&work, e))?;
    let model = o.model.display().to_string();
    let tokenizer = crate::data::tokenizer::load(&o.model.join("tokenizer.json"))?;
    let train_table = read_table(&o.data.join("train.csv"), None)?;
    let tp = TokenizeParams::new(InputRef { stage: "train".into(), output: None }, model.clone());
    let (tokens, _) = tokenize(&train_table, &tokenizer, &tp, "train")?;
    let mut figures = Vec::new();
    let (full, parameters) = train_figures(Method::Full, o, &tokens, peak, &work.join("full"), runtime, memory)?;
    figures.extend(full);
    figures.extend(train_figures(Method::Lora, o, &tokens, peak, &work.join("lora"), runtime, memory)?.0);

    // Generation: distinct test dialogues, batched and one at a time, with `generate`'s params.
    let mut g = GenerateParams::new(InputRef { stage: "test".into(), output: None }, model);
    (g.device, g.dtype) = (device(&o.device)?, dtype(&o.dtype)?);
    (g.max_new_tokens, g.batch_tokens, g.cuda_graphs) = (o.max_new_tokens, o.generate_batch_tokens, o.cuda_graphs);
    let test = read_table(&o.data.join("test.csv"), None)?;
    let mut prompts: Vec<String> =
        test.column(&g.source_column, "test")?.iter().map(|d| render(&g.template, d)).collect();
    prompts.dedup();
    let m = open(&o.model, None, &g, runtime, None)?;
    // Which attention kernels libtorch picks here (on CUDA, `math` computes in fp32).
    for (key, training) in [("attention_training", true), ("attention_decoding", false)] {
        let kernels = m.model.attention_kernels(m.vs.kind(), training);
        report_runtime
            .insert(key.into(), kernels.iter().map(|(a, k)| format!("{a} {k}")).collect::<Vec<_>>().join(" / "));
    }
    for (label, n, one) in [
        ("generate, batched", o.generate, false),
        ("generate, one at a time (lab loop)", o.generate_one_at_a_time, true),
    ] {
        let n = n.min(prompts.len());
        if n == 0 {
            continue;
        }
        g.one_at_a_time = one;
        memory.start();
        let r = summarize(&m, &prompts[..n], &g.options(), &NoProgress, None)?;
        let (peak_rss_mb, peak_gpu_mb) = memory.stop();
        figures.push(Figures {
            what: format!("{label} ({n} dialogues, ≤{} new tokens)", o.max_new_tokens),
            per_s: r.distinct as f64 / r.seconds,
            tokens_per_s: r.new_tokens as f64 / r.seconds,
            tflops: 0.0,
            mfu: None,
            epoch_s: None,
            seconds: r.seconds,
            peak_rss_mb,
            peak_gpu_mb,
            computed_per_real: None,
        });
    }

    // Scoring: the lab's 4,500 pairs, with `score`'s params.
    let table = read_table(&o.results, None)?;
    let models = LAB_MODELS.map(String::from).to_vec();
    let p = ScoreParams::new(InputRef { stage: "results".into(), output: None }, LAB_REFERENCES.into(), models, None);
    let t0 = Instant::now();
    let (report, _) = evaluate(&table, "results", &p)?;
    let seconds = t0.elapsed().as_secs_f64();
    let pairs = report.protocol.pairs * report.models.len();
    figures.push(Figures {
        what: format!("score, ROUGE ({pairs} pairs)"),
        per_s: pairs as f64 / seconds,
        tokens_per_s: 0.0,
        tflops: 0.0,
        mfu: None,
        epoch_s: None,
        seconds,
        peak_rss_mb: None,
        peak_gpu_mb: None,
        computed_per_real: None,
    });
    let _ = std::fs::remove_dir_all(&work);
    Ok(BenchReport { runtime: report_runtime, peak_tflops: peak, parameters, figures })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_with_graphs_pays_one_capture_per_shape_and_replays_the_rest() {
        let (a, b, c) = ([8, 64, 16], [16, 64, 16], [8, 128, 16]);
        let step = |shape, tokens, seconds| Step { shape, tokens, seconds };
        // Captures of a and b (1.0 s and 0.8 s), then replays: 150 tokens in 0.15 s.
        let measured = [step(a, 100, 1.0), step(a, 100, 0.1), step(b, 50, 0.8), step(b, 50, 0.05), step(a, 100, 0.1)];
        // Plus a shape the bench did not meet: it costs a capture too.
        let epoch = [(a, 100), (b, 50), (a, 100), (c, 80), (a, 100)];
        let (seconds, captures) = graphs_epoch(&measured, &epoch).unwrap();
        assert_eq!(captures, 3);
        // 3 captures at 0.9 s, then 200 tokens replayed at 250 / 0.25 s = 1,000 tokens/s.
        assert!((seconds - (3.0 * 0.9 + 0.2)).abs() < 1e-9, "{seconds}");
        // Without a replay measured, or without a capture, there is nothing to project from.
        assert!(graphs_epoch(&measured[..1], &epoch).is_none());
        assert!(graphs_epoch(&[], &epoch).is_none());
    }
}
