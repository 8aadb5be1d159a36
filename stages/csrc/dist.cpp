// Multi-process training over PyTorch's c10d, what `torch.distributed` drives from Python: a
// TCPStore for rendezvous (optionally under a PrefixStore, as torchrun's agent store is), and a
// process group — Gloo (CPU tensors) always, NCCL where libtorch has CUDA and the shim is built
// with USE_C10D_NCCL. tch 0.24 binds none of it. Tensors come in as tch's `*mut C_tensor`, an
// `at::Tensor *`. Every collective is blocking (`Work::wait`). Errors (a peer gone, a timeout,
// a taken port) come back as -1 / null with libtorch's message in `err`, never as a C++
// exception.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <c10/util/Logging.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

// A store: what collectives and get/set use (`store`, maybe a PrefixStore) and the TCPStore
// under it (for its port).
struct Store {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::TCPStore> tcp;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

void message(const char *what, char *err, size_t len) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, what, len - 1);
    err[len - 1] = '\0';
  }
}

// c10::Error's what() carries a C++ backtrace after the message; the message alone is enough.
void message(const std::exception &e, char *err, size_t len) {
  if (auto *c10 = dynamic_cast<const c10::Error *>(&e)) {
    message(c10->what_without_backtrace(), err, len);
  } else {
    message(e.what(), err, len);
  }
}

// Runs `f`; 0, or -1 with the exception's message in `err`.
template <typename F>
int guarded(char *err, size_t len, F &&f) {
  try {
    f();
    return 0;
  } catch (const std::exception &e) {
    message(e, err, len);
    return -1;
  } catch (...) {
    message("unknown C++ exception", err, len);
    return -1;
  }
}

// Waits for a collective; a failed one (a peer closed its connection, timed out) throws here.
// Gloo's own timeout (the group's, on each send/recv) normally ends a stuck collective with a
// message that says which operation; the wait's own limit, a little later, is the backstop
// ("Operation timed out!").
void run(Group *g, const c10::intrusive_ptr<c10d::Work> &work) {
  work->wait(g->timeout + std::chrono::milliseconds(2000));
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 1: return c10d::ReduceOp::AVG;
    case 2: return c10d::ReduceOp::MAX;
    case 3: return c10d::ReduceOp::MIN;
    case 4: return c10d::ReduceOp::PRODUCT;
    default: throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

}  // namespace

extern "C" {

// A TCPStore client of `host:port`; with `is_master`, also its server, listening on `port`
// (0: a free port, see `sumflow_store_port`). The master waits (up to `timeout_ms`) for
// `world_size` clients to join — except on port 0, where the others cannot know the port
// before this returns: call `sumflow_store_wait_workers` once they have been told it. A
// non-empty `prefix` wraps it in a PrefixStore (torchrun's agent store: "/worker/attempt_<n>").
// `timeout_ms` also bounds every get/wait on the store.
void *sumflow_store_tcp(const char *host, int port, int world_size, int is_master, long long timeout_ms,
                        const char *prefix, char *err, size_t len) {
  Store *s = nullptr;
  int rc = guarded(err, len, [&] {
    // c10's log level from TORCH_CPP_LOG_LEVEL, as `import torch` sets it (c10d logs a
    // warning with a C++ backtrace for each failed connect; ERROR or FATAL hides them).
    static const bool logging = (c10::initLogging(), true);
    (void)logging;
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_master != 0;
    opts.numWorkers = world_size > 0 ? std::optional<std::size_t>(world_size) : std::nullopt;
    opts.waitWorkers = world_size > 0 && port != 0;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    c10::intrusive_ptr<c10d::Store> store = tcp;
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    s = new Store{store, tcp};
  });
  return rc == 0 ? s : nullptr;
}

// The port the TCPStore is on (the one bound, when the master was asked for port 0).
int sumflow_store_port(void *store) {
  return static_cast<Store *>(store)->tcp->getPort();
}

// On the master: waits (up to the store's timeout) until `world_size` clients have joined.
int sumflow_store_wait_workers(void *store, char *err, size_t len) {
  return guarded(err, len, [&] { static_cast<Store *>(store)->tcp->waitForWorkers(); });
}

int sumflow_store_set(void *store, const char *key, const unsigned char *data, size_t n, char *err, size_t len) {
  return guarded(err, len, [&] {
    static_cast<Store *>(store)->store->set(std::string(key), std::vector<uint8_t>(data, data + n));
  });
}

// The value of `key`, waiting (up to the store's timeout) until some rank sets it; the bytes are
// malloc'd into `*out` (free them with `sumflow_dist_free`).
int sumflow_store_get(void *store, const char *key, unsigned char **out, size_t *out_len, char *err, size_t len) {
  *out = nullptr;
  *out_len = 0;
  return guarded(err, len, [&] {
    std::vector<uint8_t> value = static_cast<Store *>(store)->store->get(std::string(key));
    auto *buf = static_cast<unsigned char *>(std::malloc(value.empty() ? 1 : value.size()));
    if (buf == nullptr) {
      throw std::bad_alloc();
    }
    if (!value.empty()) {
      std::memcpy(buf, value.data(), value.size());
    }
    *out = buf;
    *out_len = value.size();
  });
}

// Whether `key` is set (1) or not (0), without waiting; -1 on failure (the store is gone).
int sumflow_store_check(void *store, const char *key, char *err, size_t len) {
  bool set = false;
  int rc = guarded(err, len, [&] { set = static_cast<Store *>(store)->store->check({std::string(key)}); });
  return rc == 0 ? (set ? 1 : 0) : -1;
}

// Adds `delta` to the integer at `key` (0 when unset) and writes the sum to `*out`: a counter
// all ranks can share.
int sumflow_store_add(void *store, const char *key, long long delta, long long *out, char *err, size_t len) {
  return guarded(err, len, [&] { *out = static_cast<Store *>(store)->store->add(std::string(key), delta); });
}

void sumflow_dist_free(void *p) {
  std::free(p);
}

void sumflow_store_free(void *store) {
  delete static_cast<Store *>(store);
}

// A Gloo group of `size` ranks meeting through `store`, on a TCP device bound to `hostname`'s
// address (null or empty: the interface GLOO_SOCKET_IFNAME names, as torch.distributed reads
// it, else this machine's hostname, else loopback — Gloo's default device).
// Collectives that take longer than `timeout_ms` (a peer gone silent) fail.
void *sumflow_pg_gloo(void *store, int rank, int size, long long timeout_ms, const char *hostname, char *err,
                      size_t len) {
  Group *g = nullptr;
  int rc = guarded(err, len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (hostname != nullptr && hostname[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
    } else if (ifname != nullptr && ifname[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(std::string(ifname)));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(static_cast<Store *>(store)->store, rank, size, opts);
    g = new Group{pg, timeout};
  });
  return rc == 0 ? g : nullptr;
}

#ifdef USE_C10D_NCCL
// An NCCL group (CUDA tensors on this rank's current device). Sketch: the communicator is
// created lazily, at the first collective, on the device of its tensor.
void *sumflow_pg_nccl(void *store, int rank, int size, long long timeout_ms, char *err, size_t len) {
  Group *g = nullptr;
  int rc = guarded(err, len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(static_cast<Store *>(store)->store, rank, size, opts);
    g = new Group{pg, timeout};
  });
  return rc == 0 ? g : nullptr;
}
#endif

int sumflow_pg_nccl_available(void) {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

int sumflow_pg_rank(void *pg) {
  return static_cast<Group *>(pg)->backend->getRank();
}

int sumflow_pg_size(void *pg) {
  return static_cast<Group *>(pg)->backend->getSize();
}

// Reduces `tensor` over all ranks in place (op: 0 sum, 1 avg, 2 max, 3 min, 4 product).
int sumflow_pg_allreduce(void *pg, at::Tensor *tensor, int op, char *err, size_t len) {
  return guarded(err, len, [&] {
    auto *g = static_cast<Group *>(pg);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    run(g, g->backend->allreduce(tensors, opts));
  });
}

// Overwrites `tensor` on every rank with root's.
int sumflow_pg_broadcast(void *pg, at::Tensor *tensor, int root, char *err, size_t len) {
  return guarded(err, len, [&] {
    auto *g = static_cast<Group *>(pg);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    run(g, g->backend->broadcast(tensors, opts));
  });
}

// Gathers every rank's `input` into `output` (contiguous, world size × input's numel, same
// dtype), in rank order: `all_gather_into_tensor`.
int sumflow_pg_allgather(void *pg, at::Tensor *output, at::Tensor *input, char *err, size_t len) {
  return guarded(err, len, [&] {
    auto *g = static_cast<Group *>(pg);
    run(g, g->backend->_allgather_base(*output, *input, c10d::AllgatherOptions()));
  });
}

// Gathers every rank's `input` into `output` (world size × input's numel, same dtype) on rank
// `root`, in rank order; the other ranks pass a null `output`: `gather` into one tensor.
int sumflow_pg_gather(void *pg, at::Tensor *output, at::Tensor *input, int root, char *err, size_t len) {
  return guarded(err, len, [&] {
    auto *g = static_cast<Group *>(pg);
    std::vector<std::vector<at::Tensor>> outputs;
    if (output != nullptr) {
      outputs.push_back(at::chunk(*output, g->backend->getSize(), 0));
    }
    std::vector<at::Tensor> inputs{*input};
    c10d::GatherOptions opts;
    opts.rootRank = root;
    run(g, g->backend->gather(outputs, inputs, opts));
  });
}

// Reduces `input` (world size × output's numel) over all ranks and leaves the rank-th slice in
// `output`: `reduce_scatter_tensor` (op as for allreduce).
int sumflow_pg_reduce_scatter(void *pg, at::Tensor *output, at::Tensor *input, int op, char *err, size_t len) {
  return guarded(err, len, [&] {
    auto *g = static_cast<Group *>(pg);
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = reduce_op(op);
    run(g, g->backend->_reduce_scatter_base(*output, *input, opts));
  });
}

int sumflow_pg_barrier(void *pg, char *err, size_t len) {
  return guarded(err, len, [&] {
    auto *g = static_cast<Group *>(pg);
    run(g, g->backend->barrier(c10d::BarrierOptions()));
  });
}

// Frees the group (Gloo: joins its worker threads; NCCL: aborts its communicators first, so a
// group whose peers are gone does not hang here).
void sumflow_pg_free(void *pg) {
  auto *g = static_cast<Group *>(pg);
  try {
#ifdef USE_C10D_NCCL
    if (auto nccl = c10::dynamic_intrusive_pointer_cast<c10d::ProcessGroupNCCL>(g->backend)) {
      nccl->abort();
    }
#endif
  } catch (...) {
  }
  delete g;
}

}  // extern "C"
