#!/usr/bin/env bash
# torchvision's Faster R-CNN training step against ours (`lbwnet bench train-step`), one
# after the other, same threads, sizes, RoI counts (printed), float and 6-bit LBW, lr 0.
# Medians, min/max and ours/torchvision ratios; see scripts/bench_vs_torchvision.py.
#
#   scripts/bench-vs-torchvision.sh                  # small, resnet50, vgg16 (~3 min on 2 cores)
#   scripts/bench-vs-torchvision.sh --quick          # the small model only (seconds)
#   scripts/bench-vs-torchvision.sh --models resnet50 --repeats 5 --threads 2
#   scripts/bench-vs-torchvision.sh --device cuda
#
# Environment: LBWNET_TORCH_ENV (the torch virtualenv, default ~/.cache/lbwnet/torch-2.11.0),
# LBWNET_BIN (default target/release/lbwnet; built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
LBWNET_TORCH_ENV="${LBWNET_TORCH_ENV:-$HOME/.cache/lbwnet/torch-2.11.0}"
PY="$LBWNET_TORCH_ENV/bin/python"
[ -x "$PY" ] || PY=python3
BIN="${LBWNET_BIN:-target/release/lbwnet}"
if [ ! -x "$BIN" ]; then
  # shellcheck source=/dev/null
  source scripts/dev-env.sh
  cargo build --release
fi
exec "$PY" scripts/bench_vs_torchvision.py --bin "$BIN" "$@"
