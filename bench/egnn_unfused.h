// bench/egnn_unfused.h: the UNFUSED baseline of the EGNN forward pass, for side-by-side timing
// with the fused kernels (kernels/egnn.cu). It computes what the published PyTorch code computes,
// the way a framework does it: the per-edge tensors [B n (n-1)][H] are materialised in device
// memory, the per-edge products W2 and Wc1 and the per-node products (W1a h, W1b h, the node MLP)
// are cuBLAS SGEMMs (FP32, no TF32), and simple elementwise / per-edge / per-node kernels sit
// between them. Not part of the library: only the benchmark and its gpu test use it.
//
// Untyped models only (DW4, LJ13, LJ55). float32 throughout. All device memory is owned here
// (inputs, outputs, workspace), sized for `max_batch` samples at construction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "eqflow/egnn.h"

namespace eqflow::bench {

class EgnnUnfused {
  public:
    // Throws std::runtime_error without a GPU or for a typed model.
    EgnnUnfused(const EgnnModel& model, int64_t max_batch);
    ~EgnnUnfused();
    EgnnUnfused(const EgnnUnfused&) = delete;
    EgnnUnfused& operator=(const EgnnUnfused&) = delete;

    // x [B][n][d], t [B] (host) into the device input buffers (B <= max_batch).
    void set_input(const float* x, const float* t, int64_t B);
    // v = field(x, t) for the B samples of the last set_input; asynchronous on the default stream.
    void forward(int64_t B);
    // Waits for the forward passes launched so far.
    void synchronize() const;
    // v [B][n][d] back to the host (synchronises).
    std::vector<float> output(int64_t B) const;
    // Device bytes held: parameters, inputs, outputs and the edge / node workspace.
    size_t device_bytes() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace eqflow::bench
