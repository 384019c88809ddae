#!/usr/bin/env bash
# The one command for a machine with a GPU (docs/design.md section 10): builds for sm_90, runs every
# test (cpu and gpu labels), compute-sanitizer memcheck on the gpu test executables, the
# benchmarks, and prints a short table. Results also go to $OUT when it is set.
#
#   here:   scripts/prepare-device-deps.sh          (GoogleTest / Benchmark for a bare machine)
#   there:  scripts/device-check.sh                 (with .deps carried)
#
# Environment: EQFLOW_DEVICE_JOBS (build jobs, default: all cores), EQFLOW_SKIP_BENCH=1,
# EQFLOW_SKIP_SANITIZER=1, EQFLOW_BENCH_FILTER (a --benchmark_filter regex).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# Everything goes to build/device-check-out; $OUT (when set) receives the log, the test log and
# one tarball of the rest (the device tool returns at most 8 files).
RES=$ROOT/build/device-check-out
rm -rf "$RES" && mkdir -p "$RES"
LOG=$RES/device-check.log
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }
JOBS=${EQFLOW_DEVICE_JOBS:-$(nproc)}
BUILD=$ROOT/build/device

say "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
nvcc --version | tail -1 | tee -a "$LOG"

extra=()
[ -d "$ROOT/.deps/googletest" ] && extra+=(-DEQFLOW_GTEST_SOURCE_DIR="$ROOT/.deps/googletest")
[ -d "$ROOT/.deps/benchmark" ] && extra+=(-DEQFLOW_BENCHMARK_ROOT="$ROOT/.deps/benchmark")
export LD_LIBRARY_PATH="$ROOT/.deps/benchmark/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

say "== build (sm_90)"
t0=$(date +%s)
if ! cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEQFLOW_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 "${extra[@]}" >> "$LOG" 2>&1 ||
   ! cmake --build "$BUILD" -j "$JOBS" >> "$LOG" 2>&1; then
    say "BUILD FAILED (see $LOG)"; tail -40 "$LOG"; exit 1
fi
say "build: $(( $(date +%s) - t0 )) s"

say "== tests (all labels)"
ctest --test-dir "$BUILD" --output-on-failure -j 4 2>&1 | tee "$RES/ctest.log" >> "$LOG"
test_summary=$(grep -E "tests passed|tests failed" "$RES/ctest.log" | tail -1)
gpu_skipped=$(grep -c "Skipped" "$RES/ctest.log" || true)
say "tests: $test_summary (skipped: $gpu_skipped)"

san_rows=()
if [ "${EQFLOW_SKIP_SANITIZER:-0}" != 1 ] && command -v compute-sanitizer > /dev/null; then
    say "== compute-sanitizer memcheck (gpu tests)"
    for exe in "$BUILD"/tests/test_*_gpu; do
        [ -x "$exe" ] || continue
        name=$(basename "$exe")
        if compute-sanitizer --tool memcheck --error-exitcode 99 --leak-check full "$exe" \
                > "$RES/sanitizer_$name.log" 2>&1; then
            san_rows+=("$name: clean")
        else
            san_rows+=("$name: FAILED (rc $?, see sanitizer_$name.log)")
        fi
    done
    printf '%s\n' "${san_rows[@]}" | tee -a "$LOG"
fi

if [ "${EQFLOW_SKIP_BENCH:-0}" != 1 ]; then
    say "== benchmarks"
    for exe in "$BUILD"/bench/bench_*; do
        [ -x "$exe" ] || continue
        name=$(basename "$exe")
        "$exe" --benchmark_min_time=0.2 ${EQFLOW_BENCH_FILTER:+--benchmark_filter="$EQFLOW_BENCH_FILTER"} \
            --benchmark_out="$RES/$name.json" --benchmark_out_format=json > "$RES/$name.txt" 2>&1
        grep -E "^BM_" "$RES/$name.txt" | tee -a "$LOG"
    done
    # bench_egnn_unfused (the cuBLAS baseline with materialised edge tensors) runs in the loop
    # above with the other bench_* programs; here its side-by-side with the fused kernels.
    if [ -f "$RES/bench_egnn_gpu.json" ] && [ -f "$RES/bench_egnn_unfused.json" ]; then
        say "== fused vs unfused EGNN forward"
        python3 "$ROOT/tools/compare_bench.py" --unfused "$RES/bench_egnn_gpu.json" \
            "$RES/bench_egnn_unfused.json" 2>&1 | tee -a "$LOG" | tee "$RES/fused_vs_unfused.txt"
    fi
    if [ -f "$ROOT/tools/bench_torch.py" ] && python3 -c "import torch" 2> /dev/null; then
        say "== PyTorch reference benchmark"
        PYTHONUNBUFFERED=1 timeout 600 python3 "$ROOT/tools/bench_torch.py" --out "$RES/bench_torch.json" 2>&1 | tee -a "$LOG"
        if [ -f "$RES/bench_egnn_gpu.json" ] && [ -f "$RES/bench_torch.json" ]; then
            say "== eqflow vs PyTorch"
            python3 "$ROOT/tools/compare_bench.py" "$RES/bench_egnn_gpu.json" "$RES/bench_torch.json" 2>&1 | tee -a "$LOG"
        fi
    fi
fi

say "== summary"
say "$(printf '%-28s %s' tests "$test_summary")"
[ -f "$RES/fused_vs_unfused.txt" ] && say "fused/unfused EGNN forward:" && cat "$RES/fused_vs_unfused.txt" | tee -a "$LOG"
for row in "${san_rows[@]}"; do say "$(printf '%-28s %s' sanitizer "$row")"; done
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$LOG" "$RES/ctest.log" "$OUT/" 2> /dev/null
    tar -czf "$OUT/device-check-results.tgz" -C "$ROOT/build" device-check-out 2> /dev/null
fi
grep -q " 0 tests failed" "$RES/ctest.log"
