// libtorch's global determinism switches, which tch does not wrap (see determinism.rs).
#include <ATen/Context.h>

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
