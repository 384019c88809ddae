#!/usr/bin/env bash
# Copies what the lent GPU machine lacks into .deps/ (git-ignored; name it in the device
# tool's `carry`): GoogleTest sources and a prebuilt Google Benchmark from this machine's
# Debian packages, and the paper's data when this checkout has them. Run here, before
# scripts/device-check.sh is run there.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .deps && mkdir -p .deps/benchmark/include .deps/benchmark/lib
cp -r /usr/src/googletest .deps/googletest
cp -r /usr/include/benchmark .deps/benchmark/include/
cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so .deps/benchmark/lib/libbenchmark.so
# The paper's training data, for the device check's train phase (the ../shared beside the
# checkout does not travel); absent on machines without them.
paper=${EQFLOW_PAPER_DATA:-../shared/data}
if [ -d "$paper" ]; then
    mkdir -p .deps/paper-data
    cp "$paper"/*.npy .deps/paper-data/ 2> /dev/null || true
fi
du -sh .deps
