#!/usr/bin/env bash
# The paper's table: rows 32, 6, 5, 4, 3, 2 bits at the best c of the sweep, with mAP, the
# difference to float, weight storage and compression. Reuses finished sweep cells.
# Usage: scripts/reproduce-table.sh [--quick] [SWEEP_CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); shift; fi
sweep="${1:-configs/sweeps/default.yaml}"
make --no-print-directory build >&2
target/release/lbwnet sweep --config "$sweep" --paper-table "${quick[@]}"
