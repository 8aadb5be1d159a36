//! T5 v1.1 / FLAN-T5 on libtorch (tch): configuration, layers, the LoRA layer, the model,
//! weights I/O, loading a model folder, and decoding. It builds on the device layer
//! (`crate::torch`) and knows nothing of training or of the stages.

pub mod adapt;
pub mod attention;
pub mod block;
pub mod config;
pub mod decode;
pub mod layer_norm;
pub mod loader;
pub mod lora;
pub mod model;
pub mod weights;

#[cfg(test)]
mod parity_tests;
