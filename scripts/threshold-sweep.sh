#!/usr/bin/env bash
# The threshold sweep: c per bit-width (3, 4, 5, 6 bits with lbw; 2 bits with the exact
# ternary formula) on the default synthetic data set, each cell retrained from the float
# model. Usage: scripts/threshold-sweep.sh [--quick] [SWEEP_CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); shift; fi
sweep="${1:-configs/sweeps/default.yaml}"
make --no-print-directory build >&2
target/release/lbwnet sweep --config "$sweep" "${quick[@]}"
