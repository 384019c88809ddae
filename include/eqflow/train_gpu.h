// eqflow/train_gpu.h: the device-resident flow-matching step behind `train_flow_matching` with
// TrainOptions::device == cuda (eqflow/trainer.h). A plain C++ header: no CUDA types.
//
// GpuFlowMatching keeps everything a training step touches on the GPU: the training set
// (uploaded once, float32), the epoch permutation (uploaded once per epoch), the float32
// parameters (inside its EgnnGpu), the float32 Adam moments, the EMA of the weights (double, on
// the device, updated after every accepted step like the host trainer's) and the loop's counters
// (Adam step, skipped steps, the logged window's loss sum). One step enqueues, on one stream:
//
//   1. gather the batch rows order[j*B .. j*B+B) and draw x0, t, eps of row b from
//      Philox(draw_seed, step*B + b) with the CPU trainer's own function (src/common/train_math.h),
//      in double: bit-identical to the CPU trainer's draws;
//   2. couple (ot / eqot: the GPU couplings of eqflow/coupling.h, in double, atom types
//      respected; fm: as drawn, no kernel);
//   3. x_t and t in float32; the EGNN forward; loss and dL/dv in one single-block kernel (fixed
//      summation order, so the loss is deterministic);
//   4. EgnnGpu::backward into a zeroed gradient; a finite check of loss and gradient;
//   5. Adam (beta 0.9 / 0.999, eps 1e-8, bias correction: eqflow/optim.h's rule, arithmetic in
//      double, stored float32) and the EMA, both skipped on the device when the step was not
//      finite; then the counters.
//
// The learning rate comes from the host as a kernel argument. Nothing returns to the host in a
// step; the ot / eqot couplings synchronise the stream internally (they pick the assignment
// solver on the host), fm does not. last_loss() and counters() are the only reads (a few bytes)
// and the trainer calls them on logged steps, at epoch ends, and on every step only when a
// progress callback wants each step's loss. The typed eqot coupling copies the n atom types to
// its workspace each step (a few bytes). Nothing is allocated on the device after the
// constructor, which sizes every buffer and the EgnnGpu workspace for the batch (the validation
// loss's flow_matching_loss_gpu buffers are sized once, on its first call).
//
// Not done: CUDA-graph capture of the step. The ot / eqot couplings synchronise inside, and the
// step index and learning rate change every step, so a graph would need them in device memory;
// the per-step launch overhead (~15 launches) is small next to the backward at batch 256.
//
// Without a usable GPU (or in a build without CUDA) the constructor throws an Error that says why.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "eqflow/coupling.h"
#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/egnn_gpu.h"
#include "eqflow/export.h"
#include "eqflow/optim.h"
#include "eqflow/tensor.h"

namespace eqflow {

struct GpuFlowMatchingOptions {
    CouplingKind objective = CouplingKind::eqot;
    bool reflections = false;     // eqot: improper rotations too
    std::vector<int> atom_types;  // eqot permutes only within a type (the model has its own copy)
    double sigma = 0.01;
    int64_t batch = 256;     // B: rows per step (<= the training set; <= 1024 for ot / eqot)
    uint64_t draw_seed = 0;  // row b of step s draws from Philox(draw_seed, s*B + b)
    double ema_decay = 0.0;  // 0: no EMA
};

class EQFLOW_API GpuFlowMatching {
  public:
    // model: the starting parameters (uploaded as float32); train [count][n][d] in model units,
    // uploaded once as float32. Adam moments start at zero and the EMA at the parameters.
    GpuFlowMatching(const EgnnModel& model, const GpuFlowMatchingOptions& options,
                    const double* train, int64_t count);
    ~GpuFlowMatching();
    GpuFlowMatching(GpuFlowMatching&&) noexcept;
    GpuFlowMatching& operator=(GpuFlowMatching&&) noexcept;
    GpuFlowMatching(const GpuFlowMatching&) = delete;
    GpuFlowMatching& operator=(const GpuFlowMatching&) = delete;

    // The epoch's permutation of 0..count-1 (count entries), uploaded once.
    void set_order(const std::vector<int64_t>& order);

    // Enqueues training step `step` on the rows order[j*B .. j*B+B) with learning rate lr.
    void step(int64_t step, int64_t j, double lr);

    // The last step's batch loss (NaN or inf when that step was skipped). Synchronises.
    double last_loss();

    struct Counters {
        int64_t adam_step = 0;     // accepted steps (Adam updates) so far
        int64_t skipped = 0;       // steps skipped for a non-finite loss or gradient
        double window_loss = 0.0;  // sum of accepted losses since reset_window()
        int64_t window_count = 0;
    };
    Counters counters();  // synchronises
    void reset_window();  // enqueued, no synchronisation

    // The state as the host trainer keeps it (double): parameters, Adam moments and step, the
    // EMA (left untouched when EMA is off) and the skipped count. Synchronises.
    void download_state(std::vector<double>& params, AdamState& adam, std::vector<double>* ema,
                        int64_t* skipped);
    // Replaces the state (resume): parameters and moments are rounded to float32; empty moments
    // mean zeros; an empty ema means "start at the parameters".
    void upload_state(const std::vector<double>& params, const AdamState& adam,
                      const std::vector<double>& ema, int64_t skipped);

    // The network with the live parameters (e.g. for the validation loss).
    EgnnGpu& network();

    // The last step's batch and gradient on the host (for tests): x1 as gathered, x1_paired after
    // the coupling, all [B][n][d]; t [B]; grad [P] the batch gradient before the update.
    struct Snapshot {
        std::vector<double> x0, x1, x1_paired, t, eps, grad;
        double loss = 0.0;
    };
    Snapshot snapshot();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Adam on float32 device arrays, the update GpuFlowMatching applies (exposed for tests): the rule
// of adam_update (eqflow/optim.h) for update number step + 1, arithmetic in double, params, m and
// v stored float32 in place. Enqueued on `stream`; allocates nothing.
EQFLOW_API void adam_update_gpu(const AdamOptions& options, double lr, int64_t step,
                                TensorView<float> params, TensorView<const float> grad,
                                TensorView<float> m, TensorView<float> v, Stream stream = nullptr);

}  // namespace eqflow
