// Which kernels libtorch's `scaled_dot_product_attention` may pick on CUDA: tch 0.24 does not
// bind `torch.backends.cuda.enable_cudnn_sdp`. Called from `src/t5/device.rs`; errors come back
// as -1, never as a C++ exception.
#include <ATen/Context.h>

extern "C" {

// Allows (1) or forbids (0) cuDNN's attention kernels; 0 on success.
int sumflow_sdpa_cudnn(int enabled) {
  try {
    at::globalContext().setSDPUseCuDNN(enabled != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
