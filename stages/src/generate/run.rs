//! The `generate` stage's work on libtorch: open the model (adapter folded in), batch the
//! distinct dialogues under a token budget, decode, and write the predictions.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::GenerateParams;
use crate::adapter;
use crate::data::tokenize::{encode, render, row_ids};
use crate::error::{panic_message, StageError};
use crate::io::model_ref;
use crate::io::table::Table;
use crate::runtime::Ranks;
use crate::runtime::RuntimeOptions;
use crate::stage::{Progress, StageContext};
use crate::t5::attention::KEY_MULTIPLE;
use crate::t5::decode::{generate, greedy_fixed, Strategy};
use crate::t5::loader::{self, Loaded};
use crate::torch::device;
use crate::torch::dist::{self, Group};
use crate::torch::trace::StepTrace;

/// How to generate: everything but the data and the model.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Longest source, in tokens.
    pub max_source_tokens: usize,
    /// Most tokens generated per summary (the lab: 200).
    pub max_new_tokens: i64,
    /// Greedy, sampling or beam search.
    pub decoding: Strategy,
    /// Tokens per batch (rows × longest source), halved on CUDA out-of-memory; `None`: the
    /// device's default ([`default_batch_tokens`]).
    pub batch_tokens: Option<usize>,
    /// The lab's loop: one dialogue at a time.
    pub one_at_a_time: bool,
    /// Greedy decoding with fixed shapes, each token's step replayed as a CUDA graph (CUDA
    /// only; `crate::t5::decode::greedy_fixed`).
    pub cuda_graphs: bool,
}

impl GenerateParams {
    /// How to generate, as these params say.
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_source_tokens: self.max_source_tokens,
            max_new_tokens: self.max_new_tokens,
            decoding: self.decoding.clone(),
            batch_tokens: self.batch_tokens,
            one_at_a_time: self.one_at_a_time,
            cuda_graphs: self.cuda_graphs,
        }
    }
}

/// Summaries of `prompts` and their generated-token counts, plus figures of the run.
pub struct Generated {
    /// One per prompt, in order.
    pub summaries: Vec<(String, usize)>,
    /// Distinct prompts generated.
    pub distinct: usize,
    /// Sources cut to `max_source_tokens`.
    pub truncated: usize,
    /// Tokens generated in all.
    pub new_tokens: usize,
    /// Seconds spent generating.
    pub seconds: f64,
}

fn is_oom(panic: &(dyn std::any::Any + Send)) -> bool {
    panic_message(panic).contains("out of memory")
}

/// Tokens per generation batch unless asked otherwise. On CUDA a decoding step's cost grows
/// slowly with its rows (flan-t5-base on an H200, bf16: ≈ 10 ms per step in batches of 65,536
/// tokens, ≈ 19 ms with all of DialogSum's 500 test dialogues in one batch, every row padded to
/// 512), so fewer, larger batches win when summaries are long: the lab's 500 × 200 new tokens
/// took 3.9 s in one batch of 262,144 tokens (25 GB; halved on out-of-memory), where seven
/// batches of 16,384 took 18.8 s (before the fused norm). For 40-token summaries three batches
/// of 65,536 are faster (1.24 s against 1.52 s). On the CPU the decoder's cost grows with its
/// rows; 65,536 is what the CPU figures were measured with.
pub fn default_batch_tokens(device: Device) -> usize {
    if device.is_cuda() {
        262_144
    } else {
        65_536
    }
}

/// Generates a summary for each prompt with a loaded model; `trace`: the folder a trace of the
/// first batch goes to, if any.
pub fn summarize(
    m: &Loaded,
    prompts: &[String],
    o: &GenerateOptions,
    progress: &dyn Progress,
    trace: Option<&Path>,
) -> Result<Generated, StageError> {
    let t0 = Instant::now();
    let device = m.device();
    if let Strategy::Sample { top_k, .. } = o.decoding {
        let vocab = m.model.config.vocab_size;
        if top_k > vocab {
            return Err(StageError::param(
                "decoding.top_k",
                format!("{top_k} is more than the model's {vocab} tokens"),
            ));
        }
    }
    // Identical prompts are generated once.
    let (distinct, which) = distinct(prompts);
    let mut truncated = 0;
    let encoded: Vec<Vec<i32>> = distinct
        .iter()
        .map(|p| {
            let (ids, cut) = encode(&m.tokenizer, p, o.max_source_tokens)?;
            truncated += usize::from(cut);
            Ok(ids)
        })
        .collect::<Result<_, StageError>>()?;
    // Longest first, so each batch's padding is small and its size follows the budget.
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
    progress.set_total(distinct.len() as u64);
    let mut outputs: Vec<Vec<i64>> = vec![Vec::new(); distinct.len()];
    let mut budget = o.batch_tokens.unwrap_or_else(|| default_batch_tokens(device)).max(1);
    let mut start = 0;
    // CUDA graphs until a capture fails, if ever (then eagerly).
    let mut graphs = o.cuda_graphs;
    let mut trace = StepTrace::generation(trace, device);
    while start < order.len() {
        let longest = encoded[order[start]].len();
        let rows = if o.one_at_a_time { 1 } else { (budget / longest.max(1)).clamp(1, order.len() - start) };
        let batch = &order[start..start + rows];
        // On CUDA, sources in a multiple of 16 tokens (masked padding), which the attention
        // kernel takes without padding its masks at every layer and step.
        let width = if device.is_cuda() { longest.next_multiple_of(KEY_MULTIPLE) } else { longest };
        let mut ids = vec![0i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        for (r, &i) in batch.iter().enumerate() {
            for (c, &t) in encoded[i].iter().enumerate() {
                ids[r * width + c] = t as i64;
                mask[r * width + c] = 1;
            }
        }
        let shape = [rows as i64, width as i64];
        let x = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        let fixed = graphs && device.is_cuda() && o.decoding == Strategy::Greedy;
        let run = || {
            if fixed {
                greedy_fixed(&m.model, &x, &mask, o.max_new_tokens, true)
            } else {
                Ok(generate(&m.model, &x, &mask, o.max_new_tokens, &o.decoding))
            }
        };
        // Tracing: the first batch, encoder pass and every token's step.
        if let Some(t) = &mut trace {
            t.before_step(1);
        }
        let result = catch_unwind(AssertUnwindSafe(run));
        if let Some(mut t) = trace.take() {
            t.after_step(1, false);
        }
        match result {
            Ok(Err(e)) => {
                // Nothing was decoded: the batch runs again, eagerly, and so do the rest.
                progress.warn(&format!("`cuda_graphs`: {e}; decoding goes on without CUDA graphs"));
                graphs = false;
            }
            Ok(Ok(out)) => {
                for (&i, seq) in batch.iter().zip(out) {
                    outputs[i] = seq;
                }
                progress.inc(rows as u64);
                start += rows;
            }
            Err(panic) if device.is_cuda() && is_oom(panic.as_ref()) && rows > 1 => {
                budget = (rows * longest / 2).max(1);
                progress.message(&format!("CUDA out of memory: batch budget down to {budget} tokens"));
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let texts: Vec<(String, usize)> = outputs
        .iter()
        .map(|seq| {
            let ids: Vec<u32> = seq.iter().map(|&t| t as u32).collect();
            let text = m
                .tokenizer
                .decode(&ids, true)
                .map_err(|source| StageError::Tokenizer { context: "decoding a summary".into(), source })?;
            Ok((text, seq.len()))
        })
        .collect::<Result<_, StageError>>()?;
    Ok(Generated {
        new_tokens: texts.iter().map(|t| t.1).sum(),
        summaries: which.iter().map(|&w| texts[w].clone()).collect(),
        distinct: distinct.len(),
        truncated,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The distinct prompts, in the order they first appear, and for each prompt its index among
/// them.
fn distinct(prompts: &[String]) -> (Vec<&str>, Vec<usize>) {
    let mut distinct: Vec<&str> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let which = prompts
        .iter()
        .map(|p| {
            *slot.entry(p.as_str()).or_insert_with(|| {
                distinct.push(p);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, which)
}

/// Opens a model (and adapter), on the device and in the precision `p` asks for, computing
/// attention as the runtime options say.
pub fn open(
    dir: &Path,
    adapter: Option<&Path>,
    p: &GenerateParams,
    runtime: &RuntimeOptions,
    gpu: Option<usize>,
) -> Result<Loaded, StageError> {
    let device = device::device(p.device, runtime, gpu)?;
    let kind = device::kind(p.dtype, device, p.force_fp16)?;
    let mut m = match adapter {
        None => loader::load(dir, device, kind)?,
        Some(adapter) => {
            // The adapter is folded into the weights in fp32, before any cast to half precision:
            // each decoding step then runs the base model's products only (measured on an H200
            // before this: base + adapter decoded 2,883 new tokens/s, the base alone 5,306).
            let mut m = loader::load(dir, device, Kind::Float)?;
            adapter::apply_to(&mut m, adapter)?;
            m.fold_adapter();
            if kind != Kind::Float {
                m.vs.set_kind(kind);
            }
            m
        }
    };
    m.model.attention = runtime.attention;
    Ok(m)
}

/// One rank's part of a generation on several devices: the distinct prompts it took (their
/// indices) and what it made of them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Part {
    indices: Vec<usize>,
    summaries: Vec<(String, usize)>,
    truncated: usize,
    seconds: f64,
}

/// [`summarize`] on several devices: the distinct prompts dealt out by length, longest first and
/// in turn, so every rank gets as much work; each rank generates its own, and rank 0 gathers
/// the summaries back in order (`None` on the other ranks). Each summary is the one a single
/// process makes: only which batch a dialogue is in changes, and batches are padded and masked.
fn summarize_shared(
    m: &Loaded,
    prompts: &[String],
    p: &GenerateParams,
    ctx: &StageContext,
    ranks: &Ranks,
) -> Result<Option<Generated>, StageError> {
    let group = Group::join(ranks)?;
    ctx.record("devices", group.world as f64);
    if !m.device().is_cuda() {
        dist::share_cores(group.world);
    }
    let (distinct, which) = distinct(prompts);
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(distinct[i].len()));
    let indices: Vec<usize> = order.into_iter().skip(group.rank).step_by(group.world).collect();
    let mine: Vec<String> = indices.iter().map(|&i| distinct[i].to_string()).collect();
    let g = summarize(m, &mine, &p.options(), ctx.progress, ctx.runtime.trace.as_deref())?;
    let part = Part { indices, summaries: g.summaries, truncated: g.truncated, seconds: g.seconds };
    let bytes = serde_json::to_vec(&part).expect("parts serialize");
    let Some(parts) = group.gather("generate", &bytes)? else { return Ok(None) };
    let mut texts: Vec<Option<(String, usize)>> = vec![None; distinct.len()];
    let (mut truncated, mut seconds) = (0, 0.0f64);
    for bytes in parts {
        let part: Part = serde_json::from_slice(&bytes)
            .map_err(|e| StageError::Distributed(format!("a rank's summaries do not read back: {e}")))?;
        truncated += part.truncated;
        seconds = seconds.max(part.seconds);
        for (i, summary) in part.indices.into_iter().zip(part.summaries) {
            texts[i] = Some(summary);
        }
    }
    let texts: Vec<(String, usize)> = texts
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| StageError::Distributed("a dialogue's summary is missing from every rank's part".into()))?;
    Ok(Some(Generated {
        new_tokens: texts.iter().map(|t| t.1).sum(),
        summaries: which.iter().map(|&w| texts[w].clone()).collect(),
        distinct: distinct.len(),
        truncated,
        seconds,
    }))
}

/// Runs the stage: read the table, open the model, generate, write the predictions.
pub fn run(p: &GenerateParams, ctx: &StageContext) -> Result<(), StageError> {
    let start = std::time::Instant::now();
    let table = Table::read_artifact(ctx.input("input")?)?;
    let source = format!("input {}", p.input);
    let ids = row_ids(&table, &p.id_column, &source)?;
    let prompts: Vec<String> =
        table.column(&p.source_column, &source)?.iter().map(|d| render(&p.template, d)).collect();
    ctx.progress.message("loading the model");
    let adapter = match (&p.adapter, &p.adapter_from) {
        (Some(a), _) => Some(PathBuf::from(a)),
        (None, Some(_)) => Some(ctx.input("adapter_from")?.to_path_buf()),
        (None, None) => None,
    };
    let m = open(&model_ref::resolve(&p.model, ctx)?, adapter.as_deref(), p, ctx.runtime, ctx.gpu)?;
    ctx.record("load_seconds", start.elapsed().as_secs_f64());
    ctx.progress.message("generating");
    let g = match &ctx.ranks {
        Some(ranks) if ranks.world > 1 => match summarize_shared(&m, &prompts, p, ctx, ranks)? {
            Some(g) => g,
            // Rank 0 writes the predictions.
            None => return Ok(()),
        },
        _ => summarize(&m, &prompts, &p.options(), ctx.progress, ctx.runtime.trace.as_deref())?,
    };
    ctx.record("rows", prompts.len() as f64);
    ctx.record("dialogues", g.distinct as f64);
    ctx.record("new_tokens", g.new_tokens as f64);
    ctx.record("generation_seconds", g.seconds);
    ctx.record("dialogues_per_s", g.distinct as f64 / g.seconds.max(1e-9));
    ctx.record("new_tokens_per_s", g.new_tokens as f64 / g.seconds.max(1e-9));
    ctx.record("truncated_sources", g.truncated as f64);
    let (texts, counts): (Vec<String>, Vec<String>) = g.summaries.into_iter().map(|(t, n)| (t, n.to_string())).unzip();
    let names = vec!["id".into(), "prediction".into(), "tokens".into()];
    let out = Table::new(names, vec![ids, texts, counts], &source)?;
    out.write_artifact(&ctx.output_dir("predictions")?, &format!("generate from {}", p.input), 0)
}
