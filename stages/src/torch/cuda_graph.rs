//! CUDA graphs: work captured once and replayed with one launch ([`Graph`]). Training
//! (`cuda_graphs: true` on a training stage, [`CudaGraphs`]): the first step of each batch shape
//! is captured — forward, backward, clipping, the AdamW update, zeroing — and every later step
//! of that shape replays it, after copying its batch into the graph's input tensors; an eager
//! flan-t5-base step issues ≈ 28,000 operators from the host (`SUMFLOW_TRACE`), a replay none.
//! Decoding (`cuda_graphs: true` on `generate`): each token's step of the fixed-shape greedy
//! decoder ([`crate::t5::decode::greedy_fixed`]).
//!
//! What makes a step capturable (and the eager step the same computation): no host reads inside
//! it — the optimizer takes its per-step scalars as device tensors and skips a non-finite step
//! on the device ([`crate::optim`]); gradients live in a flat buffer that backward adds into; a
//! batch's random dropout comes from the seed set before the step (a replay takes the
//! generator's current seed and offset). Fewer shapes mean fewer captures: the training loop
//! pads rows and widths to multiples when graphs are on.
//!
//! libtorch's `at::cuda::CUDAGraph` goes through a small C++ shim (`csrc/cuda_graph.cpp`),
//! compiled where the CUDA runtime's headers are found; elsewhere [`CudaGraphs::new`] says so.

#![allow(unsafe_code)] // calls into the shim: plain integers, an opaque handle, an error buffer

use std::collections::HashMap;

use tch::{Device, Tensor};

use super::device::synchronize;
use crate::error::{panic_message, StageError};

/// The captured steps of one training run, by batch shape, sharing one memory pool.
pub struct CudaGraphs {
    device: Device,
    pool: (u64, u64),
    steps: HashMap<Vec<i64>, Captured>,
}

/// One shape's graph, the input tensors it reads and the loss it writes.
struct Captured {
    graph: Graph,
    inputs: Vec<Tensor>,
    loss: Tensor,
}

/// Work captured once on a CUDA device and replayed: the same kernels on the same tensors.
pub struct Graph(ffi::Graph);

impl Graph {
    /// Captures the work `f` issues on `device` (into memory `pool`, shared with other graphs,
    /// or a pool of its own), then runs it once; returns the graph and what `f` returned. `f`
    /// must not wait for the device, and the tensors it uses must outlive the graph.
    pub fn capture<T>(device: Device, pool: Option<(u64, u64)>, f: impl FnOnce() -> T) -> Result<(Graph, T), StageError> {
        let Device::Cuda(index) = device else {
            return Err(StageError::Device(format!("CUDA graphs need a CUDA device, not {device:?}")));
        };
        let pool = match pool {
            Some(p) => p,
            None => ffi::pool()?,
        };
        synchronize(device);
        let graph = Graph(ffi::Graph::begin(index, pool)?);
        // A panic inside (a libtorch error tch unwraps) ends the capture as the graph drops.
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .map_err(|p| StageError::Device(format!("the work failed while being captured: {}", panic_message(&*p))))?;
        graph.0.end()?;
        graph.replay()?;
        Ok((graph, value))
    }

    /// Runs the captured work again.
    pub fn replay(&self) -> Result<(), StageError> {
        self.0.replay()
    }
}

impl CudaGraphs {
    /// Graphs on `device`; an error off CUDA or where this build has no CUDA graph support.
    pub fn new(device: Device) -> Result<Self, StageError> {
        if !device.is_cuda() {
            return Err(StageError::Device(format!("CUDA graphs need a CUDA device, not {device:?}")));
        }
        Ok(CudaGraphs { device, pool: ffi::pool()?, steps: HashMap::new() })
    }

    /// Shapes captured so far.
    pub fn captured(&self) -> usize {
        self.steps.len()
    }

    /// One training step on `inputs` (the batch, on the device): replayed when a step of this
    /// shape was captured before, else captured from `step` (which issues the whole step and
    /// returns its loss) and then replayed. Returns the step's loss tensor.
    pub fn step(&mut self, inputs: &[&Tensor], step: impl FnOnce(&[Tensor]) -> Tensor) -> Result<Tensor, StageError> {
        let key: Vec<i64> = inputs.iter().flat_map(|t| t.size()).collect();
        if let Some(c) = self.steps.get(&key) {
            for (dst, src) in c.inputs.iter().zip(inputs) {
                dst.shallow_clone().copy_(src);
            }
            c.graph.replay()?;
            return Ok(c.loss.shallow_clone());
        }
        if self.steps.is_empty() {
            // What the eager steps before left cached goes back, for the graphs' pool to take.
            synchronize(self.device);
            ffi::empty_cache()?;
        }
        // The graph's inputs live outside its pool, for as long as the graph.
        let statics: Vec<Tensor> = inputs.iter().map(|t| t.copy()).collect();
        // The loss kept is detached: holding the step's autograd graph would keep its nodes
        // (and the streams they were made on) alive into the next capture.
        let (graph, loss) = Graph::capture(self.device, Some(self.pool), || step(&statics).detach())?;
        self.steps.insert(key, Captured { graph, inputs: statics, loss: loss.shallow_clone() });
        Ok(loss)
    }
}

impl Drop for CudaGraphs {
    /// Frees the graphs, then their pool's memory: the next stage starts with it.
    fn drop(&mut self) {
        self.steps.clear();
        synchronize(self.device);
        let _ = ffi::empty_cache();
    }
}

#[cfg(sumflow_cuda_graphs)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_ulonglong, c_void};

    use crate::error::StageError;

    extern "C" {
        fn sumflow_graph_pool(a: *mut c_ulonglong, b: *mut c_ulonglong, err: *mut c_char, len: usize) -> c_int;
        fn sumflow_graph_begin(
            device: c_int,
            a: c_ulonglong,
            b: c_ulonglong,
            err: *mut c_char,
            len: usize,
        ) -> *mut c_void;
        fn sumflow_graph_end(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
        fn sumflow_graph_replay(graph: *mut c_void, err: *mut c_char, len: usize) -> c_int;
        fn sumflow_graph_free(graph: *mut c_void);
        fn sumflow_empty_cache(err: *mut c_char, len: usize) -> c_int;
    }

    /// Runs a shim call with an error buffer; its message on failure.
    fn call<T>(f: impl FnOnce(*mut c_char, usize) -> (T, bool)) -> Result<T, StageError> {
        let mut buf = vec![0u8; 1024];
        let (value, ok) = f(buf.as_mut_ptr().cast(), buf.len());
        if ok {
            return Ok(value);
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let text = String::from_utf8_lossy(&buf[..end]);
        Err(StageError::Device(format!("CUDA graph: {}", text.lines().next().unwrap_or("libtorch failed"))))
    }

    /// A new memory pool for graphs to share.
    pub fn pool() -> Result<(u64, u64), StageError> {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two out-pointers to live locals and a buffer of the length passed.
        call(|err, len| ((), unsafe { sumflow_graph_pool(&mut a, &mut b, err, len) } == 0))?;
        Ok((a, b))
    }

    /// Returns the memory libtorch caches but does not use to the driver.
    pub fn empty_cache() -> Result<(), StageError> {
        // SAFETY: a buffer of the length passed.
        call(|err, len| ((), unsafe { sumflow_empty_cache(err, len) } == 0))
    }

    /// A captured (or capturing) graph, freed on drop.
    pub struct Graph(*mut c_void);

    impl Graph {
        pub fn begin(device: usize, pool: (u64, u64)) -> Result<Graph, StageError> {
            // SAFETY: plain integers and a buffer of the length passed; null means failure.
            let g = call(|err, len| {
                let g = unsafe { sumflow_graph_begin(device as c_int, pool.0, pool.1, err, len) };
                (g, !g.is_null())
            })?;
            Ok(Graph(g))
        }

        pub fn end(&self) -> Result<(), StageError> {
            // SAFETY: a live handle from `begin`.
            call(|err, len| ((), unsafe { sumflow_graph_end(self.0, err, len) } == 0))
        }

        pub fn replay(&self) -> Result<(), StageError> {
            // SAFETY: a live handle from `begin`.
            call(|err, len| ((), unsafe { sumflow_graph_replay(self.0, err, len) } == 0))
        }
    }

    impl Drop for Graph {
        fn drop(&mut self) {
            // SAFETY: the handle came from `begin` and is freed once.
            unsafe { sumflow_graph_free(self.0) }
        }
    }
}

#[cfg(not(sumflow_cuda_graphs))]
mod ffi {
    use crate::error::StageError;

    const MISSING: &str = "this build has no CUDA graphs: libtorch without CUDA, or the CUDA runtime's headers \
                           (cuda_runtime_api.h) were not found when it was built (set CUDA_HOME)";

    pub fn pool() -> Result<(u64, u64), StageError> {
        Err(StageError::Device(MISSING.to_string()))
    }

    pub fn empty_cache() -> Result<(), StageError> {
        Err(StageError::Device(MISSING.to_string()))
    }

    pub struct Graph;

    impl Graph {
        pub fn begin(_: usize, _: (u64, u64)) -> Result<Graph, StageError> {
            Err(StageError::Device(MISSING.to_string()))
        }

        pub fn end(&self) -> Result<(), StageError> {
            Err(StageError::Device(MISSING.to_string()))
        }

        pub fn replay(&self) -> Result<(), StageError> {
            Err(StageError::Device(MISSING.to_string()))
        }
    }
}
