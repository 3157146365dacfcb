#!/usr/bin/env bash
# GPU check (issues 19, 28): one script, within 7 minutes on one GPU, non-zero exit on any
# failure, and it cannot pass by skipping.
#   1. `lbwnet info` (libtorch, CUDA devices, threads, TF32);
#   2. every test binary `make test` builds, on CUDA where a device is present (the
#      timing tests with their ignored cases; not the Slurm test, not the calibration), with
#      a pass/fail/skip line per binary; on a machine where `lbwnet info` sees CUDA, a test
#      that skips for want of a CUDA device is a failure;
#   3. the training-step breakdown of the three models at 600x1000 (small at 240x320), and
#      VGG-16's step with TF32 on and off;
#   4. the torchvision comparison (scripts/bench-vs-torchvision.sh);
#   5. a short 6-bit training of configs/default.yaml with TF32 on, then its evaluation, and
#      the same training with TF32 off (step time and mAP of both in the summary).
# Without CUDA it says so and runs the same steps on the CPU, shortened (a rehearsal).
#
#   scripts/gpu-check.sh                      # here: builds with cargo, always afresh
#   scripts/gpu-check.sh --pack BUNDLE.tgz    # build afresh, then bundle the release binary
#                                             # and the test binaries for a machine without cargo
#   GPU_CHECK_BUNDLE=BUNDLE.tgz scripts/gpu-check.sh   # there: unpack and run
#
# The test binaries come from a fresh `cargo test --release --no-run` whose exit status is
# checked (a test that does not compile fails the check); a bundle carries the list made when
# it was packed, and what an earlier run or bundle left in target/release is removed first.
# The test binaries read fixtures through the absolute checkout path they were built at;
# with a bundle that path is recreated as a symlink to this checkout when it is missing.
# libtorch: LBWNET_TORCH_ENV is a virtualenv with torch (default ~/.cache/lbwnet/torch-2.11.0;
# /opt/torch/.venv on the lent GPU machines); its torch/lib goes first on LD_LIBRARY_PATH.
# Logs: every step's output lands in GPU_CHECK_LOGS (default $WORK/logs), the summary in
# summary.log there, and all of it as one tar file in GPU_CHECK_TAR when set. Other
# variables: GPU_CHECK_DIR (scratch, default a temp dir), GPU_CHECK_ITERS (training
# iterations on CUDA, default 300), GPU_CHECK_ONLY (space-separated test binary names: run
# only those; the summary then says it was a subset and it never reports "all steps passed").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export LBWNET_TORCH_ENV="${LBWNET_TORCH_ENV:-$HOME/.cache/lbwnet/torch-2.11.0}"
BIN=target/release/lbwnet
# "NAME PATH" a line: the test binaries of the build (or bundle) this run checks.
TEST_LIST=target/release/gpu-check-tests.txt
# Line 1: the checkout the binaries were built in; line 2: its commit (+dirty).
BUILD_STAMP=target/release/gpu-check-build.txt
WORK="${GPU_CHECK_DIR:-$(mktemp -d)}"
LOGS="${GPU_CHECK_LOGS:-$WORK/logs}"
ONLY="${GPU_CHECK_ONLY:-}"
mkdir -p "$LOGS"
PYTHON=$(command -v python3 || echo "$LBWNET_TORCH_ENV/bin/python")

die() {
  echo "gpu-check: FAILED: $*" | tee -a "$LOGS/summary.log" >&2
  if [ -n "${GPU_CHECK_TAR:-}" ]; then tar -cf "$GPU_CHECK_TAR" -C "$LOGS" .; fi
  exit 1
}

# Builds the release binary and every test binary with cargo, checking both exit statuses,
# and writes the test binaries cargo reported into $TEST_LIST (never an older list).
fresh_build() {
  command -v cargo >/dev/null ||
    die "no cargo here: bundle with --pack where cargo is, then run with GPU_CHECK_BUNDLE (see the header)"
  # shellcheck source=/dev/null
  source scripts/dev-env.sh
  rm -f "$TEST_LIST" "$BUILD_STAMP"
  cargo build --release 2>&1 | tee "$LOGS/build.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "cargo build --release (log: $LOGS/build.log)"
  local json="$LOGS/test-build.json"
  cargo test --release --no-run --message-format=json > "$json" 2> >(tee "$LOGS/test-build.log" >&2)
  local rc=$?
  [ $rc -eq 0 ] || die "cargo test --release --no-run exited $rc: a test binary did not build (log: $LOGS/test-build.log)"
  "$PYTHON" - "$json" > "$TEST_LIST.new" <<'EOF' || die "reading cargo's list of test binaries"
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind, name = m["target"]["kind"][0], m["target"]["name"]
        # The library's and the binary's unit tests share the crate's name.
        label = {"lib": "lib", "bin": "bin-" + name}.get(kind, name)
        print(label, m["executable"])
EOF
  mv "$TEST_LIST.new" "$TEST_LIST"
  check_test_list
  { echo "$ROOT"; echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo +dirty)"; } > "$BUILD_STAMP"
}

# The list is not empty and every binary on it is there.
check_test_list() {
  [ -s "$TEST_LIST" ] || die "no test binaries listed in $TEST_LIST"
  local name exe
  while read -r name exe; do
    [ -x "$exe" ] || die "test binary $name missing: $exe"
  done < "$TEST_LIST"
}

if [ "${1:-}" = "--pack" ]; then
  BUNDLE="${2:?--pack needs the bundle path}"
  fresh_build
  files=("$BIN" "$TEST_LIST" "$BUILD_STAMP")
  while read -r _ exe; do files+=("${exe#"$ROOT"/}"); done < "$TEST_LIST"
  tar -czf "$BUNDLE" "${files[@]}" || die "writing $BUNDLE"
  echo "wrote $BUNDLE ($(du -h "$BUNDLE" | cut -f1), ${#files[@]} files, $(wc -l < "$TEST_LIST") test binaries, build $(sed -n 2p "$BUILD_STAMP"))"
  exit 0
fi

if [ -n "${GPU_CHECK_BUNDLE:-}" ]; then
  # Nothing from an earlier run or bundle may stand in for what this bundle lacks.
  rm -f "$BIN" "$TEST_LIST" "$BUILD_STAMP"
  tar -xzf "$GPU_CHECK_BUNDLE" || die "unpacking $GPU_CHECK_BUNDLE"
  [ -s "$BUILD_STAMP" ] && [ -x "$BIN" ] || die "$GPU_CHECK_BUNDLE lacks $BIN or $BUILD_STAMP"
  BUILD_DIR=$(head -1 "$BUILD_STAMP")
  if [ "$BUILD_DIR" != "$ROOT" ] && [ ! -e "$BUILD_DIR" ]; then
    mkdir -p "$(dirname "$BUILD_DIR")" && ln -s "$ROOT" "$BUILD_DIR"
  fi
  # The binaries name themselves by their build path; map it to this checkout.
  [ -s "$TEST_LIST" ] && sed -i "s| $BUILD_DIR/| $ROOT/|" "$TEST_LIST"
  check_test_list
else
  fresh_build
fi
BUILD=$(sed -n 2p "$BUILD_STAMP")

TORCH_LIB=$(ls -d "$LBWNET_TORCH_ENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1)
[ -n "$TORCH_LIB" ] && export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
FAILED=()
step() { echo; echo "=== $*"; }
# run NAME TIMEOUT_S CMD...: output to the terminal and $LOGS/NAME.log; failures remembered.
run() {
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "--- rc $rc, $((SECONDS - start)) s: $*" | tee -a "$LOGS/$name.log"
  LAST_RC=$rc
  [ $rc -eq 0 ] || FAILED+=("$name: $*")
}

step "lbwnet info (build $BUILD)"
run info 60 "$BIN" info
CUDA=0
# lbwnet's own view decides (the lent machines have no nvidia-smi on PATH).
if grep -q "cuda available: true" "$LOGS/info.log"; then
  CUDA=1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOGS/info.log"
  fi
  echo "CUDA: available; lbwnet runs on it, and a test skipped for want of CUDA fails"
else
  echo "CUDA: not available (no GPU, no driver, or a CPU-only libtorch); running the CPU-side parts"
fi

# What one test binary's log says: "STATUS detail" with STATUS PASS (every test ran and
# passed), PART (passed, some skipped), SKIP (none ran), NONE (the binary has no tests,
# e.g. main.rs's) or FAIL. The
# binaries run with --show-output, so each passed test's output follows a
# "---- NAME stdout ----" header; a test that does not run prints a line starting with
# "skipped" (e.g. "skipped: no CUDA device") and returns.
test_status() {
  local log=$1 rc=$2
  awk -v rc="$rc" -v cuda="$CUDA" '
    /^test result: / {
      results++
      for (i = 1; i <= NF; i++) {
        if ($(i + 1) ~ /^passed/) passed += $i
        if ($(i + 1) ~ /^failed/) failed += $i
        if ($(i + 1) ~ /^ignored/) ignored += $i
      }
      current = ""
    }
    /^---- .* stdout ----$/ { current = $2; next }
    /^(successes|failures):$/ { current = "" }
    current != "" && /^skipp(ed|ing)[ :]/ && !(current in skipped) {
      skipped[current] = $0; nskipped++
      if ($0 ~ /no CUDA device/) nocuda++
    }
    END {
      nskipped += 0; ran = passed - nskipped
      detail = ran " passed, " failed + 0 " failed, " nskipped " skipped, " ignored + 0 " ignored"
      for (t in skipped) reasons = reasons "; " t " (" skipped[t] ")"
      if (results == 0) { print "FAIL no test result (exit " rc ")"; exit }
      if (rc != 0) { print "FAIL " detail " (exit " rc ")"; exit }
      if (cuda == 1 && nocuda > 0) {
        print "FAIL " detail ": " nocuda " skipped for want of CUDA on a CUDA machine" reasons; exit
      }
      if (passed + failed + ignored == 0) { print "NONE no tests in this binary"; exit }
      if (ran == 0) { print "SKIP " detail reasons; exit }
      if (nskipped > 0) { print "PART " detail reasons; exit }
      print "PASS " detail
    }' "$log"
}

step "every test binary (CUDA where available)"
THREADS=$([ $CUDA -eq 1 ] && echo 4 || echo 2)
SUMMARY=()
while read -r name exe; do
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
    continue
  fi
  case $name in
    sweep_slurm)                                  # needs a Slurm cluster: make test-slurm
      SUMMARY+=("SKIP  $name: needs a Slurm cluster (make test-slurm)"); continue ;;
    onnx_export)                                  # needs onnxruntime in that Python (make setup)
      if ! "$LBWNET_TORCH_ENV/bin/python" -c "import onnx, onnxruntime" 2>/dev/null; then
        echo "test-$name: skipped, no onnx / onnxruntime in $LBWNET_TORCH_ENV"
        SUMMARY+=("SKIP  $name: no onnx / onnxruntime in $LBWNET_TORCH_ENV"); continue
      fi
      args=() ;;
    detect_timing | backbone_shapes | proposal_nms) args=(--include-ignored) ;;  # timings
    *) args=() ;;                                 # quant_default_c's calibration stays ignored
  esac
  log="$LOGS/test-$name.log"
  rm -f "$log"
  start=$SECONDS
  run "test-$name" 300 "$exe" --test-threads="$THREADS" --show-output "${args[@]}"
  status=$(test_status "$log" "$LAST_RC")
  SUMMARY+=("$(printf '%-4s  %s: %s (%d s)' "${status%% *}" "$name" "${status#* }" $((SECONDS - start)))")
  case $status in
    FAIL*) [ "$LAST_RC" -eq 0 ] && FAILED+=("test-$name: ${status#FAIL }") ;;
  esac
done < "$TEST_LIST"
[ ${#SUMMARY[@]} -gt 0 ] || die "no test binary ran (GPU_CHECK_ONLY='$ONLY' matched none of $TEST_LIST)"

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

# TF32 (train.tf32): the step with it on (PyTorch's default) and off. VGG-16 at 600x1000
# on CUDA; the CPU rehearses with the small model (TF32 does nothing there).
if [ $CUDA -eq 1 ]; then
  TF32_MODEL=(--config configs/voc07_vgg16.yaml --set model.backbone_weights=null --size 600x1000)
else
  TF32_MODEL=(--config configs/default.yaml --size 240x320)
fi
step "step time with TF32 on and off on $DEVICE"
for tf32 in true false; do
  run "tf32-step-$tf32" 180 "$BIN" bench train-step "${TF32_MODEL[@]}" --set "train.tf32=$tf32" \
    --device "$DEVICE" --lr 0 --repeats "$REPEATS" --json
done

if [ $CUDA -eq 1 ]; then
  step "torchvision comparison on CUDA"
  run vs-torchvision 240 scripts/bench-vs-torchvision.sh --device cuda --repeats 5 --small-repeats 20
else
  step "torchvision comparison on CPU (--quick)"
  run vs-torchvision 240 scripts/bench-vs-torchvision.sh --quick --small-repeats 5
fi

# train_run NAME TF32: a short 6-bit training of the default config into $WORK/NAME.
train_run() {
  local name=$1 tf32=$2
  local sets=(--set "train.device=$DEVICE" --set "train.iterations=$ITERS" --set quant.bits=6
    --set train.output_dir="$WORK/$name" --set train.checkpoint_interval="$ITERS"
    --set train.lr_steps="[$((ITERS * 3 / 4))]" --set train.warmup_iterations=$((ITERS / 10))
    --set "train.tf32=$tf32")
  run "$name" 180 "$BIN" train --config configs/default.yaml "${sets[@]}"
}
# "ms/iteration mAP" of a finished run, or "-".
run_numbers() {
  local dir
  dir=$(dirname "$(ls -d "$WORK"/"$1"/*/*/metrics.json 2>/dev/null | head -1)")
  [ -n "$dir" ] && [ "$dir" != . ] || { echo "-"; return; }
  "$PYTHON" - "$dir" "$ITERS" <<'EOF' || echo "-"
import json, sys
d, iters = sys.argv[1], int(sys.argv[2])
t = json.load(open(d + "/timing.json"))
m = json.load(open(d + "/metrics.json"))
mach = m["machine"]
print(f"{1000 * t['train_seconds'] / iters:.1f} ms/iteration, mAP {m['map']:.4f} "
      f"(TF32 cuDNN {mach['tf32_cudnn']}, cuBLAS {mach['tf32_cublas']})")
EOF
}

step "train configs/default.yaml at 6 bits, $ITERS iterations on $DEVICE (TF32 on), then eval"
train_run train true
RUN=$(dirname "$(ls -d "$WORK"/train/*/*/config.yaml 2>/dev/null | head -1)")
if [ -n "$RUN" ] && [ "$RUN" != . ]; then
  run eval 120 "$BIN" eval --run "$RUN"
else
  echo "no run directory under $WORK/train"; FAILED+=("train produced no run")
fi
step "the same training with TF32 off"
train_run train-tf32-off false

# "float X ms, 6-bit Y ms" from the JSON line of a `bench train-step --json` log, or "-".
step_numbers() {
  local line
  line=$(grep -h '^{' "$1" 2>/dev/null | tail -1)
  [ -n "$line" ] || { echo "-"; return; }
  "$PYTHON" - "$line" <<'EOF' 2>/dev/null || echo "-"
import json, sys
r = json.loads(sys.argv[1])
h, w = r["image"]
print(f"{r['model']} {h}x{w}: float {r['float_ms']:.1f} ms, {r['bits']}-bit "
      f"{r['quantized_ms']:.1f} ms (medians of {r['repeats']})")
EOF
}

# The summary: every test binary's status, the measurements, the verdict.
{
  echo
  echo "=== summary (build $BUILD, $([ $CUDA -eq 1 ] && echo CUDA || echo 'CPU only: no CUDA device'))"
  echo "test binaries$([ -n "$ONLY" ] && echo " (SUBSET: GPU_CHECK_ONLY='$ONLY')"):"
  printf '  %s\n' "${SUMMARY[@]}"
  echo "measurements:"
  grep -h "^proposal_nms {" "$LOGS"/test-proposal_nms.log 2>/dev/null | sed 's/^/  /'
  for tf32 in true false; do
    echo "  bench train-step, train.tf32=$tf32: $(step_numbers "$LOGS/tf32-step-$tf32.log")"
  done
  echo "  training, TF32 on:  $(run_numbers train)"
  echo "  training, TF32 off: $(run_numbers train-tf32-off)"
  echo
  if [ ${#FAILED[@]} -ne 0 ]; then
    echo "gpu-check: FAILED steps:$(printf '\n  %s' "${FAILED[@]}")"
  elif [ -n "$ONLY" ]; then
    echo "gpu-check: the subset passed; not a whole check (GPU_CHECK_ONLY='$ONLY')"
  elif [ $CUDA -eq 1 ]; then
    echo "gpu-check: all steps passed (CUDA)"
  else
    echo "gpu-check: all steps passed (CPU only: no CUDA device; a rehearsal)"
  fi
} | tee "$LOGS/summary.log"
if [ -n "${GPU_CHECK_TAR:-}" ]; then
  tar -cf "$GPU_CHECK_TAR" -C "$LOGS" . && echo "logs: $GPU_CHECK_TAR"
fi
[ ${#FAILED[@]} -eq 0 ]
