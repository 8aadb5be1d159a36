//! `sumflow bench`: its flags, and the report the stages crate's bench tool measures (through
//! the training and generation stages' own code), with each measurement's peak memory taken as
//! the executor takes a stage's.

use std::path::PathBuf;
#[cfg(feature = "torch")]
use std::process::ExitCode;

#[cfg(feature = "torch")]
use sumflow_stages::RuntimeOptions;

#[cfg(feature = "torch")]
use crate::error::Error;

/// What to measure (the flags of `sumflow bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A model folder (e.g. `sumflow make-model --arch flan-t5-base ...`).
    #[arg(long)]
    pub model: PathBuf,
    /// DialogSum folder (train/test CSVs).
    #[arg(long, default_value = "../shared/data/dialogsum")]
    pub data: PathBuf,
    /// The lab's precomputed results file, for the scoring figure.
    #[arg(long, default_value = "../shared/data/lab-results/dialogue-summary-training-results.csv")]
    pub results: PathBuf,
    /// `cpu`, `cuda` or `auto`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Training steps per method (the first warms up and is not timed).
    #[arg(long, default_value_t = 20)]
    pub train_steps: u64,
    /// Tokens per training batch.
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Rows per training batch at most (the training stages' default).
    #[arg(long, default_value_t = 64)]
    pub max_batch_rows: usize,
    /// Training batches padded to a multiple of this many tokens (1: to the longest row).
    #[arg(long, default_value_t = 1)]
    pub pad_to_multiple_of: usize,
    /// The labels' multiple, when it differs from the sources'.
    #[arg(long)]
    pub pad_labels_to_multiple_of: Option<usize>,
    /// CUDA graphs: training steps captured once per batch shape and replayed (needs
    /// `--pad-to-multiple-of` ≥ 8), and greedy decoding with fixed shapes, a token's step replayed.
    #[arg(long)]
    pub cuda_graphs: bool,
    /// Tokens per generation batch (default: the `generate` stage's for the device).
    #[arg(long)]
    pub generate_batch_tokens: Option<usize>,
    /// Distinct test dialogues generated in batches.
    #[arg(long, default_value_t = 500)]
    pub generate: usize,
    /// Of those, generated one at a time (the lab's loop).
    #[arg(long, default_value_t = 20)]
    pub generate_one_at_a_time: usize,
    /// New tokens per summary.
    #[arg(long, default_value_t = 40)]
    pub max_new_tokens: i64,
    /// Precision: `auto` (bf16 on CUDA, fp32 on the CPU), `fp32` or `bf16` (training: bf16
    /// autocast over fp32 weights; generation: bf16 weights).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Training with bf16 compute: bf16 weights (copies of fp32 masters) instead of autocast
    /// over fp32 weights (the training stages' `bf16_weights`).
    #[arg(long)]
    pub bf16_weights: bool,
    /// Training packs several dialogues per row, the batches in one shape (two with the longest
    /// summaries; the training stages' `pack`).
    #[arg(long)]
    pub pack: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[cfg(feature = "torch")]
impl BenchArgs {
    fn settings(&self) -> sumflow_stages::tools::BenchSettings {
        sumflow_stages::tools::BenchSettings {
            model: self.model.clone(),
            data: self.data.clone(),
            results: self.results.clone(),
            device: self.device.clone(),
            train_steps: self.train_steps,
            batch_tokens: self.batch_tokens,
            max_batch_rows: self.max_batch_rows,
            pad_to_multiple_of: self.pad_to_multiple_of,
            pad_labels_to_multiple_of: self.pad_labels_to_multiple_of,
            cuda_graphs: self.cuda_graphs,
            generate_batch_tokens: self.generate_batch_tokens,
            generate: self.generate,
            generate_one_at_a_time: self.generate_one_at_a_time,
            max_new_tokens: self.max_new_tokens,
            dtype: self.dtype.clone(),
            bf16_weights: self.bf16_weights,
            pack: self.pack,
        }
    }
}

/// Peak memory as the executor measures a stage's.
#[cfg(feature = "torch")]
struct Meter(std::sync::Mutex<Option<crate::run::memory::GpuSampler>>);

#[cfg(feature = "torch")]
impl sumflow_stages::tools::PeakMemory for Meter {
    fn start(&self) {
        crate::run::memory::reset_peak();
        *self.0.lock().expect("meter lock") = crate::run::memory::GpuSampler::start(None, std::process::id());
    }
    fn stop(&self) -> (Option<f64>, Option<f64>) {
        let gpu = self.0.lock().expect("meter lock").take().map(crate::run::memory::GpuSampler::stop);
        (crate::run::memory::peak_mb(), gpu)
    }
}

/// `sumflow bench`.
#[cfg(feature = "torch")]
pub fn bench(args: &BenchArgs, runtime: &RuntimeOptions) -> Result<ExitCode, Error> {
    let report = sumflow_stages::tools::bench(&args.settings(), runtime, &Meter(Default::default()))?;
    out!("{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report).expect("reports serialize");
        crate::cache::atomic_write(path, &text).map_err(|e| Error::io(path, e))?;
    }
    Ok(ExitCode::SUCCESS)
}
