#!/usr/bin/env bash
# GPU check (issue 19): one script, within 7 minutes on one GPU, non-zero exit on any failure.
#   1. `lbwnet info` (libtorch, CUDA devices, threads);
#   2. every test binary `make test` builds, on CUDA where a device is present (the
#      timing tests with their ignored cases; not the Slurm test, not the calibration);
#   3. the training-step breakdown of the three models at 600x1000 (small at 240x320);
#   4. the torchvision comparison (scripts/bench-vs-torchvision.sh);
#   5. a short 6-bit training of configs/default.yaml, then its evaluation.
# Without CUDA it says so and runs the same steps on the CPU, shortened (a rehearsal).
#
#   scripts/gpu-check.sh                      # here: builds with cargo when needed
#   scripts/gpu-check.sh --pack BUNDLE.tgz    # build, then bundle the release binary and
#                                             # the test binaries for a machine without cargo
#   GPU_CHECK_BUNDLE=BUNDLE.tgz scripts/gpu-check.sh   # there: unpack and run
#
# The test binaries read fixtures through the absolute checkout path they were built at;
# with a bundle that path is recreated as a symlink to this checkout when it is missing.
# libtorch: LBWNET_TORCH_ENV is a virtualenv with torch (default ~/.cache/lbwnet/torch-2.11.0;
# /opt/torch/.venv on the lent GPU machines); its torch/lib goes first on LD_LIBRARY_PATH.
# Logs: every step's output lands in GPU_CHECK_LOGS (default $WORK/logs), and as one tar
# file in GPU_CHECK_TAR when set. Other variables: GPU_CHECK_DIR (scratch, default a temp
# dir), GPU_CHECK_ITERS (training iterations on CUDA, default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LBWNET_TORCH_ENV="${LBWNET_TORCH_ENV:-$HOME/.cache/lbwnet/torch-2.11.0}"
BIN="${LBWNET_BIN:-target/release/lbwnet}"
WORK="${GPU_CHECK_DIR:-$(mktemp -d)}"
LOGS="${GPU_CHECK_LOGS:-$WORK/logs}"
TEST_LIST=target/release/gpu-check-tests.txt
mkdir -p "$LOGS"

# The test executables of `cargo test --release`, one path a line, into $TEST_LIST.
list_test_binaries() {
  # shellcheck source=/dev/null
  source scripts/dev-env.sh
  cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' > "$TEST_LIST"
}

if [ "${1:-}" = "--pack" ]; then
  BUNDLE="${2:?--pack needs the bundle path}"
  # shellcheck source=/dev/null
  source scripts/dev-env.sh
  cargo build --release || exit 1
  list_test_binaries
  [ -s "$TEST_LIST" ] || { echo "no test binaries found"; exit 1; }
  echo "$ROOT" > target/release/gpu-check-build-dir.txt
  files=("$BIN" "$TEST_LIST" target/release/gpu-check-build-dir.txt)
  while read -r exe; do files+=("${exe#"$ROOT"/}"); done < "$TEST_LIST"
  tar -czf "$BUNDLE" "${files[@]}" || exit 1
  echo "wrote $BUNDLE ($(du -h "$BUNDLE" | cut -f1), ${#files[@]} files)"
  exit 0
fi

if [ -n "${GPU_CHECK_BUNDLE:-}" ]; then
  tar -xzf "$GPU_CHECK_BUNDLE" || exit 1
  BUILD_DIR=$(cat target/release/gpu-check-build-dir.txt)
  if [ "$BUILD_DIR" != "$ROOT" ] && [ ! -e "$BUILD_DIR" ]; then
    mkdir -p "$(dirname "$BUILD_DIR")" && ln -s "$ROOT" "$BUILD_DIR"
  fi
  # The binaries name themselves by their build path; map it to this checkout.
  sed -i "s|^$BUILD_DIR/|$ROOT/|" "$TEST_LIST"
fi

TORCH_LIB=$(ls -d "$LBWNET_TORCH_ENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)
[ -n "$TORCH_LIB" ] && export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
FAILED=()
step() { echo; echo "=== $*"; }
# run NAME TIMEOUT_S CMD...: output to the terminal and $LOGS/NAME.log; failures remembered.
run() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > >(tee -a "$LOGS/$name.log") 2>&1; local rc=$?
  echo "--- rc $rc, $((SECONDS - start)) s: $*" | tee -a "$LOGS/$name.log"
  [ $rc -eq 0 ] || FAILED+=("$name: $*")
}

if [ ! -x "$BIN" ]; then
  if command -v cargo >/dev/null; then
    # shellcheck source=/dev/null
    source scripts/dev-env.sh; cargo build --release || exit 1
  else
    echo "no $BIN and no cargo: bundle it with --pack first (see the header)"; exit 1
  fi
fi

step "lbwnet info"
run info 60 "$BIN" info
CUDA=0
# lbwnet's own view decides (the lent machines have no nvidia-smi on PATH).
if "$BIN" info 2>/dev/null | grep -q "cuda available: true"; then
  CUDA=1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOGS/info.log"
  fi
  echo "CUDA: available; lbwnet runs on it"
else
  echo "CUDA: not available (no GPU, no driver, or a CPU-only libtorch); running the CPU-side parts"
fi

step "every test binary (CUDA where available)"
[ -s "$TEST_LIST" ] || list_test_binaries
THREADS=$([ $CUDA -eq 1 ] && echo 4 || echo 2)
while read -r exe; do
  name=$(basename "$exe"); name=${name%-*}
  case $name in
    sweep_slurm) continue ;;                      # needs a Slurm cluster: make test-slurm
    onnx_export)                                  # needs onnxruntime in that Python (make setup)
      if ! "$LBWNET_TORCH_ENV/bin/python" -c "import onnx, onnxruntime" 2>/dev/null; then
        echo "test-$name: skipped, no onnx / onnxruntime in $LBWNET_TORCH_ENV"; continue
      fi
      args=() ;;
    detect_timing | backbone_shapes) args=(--include-ignored) ;;  # their timing cases
    *) args=() ;;                                 # quant_default_c's calibration stays ignored
  esac
  run "test-$name" 300 "$exe" --test-threads="$THREADS" "${args[@]}"
done < "$TEST_LIST"

if [ $CUDA -eq 1 ]; then
  DEVICE=cuda; ITERS="${GPU_CHECK_ITERS:-300}"; REPEATS=5
else
  DEVICE=cpu; ITERS=20; REPEATS=1
fi

step "training-step breakdown on $DEVICE (lr 0, float and 6-bit lbw)"
run breakdown-small 120 "$BIN" bench train-step --config configs/default.yaml --breakdown \
  --device "$DEVICE" --lr 0 --repeats "$((REPEATS * 2))"
if [ $CUDA -eq 1 ]; then
  for model in voc07_vgg16 voc07_resnet50; do
    run "breakdown-$model" 180 "$BIN" bench train-step --config "configs/$model.yaml" \
      --set model.backbone_weights=null --size 600x1000 --breakdown --device cuda --lr 0 \
      --repeats "$REPEATS"
  done
fi

if [ $CUDA -eq 1 ]; then
  step "torchvision comparison on CUDA"
  run vs-torchvision 240 scripts/bench-vs-torchvision.sh --device cuda --repeats 5 --small-repeats 20
else
  step "torchvision comparison on CPU (--quick)"
  run vs-torchvision 240 scripts/bench-vs-torchvision.sh --quick --small-repeats 5
fi

step "train configs/default.yaml at 6 bits, $ITERS iterations on $DEVICE, then eval"
SETS=(--set "train.device=$DEVICE" --set "train.iterations=$ITERS" --set quant.bits=6
      --set train.output_dir="$WORK/runs" --set train.checkpoint_interval="$ITERS"
      --set train.lr_steps="[$((ITERS * 3 / 4))]" --set train.warmup_iterations=$((ITERS / 10)))
run train 180 "$BIN" train --config configs/default.yaml "${SETS[@]}"
RUN=$(dirname "$(ls -d "$WORK"/runs/*/*/config.yaml 2>/dev/null | head -1)")
if [ -n "$RUN" ] && [ "$RUN" != . ]; then
  run eval 120 "$BIN" eval --run "$RUN"
else
  echo "no run directory under $WORK/runs"; FAILED+=("train produced no run")
fi

echo
if [ ${#FAILED[@]} -eq 0 ]; then
  summary="gpu-check: all steps passed ($([ $CUDA -eq 1 ] && echo CUDA || echo 'CPU only: no CUDA device'))"
  rc=0
else
  summary="gpu-check: FAILED steps:$(printf '\n  %s' "${FAILED[@]}")"
  rc=1
fi
echo "$summary" | tee "$LOGS/summary.log"
if [ -n "${GPU_CHECK_TAR:-}" ]; then
  tar -cf "$GPU_CHECK_TAR" -C "$LOGS" . && echo "logs: $GPU_CHECK_TAR"
fi
exit $rc
