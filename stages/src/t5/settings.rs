//! The model's settings that stages take as params, free of libtorch so the runner can check
//! them: LoRA's ([`LoraSettings`], PEFT's `LoraConfig` names) and the decoding strategy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::T5Config;
use crate::stage::ParamError;

/// The attention projections LoRA can target, in the order each attention module keeps them.
pub const PROJECTIONS: [&str; 4] = ["q", "k", "v", "o"];

/// LoRA settings (PEFT's `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank.
    #[serde(default = "r32")]
    pub r: i64,
    /// Scale numerator: the update is scaled by alpha / r (alpha / √r with `rslora`).
    #[serde(default = "a32")]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[serde(default = "d005")]
    pub dropout: f64,
    /// Projections to adapt, by module name (`q`, `k`, `v`, `o`).
    #[serde(default = "qv")]
    pub targets: Vec<String>,
    /// Rank-stabilized LoRA (PEFT's `use_rslora`): the update scaled by alpha / √r instead of
    /// alpha / r. (Left out of the canonical params when off.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rslora: bool,
}

fn r32() -> i64 {
    32
}
fn a32() -> f64 {
    32.0
}
fn d005() -> f64 {
    0.05
}
fn qv() -> Vec<String> {
    vec!["q".into(), "v".into()]
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings { r: r32(), alpha: a32(), dropout: d005(), targets: qv(), rslora: false }
    }
}

impl LoraSettings {
    /// What the adapter's product is scaled by: alpha / r, or alpha / √r (`rslora`).
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// The rank, checked against the model it adapts: at most the smaller side of the
    /// projections (d_model, and heads × d_kv).
    pub fn check_rank(&self, config: &T5Config) -> Option<ParamError> {
        let largest = config.d_model.min(config.num_heads * config.d_kv);
        (self.r > largest).then(|| {
            ParamError::new("r", format!("{} is larger than the projections it adapts ({largest} wide)", self.r))
        })
    }

    /// Problems with the settings, by field (relative to the settings).
    pub fn check(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if self.r < 1 {
            errors.push(ParamError::new("r", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            errors.push(ParamError::new("alpha", "must be above 0 (the update is scaled by alpha / r)"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            errors.push(ParamError::new("dropout", "must be in [0, 1)"));
        }
        if self.targets.is_empty() {
            errors.push(ParamError::new("targets", "name at least one of q, k, v, o"));
        }
        for t in &self.targets {
            if !PROJECTIONS.contains(&t.as_str()) {
                errors.push(ParamError::new("targets", format!("`{t}` is not an attention projection (q, k, v, o)")));
            }
        }
        errors
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", tag = "strategy", deny_unknown_fields)]
pub enum Strategy {
    /// The most likely token.
    Greedy,
    /// A token drawn from the softmax at `temperature`, among the `top_k` most likely (0: all).
    Sample {
        /// Softmax temperature.
        #[serde(default = "one")]
        temperature: f64,
        /// Keep only this many candidates (0 keeps all).
        #[serde(default)]
        top_k: i64,
        /// RNG seed.
        #[serde(default)]
        seed: i64,
    },
    /// The best of `num_beams` hypotheses by log-probability / length^`length_penalty`.
    Beam {
        /// Beams per input.
        num_beams: i64,
        /// Length normalization exponent (transformers' default 1.0).
        #[serde(default = "one")]
        length_penalty: f64,
    },
}

fn one() -> f64 {
    1.0
}
