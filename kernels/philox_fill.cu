// kernels/philox_fill.cu: one thread per row walks that row's Philox stream, exactly as the host
// loop in src/random.cpp does, so the outputs agree bit for bit.
#include "eqflow/philox.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/philox_fill.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    philox_fill_kernel(double* __restrict__ out, int64_t rows, int64_t per_row, uint64_t seed,
                       uint64_t first_stream, bool normal) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    Philox gen(seed, first_stream + static_cast<uint64_t>(r));
    double* row = out + r * per_row;
    for (int64_t k = 0; k < per_row; ++k) row[k] = normal ? gen.normal() : gen.uniform();
}
}  // namespace

void philox_fill(double* out, int64_t rows, int64_t per_row, uint64_t seed, uint64_t first_stream,
                 bool normal, Stream stream) {
    if (rows == 0) return;
    const int64_t blocks = (rows + kThreads - 1) / kThreads;
    EQFLOW_LAUNCH(philox_fill_kernel, static_cast<unsigned>(blocks), kThreads, 0,
                  EQFLOW_STREAM(stream), out, rows, per_row, seed, first_stream, normal);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

}  // namespace eqflow::cuda
