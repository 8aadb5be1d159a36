//! The LoRA layer as PEFT computes it, `y = W x + (alpha / r) · B A dropout(x)`, and its
//! settings (PEFT's `LoraConfig` names). Adding adapters to a model is `super::adapt`'s;
//! reading and writing PEFT's files is `crate::adapter`'s.

use tch::Tensor;

pub use super::settings::{LoraSettings, PROJECTIONS};

/// One adapter: `scale · B A dropout(x)`.
#[derive(Debug)]
pub struct Lora {
    /// `lora_A.weight`, (r, in).
    pub a: Tensor,
    /// `lora_B.weight`, (out, r).
    pub b: Tensor,
    /// alpha / r.
    pub scale: f64,
    /// Dropout on the input.
    pub dropout: f64,
}

impl Lora {
    /// The adapter's output for `x`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.dropout(self.dropout, train).matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }

    /// `scale · B A`, the change it makes to the base weight.
    pub fn delta(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }
}
