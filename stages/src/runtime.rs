//! Process-wide switches ([`RuntimeOptions`]), and a process's place among those running one
//! stage together ([`Ranks`]).
//!
//! The runner reads the options once at start-up, from its flags and the environment, hands
//! them to every stage through its context and writes them into every run manifest; nothing in
//! this crate reads the environment. The options that can change a stage's numbers (the
//! attention backend, cuDNN attention) also enter the cache keys of the stages that compute with
//! libtorch ([`RuntimeOptions::key`]), so a result made under one is never reused under another.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How attention probabilities are computed. Both forms give the same results within float
/// rounding (a test holds them to it); which is faster depends on the device, the precision and
/// the query length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionBackend {
    /// Written out on the CPU in bf16 or for one query at a time (decoding), libtorch's fused
    /// kernel otherwise. On 2 CPU cores libtorch 2.11's fused kernel takes 3.1 ms for one
    /// decoding step of a 24-row batch in bf16 where the written-out form takes 0.45 ms, and
    /// 24 ms vs 14 ms for an encoder layer; in fp32 it wins on full sequences (25 ms vs 40 ms).
    #[default]
    Auto,
    /// libtorch's `scaled_dot_product_attention` with bias and mask as one float mask.
    Sdpa,
    /// Scores, an fp32 softmax and the weighted sum, written out (transformers' eager path).
    Explicit,
}

impl fmt::Display for AttentionBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttentionBackend::Auto => "auto",
            AttentionBackend::Sdpa => "sdpa",
            AttentionBackend::Explicit => "explicit",
        })
    }
}

/// The CUDA allocator setting sumflow runs with unless `PYTORCH_CUDA_ALLOC_CONF` says otherwise:
/// with fixed segments a fresh process trained flan-t5-base at half speed on an H200 (110 vs 244
/// dialogues/s), reserving new memory for each new batch shape.
pub const DEFAULT_CUDA_ALLOC_CONF: &str = "expandable_segments:True";

/// Switches that hold for the whole process: read once by the runner, carried to stages by
/// [`crate::StageContext`], recorded in every run manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    /// How attention is computed (`--attention`, `SUMFLOW_ATTENTION`). Changes numbers within
    /// float rounding: enters model stages' keys when not `auto`.
    pub attention: AttentionBackend,
    /// Allow libtorch's cuDNN attention kernels on CUDA (`--cudnn-attention`,
    /// `SUMFLOW_CUDNN_ATTENTION=1`). Off by default: cuDNN builds a plan for each new batch
    /// shape (≈ 6 ms of host time per call on an H200), and T5's batches come in many shapes.
    /// Changes numbers within rounding: enters model stages' keys when on.
    pub cudnn_attention: bool,
    /// Print where each training step's time went at the end of a training stage
    /// (`--profile`, `SUMFLOW_PROFILE=1`).
    pub profile: bool,
    /// Save libtorch profiler traces of a few training steps (and a generation's first batch)
    /// into this folder (`--trace DIR`, `SUMFLOW_TRACE=DIR`).
    pub trace: Option<PathBuf>,
    /// The CUDA caching allocator's configuration the process runs with
    /// (`PYTORCH_CUDA_ALLOC_CONF`; sumflow's default: [`DEFAULT_CUDA_ALLOC_CONF`]).
    pub cuda_alloc_conf: String,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            attention: AttentionBackend::Auto,
            cudnn_attention: false,
            profile: false,
            trace: None,
            cuda_alloc_conf: DEFAULT_CUDA_ALLOC_CONF.to_string(),
        }
    }
}

impl RuntimeOptions {
    /// The options that can change a libtorch stage's numbers, by name, as its cache key holds
    /// them: only those that differ from the defaults, so the keys of results made under the
    /// defaults stay what they were before these options existed.
    pub fn key(&self) -> BTreeMap<String, String> {
        let mut key = BTreeMap::new();
        if self.attention != AttentionBackend::Auto {
            key.insert("attention".to_string(), self.attention.to_string());
        }
        if self.cudnn_attention {
            key.insert("cudnn_attention".to_string(), "true".to_string());
        }
        key
    }
}

/// This process's place among the processes running one stage together (`devices:` above 1):
/// its rank, how many there are, and where rank 0 serves the store they meet in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranks {
    /// This process's rank, from 0; rank 0 writes the outputs and checkpoints.
    pub rank: usize,
    /// How many processes run the stage.
    pub world: usize,
    /// The address rank 0's store listens on (and each rank's own, on one machine).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// How long a rank waits for the others (to meet, in a collective) before the stage fails.
    pub timeout_s: u64,
    /// Under torchrun: the store is its agent's, and the stage's keys go under this prefix
    /// (`/worker/attempt_<restart>/sumflow/stage<n>`); each rank's Gloo device is its own
    /// machine's. Empty: rank 0 serves a store of the stage's own.
    #[serde(default)]
    pub prefix: String,
    /// The stage's cache key as this rank's pipeline computes it (empty: not checked). Ranks
    /// whose keys or sumflow versions differ are refused when they meet.
    #[serde(default)]
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_options_that_change_numbers_and_differ_from_the_defaults_enter_keys() {
        assert!(RuntimeOptions::default().key().is_empty());
        let traced = RuntimeOptions { profile: true, trace: Some("t".into()), ..Default::default() };
        assert!(traced.key().is_empty(), "profiling and tracing change no number");
        let sdpa = RuntimeOptions { attention: AttentionBackend::Sdpa, cudnn_attention: true, ..Default::default() };
        let want: BTreeMap<String, String> =
            [("attention".to_string(), "sdpa".to_string()), ("cudnn_attention".to_string(), "true".to_string())].into();
        assert_eq!(sdpa.key(), want);
    }
}
