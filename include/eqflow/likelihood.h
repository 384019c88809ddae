// eqflow/likelihood.h: one maximum-likelihood training step (docs/design.md section 5,
// `eqflow train --objective likelihood`, the baseline of Table 1), written once over the field
// interface (eqflow/field.h) beside FlowMatchingStep (eqflow/train_step.h). A plain C++ header.
//
// Loss of a batch x1 [B][n][d] of (centred) data: the mean over the batch of
//     -log q(x1) - c = 1/2 |x0|^2 + int_0^1 div v(x_t, t) dt,
// with x0 the end of the ODE dx/dt = v(x, t) integrated from x1 at t = 1 back to t = 0 and the
// divergence exact (docs/design.md section 6). c = 1/2 (n-1) d log 2 pi is left out: the loss is
// the NLL in the paper's convention, the `nll` that `eqflow eval` reports (in model units).
//
// The integral is N fixed classical RK4 steps (stage times and update exactly those of
// ode_integrate with OdeMethod::rk4, so the forward loss equals flow_log_likelihood's with the
// same solver), and the gradient is the exact gradient of this discrete loss: reverse mode
// through the solver's steps (discretise-then-optimise). Why not the adjoint ODE: its gradient
// is that of the continuous loss only up to the solver error of a second, backward solve (and
// a different one from this forward solve, since the backward solve re-integrates x), so it is
// neither checkable against finite differences to high accuracy nor consistent with the loss it
// reports; its O(1) memory buys nothing here, because the stored states are small
// (4 N B n d values: DW4, N = 10, B = 256 is 80k doubles). Each stage input the field saw is
// kept, so the reverse sweep needs no recomputation of the forward; per stage it calls the
// field's backward (cotangent of v) and divergence_backward (cotangent of div). The field must
// support divergence_backward (the CPU fields of both field types and the CUDA kernel field do;
// the CUDA EGNN does not).
//
// One step: gather the rows order[j*B .. j*B+B), the loss and gradient above, a finite check,
// Adam and the EMA (skipped when not finite), exactly as FlowMatchingStep (train_ops, the same
// TrainScalars bookkeeping). Nothing is random: the validation loss is the same loss on the
// held-out rows. The solver's state (stage inputs, the stages' k, the divergence integral, the
// cotangents) lives where the field computes, with the solver's loops as host loops or as their
// device twins (src/train_ops.h, lik_*), and the parameter gradient, Adam and the EMA stay
// with the parameters, so a CUDA step gives the CPU step's arithmetic up to the field's own
// rounding (and the device's fused multiply-adds). On CUDA the training rows, the epoch order,
// the step's arguments and its counters live on the device too, so a step reads nothing from
// the host: from the second step on it is one captured CUDA graph, replayed (a DW4 step at 40
// RK4 steps is ~2000 launches), and the host waits only where it reads something back (the
// loss, the counters, the state, validation_loss, evaluate) or uploads (set_order, upload_state).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/export.h"
#include "eqflow/field.h"
#include "eqflow/optim.h"

namespace eqflow {

struct LikelihoodStepOptions {
    int ode_steps = 10;      // N: RK4 steps from t = 1 to t = 0
    int64_t batch = 256;     // B: rows per step (<= the training set)
    double ema_decay = 0.0;  // 0: no EMA
    bool cuda_graph = true;  // CUDA: replay the step as a graph (also off: EQFLOW_NO_CUDA_GRAPH=1)
};

template <class T>
class EQFLOW_API LikelihoodStep {
  public:
    // train [count][n][d] and validation [val_count][n][d] (host, model units, centred) are
    // copied. Adam moments start at zero and the EMA at the field's parameters. Throws when the
    // field cannot differentiate its divergence.
    LikelihoodStep(Field<T>& field, const LikelihoodStepOptions& options, const double* train,
                   int64_t count, const double* validation = nullptr, int64_t val_count = 0);
    ~LikelihoodStep();
    LikelihoodStep(LikelihoodStep&&) noexcept;
    LikelihoodStep& operator=(LikelihoodStep&&) noexcept;
    LikelihoodStep(const LikelihoodStep&) = delete;
    LikelihoodStep& operator=(const LikelihoodStep&) = delete;

    // The epoch's permutation of 0..count-1.
    void set_order(const std::vector<int64_t>& order);

    // Step `step` on the rows order[j*B .. j*B+B) with learning rate lr (`step` only names the
    // step: the likelihood step draws nothing).
    void step(int64_t step, int64_t j, double lr);

    // Mean loss over the first `rows` validation rows (in batches of B); NaN when rows = 0. The
    // seed is unused (nothing is drawn); it is there so that both steps are called alike.
    double validation_loss(uint64_t seed, int64_t rows);

    // The loss of the batch x1 [rows][n][d] (host, model units) at the field's current
    // parameters, and, when grad is not null, its exact gradient [P] (OVERWRITTEN). No update.
    // Exposed for tests (finite differences) and tools.
    double evaluate(const double* x1, int64_t rows, double* grad);

    // The last step's batch loss (NaN or inf when that step was skipped). On CUDA it waits for
    // the step, as counters() and download_state() do; step() itself only queues work.
    double last_loss();

    // "on: ...", "pending: ...", or "off: <why>" (as FlowMatchingStep::cuda_graph_status).
    std::string cuda_graph_status() const;

    struct Counters {
        int64_t adam_step = 0;     // accepted steps (Adam updates) so far
        int64_t skipped = 0;       // steps skipped for a non-finite loss or gradient
        double window_loss = 0.0;  // sum of accepted losses since reset_window()
        int64_t window_count = 0;
    };
    Counters counters();
    void reset_window();

    // The state in double, as FlowMatchingStep's (parameters, Adam moments and step, EMA,
    // skipped count); upload_state replaces it (resume).
    void download_state(std::vector<double>& params, AdamState& adam, std::vector<double>* ema,
                        int64_t* skipped);
    void upload_state(const std::vector<double>& params, const AdamState& adam,
                      const std::vector<double>& ema, int64_t skipped);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace eqflow
