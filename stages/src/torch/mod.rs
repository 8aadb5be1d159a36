//! The device layer: which device and precision a stage runs on, bf16 autocast, CUDA graphs,
//! several processes training together (`dist`, over c10d), and the two ways to see
//! where time goes (a per-phase profile, libtorch's profiler trace),
//! with the C++ shims for what tch does not bind. It knows nothing of the model. `choice` (the
//! `device` and `dtype` params) builds without libtorch; the rest needs it.

pub mod choice;

with_torch! {
    pub mod autocast;
    pub mod cuda_graph;
    pub mod device;
    pub mod dist;
    pub mod profile;
    pub mod trace;
}
