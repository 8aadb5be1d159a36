//! bf16 autocast on the CPU or CUDA: matrix products in bf16, reductions and the loss in fp32,
//! while weights, gradients and the optimizer stay fp32 — the mixed precision training uses.
//!
//! tch's own `autocast` turns on CUDA autocast in libtorch's default dtype for it, fp16 (where
//! T5 overflows), and does nothing on the CPU, so sumflow sets device and dtype through a small
//! C++ shim (`csrc/autocast.cpp`, compiled by the build script against the same libtorch).

#![allow(unsafe_code)] // the two calls into the shim; each takes and returns plain integers

use std::os::raw::c_int;

use tch::Device;

extern "C" {
    fn sumflow_autocast_enter(device_type: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int) -> c_int;
    fn sumflow_autocast_exit(device_type: c_int, prev_enabled: c_int, prev_dtype: c_int) -> c_int;
}

/// The autocast state of one device in this thread, put back when dropped (also on a panic).
struct Guard {
    device_type: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Guard {
    fn enter(device: Device) -> Guard {
        // c10::DeviceType: CPU 0, CUDA 1.
        let device_type = if device.is_cuda() { 1 } else { 0 };
        let mut guard = Guard { device_type, prev_enabled: 0, prev_dtype: 0 };
        // SAFETY: the shim writes two ints through pointers to live locals and catches every
        // C++ exception.
        let rc = unsafe { sumflow_autocast_enter(device_type, &mut guard.prev_enabled, &mut guard.prev_dtype) };
        assert_eq!(rc, 0, "libtorch refused to enable autocast on {device:?}");
        guard
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: plain integers in; the shim catches every C++ exception.
        let rc = unsafe { sumflow_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype) };
        debug_assert_eq!(rc, 0, "libtorch failed to restore the autocast state");
    }
}

/// Runs `f` with bf16 autocast on `device` when `enabled`, else as it is. Autocast state is
/// per thread: run the forward pass inside; `backward` follows the types it recorded.
pub fn bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let _guard = Guard::enter(device);
    f()
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;

    #[test]
    fn products_run_in_bf16_inside_and_fp32_outside() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let inside = bf16(Device::Cpu, true, || a.matmul(&b));
        assert_eq!(inside.kind(), Kind::BFloat16);
        // Losses autocast keeps in fp32 stay fp32 inside.
        let target = Tensor::from_slice(&[0i64, 1, 2, 0]);
        let loss = bf16(Device::Cpu, true, || a.matmul(&b).cross_entropy_for_logits(&target));
        assert_eq!(loss.kind(), Kind::Float);
        assert_eq!(bf16(Device::Cpu, false, || a.matmul(&b)).kind(), Kind::Float);
        // The state is put back: nothing leaks out of the region, even nested.
        let nested = bf16(Device::Cpu, true, || bf16(Device::Cpu, true, || a.matmul(&b)).kind());
        assert_eq!(nested, Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let close = (inside.to_kind(Kind::Float) - a.matmul(&b)).abs().max().double_value(&[]);
        assert!(close < 0.1, "bf16 product off by {close}");
    }
}
