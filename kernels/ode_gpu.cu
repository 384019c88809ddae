// kernels/ode_gpu.cu: per-sample bookkeeping of the device ODE integrator (see ode_gpu.cuh).
//
// One thread per active sample; each thread runs one of the src/common/ode_step.h functions on its
// sample's rows. The rows are [C][S] (S = D + 2), so a warp's threads read addresses S doubles
// apart: uncoalesced, but the bookkeeping of a step moves ~10 S doubles per sample, against the
// field's exact divergence (n*d forward-mode tangents through the whole EGNN) for each of the
// stages: for LJ13 / LJ55 the field is 10^4-10^6 times more work, so clarity wins here.
//
// This file is compiled with -fmad=false (CMakeLists.txt): no contraction into FMA, so the
// arithmetic matches the host solver's (built with -ffp-contract=off) operation for operation.
#include <cub/block/block_scan.cuh>

#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/ode_gpu.cuh"

namespace eqflow::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kCompactThreads = 1024;

__global__ void __launch_bounds__(kThreads)
    ode_per_sample_kernel(OdeOp op, ode_step::Chunk c, ode_step::Params p,
                          const int* __restrict__ idx, int64_t m, OdeOpArgs a) {
    const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (r >= m) return;
    const int64_t b = idx[r];
    const int64_t D = c.D;
    float* x_out = a.xf ? a.xf + r * D : nullptr;
    float* t_out = a.tf ? a.tf + r : nullptr;
    switch (op) {
        case OdeOp::gather: {
            const double* y = c.row(c.y, b);
            for (int64_t i = 0; i < D; ++i) x_out[i] = static_cast<float>(y[i]);
            *t_out = static_cast<float>(c.t[b]);
            break;
        }
        case OdeOp::scatter:
            ode_step::store_derivative(D, a.vf + r * D, a.divf[r], c.stage(a.stage, b));
            break;
        case OdeOp::hairer_trial:
            ode_step::hairer_trial(c, p, b, x_out, t_out);
            break;
        case OdeOp::hairer_finish:
            ode_step::hairer_finish(c, p, b);
            break;
        case OdeOp::given_first_step:
            ode_step::given_first_step(c, p, b);
            break;
        case OdeOp::check_start:
            ode_step::check_start(c, b);
            break;
        case OdeOp::dopri5_stage:
            ode_step::dopri5_stage(c, p, b, a.stage, x_out, t_out);
            break;
        case OdeOp::dopri5_finish:
            ode_step::dopri5_finish(c, p, b);
            break;
        case OdeOp::fixed_stage:
            ode_step::fixed_stage(c, b, a.stage, a.h, x_out);
            *t_out = static_cast<float>(a.t_stage);
            break;
        case OdeOp::fixed_update:
            ode_step::fixed_update(c, b, a.rk4, a.h);
            break;
        case OdeOp::fixed_check_end:
            ode_step::fixed_check_end(c, b);
            break;
    }
}

__global__ void __launch_bounds__(kThreads)
    ode_init_kernel(ode_step::Chunk c, ode_step::Params p, int64_t B, const double* __restrict__ x,
                    int* __restrict__ idx) {
    const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (b >= B) return;
    ode_step::init_sample(c, p, b, x + b * c.D);
    idx[b] = static_cast<int>(b);
}

// One block walks the chunk in tiles of kCompactThreads samples; a block-wide exclusive scan of
// the "still active" flags gives each active sample its slot, so the order is increasing and the
// result deterministic. Chunks are at most a few 10^5 samples: a single block takes microseconds,
// next to the field evaluations of a step.
__global__ void __launch_bounds__(kCompactThreads)
    ode_compact_kernel(const int* __restrict__ flags, int64_t B, int* __restrict__ idx,
                       int* __restrict__ count) {
    using Scan = cub::BlockScan<int, kCompactThreads>;
    __shared__ typename Scan::TempStorage temp;
    __shared__ int base;
    if (threadIdx.x == 0) base = 0;
    __syncthreads();
    for (int64_t start = 0; start < B; start += kCompactThreads) {
        const int64_t b = start + threadIdx.x;
        const int active = (b < B && !(flags[b] & ode_step::kDone)) ? 1 : 0;
        int slot = 0, total = 0;
        Scan(temp).ExclusiveSum(active, slot, total);
        if (active) idx[base + slot] = static_cast<int>(b);
        __syncthreads();  // every thread has read `base` and temp before they change
        if (threadIdx.x == 0) base += total;
        __syncthreads();
    }
    if (threadIdx.x == 0) *count = base;
}

unsigned blocks_for(int64_t m) {
    return static_cast<unsigned>((m + kThreads - 1) / kThreads);
}

}  // namespace

void ode_per_sample(OdeOp op, const ode_step::Chunk& chunk, const ode_step::Params& params,
                    const int* idx, int64_t m, const OdeOpArgs& args, Stream stream) {
    if (m <= 0) return;
    EQFLOW_LAUNCH(ode_per_sample_kernel, blocks_for(m), kThreads, 0, EQFLOW_STREAM(stream), op,
                  chunk, params, idx, m, args);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void ode_init(const ode_step::Chunk& chunk, const ode_step::Params& params, int64_t B,
              const double* x, int* idx, Stream stream) {
    if (B <= 0) return;
    EQFLOW_LAUNCH(ode_init_kernel, blocks_for(B), kThreads, 0, EQFLOW_STREAM(stream), chunk, params,
                  B, x, idx);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void ode_compact(const int* flags, int64_t B, int* idx, int* count, Stream stream) {
    EQFLOW_LAUNCH(ode_compact_kernel, 1, kCompactThreads, 0, EQFLOW_STREAM(stream), flags, B, idx,
                  count);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

}  // namespace eqflow::cuda
