//! T5's layer norm: RMS only (no mean, no bias), computed in fp32, scaled by a weight.

use tch::{nn, Kind, Tensor};

/// `weight * x / sqrt(mean(x²) + eps)`.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A norm over `dim` features, its weight at `path.weight` (initialized to 1).
    pub fn new(path: nn::Path, dim: i64, eps: f64) -> Self {
        LayerNorm { weight: path.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }

    /// Normalizes the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.to_kind(Kind::Float).pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x.to_kind(Kind::Float) * (variance + self.eps).rsqrt();
        // Half-precision weights get half-precision activations back, as in transformers.
        &self.weight * normed.to_kind(self.weight.kind())
    }
}
