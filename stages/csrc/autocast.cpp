// sumflow's one piece of C++: libtorch's autocast for a given device, in bf16.
//
// tch 0.24 binds only `at::autocast::set_enabled(bool)`, the deprecated form that turns on CUDA
// autocast in its default dtype, fp16 (where T5's feed-forward activations overflow), and nothing
// on the CPU. These two functions use the device-typed API of libtorch 2.x instead. They are
// called from `src/autocast.rs`; libtorch errors come back as -1, never as a C++ exception.
#include <ATen/autocast_mode.h>

extern "C" {

// Turns on bf16 autocast for `device_type` (c10::DeviceType: 0 CPU, 1 CUDA) in this thread and
// writes the state it replaces to `prev_enabled` and `prev_dtype`.
int sumflow_autocast_enter(int device_type, int *prev_enabled, int *prev_dtype) {
  try {
    auto device = static_cast<c10::DeviceType>(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Puts back the state `sumflow_autocast_enter` replaced; leaving the outermost autocast region
// drops the cache of weights cast to bf16, as PyTorch's `torch.autocast` does.
int sumflow_autocast_exit(int device_type, int prev_enabled, int prev_dtype) {
  try {
    auto device = static_cast<c10::DeviceType>(device_type);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, prev_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(prev_dtype));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
