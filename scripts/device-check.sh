#!/usr/bin/env bash
# The one command for a machine with a GPU (docs/design.md section 10), in phases that each fit
# a short lease and hand back their results the moment they end:
#
#   build      configure for sm_90 and build the library, the gpu tests and the benchmarks   <= 4 min
#   test       every gpu-labelled test (the cases the emulator skips included)               (with build)
#   bench      the benchmarks behind the targets: EGNN forward / backward / divergence at
#              DW4, LJ13, LJ55 and the device training step                                  <= 3 min
#   sanitizer  compute-sanitizer memcheck on a chosen subset of the gpu tests                <= 2 min
#   torch      the PyTorch reference (tools/bench_torch.py) on the same GPU, and the ratios  <= 2 min
#   train      not a check and not in the default set: Table 1 cells trained and evaluated on
#              the GPU (scripts/reproduce.sh SYSTEM OBJECTIVE cuda) for EQFLOW_TRAIN_SECONDS
#              (default 420, the CLI's build included); EQFLOW_TRAIN_CELLS lists them
#              (default "lj13:eqot"; others: "dw4:fm lj13:ot", ...), and reproduce.sh's
#              variables pass through (EQFLOW_EMA=0.999, EQFLOW_EPOCHS, ...). The runs live in
#              runs-device/ (git-ignored); a cell cut off by the time limit checkpoints (the
#              trainer's SIGTERM handling) and resumes at the next call once runs-device/ is
#              back: unpack the handed-back train-runs.tar.gz into runs-device/ and name it in
#              the device tool's `carry`. The paper's data travel in .deps/paper-data
#              (scripts/prepare-device-deps.sh); without them reproduce.sh generates data.
#
#   scripts/device-check.sh                  all phases in that order (under 9 minutes)
#   scripts/device-check.sh bench torch      only these (the build directory must exist)
#   EQFLOW_EMA=0.999 scripts/device-check.sh build train
#                                            train (and evaluate) the LJ13 eqot cell on the GPU
#   EQFLOW_DEVICE_CHECK_EMU=1 scripts/device-check.sh
#                                            a dry run of the script itself on the CPU emulator
#                                            build (emu preset): same phases, no GPU, no nvcc
#
# Every phase writes build/device-check-out/<phase>.log and, when $OUT is set, copies it (and its
# result files) there as soon as it ends, so a lease cut short still returns what finished; the
# file summary.txt grows by one line per phase. On a machine without GoogleTest / Benchmark, run
# scripts/prepare-device-deps.sh here first and carry .deps. Environment: EQFLOW_DEVICE_JOBS
# (build jobs, default: all cores).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RES=$ROOT/build/device-check-out
mkdir -p "$RES"
EMU=${EQFLOW_DEVICE_CHECK_EMU:-0}
JOBS=${EQFLOW_DEVICE_JOBS:-$(nproc)}
if [ "$EMU" = 1 ]; then BUILD=$ROOT/build/emu; else BUILD=$ROOT/build/device; fi
SUMMARY=$RES/summary.txt
export LD_LIBRARY_PATH="$ROOT/.deps/benchmark/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(build test bench sanitizer torch) && : > "$SUMMARY"

hand_back() {  # copies files into $OUT (at most 8 files come back: logs, summary, one json each)
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT"
    cp "$@" "$SUMMARY" "$OUT/" 2> /dev/null || true
}

# run_phase NAME BUDGET_SECONDS FUNCTION: runs the function under a time limit, logs it, records
# one summary line (status, wall time, the function's last "result:" line) and hands the log back.
run_phase() {
    local name=$1 budget=$2 fn=$3 log=$RES/$1.log t0 rc status result
    t0=$(date +%s)
    echo "== $name (budget ${budget} s)"
    timeout --kill-after=10 "$budget" bash -c "$(declare -f "$fn" say_result); $fn" > "$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMED OUT" ;;
        *) status="FAILED (rc $rc)" ;;
    esac
    result=$(grep "^result:" "$log" | tail -1 | cut -c9-)
    printf '%-10s %-16s %4d s  %s\n' "$name" "$status" $(($(date +%s) - t0)) "$result" | tee -a "$SUMMARY"
    [ "$rc" = 0 ] || tail -20 "$log"
    hand_back "$log" "$RES"/"$name"*.json "$RES"/"$name"-*.tar.gz
    return $rc
}
say_result() { echo "result: $*"; }

# Exported for the phase functions, which run in a fresh bash under `timeout`.
export ROOT RES BUILD JOBS EMU

phase_build() {
    set -e
    if [ "$EMU" = 1 ]; then
        cmake --preset emu > /dev/null
        cmake --build --preset emu -j "$JOBS"
        say_result "emulator build (no nvcc, no GPU)"
        return 0
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvcc --version | tail -1
    local extra=()
    [ -d "$ROOT/.deps/googletest" ] && extra+=(-DEQFLOW_GTEST_SOURCE_DIR="$ROOT/.deps/googletest")
    [ -d "$ROOT/.deps/benchmark" ] && extra+=(-DEQFLOW_BENCHMARK_ROOT="$ROOT/.deps/benchmark")
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEQFLOW_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DEQFLOW_BUILD_CLI=OFF "${extra[@]}"
    cmake --build "$BUILD" -j "$JOBS" --target eqflow_gpu_tests bench_egnn_gpu bench_egnn_unfused
    say_result "sm_90 build of the library, gpu tests and GPU benchmarks"
}

phase_test() {
    if [ "$EMU" = 1 ]; then
        # The dry run: the quick gpu tests only (the full emulated set is CI's).
        ctest --test-dir "$BUILD" -L gpu -R "philox|kabsch|systems" --output-on-failure -j "$JOBS"
    else
        ctest --test-dir "$BUILD" -L gpu --output-on-failure -j 4
    fi | tee "$RES/test-ctest.txt"
    local rc=${PIPESTATUS[0]}
    say_result "$(grep -E "tests passed|tests failed" "$RES/test-ctest.txt" | tail -1)"
    return "$rc"
}

phase_bench() {
    if [ "$EMU" = 1 ]; then
        say_result "skipped on the emulator (it measures no speed)"
        return 0
    fi
    local exe=$BUILD/bench/bench_egnn_gpu
    "$exe" --benchmark_min_time=0.1s --benchmark_filter='lj55/256|lj13/256|dw4/256|TrainStep|LikelihoodStep' \
        --benchmark_out="$RES/bench_egnn_gpu.json" --benchmark_out_format=json
    "$BUILD/bench/bench_egnn_unfused" --benchmark_min_time=0.1s --benchmark_filter='lj55/256' \
        --benchmark_out="$RES/bench_unfused.json" --benchmark_out_format=json
    python3 "$ROOT/tools/compare_bench.py" --unfused "$RES/bench_egnn_gpu.json" \
        "$RES/bench_unfused.json" || true
    say_result "$(grep -c '"name"' "$RES/bench_egnn_gpu.json") benchmarks (see bench.log)"
}

phase_sanitizer() {
    if [ "$EMU" = 1 ] || ! command -v compute-sanitizer > /dev/null; then
        say_result "skipped (no compute-sanitizer here)"
        return 0
    fi
    # A subset that touches every kernel family at small sizes.
    local failed=0 exe filter
    for spec in "test_egnn_gpu:-*lj55*" "test_train_gpu:-TrainGpu.ShortDw4RunMatchesTheCpuRun" \
                "test_coupling_gpu:*" "test_ode_gpu:-*lj13*:OdeGpu.ChunksGiveTheSameResultsAsOneChunk" \
                "test_molecule_gpu:*"; do
        exe=$BUILD/tests/${spec%%:*}
        filter=${spec#*:}
        echo "-- $(basename "$exe") ($filter)"
        GTEST_FILTER=$filter compute-sanitizer --tool memcheck --error-exitcode 99 "$exe" \
            > "$RES/sanitizer-$(basename "$exe").txt" 2>&1 || { failed=$((failed + 1)); tail -20 "$RES/sanitizer-$(basename "$exe").txt"; }
        grep -E "ERROR SUMMARY" "$RES/sanitizer-$(basename "$exe").txt"
    done
    say_result "memcheck: $failed of 5 executables reported errors"
    return "$failed"
}

phase_torch() {
    if ! python3 -c "import torch" 2> /dev/null; then
        say_result "skipped (no PyTorch here)"
        return 0
    fi
    local dev=cuda
    [ "$EMU" = 1 ] && dev=cpu
    PYTHONUNBUFFERED=1 python3 "$ROOT/tools/bench_torch.py" --device "$dev" --batch 256 \
        --systems dw4,lj13 --out "$RES/torch.json"
    if [ -f "$RES/bench_egnn_gpu.json" ]; then
        python3 "$ROOT/tools/compare_bench.py" "$RES/bench_egnn_gpu.json" "$RES/torch.json"
    fi
    say_result "PyTorch on $dev (see torch.log)"
}

# Table 1 cells on the GPU, resumable across calls (see the header). The phase's own limit is
# the training budget plus time for the archive; the cells get what the CLI's build leaves.
phase_train() {
    local seconds=${EQFLOW_TRAIN_SECONDS:-420} runs=$ROOT/runs-device t0 left cell rc=0 paper
    t0=$(date +%s)
    if [ "$EMU" != 1 ]; then
        cmake -S "$ROOT" -B "$BUILD" -DEQFLOW_BUILD_CLI=ON > /dev/null || return 1
    fi
    cmake --build "$BUILD" -j "$JOBS" --target eqflow_cli || return 1
    paper=$ROOT/.deps/paper-data
    [ -d "$paper" ] || paper=$ROOT/../shared/data
    mkdir -p "$runs"
    for cell in ${EQFLOW_TRAIN_CELLS:-lj13:eqot}; do
        left=$((seconds - ($(date +%s) - t0)))
        if [ "$left" -lt 30 ]; then
            echo "-- $cell: no time left"
            rc=1
            break
        fi
        echo "-- $cell ($left s left)"
        # SIGTERM: the trainer saves a checkpoint and exits (143), which ends reproduce.sh.
        EQFLOW_BIN=$BUILD/eqflow EQFLOW_RUNS=$runs EQFLOW_PAPER_DATA=$paper \
            timeout -s TERM --kill-after=60 "$left" "$ROOT/scripts/reproduce.sh" "${cell%%:*}" \
            "${cell#*:}" cuda || rc=$?
    done
    # Everything but the data (recopied or regenerated at the next call) comes back.
    tar -C "$runs" --exclude='*.npy' -czf "$RES/train-runs.tar.gz" .
    local done_cells=0 total=0
    for cell in ${EQFLOW_TRAIN_CELLS:-lj13:eqot}; do
        total=$((total + 1))
        local dir=$runs/${cell%%:*}-${cell#*:}
        if [ -f "$dir/metrics_paper_test.json" ] || [ -f "$dir/metrics_eqflow_test.json" ]; then
            done_cells=$((done_cells + 1))
            grep -h -E '"(nll|ess|path_length)"' "$dir"/metrics_*_test.json | head -6
        elif [ -f "$dir/run/train_log.jsonl" ]; then
            echo "$cell: $(tail -1 "$dir/run/train_log.jsonl")"
        fi
    done
    say_result "$done_cells of $total cells trained and evaluated; runs in train-runs.tar.gz"
    return $rc
}

status=0
for p in "${phases[@]}"; do
    case $p in
        build) run_phase build 240 phase_build || { status=1; break; } ;;
        test) run_phase test 200 phase_test || status=1 ;;
        bench) run_phase bench 180 phase_bench || status=1 ;;
        sanitizer) run_phase sanitizer 120 phase_sanitizer || status=1 ;;
        torch) run_phase torch 120 phase_torch || status=1 ;;
        train) run_phase train $((${EQFLOW_TRAIN_SECONDS:-420} + 90)) phase_train || status=1 ;;
        *) echo "unknown phase '$p' (build test bench sanitizer torch train)"; exit 2 ;;
    esac
done
echo "== summary"
cat "$SUMMARY"
exit $status
