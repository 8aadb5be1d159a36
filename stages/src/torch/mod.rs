//! The device layer: which device and precision a stage runs on, bf16 autocast, CUDA graphs,
//! and the two ways to see where time goes (a per-phase profile, libtorch's profiler trace),
//! with the C++ shims for what tch does not bind. It knows nothing of the model.

pub mod autocast;
pub mod cuda_graph;
pub mod device;
pub mod profile;
pub mod trace;
