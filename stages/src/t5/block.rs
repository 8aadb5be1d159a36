//! A T5 block: self-attention, (decoder only) cross-attention, feed-forward — each a
//! pre-norm residual sublayer with dropout — and the gated-GELU or ReLU feed-forward itself.

use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{Attention, CacheSlot, LayerBias, LayerCache};
use crate::runtime::AttentionBackend;
use super::config::T5Config;
use super::layer_norm::LayerNorm;

fn linear(path: nn::Path, i: i64, o: i64, std: f64) -> nn::Linear {
    nn::Linear { ws: path.var("weight", &[o, i], nn::Init::Randn { mean: 0.0, stdev: std }), bs: None }
}

/// `DenseReluDense`: gated GELU (`wo(gelu_tanh(wi_0 x) * wi_1 x)`) or ReLU (`wo(relu(wi x))`).
#[derive(Debug)]
pub struct FeedForward {
    wi: Vec<nn::Linear>,
    wo: nn::Linear,
    gated: bool,
    dropout: f64,
}

impl FeedForward {
    fn new(path: nn::Path, c: &T5Config) -> Self {
        let std_in = (c.d_model as f64).powf(-0.5);
        let wi = if c.gated() {
            vec![linear(&path / "wi_0", c.d_model, c.d_ff, std_in), linear(&path / "wi_1", c.d_model, c.d_ff, std_in)]
        } else {
            vec![linear(&path / "wi", c.d_model, c.d_ff, std_in)]
        };
        let wo = linear(&path / "wo", c.d_ff, c.d_model, (c.d_ff as f64).powf(-0.5));
        FeedForward { wi, wo, gated: c.gated(), dropout: c.dropout_rate }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = if self.gated {
            // transformers' `gelu_new` is the tanh approximation.
            self.wi[0].forward(x).gelu("tanh") * self.wi[1].forward(x)
        } else {
            self.wi[0].forward(x).relu()
        };
        self.wo.forward(&h.dropout(self.dropout, train))
    }
}

/// One encoder or decoder block.
#[derive(Debug)]
pub struct Block {
    self_norm: LayerNorm,
    /// Self-attention (`layer.0.SelfAttention`).
    pub self_attn: Attention,
    cross: Option<(LayerNorm, Attention)>,
    ff_norm: LayerNorm,
    ff: FeedForward,
    dropout: f64,
}

/// Inputs shared by every block of a stack in one forward pass.
pub struct BlockInputs<'a> {
    /// Relative-position bias plus mask for self-attention.
    pub self_bias: &'a LayerBias,
    /// Encoder output and its mask, for decoder blocks.
    pub encoder: Option<(&'a Tensor, &'a LayerBias)>,
    /// How attention is computed.
    pub attention: AttentionBackend,
    /// Training (dropout on).
    pub train: bool,
}

impl Block {
    /// Block `i` of the encoder or decoder stack at `path`.
    pub fn new(path: nn::Path, c: &T5Config, is_decoder: bool, i: i64) -> Self {
        let layer = &path / "layer";
        let eps = c.layer_norm_epsilon;
        let self_attn = Attention::new(&layer / 0 / "SelfAttention", c, is_decoder, i == 0);
        let self_norm = LayerNorm::new(&layer / 0 / "layer_norm", c.d_model, eps);
        let cross = is_decoder.then(|| {
            (
                LayerNorm::new(&layer / 1 / "layer_norm", c.d_model, eps),
                Attention::new(&layer / 1 / "EncDecAttention", c, true, false),
            )
        });
        let ff_index = if is_decoder { 2 } else { 1 };
        let ff = FeedForward::new(&layer / ff_index / "DenseReluDense", c);
        let ff_norm = LayerNorm::new(&layer / ff_index / "layer_norm", c.d_model, eps);
        Block { self_norm, self_attn, cross, ff_norm, ff, dropout: c.dropout_rate }
    }

    /// Sets every dropout rate of the block.
    pub fn set_dropout(&mut self, p: f64) {
        self.dropout = p;
        self.ff.dropout = p;
        self.self_attn.set_dropout(p);
        if let Some((_, a)) = &mut self.cross {
            a.set_dropout(p);
        }
    }

    /// Self-attention and (decoder blocks) cross-attention, for LoRA.
    pub fn attentions_mut(&mut self) -> (&mut Attention, Option<&mut Attention>) {
        (&mut self.self_attn, self.cross.as_mut().map(|(_, a)| a))
    }

    /// Runs the block; `cache` is this layer's KV cache when decoding step by step.
    pub fn forward(&self, x: &Tensor, inputs: &BlockInputs, mut cache: Option<&mut LayerCache>) -> Tensor {
        let t = inputs.train;
        let slot = match cache.as_deref_mut() {
            Some(c) => CacheSlot::SelfAttn(c),
            None => CacheSlot::None,
        };
        let h = x + self
            .self_attn
            .forward(&self.self_norm.forward(x), None, inputs.self_bias, slot, inputs.attention, t)
            .dropout(self.dropout, t);
        let h = match (&self.cross, inputs.encoder) {
            (Some((norm, attn)), Some((enc, enc_mask))) => {
                let slot = match cache {
                    Some(c) => CacheSlot::Cross(c),
                    None => CacheSlot::None,
                };
                let a = attn.forward(&norm.forward(&h), Some(enc), enc_mask, slot, inputs.attention, t);
                &h + a.dropout(self.dropout, t)
            }
            _ => h,
        };
        &h + self.ff.forward(&self.ff_norm.forward(&h), t).dropout(self.dropout, t)
    }
}
