#!/usr/bin/env bash
# The threshold sweep: c per bit-width (3, 4, 5, 6 bits with lbw; 2 bits with the exact
# ternary formula) on the default synthetic data set, each cell retrained from the float
# model, under every seed of the sweep config (or seeds 0..N-1 with --seeds N).
# Usage: scripts/threshold-sweep.sh [--paper-table] [--quick] [--seeds N] [SWEEP_CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
flags=()
while true; do
  case "${1:-}" in
    --quick|--paper-table) flags+=("$1"); shift ;;
    --seeds) flags+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
sweep="${1:-configs/sweeps/default.yaml}"
make --no-print-directory build >&2
target/release/lbwnet sweep --config "$sweep" "${flags[@]}"
