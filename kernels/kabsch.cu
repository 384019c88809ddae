// kernels/kabsch.cu: batched Kabsch alignment, one warp per configuration pair.
//
// Layout: x, y [B][n][d] row-major (T = float or double), rotation [B][d][d], cost [B],
// aligned [B][n][d]; d = 2 or 3 (template D). Lane l accumulates H_ab = sum_i y_ia x_ib over the
// particles i = l, l + 32, ... in double; a butterfly reduction gives every lane the full H, and
// every lane computes the same rotation with the shared double-precision math of
// src/cpu/kabsch_cpu.h (so CPU and GPU rotations agree to rounding). The lanes then write R x_i
// for their particles and reduce the squared residuals. No shared memory.
// Per configuration: reads 2 n D values, writes n D + D^2 + 1; ~4 n D^2 FLOP plus a 4 x 4 Jacobi.
#include "common/kabsch_math.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/kabsch.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kWarpsPerBlock = 4;

__device__ inline double warp_sum(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

template <class T, int D>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    kabsch_kernel(const T* __restrict__ x, const T* __restrict__ y, int64_t B, int n,
                  bool allow_reflection, T* __restrict__ rotation, T* __restrict__ cost,
                  T* __restrict__ aligned) {
    const int lane = threadIdx.x & 31;
    const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (b >= B) return;  // warp-uniform
    const T* xb = x + b * n * D;
    const T* yb = y + b * n * D;
    double h[D * D];
#pragma unroll
    for (int k = 0; k < D * D; ++k) h[k] = 0.0;
    for (int i = lane; i < n; i += 32)
#pragma unroll
        for (int a = 0; a < D; ++a)
#pragma unroll
            for (int c = 0; c < D; ++c)
                h[a * D + c] +=
                    static_cast<double>(yb[i * D + a]) * static_cast<double>(xb[i * D + c]);
#pragma unroll
    for (int k = 0; k < D * D; ++k) h[k] = warp_sum(h[k]);
    double r[9];
    kabsch_math::best_orthogonal(h, D, allow_reflection, r);
    double sum = 0.0;
    for (int i = lane; i < n; i += 32) {
#pragma unroll
        for (int a = 0; a < D; ++a) {
            double rx = 0.0;
#pragma unroll
            for (int c = 0; c < D; ++c) rx += r[a * D + c] * static_cast<double>(xb[i * D + c]);
            const double diff = static_cast<double>(yb[i * D + a]) - rx;
            sum += diff * diff;
            if (aligned) aligned[(b * n + i) * D + a] = static_cast<T>(rx);
        }
    }
    sum = warp_sum(sum);
    if (lane == 0 && cost) cost[b] = static_cast<T>(sum);
    if (rotation && lane < D * D) rotation[b * D * D + lane] = static_cast<T>(r[lane]);
}

template <class T, int D>
void launch(const T* x, const T* y, int64_t B, int n, bool allow_reflection, T* rotation, T* cost,
            T* aligned, Stream stream) {
    const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
    EQFLOW_CHECK(blocks <= 0x7fffffff,
                 "GPU kabsch: batch of " << B << " is too large for one launch");
    EQFLOW_LAUNCH((kabsch_kernel<T, D>), static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0,
                  EQFLOW_STREAM(stream), x, y, B, n, allow_reflection, rotation, cost, aligned);
    EQFLOW_CUDA_CHECK_LAUNCH();
}
}  // namespace

template <class T>
void kabsch(const T* x, const T* y, int64_t B, int n, int d, bool allow_reflection, T* rotation,
            T* cost, T* aligned, Stream stream) {
    if (B == 0) return;
    if (d == 2) {
        launch<T, 2>(x, y, B, n, allow_reflection, rotation, cost, aligned, stream);
    } else {
        launch<T, 3>(x, y, B, n, allow_reflection, rotation, cost, aligned, stream);
    }
}

template void kabsch<float>(const float*, const float*, int64_t, int, int, bool, float*, float*,
                            float*, Stream);
template void kabsch<double>(const double*, const double*, int64_t, int, int, bool, double*,
                             double*, double*, Stream);

}  // namespace eqflow::cuda
