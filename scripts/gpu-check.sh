#!/usr/bin/env bash
# GPU readiness check (issue 14), one script that fits in 10 minutes on a CUDA machine:
#   1. `lbwnet info` (libtorch, CUDA devices, threads);
#   2. the CUDA tests: quantizer CPU/CUDA parity (tests/quant_cuda.rs) and the detection
#      fixtures / timing tests, which run on CUDA when a device is available
#      (tests/detect_fixtures.rs, tests/detect_timing.rs);
#   3. the torchvision comparison (scripts/bench-vs-torchvision.sh) on CUDA;
#   4. 300 training iterations of configs/default.yaml at 6 bits on CUDA, then eval.
# Without CUDA it says so and runs what a CPU can: info, the tests (they skip their CUDA
# parts), the comparison with --quick, 20 training iterations and eval; exit 0.
#
# On a machine without this checkout's build: copy the tree with target/release/lbwnet
# (and, for step 2 without cargo, the test binaries target/release/deps/{quant_cuda,
# detect_fixtures,detect_timing}-*, built by `cargo test --release --no-run`), and point
# the loader at a libtorch with CUDA, e.g. the torch wheel's:
#   export LD_LIBRARY_PATH=$(python -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:$LD_LIBRARY_PATH
# (LBWNET_TORCH_ENV/lib/python3*/site-packages/torch/lib for the project's virtualenv).
# Variables: LBWNET_BIN, LBWNET_TORCH_ENV, GPU_CHECK_DIR (scratch, default a temp dir),
# GPU_CHECK_ITERS (training iterations on CUDA, default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
LBWNET_TORCH_ENV="${LBWNET_TORCH_ENV:-$HOME/.cache/lbwnet/torch-2.11.0}"
BIN="${LBWNET_BIN:-target/release/lbwnet}"
TORCH_LIB=$(ls -d "$LBWNET_TORCH_ENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)
[ -n "$TORCH_LIB" ] && export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
WORK="${GPU_CHECK_DIR:-$(mktemp -d)}"
FAILED=()
step() { echo; echo "=== $*"; }
run() { # run a step; remember failures, keep going
  local start=$SECONDS
  "$@"; local rc=$?
  echo "--- rc $rc, $((SECONDS - start)) s: $*"
  [ $rc -eq 0 ] || FAILED+=("$*")
}

if [ ! -x "$BIN" ]; then
  if command -v cargo >/dev/null; then
    # shellcheck source=/dev/null
    source scripts/dev-env.sh; cargo build --release || exit 1
  else
    echo "no $BIN and no cargo: build it first (see the header)"; exit 1
  fi
fi

step "lbwnet info"
run "$BIN" info
CUDA=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
   && "$BIN" bench train-step --config configs/default.yaml --repeats 1 --size 64x64 --device cuda >/dev/null 2>&1; then
  CUDA=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "CUDA: available; lbwnet runs on it"
else
  echo "CUDA: not available (no GPU, no driver, or a CPU-only libtorch); running the CPU-side parts"
fi

step "tests: quantizer CPU/CUDA parity, detection fixtures and timing (CUDA where available)"
TESTS=(quant_cuda detect_fixtures detect_timing)
if command -v cargo >/dev/null; then
  # shellcheck source=/dev/null
  source scripts/dev-env.sh
  args=(); for t in "${TESTS[@]}"; do args+=(--test "$t"); done
  run cargo test --release "${args[@]}" -- --test-threads=1
else
  for t in "${TESTS[@]}"; do
    exe=$(ls -t target/release/deps/"$t"-* 2>/dev/null | grep -v '\.d$' | head -1)
    if [ -n "$exe" ]; then run "$exe" --test-threads=1; else echo "no test binary for $t"; FAILED+=("test $t missing"); fi
  done
fi

if [ $CUDA -eq 1 ]; then
  step "torchvision comparison on CUDA"
  run scripts/bench-vs-torchvision.sh --device cuda --repeats 5 --small-repeats 20
  ITERS="${GPU_CHECK_ITERS:-300}"; DEVICE=cuda
else
  step "torchvision comparison on CPU (--quick)"
  run scripts/bench-vs-torchvision.sh --quick --small-repeats 5
  ITERS=20; DEVICE=cpu
fi

step "train configs/default.yaml at 6 bits, $ITERS iterations on $DEVICE, then eval"
SETS=(--set "train.device=$DEVICE" --set "train.iterations=$ITERS" --set quant.bits=6
      --set train.output_dir="$WORK/runs" --set train.checkpoint_interval="$ITERS"
      --set train.lr_steps="[$((ITERS * 3 / 4))]" --set train.warmup_iterations=$((ITERS / 10)))
run "$BIN" train --config configs/default.yaml "${SETS[@]}"
RUN=$(dirname "$(ls -d "$WORK"/runs/*/*/config.yaml 2>/dev/null | head -1)")
if [ -n "$RUN" ] && [ "$RUN" != . ]; then
  run "$BIN" eval --run "$RUN"
else
  echo "no run directory under $WORK/runs"; FAILED+=("train produced no run")
fi

echo
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "gpu-check: all steps passed ($([ $CUDA -eq 1 ] && echo CUDA || echo 'CPU only: no CUDA device'))"
  exit 0
fi
echo "gpu-check: FAILED steps:"; printf '  %s\n' "${FAILED[@]}"
exit 1
