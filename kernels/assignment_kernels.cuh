// kernels/assignment_kernels.cuh: device code of the batched linear sum assignment. The
// launchers are in kernels/assignment.cu; tests/test_assignment_emulated.cpp runs this same code
// on the CPU emulator (emu/) with the solver and the thread order of its choice.
//
// Layout: cost [P][n][n] row-major (T = float or double), perm [P][n] int64, total [P] double
// (nullable), status [P] int32 (nullable). flags: two uint64, the smallest index of a problem
// with a NaN / -inf cost and of an infeasible problem (UINT64_MAX = none), set with atomicMin.
// Both kernels write the same outputs: perm = the assignment (-1 everywhere when infeasible; not
// written for an invalid problem), total = the sum of the assigned costs in row order in double
// on one thread, like the CPU reference (so equal permutations give bit-equal totals; +inf when
// infeasible), status 0 / 1 (ok / infeasible).
//
// assignment_kernel: one warp per problem, kWarpsPerBlock problems per block. The warp copies
// its matrix into its slice of shared memory when it fits (coalesced, checking for NaN / -inf
// on the way), otherwise reads it from global memory (L1/L2-cached rows), then runs
// warp_solve_assignment. Shared memory per warp: n*n*sizeof(T) (when staged) + ~37 n bytes of
// solver state. Many problems (the batched `assign`): each warp's search steps are short and
// the SM hides their latency with other warps.
//
// assignment_block_kernel: one block of kBlockLsaThreads = 256 threads per problem, running
// block_solve_assignment (bit for bit the warp solver's result): for few large problems, such as
// the coupling's one B x B problem, where one warp per problem would leave the GPU idle and walk
// n / 32 columns per lane and search step. The matrix stays in global memory (1024 x 1024
// doubles are 8 MiB: L2-resident); thread t reads columns t, t + 256, ... of a row, so a warp's
// reads of a row are coalesced. Shared memory: 20 n + 192 bytes (20.2 KiB at n = 1024).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/assignment_device.cuh"
#include "kernels/device_compat.cuh"

namespace eqflow::cuda::assignment_detail {
namespace {  // one copy per including file: internal linkage

constexpr int kWarpsPerBlock = 4;

template <class T>
__device__ inline bool invalid_cost(T c) {
    const double x = static_cast<double>(c);
    return x != x || x == -__longlong_as_double(0x7ff0000000000000ll);
}

template <class T, bool kStaged>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    assignment_kernel(const T* __restrict__ cost, int64_t P, int n, int64_t* __restrict__ perm,
                      double* __restrict__ total, int32_t* __restrict__ status,
                      unsigned long long* __restrict__ flags, std::size_t warp_bytes) {
    EQFLOW_DYNAMIC_SHARED(unsigned char, smem_raw);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t p = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
    if (p >= P) return;  // warp-uniform
    unsigned char* base = smem_raw + warp * warp_bytes;
    const int64_t nn = static_cast<int64_t>(n) * n;
    const T* src = cost + p * nn;
    const T* c = src;
    bool bad = false;
    if (kStaged) {
        T* cs = reinterpret_cast<T*>(base);
        for (int64_t k = lane; k < nn; k += 32) {
            const T x = src[k];
            bad |= invalid_cost(x);
            cs[k] = x;
        }
        c = cs;
        base += (nn * sizeof(T) + 15) / 16 * 16;
    } else {
        for (int64_t k = lane; k < nn; k += 32) bad |= invalid_cost(src[k]);
    }
    if (__any_sync(0xffffffffu, bad)) {
        if (lane == 0) atomicMin(&flags[0], static_cast<unsigned long long>(p));
        return;
    }
    __syncwarp();
    const WarpLsaState s = warp_lsa_state(base, n);
    const bool ok = warp_solve_assignment(MatrixCost<T>{c, n}, n, s);
    if (!ok) {
        for (int i = lane; i < n; i += 32) perm[p * n + i] = -1;
        if (lane == 0) {
            atomicMin(&flags[1], static_cast<unsigned long long>(p));
            if (total) total[p] = __longlong_as_double(0x7ff0000000000000ll);
            if (status) status[p] = 1;
        }
        return;
    }
    for (int i = lane; i < n; i += 32) perm[p * n + i] = s.col4row[i];
    if (lane == 0) {
        double sum = 0.0;
        for (int i = 0; i < n; ++i)
            sum += static_cast<double>(c[static_cast<int64_t>(i) * n + s.col4row[i]]);
        if (total) total[p] = sum;
        if (status) status[p] = 0;
    }
}

// One problem per block (grid = P), blockDim.x == kBlockLsaThreads, n <= kCols * 256, dynamic
// shared memory block_lsa_state_bytes(n).
template <class T, int kCols>
__global__ void __launch_bounds__(kBlockLsaThreads)
    assignment_block_kernel(const T* __restrict__ cost, int n, int64_t* __restrict__ perm,
                            double* __restrict__ total, int32_t* __restrict__ status,
                            unsigned long long* __restrict__ flags) {
    EQFLOW_DYNAMIC_SHARED(unsigned char, smem_raw);
    const int tid = threadIdx.x;
    const int64_t p = blockIdx.x;
    const int64_t nn = static_cast<int64_t>(n) * n;
    const T* c = cost + p * nn;
    BlockLsaState s = block_lsa_state(smem_raw, n);
    bool bad = false;
    for (int64_t k = tid; k < nn; k += kBlockLsaThreads) bad |= invalid_cost(c[k]);
    if (block_any(bad, s)) {
        if (tid == 0) atomicMin(&flags[0], static_cast<unsigned long long>(p));
        return;
    }
    const bool ok = block_solve_assignment<kCols>(MatrixCost<T>{c, n}, n, s);
    if (!ok) {
        for (int i = tid; i < n; i += kBlockLsaThreads) perm[p * n + i] = -1;
        if (tid == 0) {
            atomicMin(&flags[1], static_cast<unsigned long long>(p));
            if (total) total[p] = __longlong_as_double(0x7ff0000000000000ll);
            if (status) status[p] = 1;
        }
        return;
    }
    // At most 4 rows a thread: unrolling this further only gave ptxas a reason to spill.
#pragma unroll 1
    for (int i = tid; i < n; i += kBlockLsaThreads) perm[p * n + i] = s.col4row[i];
    if (tid == 0) {
        double sum = 0.0;
        for (int i = 0; i < n; ++i)
            sum += static_cast<double>(c[static_cast<int64_t>(i) * n + s.col4row[i]]);
        if (total) total[p] = sum;
        if (status) status[p] = 0;
    }
}

// The columns per thread the block kernel is compiled for: 1, 2 or 4 (n <= 1024).
inline int block_columns(int n) {
    return n <= kBlockLsaThreads ? 1 : n <= 2 * kBlockLsaThreads ? 2 : 4;
}

}  // namespace
}  // namespace eqflow::cuda::assignment_detail
