// kernels/assignment.cu: batched exact linear sum assignment: the launchers (the kernels and
// the layouts are in kernels/assignment_kernels.cuh).
//
// Which solver: few large problems (n >= kBlockMinN and P <= the number of SMs, read once per
// device by current_device_info) go to assignment_block_kernel, one block of 256 threads per
// problem; the coupling's single B x B problem is the case it is for. Everything else goes to
// assignment_kernel, one warp per problem, up to kWarpsPerBlock warps per block within the
// 48 KiB default budget; when one staged matrix does not fit, the warps read the matrix from
// global memory (L1/L2-cached rows) instead. Both give the same outputs bit for bit. The rule
// keeps the warp solver wherever it already fills the GPU with problems: with more problems than
// SMs, blocks per problem would queue behind each other. Below n = 128 a lane of the warp solver
// walks at most 4 columns per search step, little to split, while the block adds a barrier per
// step. (Neither solver has run on a GPU yet: the rule is reasoned, not measured.)
// Work per problem: O(n^3) worst case, O(n^2)-ish search steps on random costs; a step costs
// n/32 column updates per lane plus 5 shuffle rounds on the warp solver, n/256 column updates
// per thread, 5 shuffle rounds, one barrier and 8 shared reads on the block solver.
#include <algorithm>
#include <cstdint>

#include "kernels/assignment.cuh"
#include "kernels/assignment_device.cuh"
#include "kernels/assignment_kernels.cuh"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"

namespace eqflow::cuda {

namespace {
using assignment_detail::assignment_block_kernel;
using assignment_detail::assignment_kernel;
using assignment_detail::kWarpsPerBlock;

constexpr std::size_t kSmemBudget = 48 * 1024;
constexpr int kBlockMinN = 128;

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

template <class T, int kCols>
void launch_block(const T* cost, int64_t P, int n, int64_t* perm, double* total, int32_t* status,
                  unsigned long long* flags, Stream stream) {
    EQFLOW_LAUNCH((assignment_block_kernel<T, kCols>), static_cast<unsigned>(P), kBlockLsaThreads,
                  block_lsa_state_bytes(n), EQFLOW_STREAM(stream), cost, n, perm, total, status,
                  flags);
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
    if (n >= kBlockMinN && P <= current_device_info().sms) {
        switch (assignment_detail::block_columns(n)) {
            case 1:
                launch_block<T, 1>(cost, P, n, perm, total, status, flags, stream);
                break;
            case 2:
                launch_block<T, 2>(cost, P, n, perm, total, status, flags, stream);
                break;
            default:
                launch_block<T, 4>(cost, P, n, perm, total, status, flags, stream);
                break;
        }
        return flags;
    }
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
