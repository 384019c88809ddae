// kernels/egnn.cu: launchers of the fused EGNN forward and exact divergence. The device code,
// with the math and the work decomposition, is in kernels/egnn_kernels.cuh.
#include <algorithm>

#include "eqflow/error.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/egnn.cuh"
#include "kernels/egnn_common.cuh"
#include "kernels/egnn_kernels.cuh"

namespace eqflow::cuda {

namespace {

using namespace egnn_detail;

// Resident blocks of the divergence kernel for B samples of K directions: the number of
// workspace slots.
int divergence_slots(int64_t B, int K) {
    const int sms = current_device_info().sms;
    const int64_t items = B * divergence_chunks(K);
    return static_cast<int>(
        std::max<int64_t>(1, std::min<int64_t>(items, 2 * static_cast<int64_t>(sms))));
}

size_t trace_workspace_bytes(const EgnnNet& net, int64_t B, int K) {
    if (B == 0) return 0;
    const size_t partial = static_cast<size_t>(B) * divergence_chunks(K) * sizeof(float);
    const size_t slots = static_cast<size_t>(divergence_slots(B, K));
    return (partial + 255) / 256 * 256 +
           slots * tangent_slot_floats(net.n, net.hidden) * sizeof(float);
}

// The exact divergence (dirs == nullptr, K = n d) or the mean of dirs_k . J dirs_k.
void jvp_trace(const EgnnNet& net, int64_t B, int K, const float* dirs, const float* x,
               const float* t, float* v, float* div, void* workspace, size_t workspace_bytes,
               Stream stream) {
    if (B == 0) return;
    egnn_check_supported(net);
    const size_t need = trace_workspace_bytes(net, B, K);
    EQFLOW_CHECK(
        workspace != nullptr && workspace_bytes >= need,
        "GPU EGNN divergence needs " << need << " bytes of workspace, got " << workspace_bytes);
    const int chunks = divergence_chunks(K);
    const int slots = divergence_slots(B, K);
    float* partial = static_cast<float*>(workspace);
    const size_t partial_bytes =
        (static_cast<size_t>(B) * chunks * sizeof(float) + 255) / 256 * 256;
    float* slot_ws = reinterpret_cast<float*>(static_cast<char*>(workspace) + partial_bytes);
    const size_t smem = divergence_smem_bytes(net);
    const DivergenceKernel kernel = divergence_kernel_for(net);
    raise_smem_limit(reinterpret_cast<const void*>(kernel), smem);
    EQFLOW_LAUNCH(kernel, static_cast<unsigned>(slots), kThreads, smem, EQFLOW_STREAM(stream), net,
                  B, chunks, K, dirs, x, t, v, partial, slot_ws);
    EQFLOW_CUDA_CHECK_LAUNCH();
    const int64_t blocks = (B + kThreads - 1) / kThreads;
    const float scale = dirs ? 1.0f / static_cast<float>(K) : 1.0f;
    EQFLOW_LAUNCH(sum_chunks_kernel, static_cast<unsigned>(blocks), kThreads, 0,
                  EQFLOW_STREAM(stream), partial, B, chunks, scale, div);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

}  // namespace

void egnn_check_supported(const EgnnNet& net) {
    EQFLOW_CHECK(
        net.hidden >= 1 && net.hidden <= kEgnnMaxHidden,
        "GPU EGNN supports hidden sizes up to " << kEgnnMaxHidden << ", got " << net.hidden);
    EQFLOW_CHECK(net.layers >= 1 && net.layers <= kEgnnMaxLayers,
                 "GPU EGNN supports up to " << kEgnnMaxLayers << " layers, got " << net.layers);
    EQFLOW_CHECK(net.d >= 1 && net.d <= kEgnnMaxDim, "GPU EGNN supports d <= 3, got " << net.d);
    EQFLOW_CHECK(net.n >= 2, "GPU EGNN needs at least 2 particles");
    const size_t smem_limit = max_smem_bytes();
    const size_t smem = std::max(forward_smem_bytes(net), divergence_smem_bytes(net));
    EQFLOW_CHECK(smem <= smem_limit,
                 "GPU EGNN: n = " << net.n << ", H = " << net.hidden << " needs " << smem
                                  << " bytes of shared memory per block, more than " << smem_limit);
}

void egnn_forward(const EgnnNet& net, int64_t B, const float* x, const float* t, float* v,
                  Stream stream) {
    if (B == 0) return;
    egnn_check_supported(net);
    const size_t smem = forward_smem_bytes(net);
    const ForwardKernel kernel = forward_kernel_for(net);
    raise_smem_limit(reinterpret_cast<const void*>(kernel), smem);
    EQFLOW_CHECK(B <= 0x7fffffff, "GPU EGNN: batch too large for one launch");
    EQFLOW_LAUNCH(kernel, static_cast<unsigned>(B), kThreads, smem, EQFLOW_STREAM(stream), net, x,
                  t, v);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

size_t egnn_divergence_workspace_bytes(const EgnnNet& net, int64_t B) {
    return trace_workspace_bytes(net, B, net.n * net.d);
}

void egnn_divergence(const EgnnNet& net, int64_t B, const float* x, const float* t, float* v,
                     float* div, void* workspace, size_t workspace_bytes, Stream stream) {
    jvp_trace(net, B, net.n * net.d, nullptr, x, t, v, div, workspace, workspace_bytes, stream);
}

size_t egnn_jvp_trace_workspace_bytes(const EgnnNet& net, int64_t B, int K) {
    return trace_workspace_bytes(net, B, K);
}

void egnn_jvp_trace(const EgnnNet& net, int64_t B, int K, const float* dirs, const float* x,
                    const float* t, float* v, float* div, void* workspace, size_t workspace_bytes,
                    Stream stream) {
    EQFLOW_CHECK(K >= 1 && dirs != nullptr, "GPU EGNN: need at least one direction");
    jvp_trace(net, B, K, dirs, x, t, v, div, workspace, workspace_bytes, stream);
}

}  // namespace eqflow::cuda
