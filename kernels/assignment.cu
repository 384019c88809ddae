// kernels/assignment.cu: batched exact linear sum assignment: the launchers (the kernels and
// the layouts are in kernels/assignment_kernels.cuh).
//
// Each warp owns one problem (assignment_kernel), up to kWarpsPerBlock warps per block within the
// 48 KiB default budget; when one staged matrix does not fit, the warps read the matrix from
// global memory (L1/L2-cached rows) instead.
// Work per problem: O(n^3) worst case, O(n^2)-ish search steps on random costs, each step n/32
// column updates per lane plus 5 shuffle rounds.
#include <algorithm>
#include <cstdint>

#include "kernels/assignment.cuh"
#include "kernels/assignment_device.cuh"
#include "kernels/assignment_kernels.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"

namespace eqflow::cuda {

namespace {
using assignment_detail::assignment_kernel;
using assignment_detail::kWarpsPerBlock;

constexpr std::size_t kSmemBudget = 48 * 1024;

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
