//! Where and in which precision a model runs: `cpu`, `cuda` or `auto`; bf16 on CUDA, fp32 on
//! CPU; fp16 refused for T5 (its activations overflow to NaN) unless forced. Also the
//! process-wide CUDA settings, waiting for a device, and the runtime facts manifests record.

#![allow(unsafe_code)] // one call into the attention-kernel shim: an int in, an int out

use std::collections::BTreeMap;


use tch::{Device, Kind};

use crate::error::StageError;
use crate::runtime::RuntimeOptions;

pub use super::choice::{DeviceChoice, DtypeChoice};

/// Resolves the device: on CUDA, device `gpu` (the runner's pin; the first when `None`), after
/// applying the process-wide settings of `options`.
pub fn device(choice: DeviceChoice, options: &RuntimeOptions, gpu: Option<usize>) -> Result<Device, StageError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto | DeviceChoice::Cuda if tch::Cuda::is_available() => {
            let index = gpu.unwrap_or(0);
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if index >= count {
                return Err(StageError::Device(format!(
                    "the stage was given CUDA device {index}, but libtorch sees {count} (CUDA_VISIBLE_DEVICES and NVML disagree?)"
                )));
            }
            cuda_settings(options)?;
            Ok(Device::Cuda(index))
        }
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda => Err(StageError::Param {
            field: "device".into(),
            message: "cuda was asked for but libtorch sees no CUDA device (is this a CUDA build of libtorch, with a GPU?)"
                .into(),
        }),
    }
}

/// Process-wide CUDA settings, made when a stage resolves a CUDA device: libtorch's cuDNN
/// attention kernels are off unless `options.cudnn_attention`. cuDNN builds a plan for each new
/// batch shape (≈ 6 ms of host time per call in a trace of flan-t5-base training on an H200),
/// and T5's batches come in many shapes; without it libtorch takes its memory-efficient kernel,
/// which accepts T5's bias too. Measured on an H200 in a fresh process (run 4): full
/// fine-tuning 134 → 479 dialogues/s.
fn cuda_settings(options: &RuntimeOptions) -> Result<(), StageError> {
    extern "C" {
        fn sumflow_sdpa_cudnn(enabled: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    // SAFETY: a plain integer in and out; the shim catches every C++ exception.
    let rc = unsafe { sumflow_sdpa_cudnn(i32::from(options.cudnn_attention)) };
    if rc != 0 {
        return Err(StageError::Device("libtorch refused the cuDNN attention setting".into()));
    }
    Ok(())
}

/// Waits until `device` has finished all the work queued on it (nothing to wait for on the CPU).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Resolves the precision for `device`.
pub fn kind(choice: DtypeChoice, device: Device, force_fp16: bool) -> Result<Kind, StageError> {
    match choice {
        DtypeChoice::Auto if device.is_cuda() => Ok(Kind::BFloat16),
        DtypeChoice::Auto | DtypeChoice::Fp32 => Ok(Kind::Float),
        DtypeChoice::Bf16 => Ok(Kind::BFloat16),
        DtypeChoice::Fp16 if force_fp16 => Ok(Kind::Half),
        DtypeChoice::Fp16 => Err(StageError::Param {
            field: "dtype".into(),
            message: "fp16 overflows to NaN in T5's feed-forward activations; use bf16 (or set force_fp16 to insist)"
                .into(),
        }),
    }
}

/// libtorch and CUDA facts: the libtorch this process loaded (not necessarily the one it was
/// built against), its CUDA version, devices and threads.
pub fn describe() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("cuda_available".into(), tch::Cuda::is_available().to_string());
    out.insert("cuda_devices".into(), tch::Cuda::device_count().to_string());
    out.insert("torch_threads".into(), tch::get_num_threads().to_string());
    if tch::Cuda::is_available() {
        out.insert("cudnn".into(), tch::utils::version_cudnn().to_string());
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if let Some(lib) = maps.split_whitespace().find(|w| w.ends_with("/libtorch_cpu.so")) {
        let version_py = std::path::Path::new(lib).parent().and_then(|l| l.parent()).map(|t| t.join("version.py"));
        let text = version_py.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        for line in text.lines() {
            for (key, name) in [("__version__", "libtorch"), ("cuda", "libtorch_cuda")] {
                if let Some(v) = line
                    .strip_prefix(key)
                    .and_then(|r| r.trim().strip_prefix(':').or(Some(r)))
                    .and_then(|r| r.split_once('='))
                {
                    let v = v.1.trim().trim_matches(['\'', '"']);
                    if !v.is_empty() && v != "None" {
                        out.insert(name.into(), v.to_string());
                    }
                }
            }
        }
        out.insert("libtorch_path".into(), lib.to_string());
    }
    out
}
