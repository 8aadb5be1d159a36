//! T5 v1.1 / FLAN-T5 on libtorch (tch): configuration, layers, the model, weights I/O,
//! device policy, and decoding.

pub mod attention;
pub mod block;
pub mod config;
pub mod decode;
pub mod device;
pub mod layer_norm;
pub mod loader;
pub mod model;
pub mod weights;

pub use attention::KvCache;
pub use config::T5Config;
pub use model::T5;
