#!/usr/bin/env bash
# Per-kernel registers, stack / local memory, and the static instruction mix (FFMA, HMMA, shared
# loads, local loads/stores) of the sm_90 machine code of kernels/*.cu, and shared loads per FMA:
# what the hardware will do, read without a GPU (docs/design.md section 10). Needs nvcc; the
# disassembler comes from PyPI (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) when it is not on
# PATH.
#
#   scripts/sass-report.sh [FILTER]        e.g. scripts/sass-report.sh egnn
#
# Output: a table on stdout; the ptxas logs and SASS listings stay in build/sass-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUTDIR=$ROOT/build/sass-report
mkdir -p "$OUTDIR"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "sass-report: no nvcc (install the CUDA toolkit)"; exit 1; }
CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ]; then
    CUOBJDUMP=$OUTDIR/tools/nvidia/cu13/bin/cuobjdump
    if [ ! -x "$CUOBJDUMP" ]; then
        python3 -m pip install -q --disable-pip-version-check --target "$OUTDIR/tools" \
            "nvidia-cuda-cuobjdump==13.2.51" "nvidia-cuda-nvdisasm==13.2.51" > "$OUTDIR/pip.log" 2>&1 ||
            { echo "sass-report: could not install cuobjdump (see $OUTDIR/pip.log)"; exit 1; }
    fi
fi
# cuobjdump -sass runs nvdisasm from PATH.
export PATH="$(dirname "$CUOBJDUMP"):$PATH"
FILTER=${1:-}
ptx_args=() sass_args=()
for cu in "$ROOT"/kernels/*.cu; do
    name=$(basename "$cu" .cu)
    [ -n "$FILTER" ] && [[ $name != *"$FILTER"* ]] && continue
    # The library's own flags for the kernel (CMakeLists.txt): sm_90, C++17, relaxed constexpr.
    extra=()
    [ "$name" = ode_gpu ] && extra+=(-fmad=false)
    "$NVCC" -cubin -arch=sm_90 -std=c++17 --expt-relaxed-constexpr -lineinfo -DEQFLOW_HAVE_CUDA=1 \
        -I "$ROOT/include" -I "$ROOT/src" -I "$ROOT" "${extra[@]}" -Xptxas -v \
        -o "$OUTDIR/$name.cubin" "$cu" > "$OUTDIR/$name.ptxas.txt" 2>&1
    "$CUOBJDUMP" -sass "$OUTDIR/$name.cubin" > "$OUTDIR/$name.sass.txt"
    ptx_args+=(--ptxas "$OUTDIR/$name.ptxas.txt")
    sass_args+=(--sass "$OUTDIR/$name.sass.txt")
done
python3 "$ROOT/tools/sass_report.py" "${ptx_args[@]}" "${sass_args[@]}"
