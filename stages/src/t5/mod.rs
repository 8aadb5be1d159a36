//! T5 v1.1 / FLAN-T5 on libtorch (tch): configuration, layers, the LoRA layer, the model,
//! weights I/O, loading a model folder, and decoding. It builds on the device layer
//! (`crate::torch`) and knows nothing of training or of the stages.
//! `config` and `settings` (the params stages take) build without libtorch; the rest needs it.

pub mod config;
pub mod settings;

with_torch! {
    pub mod adapt;
    pub mod attention;
    pub mod block;
    pub mod decode;
    pub mod layer_norm;
    pub mod loader;
    pub mod lora;
    pub mod model;
    pub mod weights;
}

#[cfg(all(test, feature = "torch"))]
mod parity_tests;
