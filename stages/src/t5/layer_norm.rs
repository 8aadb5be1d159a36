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

    /// Normalizes the last dimension. On CUDA through libtorch's `rms_norm`, one fused kernel
    /// (forward and backward) where the written-out form launches eight: a decoding step runs
    /// 37 norms, a training step 62 forward and back. Same math, accumulated in fp32; in bf16
    /// it rounds once where transformers rounds twice (a test bounds the difference at one bf16
    /// step). The CPU keeps the written-out form its figures were measured with.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if x.device().is_cuda() {
            self.fused(x)
        } else {
            self.written_out(x)
        }
    }

    fn fused(&self, x: &Tensor) -> Tensor {
        let d = self.weight.size()[0];
        x.rms_norm([d], Some(&self.weight), self.eps)
    }

    fn written_out(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x * (variance + self.eps).rsqrt();
        // Half-precision weights get half-precision activations back, as in transformers.
        &self.weight * normed.to_kind(self.weight.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// libtorch's `rms_norm` (what CUDA runs; composite on the CPU) against the written-out
    /// form: equal in fp32, within one bf16 step in bf16.
    #[test]
    fn the_fused_norm_is_the_written_out_norm() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = LayerNorm::new(vs.root() / "n", 64, 1e-6);
        tch::no_grad(|| {
            norm.weight.shallow_clone().copy_(&(Tensor::rand([64], (Kind::Float, Device::Cpu)) + 0.5));
        });
        let x = Tensor::randn([3, 5, 64], (Kind::Float, Device::Cpu)) * 3.0;
        let diff =
            |a: Tensor, b: Tensor| (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[]);
        let scale = norm.written_out(&x).abs().max().double_value(&[]);
        assert!(diff(norm.fused(&x), norm.written_out(&x)) <= 1e-6 * scale);
        let mut vs = vs;
        vs.set_kind(Kind::BFloat16);
        let xb = x.to_kind(Kind::BFloat16);
        let (fused, plain) = (norm.fused(&xb), norm.written_out(&xb));
        assert_eq!((fused.kind(), plain.kind()), (Kind::BFloat16, Kind::BFloat16));
        // One bf16 step at the largest magnitude (8 bits of mantissa).
        assert!(diff(fused, plain) <= scale / 128.0, "more than one bf16 step apart");
    }
}
