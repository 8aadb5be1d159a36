// CUDA graphs for training steps: libtorch's `at::cuda::CUDAGraph`, what `torch.cuda.graph`
// drives from Python. A step's kernels are captured once per batch shape, then each later step
// of that shape is one launch — the host no longer issues thousands of kernels per step.
// tch 0.24 does not bind it. Called from `src/cuda_graph.rs`; errors come back as -1 with
// libtorch's message in `err`, never as a C++ exception. Compiled only where the CUDA runtime's
// headers are found (the build script says so with the `sumflow_cuda_graphs` cfg).
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>

namespace {

// A graph and the side stream it is captured on (capture needs a stream other than the
// default one), current while capturing; `previous` is the stream to put back. (Streams are set
// by hand: `CUDAStreamGuard`'s header calls the CUDA runtime inline, which would make the binary
// link `libcudart` itself rather than through libtorch.)
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream stream;
  std::optional<c10::cuda::CUDAStream> previous;
  explicit Graph(c10::cuda::CUDAStream s) : stream(s) {}

  void enter() {
    previous = c10::cuda::getCurrentCUDAStream(stream.device_index());
    c10::cuda::setCurrentCUDAStream(stream);
  }
  void leave() {
    if (previous.has_value()) {
      c10::cuda::setCurrentCUDAStream(*previous);
      previous.reset();
    }
  }
};

// The one side stream all captures on `device` use. The caching allocator hands a freed block
// only to allocations on the stream it was used on: graphs captured on different streams could
// not reuse each other's memory even in a shared pool (each training shape kept ~12 GB of its
// own on an H200). PyTorch's `torch.cuda.graph` uses one capture stream for the same reason.
c10::cuda::CUDAStream capture_stream(c10::DeviceIndex device) {
  static std::mutex lock;
  static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
  std::lock_guard<std::mutex> guard(lock);
  auto it = streams.find(device);
  if (it == streams.end()) {
    it = streams.emplace(device, c10::cuda::getStreamFromPool(false, device)).first;
  }
  return it->second;
}

void message(const std::exception &e, char *err, size_t len) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, e.what(), len - 1);
    err[len - 1] = '\0';
  }
}

}  // namespace

extern "C" {

// A memory pool that graphs captured one after another share (their intermediates are dead
// between steps, so one step's worth of memory serves every shape).
int sumflow_graph_pool(unsigned long long *a, unsigned long long *b, char *err, size_t len) {
  try {
    auto pool = at::cuda::graph_pool_handle();
    *a = pool.first;
    *b = pool.second;
    return 0;
  } catch (const std::exception &e) {
    message(e, err, len);
    return -1;
  }
}

// Starts capturing on `device` into pool (a, b): until `sumflow_graph_end`, the work this thread
// issues (and the backward it starts) is recorded, not run. The caller has waited for the device.
// `device` becomes this thread's current device: the capture records the current device's
// stream, and a stage pinned to GPU 3 runs on a thread of its own.
void *sumflow_graph_begin(int device, unsigned long long a, unsigned long long b, char *err, size_t len) {
  Graph *g = nullptr;
  try {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    g = new Graph(capture_stream(static_cast<c10::DeviceIndex>(device)));
    g->enter();
    g->graph.capture_begin({a, b});
    return g;
  } catch (const std::exception &e) {
    message(e, err, len);
    if (g != nullptr) {
      g->leave();
    }
    delete g;
    return nullptr;
  }
}

// Ends the capture (instantiating the graph) and puts the previous stream back.
int sumflow_graph_end(void *handle, char *err, size_t len) {
  auto *g = static_cast<Graph *>(handle);
  try {
    g->graph.capture_end();
    g->leave();
    return 0;
  } catch (const std::exception &e) {
    message(e, err, len);
    g->leave();
    return -1;
  }
}

// Runs the captured work again on the current stream, with fresh random-number offsets.
int sumflow_graph_replay(void *handle, char *err, size_t len) {
  try {
    static_cast<Graph *>(handle)->graph.replay();
    return 0;
  } catch (const std::exception &e) {
    message(e, err, len);
    return -1;
  }
}

// Hands the CUDA memory libtorch holds but does not use back to the driver: the eager steps
// before the first capture and a finished run's graphs leave tens of GB cached that a graph's
// pool (or the next stage) could not otherwise take.
int sumflow_empty_cache(char *err, size_t len) {
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
    return 0;
  } catch (const std::exception &e) {
    message(e, err, len);
    return -1;
  }
}

// Frees a graph; one still capturing (the step failed half-way) ends its capture first.
void sumflow_graph_free(void *handle) {
  auto *g = static_cast<Graph *>(handle);
  if (g->previous.has_value()) {
    try {
      g->graph.capture_end();
    } catch (...) {
    }
    g->leave();
  }
  delete g;
}

}  // extern "C"
