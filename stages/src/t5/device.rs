//! Where and in which precision a model runs: `cpu`, `cuda` or `auto`; bf16 on CUDA, fp32 on
//! CPU; fp16 refused for T5 (its activations overflow to NaN) unless forced.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::error::StageError;

/// The `device` param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device (an error if there is none).
    Cuda,
}

/// The `dtype` param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// bf16 on CUDA, fp32 on CPU.
    #[default]
    Auto,
    /// 32-bit floats.
    Fp32,
    /// bfloat16.
    Bf16,
    /// float16: T5 overflows to NaN in it; refused unless `force_fp16`.
    Fp16,
}

/// Resolves the device.
pub fn device(choice: DeviceChoice) -> Result<Device, StageError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto | DeviceChoice::Cuda if tch::Cuda::is_available() => {
            cuda_settings();
            Ok(Device::Cuda(0))
        }
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda => Err(StageError::Internal(
            "device: cuda was asked for but libtorch sees no CUDA device (is this a CUDA build of libtorch, with a GPU?)".into(),
        )),
    }
}

/// Process-wide CUDA settings, made once when a stage first resolves a CUDA device: libtorch's
/// cuDNN attention kernels are off unless `SUMFLOW_CUDNN_ATTENTION=1`. cuDNN builds a plan for
/// each new batch shape (≈ 6 ms of host time per call in a trace of flan-t5-base training on an
/// H200), and T5's batches come in many shapes; without it libtorch takes its memory-efficient
/// kernel, which accepts T5's bias too. Measured on an H200 in a fresh process (run 4): full
/// fine-tuning 134 → 479 dialogues/s. (In that run only cross-attention could use either fused
/// kernel: the self-attention biases were not contiguous and fell back to the math path; see
/// `Attention::bias_from`.)
fn cuda_settings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        extern "C" {
            fn sumflow_sdpa_cudnn(enabled: std::os::raw::c_int) -> std::os::raw::c_int;
        }
        let allow = std::env::var("SUMFLOW_CUDNN_ATTENTION").is_ok_and(|v| v.trim() == "1");
        #[allow(unsafe_code)]
        // SAFETY: a plain integer in and out; the shim catches every C++ exception.
        let rc = unsafe { sumflow_sdpa_cudnn(i32::from(allow)) };
        debug_assert_eq!(rc, 0, "libtorch refused the cuDNN attention setting");
    });
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
        DtypeChoice::Fp16 => Err(StageError::Internal(
            "dtype: fp16 overflows to NaN in T5's feed-forward activations; use bf16 (or set force_fp16 to insist)"
                .into(),
        )),
    }
}
