// eqflow/train_step.h: one flow-matching training step (docs/design.md section 5), written once
// over the field interface (eqflow/field.h) for every backend. A plain C++ header.
//
// FlowMatchingStep<T> keeps everything a step touches in the field's memory: the training set
// (uploaded once, in the field's precision T), the epoch permutation, the batch, the Adam moments
// (T), the EMA of the weights (double) and the loop's counters (train_math::TrainScalars). One
// step runs, in order, on the field's device and stream:
//
//   1. gather the batch rows order[j*B .. j*B+B) and draw x0, t, eps of row b from
//      Philox(draw_seed, step*B + b) (src/common/train_math.h, double: the same bits on every
//      device, t to a few ulps of pow when time_power != 1);
//   2. couple them with the public couple() (eqflow/coupling.h; fm: as drawn);
//   3. x_t = (1-t) x0 + t x1 + sigma eps in T;
//   4. the field's forward_backward into a zeroed gradient (forward, dL/dv of each row once its
//      v is there, backward: a host field runs each row's backward while its activations are
//      in cache), then the batch loss; a finite check of loss and gradient;
//   5. Adam (eqflow/optim.h's rule) and the EMA, skipped when the step was not finite; then the
//      counters.
// The learning rate comes from the caller. On the GPU nothing returns to the host in a step and
// the host never waits for the device inside one (the ot / eqot couplings run with
// `synchronize` off: a failed batch assignment poisons the batch, which step 4 skips);
// last_loss() and counters() are the reads. Nothing is allocated after the constructor.
// On the GPU the step runs on a stream of its own, and from the second step on it is one CUDA
// graph, captured once and replayed (what changes between steps, the batch's rows, its draws and
// the learning rate, is written to device memory before each replay), which removes the host's
// launch overhead of its ~20-40 small kernels. Bit-identical to the uncaptured step;
// cuda_graph_status() says whether it is on.
// The validation loss runs steps 1-3 on held-out rows with fixed draws, without the update.
//
// Precision: with the CPU reference (T = double) the step is the double-precision reference; on
// CUDA (T = float) the network, its gradient, the parameters and the moments are float32, so a
// GPU run follows the CPU run only to float32 accuracy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/coupling.h"
#include "eqflow/export.h"
#include "eqflow/field.h"
#include "eqflow/optim.h"

namespace eqflow {

struct FlowMatchingStepOptions {
    CouplingKind objective = CouplingKind::eqot;
    bool reflections = false;     // eqot: improper rotations too
    int eqot_starts = 0;          // eqot: CouplingOptions::max_starts (0: every frame start)
    std::vector<int> atom_types;  // eqot permutes only within a type
    double sigma = 0.01;
    double time_power = 1.0;  // t = u^(1/A), u ~ U(0, 1): density A t^(A-1); 1: uniform t
    int64_t batch = 256;      // B: rows per step (<= the training set)
    uint64_t draw_seed = 0;   // row b of step s draws from Philox(draw_seed, s*B + b)
    double ema_decay = 0.0;   // 0: no EMA
    int threads = 0;          // CPU eqot coupling: threads for its B^2 alignments; 0: all
    bool cuda_graph = true;   // CUDA: replay the step as a graph (also off: EQFLOW_NO_CUDA_GRAPH=1)
};

template <class T>
class EQFLOW_API FlowMatchingStep {
  public:
    // train [count][n][d] and validation [val_count][n][d] (host, model units) are uploaded once.
    // Adam moments start at zero and the EMA at the field's parameters.
    FlowMatchingStep(Field<T>& field, const FlowMatchingStepOptions& options, const double* train,
                     int64_t count, const double* validation = nullptr, int64_t val_count = 0);
    ~FlowMatchingStep();
    FlowMatchingStep(FlowMatchingStep&&) noexcept;
    FlowMatchingStep& operator=(FlowMatchingStep&&) noexcept;
    FlowMatchingStep(const FlowMatchingStep&) = delete;
    FlowMatchingStep& operator=(const FlowMatchingStep&) = delete;

    // The epoch's permutation of 0..count-1, uploaded once.
    void set_order(const std::vector<int64_t>& order);

    // Step `step` on the rows order[j*B .. j*B+B) with learning rate lr.
    void step(int64_t step, int64_t j, double lr);

    // Mean loss over the first `rows` validation rows (in batches of B), row r drawing from
    // Philox(seed, r) and coupled within its batch; the same draws every call. NaN when rows = 0.
    double validation_loss(uint64_t seed, int64_t rows);

    // The last step's batch loss (NaN or inf when that step was skipped).
    double last_loss();

    // "on: ..." when the steps replay a captured CUDA graph; "pending: ..." before the second
    // step; "off: <why>" otherwise (not CUDA, turned off, or capture failed: then the step runs
    // its launches one by one, with the same results).
    std::string cuda_graph_status() const;

    struct Counters {
        int64_t adam_step = 0;     // accepted steps (Adam updates) so far
        int64_t skipped = 0;       // steps skipped for a non-finite loss or gradient
        double window_loss = 0.0;  // sum of accepted losses since reset_window()
        int64_t window_count = 0;
    };
    Counters counters();
    void reset_window();

    // The state in double: parameters, Adam moments and step, the EMA (left untouched when EMA is
    // off) and the skipped count. upload_state replaces it (resume): values are rounded to T;
    // empty moments mean zeros; an empty ema means "start at the parameters".
    void download_state(std::vector<double>& params, AdamState& adam, std::vector<double>* ema,
                        int64_t* skipped);
    void upload_state(const std::vector<double>& params, const AdamState& adam,
                      const std::vector<double>& ema, int64_t skipped);

    // The last step's batch and gradient on the host (tests): x1 as gathered, x1_paired after the
    // coupling, all [B][n][d]; t [B]; grad [P] the batch gradient before the update.
    struct Snapshot {
        std::vector<double> x0, x1, x1_paired, t, eps, grad;
        double loss = 0.0;
    };
    Snapshot snapshot();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace eqflow
