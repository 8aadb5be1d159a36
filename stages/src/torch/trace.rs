//! Tracing (`--trace DIR`, [`crate::RuntimeOptions::trace`]): libtorch's own profiler (Kineto, what `torch.profiler` drives) over a
//! few training steps, or the first batch a `generate` decodes (its encoder pass and every
//! token's step), saved as a Chrome trace in `DIR` — every operator the host dispatched and,
//! on CUDA, every kernel the device ran. Where [`crate::torch::profile`] says how long each phase
//! took, a trace says which kernels the time went to and where the device sat idle
//! (`python/trace_summary.py` condenses one; `chrome://tracing` or Perfetto shows it whole).
//! tch 0.24 does not bind the profiler, so it goes through a small C++ shim
//! (`csrc/trace.cpp`, compiled by the build script beside the autocast one).

#![allow(unsafe_code)] // the two calls into the shim: an int, and a C string that outlives the call

use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tch::Device;

use crate::error::StageError;

use super::device::synchronize;

extern "C" {
    fn sumflow_trace_start(cuda: c_int) -> c_int;
    fn sumflow_trace_stop(path: *const c_char) -> c_int;
}

/// Steps of a training run that are traced: the first two warm up (allocator, kernel choices)
/// and are left out.
const FIRST: u64 = 3;
const LAST: u64 = 5;

/// Traces written by this process so far, to name the next one.
static TRACES: AtomicUsize = AtomicUsize::new(0);

/// A trace of some steps of one run: training's [`FIRST`]..=[`LAST`], or a generation's first
/// batch (its one step).
pub struct StepTrace {
    dir: PathBuf,
    device: Device,
    /// What is traced (the file's name starts with it).
    what: &'static str,
    /// The steps traced.
    steps: (u64, u64),
    recording: bool,
    /// The last step that ran.
    step: u64,
}

impl StepTrace {
    /// A trace of training steps into `dir`, when tracing is on (`dir` is some).
    pub fn training(dir: Option<&Path>, device: Device) -> Option<Self> {
        dir.map(|dir| StepTrace::new(dir.to_path_buf(), device))
    }

    /// A trace of a generation's first batch into `dir`, when tracing is on.
    pub fn generation(dir: Option<&Path>, device: Device) -> Option<Self> {
        dir.map(|dir| {
            let mut trace = StepTrace::new(dir.to_path_buf(), device);
            (trace.what, trace.steps) = ("generate", (1, 1));
            trace
        })
    }

    /// A trace of training steps into `dir`.
    pub fn new(dir: PathBuf, device: Device) -> Self {
        StepTrace { dir, device, what: "train", steps: (FIRST, LAST), recording: false, step: 0 }
    }

    /// Before the run's `n`th step (from 1): starts recording at the first traced step, once the
    /// device has finished the steps before it.
    pub fn before_step(&mut self, n: u64) {
        if n == self.steps.0 && !self.recording {
            synchronize(self.device);
            // SAFETY: a plain integer in; the shim catches every C++ exception.
            let rc = unsafe { sumflow_trace_start(c_int::from(self.device.is_cuda())) };
            self.recording = rc == 0;
            if rc != 0 {
                eprintln!("trace: libtorch's profiler did not start; no trace");
            }
        }
    }

    /// After the run's `n`th step: at the last traced step (or with `force`, when the run ends
    /// early), waits for the device and writes the trace; returns its path.
    pub fn after_step(&mut self, n: u64, force: bool) -> Option<PathBuf> {
        self.step = n;
        if !self.recording || (n < self.steps.1 && !force) {
            return None;
        }
        synchronize(self.device);
        self.recording = false;
        let k = TRACES.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{}-{k}.json", self.what, std::process::id()));
        match self.stop(&path) {
            Ok(()) => {
                let span =
                    if self.steps == (1, 1) { "first batch".into() } else { format!("steps {}..={n}", self.steps.0) };
                eprintln!("trace: {}, {span}, traced into {}", self.what, path.display());
                Some(path)
            }
            Err(e) => {
                eprintln!("trace: {e}");
                None
            }
        }
    }

    fn stop(&self, path: &Path) -> Result<(), StageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| StageError::io(&self.dir, e))?;
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| StageError::param("trace", "a NUL in the trace path"))?;
        // SAFETY: `c_path` is a NUL-terminated string alive for the whole call; the shim copies
        // it and catches every C++ exception.
        let rc = unsafe { sumflow_trace_stop(c_path.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(StageError::Device(format!("libtorch's profiler could not write {}", path.display())))
        }
    }
}

impl Drop for StepTrace {
    /// A run that stops while recording (it ended early, or failed) still writes what it has.
    fn drop(&mut self) {
        let _ = self.after_step(self.step, true);
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;

    #[test]
    fn the_traced_steps_operators_land_in_a_chrome_trace() {
        let dir = tempfile::tempdir().unwrap();
        let mut trace = StepTrace::new(dir.path().join("traces"), Device::Cpu);
        let a = Tensor::ones([8, 8], (Kind::Float, Device::Cpu));
        let mut written = Vec::new();
        for n in 1..=6 {
            trace.before_step(n);
            // Step n multiplies n times: steps 3, 4 and 5 make 12 products.
            for _ in 0..n {
                let _product = a.mm(&a);
            }
            written.extend(trace.after_step(n, false));
        }
        assert_eq!(written.len(), 1, "one trace, after step {LAST}");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&written[0]).unwrap()).unwrap();
        let events = json["traceEvents"].as_array().expect("a Chrome trace");
        let products = events.iter().filter(|e| e["name"] == "aten::mm").count();
        assert_eq!(products, 12, "the products of steps {FIRST}..={LAST}, and only those");
    }
}
