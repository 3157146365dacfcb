// libtorch calls that tch does not wrap; their safe Rust side is src/torch_ext.rs.
#include <ATen/Context.h>
#include <ATen/Version.h>
#include <ATen/core/Tensor.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

extern "C" void lbwnet_set_deterministic(int on) {
  auto& context = at::globalContext();
  // warn_only: an op without a deterministic kernel warns instead of throwing, because a
  // C++ exception there would surface as a panic inside tch.
  context.setDeterministicAlgorithms(on != 0, /*warn_only=*/true);
  context.setDeterministicCuDNN(on != 0);
  context.setBenchmarkCuDNN(false);
}

extern "C" int lbwnet_deterministic_algorithms() {
  return at::globalContext().deterministicAlgorithms() ? 1 : 0;
}

extern "C" int lbwnet_grad_enabled() {
  return c10::GradMode::is_enabled() ? 1 : 0;
}

// `t.contiguous(at::MemoryFormat::ChannelsLast)` as a new tensor the caller owns (tch
// frees it), or null if libtorch refused (not 4-d, say).
extern "C" at::Tensor* lbwnet_channels_last(const at::Tensor* t) {
  try {
    return new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast));
  } catch (...) {
    return nullptr;
  }
}

// Forward: the quantized weight itself; backward: the gradient handed to the float weight
// unchanged (straight-through). Unlike `W + (Q - W).detach()` it needs no two
// weight-sized temporaries per forward, and its value is Q(W) bit for bit.
struct StraightThrough : public torch::autograd::Function<StraightThrough> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& weight,
                            const at::Tensor& quantized) {
    // Returning an input: autograd wraps it in a view, so nothing is copied.
    return quantized;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

extern "C" at::Tensor* lbwnet_straight_through(const at::Tensor* weight,
                                               const at::Tensor* quantized) {
  try {
    return new at::Tensor(StraightThrough::apply(*weight, *quantized));
  } catch (...) {
    return nullptr;
  }
}

// `var.grad = grad`: the optimizer hands every parameter a view of one flat gradient
// buffer, into which autograd then accumulates in place. Returns 0 if libtorch refused.
extern "C" int lbwnet_set_grad(at::Tensor* var, const at::Tensor* grad) {
  try {
    var->mutable_grad() = *grad;
    return 1;
  } catch (...) {
    return 0;
  }
}

// Counts the top-level ATen operations this thread dispatches (an op called from inside
// another op is not counted), for tests of how many kernels a pass launches, and on request
// records the names of all of them, nested ones too, with their depth.
namespace {
thread_local int64_t op_depth = 0;
thread_local int64_t op_count = 0;
thread_local bool op_recording = false;
// One line per operation in dispatch order: "<depth> <name>\n".
thread_local std::string op_names;

std::unique_ptr<at::ObserverContext> on_op_start(const at::RecordFunction& fn) {
  if (op_recording) {
    op_names += std::to_string(op_depth);
    op_names += ' ';
    op_names += fn.name();
    op_names += '\n';
  }
  if (op_depth++ == 0) {
    ++op_count;
  }
  return nullptr;
}

void on_op_end(const at::RecordFunction&, at::ObserverContext*) { --op_depth; }
}  // namespace

extern "C" uint64_t lbwnet_op_counter_start(int record_names) {
  op_depth = 0;
  op_count = 0;
  op_recording = record_names != 0;
  op_names.clear();
  return at::addThreadLocalCallback(
      at::RecordFunctionCallback(on_op_start, on_op_end).scopes({at::RecordScope::FUNCTION}));
}

extern "C" int64_t lbwnet_op_counter_stop(uint64_t handle) {
  at::removeCallback(handle);
  op_recording = false;
  return op_count;
}

// The names recorded since the last start ("<depth> <name>" lines), copied into `out`
// (NUL-terminated, truncated to `len`). Returns the full length.
extern "C" int64_t lbwnet_op_names(char* out, int64_t len) {
  if (len > 0) {
    const auto n = std::min<size_t>(op_names.size(), static_cast<size_t>(len - 1));
    op_names.copy(out, n);
    out[n] = '\0';
  }
  return static_cast<int64_t>(op_names.size());
}

// The vector instruction set ATen's CPU kernels dispatch to ("DEFAULT", "AVX2",
// "AVX512", ...; ATEN_CPU_CAPABILITY lowers it), copied into `out` (NUL-terminated,
// truncated to `len`). Returns the full length.
extern "C" int lbwnet_cpu_capability(char* out, int len) {
  const std::string capability = at::get_cpu_capability();
  if (len > 0) {
    const auto n = std::min<size_t>(capability.size(), static_cast<size_t>(len - 1));
    capability.copy(out, n);
    out[n] = '\0';
  }
  return static_cast<int>(capability.size());
}

// Whether cuDNN convolutions and cuBLAS matmuls may use TF32 (libtorch's global flags).
extern "C" int lbwnet_allow_tf32_cudnn() {
  return at::globalContext().allowTF32CuDNN() ? 1 : 0;
}

extern "C" int lbwnet_allow_tf32_cublas() {
  return at::globalContext().allowTF32CuBLAS() ? 1 : 0;
}

// Lets cuDNN (convolutions and RNNs) and cuBLAS matmuls use TF32, or not, through the
// legacy setters, which also set the float32-precision table to match (mixing the two APIs
// makes the getters above throw). Returns 0 if libtorch refused.
extern "C" int lbwnet_set_tf32(int cudnn, int cublas) {
  try {
    auto& context = at::globalContext();
    context.setAllowTF32CuDNN(cudnn != 0);
    context.setAllowTF32CuBLAS(cublas != 0);
    return 1;
  } catch (...) {
    return 0;
  }
}
