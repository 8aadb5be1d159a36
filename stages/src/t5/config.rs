//! T5 / FLAN-T5 configuration: Hugging Face's `config.json` (read leniently: unknown keys are
//! kept, missing ones take T5's defaults) and the architecture presets `make-model` writes.

use serde::{Deserialize, Serialize};

fn d32() -> i64 {
    32
}
fn d128() -> i64 {
    128
}
fn dropout() -> f64 {
    0.1
}
fn eps() -> f64 {
    1e-6
}
fn relu() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}
fn one() -> i64 {
    1
}

/// The fields of a T5 `config.json` that the model uses; the rest are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary (embedding rows), e.g. 32128.
    pub vocab_size: i64,
    /// Hidden size.
    pub d_model: i64,
    /// Size of one attention head.
    pub d_kv: i64,
    /// Feed-forward inner size.
    pub d_ff: i64,
    /// Encoder layers.
    pub num_layers: i64,
    /// Decoder layers (default: `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<i64>,
    /// Attention heads.
    pub num_heads: i64,
    /// Relative position buckets.
    #[serde(default = "d32")]
    pub relative_attention_num_buckets: i64,
    /// Distance beyond which relative positions share a bucket.
    #[serde(default = "d128")]
    pub relative_attention_max_distance: i64,
    /// Dropout in training.
    #[serde(default = "dropout")]
    pub dropout_rate: f64,
    /// RMS norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    /// `gated-gelu` (T5 v1.1, FLAN-T5) or `relu` (classic T5).
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    /// Whether `lm_head` is the shared embedding (classic T5, outputs scaled by d_model^-0.5).
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// First decoder input.
    #[serde(default)]
    pub decoder_start_token_id: i64,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: i64,
    /// End-of-sequence id.
    #[serde(default = "one")]
    pub eos_token_id: i64,
    /// Every other key of the file, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl T5Config {
    /// Decoder layers.
    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Whether the feed-forward block is gated (`gated-gelu`).
    pub fn gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    /// The architecture presets of `make-model`: the real FLAN-T5 shapes, and a tiny one for tests.
    pub fn preset(arch: &str) -> Option<T5Config> {
        let (d_model, d_ff, layers, heads) = match arch {
            "tiny" => (64, 128, 2, 4),
            "flan-t5-small" => (512, 1024, 8, 6),
            "flan-t5-base" => (768, 2048, 12, 12),
            "flan-t5-large" => (1024, 2816, 24, 16),
            _ => return None,
        };
        let d_kv = if arch == "tiny" { 16 } else { 64 };
        let mut extra = serde_json::Map::new();
        extra.insert("architectures".into(), serde_json::json!(["T5ForConditionalGeneration"]));
        extra.insert("model_type".into(), "t5".into());
        extra.insert("is_encoder_decoder".into(), true.into());
        extra.insert("initializer_factor".into(), 1.0.into());
        extra.insert("use_cache".into(), true.into());
        Some(T5Config {
            vocab_size: 32128,
            d_model,
            d_kv,
            d_ff,
            num_layers: layers,
            num_decoder_layers: Some(layers),
            num_heads: heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            tie_word_embeddings: false,
            decoder_start_token_id: 0,
            pad_token_id: 0,
            eos_token_id: 1,
            extra,
        })
    }

    /// The preset names.
    pub const PRESETS: [&'static str; 4] = ["tiny", "flan-t5-small", "flan-t5-base", "flan-t5-large"];

    /// What is wrong with the config for this model, field by field: sizes out of range (also
    /// bounded, so a config cannot ask for more memory than any T5 needs), token ids outside the
    /// vocabulary, a feed-forward kind this model does not have.
    pub fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut range = |field: &str, v: i64, lo: i64, hi: i64| {
            if !(lo..=hi).contains(&v) {
                out.push(format!("`{field}` is {v}; it must be between {lo} and {hi}"));
            }
        };
        range("vocab_size", self.vocab_size, 1, 1 << 20);
        range("d_model", self.d_model, 1, 1 << 14);
        range("d_kv", self.d_kv, 1, 1 << 10);
        range("d_ff", self.d_ff, 1, 1 << 16);
        range("num_heads", self.num_heads, 1, 256);
        range("num_layers", self.num_layers, 1, 128);
        range("num_decoder_layers", self.decoder_layers(), 1, 128);
        range("relative_attention_num_buckets", self.relative_attention_num_buckets, 4, 1024);
        range(
            "relative_attention_max_distance",
            self.relative_attention_max_distance,
            self.relative_attention_num_buckets,
            1 << 20,
        );
        for (field, id) in [
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            range(field, id, 0, self.vocab_size - 1);
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            out.push(format!("`dropout_rate` is {}; it must be in [0, 1)", self.dropout_rate));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            out.push(format!("`layer_norm_epsilon` is {}; it must be above 0", self.layer_norm_epsilon));
        }
        if !matches!(self.feed_forward_proj.as_str(), "relu" | "gated-gelu") {
            out.push(format!(
                "`feed_forward_proj` is `{}`: this T5 has `relu` or `gated-gelu`",
                self.feed_forward_proj
            ));
        }
        out
    }
}
