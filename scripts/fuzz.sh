#!/usr/bin/env bash
# Replays the seed corpus of every fuzz target, then fuzzes each for SECONDS (default 25) under
# ASan + UBSan. Needs the fuzz build: cmake --preset fuzz && cmake --build build/fuzz.
# New inputs go to build/fuzz/corpus/<target> (not the repository); a crash, sanitizer report,
# timeout (> 5 s for one input) or memory blow-up (> 2 GB) fails the script and leaves the input
# in build/fuzz/artifacts/. Whatever it finds becomes a test in tests/test_hostile_inputs.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-25}
bin=build/fuzz/fuzz
out=build/fuzz
mkdir -p "$out/artifacts"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for target in npy safetensors system_xml pdb; do
    seeds=fuzz/corpus/$target
    work=$out/corpus/$target
    mkdir -p "$work"
    common=(-rss_limit_mb=2048 -timeout=5 -artifact_prefix="$out/artifacts/$target-"
            -print_final_stats=1)
    echo "fuzz: $target: replaying $(ls "$seeds" | wc -l) seed inputs"
    "$bin/fuzz_$target" "${common[@]}" -runs=0 "$seeds" > "$out/replay_$target.log" 2>&1 || {
        tail -n 60 "$out/replay_$target.log"
        exit 1
    }
    grep -E "^Done" "$out/replay_$target.log"
    echo "fuzz: $target: fuzzing for ${seconds}s"
    "$bin/fuzz_$target" "${common[@]}" -max_len=65536 -max_total_time="$seconds" \
        "$work" "$seeds" > "$out/fuzz_$target.log" 2>&1 || {
        tail -n 60 "$out/fuzz_$target.log"
        exit 1
    }
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$out/fuzz_$target.log"
done
