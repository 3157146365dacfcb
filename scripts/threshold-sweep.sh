#!/usr/bin/env bash
# The threshold sweep: c per bit-width (3, 4, 5, 6 bits with lbw; 2 bits with the exact
# ternary formula) on the default synthetic data set, each cell retrained from the float
# model. Usage: scripts/threshold-sweep.sh [--paper-table] [--quick] [SWEEP_CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
flags=()
while [ "${1:-}" = "--quick" ] || [ "${1:-}" = "--paper-table" ]; do flags+=("$1"); shift; done
sweep="${1:-configs/sweeps/default.yaml}"
make --no-print-directory build >&2
target/release/lbwnet sweep --config "$sweep" "${flags[@]}"
