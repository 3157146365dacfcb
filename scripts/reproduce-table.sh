#!/usr/bin/env bash
# The paper's table: rows 32, 6, 5, 4, 3, 2 bits at the best c of the threshold sweep, with
# mAP, the difference to float, weight storage and compression. Finished sweep cells are
# reused. Usage: scripts/reproduce-table.sh [--quick] [--seeds N] [SWEEP_CONFIG]
exec "$(dirname "$0")/threshold-sweep.sh" --paper-table "$@"
