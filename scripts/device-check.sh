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
#
#   scripts/device-check.sh                  all phases in that order (under 9 minutes)
#   scripts/device-check.sh bench torch      only these (the build directory must exist)
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
    hand_back "$log" "$RES"/"$name"*.json
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

status=0
for p in "${phases[@]}"; do
    case $p in
        build) run_phase build 240 phase_build || { status=1; break; } ;;
        test) run_phase test 200 phase_test || status=1 ;;
        bench) run_phase bench 180 phase_bench || status=1 ;;
        sanitizer) run_phase sanitizer 120 phase_sanitizer || status=1 ;;
        torch) run_phase torch 120 phase_torch || status=1 ;;
        *) echo "unknown phase '$p' (build test bench sanitizer torch)"; exit 2 ;;
    esac
done
echo "== summary"
cat "$SUMMARY"
exit $status
