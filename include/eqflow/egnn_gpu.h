// eqflow/egnn_gpu.h: the EGNN field on the GPU (float32), with the fused kernels of
// kernels/egnn.cu. A plain C++ header: no CUDA types.
//
// EgnnGpu holds a device copy of a model's parameters (converted to float32) and evaluates the
// field, its exact divergence or a Hutchinson estimate of it for batches that live in device
// memory. It owns the workspace it needs and grows it on demand (outside any hot loop: the first
// call at a batch size sizes it).
// Without a usable GPU its constructor throws an Error that says why.
//
// Limits: H <= 128 for forward and divergence; backward keeps four H x H matrices in shared
// memory and needs H <= 64 (it throws otherwise). One workspace is shared by divergence and
// backward: do not call them concurrently on different streams. Divergence results do not
// depend on the GPU model; backward gradients are bit-identical run to run on one GPU, but the
// grouping of samples (and so float rounding) follows the number of SMs.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/export.h"
#include "eqflow/ode.h"
#include "eqflow/tensor.h"

namespace eqflow {

class EQFLOW_API EgnnGpu {
  public:
    explicit EgnnGpu(const EgnnModel& model);
    ~EgnnGpu();
    EgnnGpu(EgnnGpu&&) noexcept;
    EgnnGpu& operator=(EgnnGpu&&) noexcept;
    EgnnGpu(const EgnnGpu&) = delete;
    EgnnGpu& operator=(const EgnnGpu&) = delete;

    const EgnnConfig& config() const;

    // Replaces the parameters (same configuration), e.g. after an optimizer step on the host.
    void set_parameters(const std::vector<double>& params);

    // x [B][n][d], t [B] and v [B][n][d] in device memory.
    void forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                 Stream stream = nullptr);

    // Exact divergence div [B] (device), and v (device, may be an undefined view).
    void divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                    TensorView<float> div, Stream stream = nullptr);

    // Hutchinson-style trace: div[b] = (1/K) sum_k dirs[b][k] . (J_v dirs[b][k]) for K
    // directions per sample, dirs [B][K][n][d] (device); v as in divergence. Forward-mode
    // tangents, as the exact divergence (which is the case dirs = the n d unit vectors).
    void jvp_trace(TensorView<const float> x, TensorView<const float> t,
                   TensorView<const float> dirs, TensorView<float> v, TensorView<float> div,
                   Stream stream = nullptr);

    // Reverse mode on device data: dL_dparams [param_count] (device, float32, flat layout of
    // egnn_parameter_layout) ACCUMULATES dL/dparams; dL_dx [B][n][d] (device) is OVERWRITTEN
    // with dL/dx, or skipped when undefined. Deterministic: two runs give identical gradients.
    void backward(TensorView<const float> x, TensorView<const float> t,
                  TensorView<const float> dL_dv, TensorView<float> dL_dparams,
                  TensorView<float> dL_dx, Stream stream = nullptr);

    // The float32 parameters on the device (flat layout), e.g. for an optimizer that runs there.
    TensorView<float> parameters();

    // Sizes the shared workspace for divergence and backward at batch B now, so that later calls
    // with up to B rows allocate nothing (e.g. before a training loop).
    void reserve_workspace(int64_t B);

  private:
    friend EQFLOW_API double flow_matching_loss_gpu(EgnnGpu& gpu, int64_t B, const double* x0,
                                                    const double* x1, const double* t,
                                                    const double* eps, double sigma, double* grad);

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The flow-matching loss and its parameter gradient on the GPU, with the semantics of
// flow_matching_loss (eqflow/trainer.h): x0, x1 [B][n][d] paired, t [B], eps [B][n][d] on the
// host; x_t = (1-t) x0 + t x1 + sigma eps, u = x1 - x0, loss = mean (v(x_t, t) - u)^2. grad
// (host, nullable) is OVERWRITTEN with dloss/dparams. The network runs on the device in float32;
// the O(B n d) glue runs on the host. The device buffers live in `gpu` and only grow: calls with
// at most the largest B seen so far allocate nothing on the device.
EQFLOW_API double flow_matching_loss_gpu(EgnnGpu& gpu, int64_t B, const double* x0,
                                         const double* x1, const double* t, const double* eps,
                                         double sigma, double* grad);

// The GPU field as an ODE callback (eqflow/ode.h) for the host-side integrators: each call
// copies the rows to the device, evaluates v (and the exact divergence when asked) in float32
// and copies them back. The solver's adaptive stepping stays on the host; the expensive part,
// the exact divergence, runs on the GPU.
EQFLOW_API OdeField egnn_gpu_field(std::shared_ptr<EgnnGpu> gpu);

// The same with Hutchinson's divergence estimate, `probes` Rademacher vectors per row, drawn as
// the CPU field egnn_flow_field draws them (row r of a call: Philox(seed + r, 0), one bit per
// coordinate), so that the CPU and GPU fields estimate with the same vectors.
EQFLOW_API OdeField egnn_gpu_field(std::shared_ptr<EgnnGpu> gpu, int probes, uint64_t seed);

}  // namespace eqflow
