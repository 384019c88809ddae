// src/train_ops.h: the small operations of one flow-matching step around the field (draws,
// interpolation, loss, finite check, Adam + EMA, bookkeeping), each with a host implementation
// (src/cpu/train_ops_cpu.cpp) and a device one (kernels/train_step.cu), chosen by where the data
// lives. The step (src/train_step.cpp) is written once over these and the field interface.
//
// Layouts: data [count][n*d] T (the training set in the field's memory and precision); order
// [count] int64; x0, x1, eps [B][n*d] and t [B] double (the batch as the coupling sees it); xt
// [B][n*d], tf [B], v, dL_dv [B][n*d] T (the field's inputs and outputs); params, grad, m, v [P]
// T; ema [P] double. Every pointer lives on `device`. Internal header, not installed.
#pragma once

#include <cstdint>
#include <vector>

#include "common/train_math.h"
#include "eqflow/device.h"
#include "eqflow/export.h"

namespace eqflow {
struct AdamState;
}

namespace eqflow::train_ops {

// The argument checks both steps (FlowMatchingStep, LikelihoodStep) make, `what` naming the step
// in the message: an epoch order is a sequence of count row indices in [0, count); a state to
// upload has P parameters, matching Adam moments (or none), an EMA of P values (or none) and
// non-negative counters.
void check_order(const std::vector<int64_t>& order, int64_t count, const char* what);
void check_state(int64_t P, const std::vector<double>& params, const AdamState& adam,
                 const std::vector<double>& ema, int64_t skipped, const char* what);

using train_math::StepArgs;
using train_math::TrainScalars;

// *dst = args (one tiny kernel on the device): the step's arguments, written before its work.
EQFLOW_API void set_step_args(Device device, StepArgs* dst, const StepArgs& args, Stream stream);

// With a = *args (device memory): x1[b] = data[order[a.first + b]] (widened to double); x0[b],
// t[b], eps[b] = train_math::draw_row(seed, a.first_stream + b, time_power).
template <class T>
EQFLOW_API void prepare_batch(Device device, const T* data, const int64_t* order,
                              const StepArgs* args, int64_t B, int n, int d, uint64_t seed,
                              double time_power, double* x0, double* x1, double* t, double* eps,
                              Stream stream);

// xt = T((1 - t) x0 + t x1 + sigma eps), tf = T(t).
template <class T>
EQFLOW_API void interpolate(Device device, int64_t B, int64_t nd, const double* x0,
                            const double* x1, const double* t, const double* eps, double sigma,
                            T* xt, T* tf, Stream stream);

// r = v - (x1 - x0); s->loss = sum r^2 / (B nd); dL_dv = T(2 r / (B nd)); s->bad = loss not
// finite.
template <class T>
EQFLOW_API void loss(Device device, int64_t B, int64_t nd, const T* v, const double* x0,
                     const double* x1, T* dL_dv, TrainScalars* s, Stream stream);

// Rows [b0, b0 + rows) of loss's dL_dv for a batch of B rows, on the host: the values loss
// writes there, bit for bit (the output gradient of Field::forward_backward on a host field).
template <class T>
EQFLOW_API void loss_gradient_rows(int64_t B, int64_t nd, int64_t b0, int64_t rows, const T* v,
                                   const double* x0, const double* x1, T* dL_dv);

// s->bad = 1 when any grad entry is not finite.
template <class T>
EQFLOW_API void check_finite(Device device, const T* grad, int64_t count, TrainScalars* s,
                             Stream stream);

// Unless s->bad: Adam (train_math::adam_element, update number s->adam_step + 1) with learning
// rate args->lr (device memory), or lr when args is null; then, when ema is not null,
// ema = decay ema + (1 - decay) params in double.
template <class T>
EQFLOW_API void adam_update(Device device, int64_t count, T* params, const T* grad, T* m, T* v,
                            double* ema, double ema_decay, double lr, const StepArgs* args,
                            double beta1, double beta2, double eps, const TrainScalars* s,
                            Stream stream);

// skipped += bad, or adam_step += 1 and the loss joins the window.
EQFLOW_API void finish_step(Device device, TrainScalars* s, Stream stream);

// window_loss = 0, window_count = 0.
EQFLOW_API void reset_window(Device device, TrainScalars* s, Stream stream);

// The loops of LikelihoodStep's RK4 solve (src/likelihood.cpp), so that its state can live where
// the field computes: each is the host loop it replaced (the same operations in the same order)
// or its device twin (the same operations, which nvcc may contract into fused multiply-adds, so
// the device rounds slightly differently). Layouts: y, ybar, yacc [rows][nd]; k, kacc [4][B][nd]
// and dk [4][B] by stage; integral [rows]; the field's inputs and outputs in T. xs = T(y + c
// kprev), or T(y) when kprev is null.
template <class T>
EQFLOW_API void lik_stage_input(Device device, int64_t count, const double* y, const double* kprev,
                                double c, T* xs, Stream stream);
// out[i] = T(value), i < count.
template <class T>
EQFLOW_API void lik_fill(Device device, int64_t count, double value, T* out, Stream stream);
// k = double(v) (count values), dk = double(div) (rows values).
template <class T>
EQFLOW_API void lik_store_stage(Device device, int64_t count, int64_t rows, const T* v,
                                const T* div, double* k, double* dk, Stream stream);
// y += h/6 (k1 + 2 k2 + 2 k3 + k4), integral += h/6 (dk1 + 2 dk2 + 2 dk3 + dk4) (stage stride B).
EQFLOW_API void lik_rk4_update(Device device, int64_t rows, int64_t nd, int64_t B, double h,
                               const double* k, const double* dk, double* y, double* integral,
                               Stream stream);
// out[b] = 1/2 |y_b|^2 - integral[b] (the sum over the row in order).
EQFLOW_API void lik_row_losses(Device device, int64_t rows, int64_t nd, const double* y,
                               const double* integral, double* out, Stream stream);
// y[b] = data[order[a.first + b]] with a = *args, b < rows (double rows of nd values): the batch,
// gathered where the solver runs, so that a device step needs no copy from host memory.
EQFLOW_API void lik_gather(Device device, const double* data, const int64_t* order,
                           const StepArgs* args, int64_t rows, int64_t nd, double* y,
                           Stream stream);
// s->loss = (sum of terms[b], b < rows, in order) / rows; s->bad = loss not finite.
EQFLOW_API void lik_batch_loss(Device device, int64_t rows, const double* terms, TrainScalars* s,
                               Stream stream);
// out = a x (count values).
EQFLOW_API void lik_scale(Device device, int64_t count, double a, const double* x, double* out,
                          Stream stream);
// dst = T(src).
template <class T>
EQFLOW_API void lik_to_field(Device device, int64_t count, const double* src, T* dst,
                             Stream stream);
// xbar = double(gx1) + double(gx2); yacc += xbar; kprev += c xbar when kprev is not null.
template <class T>
EQFLOW_API void lik_accumulate(Device device, int64_t count, const T* gx1, const T* gx2, double c,
                               double* yacc, double* kprev, Stream stream);

}  // namespace eqflow::train_ops
