#!/usr/bin/env bash
# scripts/bench_dw4.sh: the DW4 convergence benchmark of issue 5 (not a CI test: hours on a CPU).
#
# Generates 100k training and 10k held-out DW4 configurations, trains the EGNN flow with each
# objective (fm, ot, eqot) at the paper's settings (batch 256, lr 5e-4 dropped x0.1 at half the
# epochs), evaluates NLL / ESS / path length on held-out data, and prints one table row per
# objective for bench/RESULTS.md. Targets (the paper): eqot NLL <= 1.68, ESS >= 88%;
# path lengths ot 2.94, eqot 2.92.
#
# usage: scripts/bench_dw4.sh [OUT_DIR] [EPOCHS] [OBJECTIVES]
#   environment: EQFLOW (the eqflow binary, default build/cpu/eqflow), THREADS (default 0 = all),
#   SAMPLES (model samples for ESS, default 10000), TEST_MAX (test points for NLL, default 10000),
#   DEVICE (default cpu), LR (default 5e-4, the paper), BATCH (default 256).
# A run can be interrupted (Ctrl-C) and started again with the same arguments: training resumes
# from its checkpoint.
set -euo pipefail

OUT=${1:-bench-dw4}
EPOCHS=${2:-1000}
OBJECTIVES=${3:-"fm ot eqot"}
EQFLOW=${EQFLOW:-build/cpu/eqflow}
THREADS=${THREADS:-0}
SAMPLES=${SAMPLES:-10000}
TEST_MAX=${TEST_MAX:-10000}
DEVICE=${DEVICE:-cpu}
LR=${LR:-5e-4}
BATCH=${BATCH:-256}

mkdir -p "$OUT"
[ -f "$OUT/train.npy" ] || "$EQFLOW" data --system dw4 --samples 100000 --seed 1 --out "$OUT/train.npy"
[ -f "$OUT/test.npy" ] || "$EQFLOW" data --system dw4 --samples 10000 --seed 2 --out "$OUT/test.npy"

for obj in $OBJECTIVES; do
  run="$OUT/$obj"
  resume=""
  if [ -f "$run/checkpoint.safetensors" ] && [ ! -f "$run/done" ]; then resume="--resume"; fi
  if [ ! -f "$run/done" ]; then
    start=$(date +%s)
    "$EQFLOW" train --system dw4 --data "$OUT/train.npy" --objective "$obj" --out "$run" \
      --epochs "$EPOCHS" --batch "$BATCH" --lr "$LR" --seed 0 --threads "$THREADS" --device "$DEVICE" $resume
    echo $(( $(date +%s) - start )) > "$run/done"
  fi
  "$EQFLOW" eval --model "$run/model.safetensors" --test "$OUT/test.npy" --out "$run/metrics.json" \
    --samples "$SAMPLES" --test-max "$TEST_MAX" --threads "$THREADS" --device "$DEVICE"
done

echo
echo "| objective | epochs | train time (s) | NLL | ESS | path length |"
echo "|---|---|---|---|---|---|"
for obj in $OBJECTIVES; do
  python3 - "$OUT/$obj/metrics.json" "$obj" "$EPOCHS" "$(cat "$OUT/$obj/done")" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {m['nll']:.3f} | {100*m['ess']:.2f}% | {m['path_length']:.3f} |")
PY
done
