//! The `device` and `dtype` params, free of libtorch so the runner can check them;
//! [`super::device`] turns them into a device and a precision.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `device` param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device (an error if there is none): the one the runner pinned the stage to, else
    /// the first.
    Cuda,
}

/// The `dtype` param.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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
