// kernels/egnn_backward.cu: launcher of the fused EGNN reverse mode. The device code, with the
// gradient contract and the work decomposition, is in kernels/egnn_backward_kernels.cuh.
#include <algorithm>
#include <limits>

#include "eqflow/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/egnn.cuh"
#include "kernels/egnn_backward_kernels.cuh"
#include "kernels/egnn_common.cuh"

namespace eqflow::cuda {

namespace {

using namespace egnn_detail;

int backward_slots(int64_t B) {
    const int sms = current_device_info().sms;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(B, sms)));
}

}  // namespace

size_t egnn_backward_workspace_bytes(const EgnnNet& net, int64_t B, int64_t param_count) {
    if (B == 0) return 0;
    const SlotLayout S = slot_layout(net.n, net.d, net.hidden, net.layers, param_count);
    return static_cast<size_t>(backward_slots(B)) * S.total * sizeof(float);
}

void egnn_backward(const EgnnNet& net, const float* params_base, int64_t param_count, int64_t B,
                   const float* x, const float* t, const float* dL_dv, float* dL_dparams,
                   float* dL_dx, void* workspace, size_t workspace_bytes, Stream stream) {
    if (B == 0) return;
    egnn_check_supported(net);
    EQFLOW_CHECK(B <= std::numeric_limits<int>::max(), "GPU EGNN backward: at most "
                                                           << std::numeric_limits<int>::max()
                                                           << " samples per call, got " << B);
    const size_t smem = backward_smem_bytes(net);
    EQFLOW_CHECK(smem <= max_smem_bytes(),
                 "GPU EGNN backward: n = " << net.n << ", H = " << net.hidden << " needs " << smem
                                           << " bytes of shared memory per block");
    const size_t need = egnn_backward_workspace_bytes(net, B, param_count);
    EQFLOW_CHECK(
        workspace != nullptr && workspace_bytes >= need,
        "GPU EGNN backward needs " << need << " bytes of workspace, got " << workspace_bytes);
    const int slots = backward_slots(B);
    const SlotLayout S = slot_layout(net.n, net.d, net.hidden, net.layers, param_count);
    const cudaStream_t s = EQFLOW_STREAM(stream);
    EQFLOW_CUDA_CHECK(cudaMemsetAsync(workspace, 0, need, s));  // slot gradients start at zero
    const BackwardKernel kernel = backward_kernel_for(net);
    raise_smem_limit(reinterpret_cast<const void*>(kernel), smem);
    float* ws = static_cast<float*>(workspace);
    EQFLOW_LAUNCH(kernel, static_cast<unsigned>(slots), kThreads, smem, s, net, params_base,
                  param_count, B, x, t, dL_dv, dL_dx, ws);
    EQFLOW_CUDA_CHECK_LAUNCH();
    const int64_t blocks = (param_count + kThreads - 1) / kThreads;
    EQFLOW_LAUNCH(reduce_slots_kernel, static_cast<unsigned>(blocks), kThreads, 0, s, ws, S.total,
                  S.grad, slots, param_count, dL_dparams);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

}  // namespace eqflow::cuda
