// libtorch's own profiler (Kineto, what `torch.profiler` drives from Python) for a few training
// steps, saved as a Chrome trace: every operator the host dispatched and, on CUDA, every kernel
// the device ran with its start and duration. tch 0.24 does not bind it. Called from
// `src/trace.rs`; errors come back as -1, never as a C++ exception.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <memory>
#include <set>
#include <string>

namespace {
namespace prof = torch::profiler::impl;
}

extern "C" {

// Starts recording host operators, and the device's kernels and copies when `cuda` is non-zero.
int sumflow_trace_start(int cuda) {
  try {
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    if (cuda != 0) {
      activities.insert(prof::ActivityType::CUDA);
    }
    prof::ProfilerConfig config(prof::ProfilerState::KINETO, /*report_input_shapes=*/true);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Stops recording and writes the Chrome trace (JSON) to `path`.
int sumflow_trace_stop(const char *path) {
  try {
    std::unique_ptr<torch::autograd::profiler::ProfilerResult> result = torch::autograd::profiler::disableProfiler();
    if (!result) {
      return -1;
    }
    result->save(std::string(path));
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
