#!/usr/bin/env bash
# One cell of Table 1 of Klein, Kraemer & Noe (2023), end to end, resumable:
#
#   scripts/reproduce.sh SYSTEM OBJECTIVE [DEVICE]     e.g. scripts/reproduce.sh dw4 eqot cuda
#   scripts/reproduce.sh                               the whole table (dw4, lj13 x fm, ot, eqot)
#
# SYSTEM: dw4 | lj13. OBJECTIVE: fm | ot | eqot (likelihood training is not built yet: the script
# says so and stops). DEVICE: cpu | cuda (default: what eqflow picks).
#
# Steps of a cell, each skipped when its output exists (so a rerun after an interruption picks
# up where it stopped; training itself resumes from its checkpoint):
#   1. data      the paper's training data when present (EQFLOW_PAPER_DATA, default ../shared/data:
#                dw4_train.npy / dw4_val.npy, lj13_train.npy whose last 1000 rows are held out),
#                else equilibrium samples from `eqflow data`; and eqflow's own equilibrium test set
#   2. train     `eqflow train` with the hyperparameters below (--resume when a checkpoint exists)
#   3. eval      `eqflow eval` on the held-out paper data and on eqflow's own equilibrium data:
#                NLL (paper convention), ESS, path length; dopri5 atol = rtol = 1e-4
# Everything goes to $EQFLOW_RUNS/SYSTEM-OBJECTIVE/ (default runs/), with command.txt (the exact
# commands), metrics_paper_test.json and metrics_eqflow_test.json.
#
# Hyperparameters (the paper's Table 1 setup where it states them; docs/design.md section 5):
# EGNN H 32, L 3, batch 256, Adam lr 5e-4 with x0.1 at half the steps, sigma 0.01, 1000 epochs
# (EQFLOW_EPOCHS overrides, e.g. for a smoke run). Environment: EQFLOW_BIN (default
# build/default/eqflow), EQFLOW_SAMPLES (ESS samples, default 10000 for dw4, 2000 for lj13).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${EQFLOW_BIN:-$ROOT/build/default/eqflow}
RUNS=${EQFLOW_RUNS:-$ROOT/runs}
PAPER=${EQFLOW_PAPER_DATA:-$ROOT/../shared/data}
[ -x "$BIN" ] || { echo "reproduce: no eqflow binary at $BIN (build first, or set EQFLOW_BIN)"; exit 2; }

# Rows [first, first + count) of an .npy file into another (numpy, from tools' requirements).
npy_rows() {
    python3 -c "import numpy as np, sys; a = np.load(sys.argv[1]); s = int(sys.argv[3]); \
n = int(sys.argv[4]); np.save(sys.argv[2], a[s:] if n < 0 else a[s:s + n])" "$@"
}

run_cell() {
    local system=$1 objective=$2 device=${3:-}
    case $system in dw4 | lj13) ;; *) echo "reproduce: SYSTEM must be dw4 or lj13"; return 2 ;; esac
    case $objective in
        fm | ot | eqot) ;;
        likelihood) echo "reproduce: likelihood training is not built yet (issue: Reproduce Table 1)"; return 2 ;;
        *) echo "reproduce: OBJECTIVE must be fm, ot or eqot"; return 2 ;;
    esac
    local dir=$RUNS/$system-$objective epochs=${EQFLOW_EPOCHS:-1000}
    local samples=${EQFLOW_SAMPLES:-$([ "$system" = dw4 ] && echo 10000 || echo 2000)}
    local dev=()
    [ -n "$device" ] && dev=(--device "$device")
    mkdir -p "$dir"
    echo "== $system $objective -> $dir"

    # 1. data
    if [ ! -f "$dir/train.npy" ]; then
        if [ "$system" = dw4 ] && [ -f "$PAPER/dw4_train.npy" ]; then
            cp "$PAPER/dw4_train.npy" "$dir/train.npy"
            npy_rows "$PAPER/dw4_val.npy" "$dir/paper_test.npy" 0 2000
        elif [ "$system" = lj13 ] && [ -f "$PAPER/lj13_train.npy" ]; then
            npy_rows "$PAPER/lj13_train.npy" "$dir/train.npy" 0 9000
            npy_rows "$PAPER/lj13_train.npy" "$dir/paper_test.npy" 9000 -1
        else
            echo "reproduce: no paper data under $PAPER; training on eqflow's equilibrium data"
            "$BIN" data --system "$system" --samples 100000 --seed 1 --out "$dir/train.npy"
        fi
    fi
    [ -f "$dir/eqflow_test.npy" ] ||
        "$BIN" data --system "$system" --samples 2000 --seed 2 --out "$dir/eqflow_test.npy"

    # 2. train
    local train_cmd=("$BIN" train --system "$system" --data "$dir/train.npy" --objective "$objective"
                     --out "$dir/run" --epochs "$epochs" --batch 256 --lr 5e-4 --sigma 0.01
                     --hidden 32 --layers 3 --seed 0 "${dev[@]}")
    if [ -f "$dir/run/checkpoint.safetensors" ]; then train_cmd+=(--resume); fi
    if [ ! -f "$dir/trained" ]; then
        printf '%q ' "${train_cmd[@]}" > "$dir/command.txt"
        echo >> "$dir/command.txt"
        "${train_cmd[@]}"
        touch "$dir/trained"
    fi

    # 3. eval on the paper's held-out data (when present) and on eqflow's own equilibrium data
    local test
    for test in paper eqflow; do
        [ -f "$dir/${test}_test.npy" ] || continue
        [ -f "$dir/metrics_${test}_test.json" ] && continue
        local eval_cmd=("$BIN" eval --model "$dir/run/model.safetensors" --test "$dir/${test}_test.npy"
                        --out "$dir/metrics_${test}_test.json" --samples "$samples" --atol 1e-4
                        --rtol 1e-4 "${dev[@]}")
        printf '%q ' "${eval_cmd[@]}" >> "$dir/command.txt"
        echo >> "$dir/command.txt"
        "${eval_cmd[@]}"
    done
    echo "== $system $objective done: $dir"
}

if [ $# -ge 2 ]; then
    run_cell "$@"
else
    for system in dw4 lj13; do
        for objective in fm ot eqot; do run_cell "$system" "$objective" "${1:-}"; done
    done
fi
