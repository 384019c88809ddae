// kernels/assignment.cu: batched exact linear sum assignment, one warp per problem.
//
// Layout: cost [P][n][n] row-major (T = float or double), perm [P][n] int64, total [P] double,
// status [P] int32 (nullable). Workspace: two uint64 flags, the smallest index of a problem with a
// NaN / -inf cost and of an infeasible problem (UINT64_MAX = none), set with atomicMin.
//
// Each warp owns one problem: it copies the matrix into its slice of shared memory (coalesced,
// checking for NaN / -inf on the way), then runs warp_solve_assignment (kernels/
// assignment_device.cuh) and writes the permutation; lane 0 sums the total in row order in
// double, like the CPU reference, so equal permutations give bit-equal totals.
// Shared memory per warp: n*n*sizeof(T) (when staged) + ~37 n bytes of solver state; the launcher
// fits up to kWarpsPerBlock warps into the 48 KiB default budget and, when one staged matrix does
// not fit, reads the matrix from global memory (L1/L2-cached rows) instead.
// Work per problem: O(n^3) worst case, O(n^2)-ish search steps on random costs, each step n/32
// column updates per lane plus 5 shuffle rounds.
#include <algorithm>
#include <cstdint>

#include "kernels/assignment.cuh"
#include "kernels/assignment_device.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kWarpsPerBlock = 4;
constexpr std::size_t kSmemBudget = 48 * 1024;

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

template <class T, bool kStaged>
void launch(const T* cost, int64_t P, int n, int64_t* perm, double* total, int32_t* status,
            unsigned long long* flags, std::size_t warp_bytes, int warps, Stream stream) {
    const int64_t blocks = (P + warps - 1) / warps;
    EQFLOW_CHECK(blocks <= 0x7fffffff,
                 "GPU assignment: " << P << " problems are too many for one launch");
    EQFLOW_LAUNCH((assignment_kernel<T, kStaged>), static_cast<unsigned>(blocks), 32 * warps,
                  warps * warp_bytes, EQFLOW_STREAM(stream), cost, P, n, perm, total, status, flags,
                  warp_bytes);
    EQFLOW_CUDA_CHECK_LAUNCH();
}
}  // namespace

std::size_t assignment_workspace_bytes(int64_t, int64_t) {
    return 2 * sizeof(unsigned long long);
}

template <class T>
const unsigned long long* linear_sum_assignment_async(const T* cost, int64_t P, int64_t n64,
                                                      int64_t* perm, double* total, int32_t* status,
                                                      void* workspace, std::size_t workspace_bytes,
                                                      Stream stream) {
    EQFLOW_CHECK(n64 <= 1024, "GPU assignment supports n <= 1024, got " << n64);
    EQFLOW_CHECK(workspace != nullptr && workspace_bytes >= assignment_workspace_bytes(P, n64),
                 "GPU assignment needs " << assignment_workspace_bytes(P, n64)
                                         << " bytes of workspace, got " << workspace_bytes);
    const int n = static_cast<int>(n64);
    auto* flags = static_cast<unsigned long long*>(workspace);
    EQFLOW_CUDA_CHECK(
        cudaMemsetAsync(flags, 0xff, 2 * sizeof(unsigned long long), EQFLOW_STREAM(stream)));
    if (P == 0 || n64 == 0) return flags;
    const std::size_t state = warp_lsa_state_bytes(n);
    const std::size_t staged = (static_cast<std::size_t>(n) * n * sizeof(T) + 15) / 16 * 16 + state;
    if (staged <= kSmemBudget) {
        const int warps =
            static_cast<int>(std::min<std::size_t>(kWarpsPerBlock, kSmemBudget / staged));
        launch<T, true>(cost, P, n, perm, total, status, flags, staged, warps, stream);
    } else {
        const int warps =
            static_cast<int>(std::min<std::size_t>(kWarpsPerBlock, kSmemBudget / state));
        launch<T, false>(cost, P, n, perm, total, status, flags, state, warps, stream);
    }
    return flags;
}

template <class T>
void linear_sum_assignment(const T* cost, int64_t P, int64_t n64, int64_t* perm, double* total,
                           int32_t* status, void* workspace, std::size_t workspace_bytes,
                           Stream stream, int64_t* first_invalid, int64_t* first_infeasible) {
    *first_invalid = -1;
    *first_infeasible = -1;
    if (P == 0 || n64 == 0) return;
    const unsigned long long* flags = linear_sum_assignment_async(
        cost, P, n64, perm, total, status, workspace, workspace_bytes, stream);
    unsigned long long host_flags[2];
    EQFLOW_CUDA_CHECK(cudaMemcpyAsync(host_flags, flags, sizeof host_flags, cudaMemcpyDeviceToHost,
                                      EQFLOW_STREAM(stream)));
    EQFLOW_CUDA_CHECK(cudaStreamSynchronize(EQFLOW_STREAM(stream)));
    if (host_flags[0] != ~0ull) *first_invalid = static_cast<int64_t>(host_flags[0]);
    if (host_flags[1] != ~0ull) *first_infeasible = static_cast<int64_t>(host_flags[1]);
}

template const unsigned long long* linear_sum_assignment_async<float>(const float*, int64_t,
                                                                      int64_t, int64_t*, double*,
                                                                      int32_t*, void*, std::size_t,
                                                                      Stream);
template const unsigned long long* linear_sum_assignment_async<double>(const double*, int64_t,
                                                                       int64_t, int64_t*, double*,
                                                                       int32_t*, void*, std::size_t,
                                                                       Stream);
template void linear_sum_assignment<float>(const float*, int64_t, int64_t, int64_t*, double*,
                                           int32_t*, void*, std::size_t, Stream, int64_t*,
                                           int64_t*);
template void linear_sum_assignment<double>(const double*, int64_t, int64_t, int64_t*, double*,
                                            int32_t*, void*, std::size_t, Stream, int64_t*,
                                            int64_t*);

}  // namespace eqflow::cuda
