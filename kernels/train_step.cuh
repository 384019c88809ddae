// kernels/train_step.cuh: the small kernels of the device-resident flow-matching step
// (src/train_step.cpp, through src/train_ops.h); the network is kernels/egnn.cu.
// Launchers take a stream, never allocate and never synchronise.
//
// Layouts: data [count][n*d] float32 (the training set, uploaded once); order [count] int64 (the
// epoch permutation); x0, x1, eps [B][n*d] and t [B] double (the batch as the CPU trainer holds
// it, so the coupling sees the CPU reference's inputs); xt [B][n*d], tf [B], v, dL_dv [B][n*d]
// float32 (the network's inputs and outputs); params, grad, m, v [P] float32; ema [P] double.
#pragma once

#include <cstdint>

#include "common/train_math.h"
#include "eqflow/device.h"

namespace eqflow::cuda {

// The training loop's bookkeeping, shared with the host step (src/common/train_math.h).
using train_math::TrainScalars;

using train_math::StepArgs;

// *dst = args: one thread, the arguments passed by value.
void fm_set_step_args(StepArgs* dst, const StepArgs& args, Stream stream);

// Row b of the batch, with a = *args: x1[b] = data[order[a.first + b]] (widened to double) and
// x0[b], t[b], eps[b] = train_math::draw_row(seed, a.first_stream + b, time_power)
// (src/common/train_math.h).
void fm_prepare_batch(const float* data, const int64_t* order, const StepArgs* args, int64_t B,
                      int n, int d, uint64_t seed, double time_power, double* x0, double* x1,
                      double* t, double* eps, Stream stream);

// xt = float((1 - t) x0 + t x1 + sigma eps), tf = float(t).
void fm_interpolate(int64_t B, int64_t nd, const double* x0, const double* x1, const double* t,
                    const double* eps, double sigma, float* xt, float* tf, Stream stream);

// r = v - (x1 - x0); loss = sum r^2 / (B nd) (one block, fixed summation order: deterministic);
// dL_dv = float(2 r / (B nd)). Writes s->loss and resets s->bad to (loss not finite).
void fm_loss(int64_t B, int64_t nd, const float* v, const double* x0, const double* x1,
             float* dL_dv, TrainScalars* s, Stream stream);

// s->bad = 1 when any grad entry is not finite (after fm_loss reset it).
void fm_check_finite(const float* grad, int64_t count, TrainScalars* s, Stream stream);

// Adam (train_math::adam_element_f32) on every parameter, then, when ema is not null,
// ema = decay ema + (1 - decay) params in double. With s: nothing happens when s->bad, and the
// update number is s->adam_step + 1; without s: it is host_step + 1. The learning rate is
// args->lr, or lr when args is null.
void fm_adam_update(int64_t count, float* params, const float* grad, float* m, float* v,
                    double* ema, double ema_decay, double lr, const StepArgs* args, double beta1,
                    double beta2, double eps, const TrainScalars* s, int64_t host_step,
                    Stream stream);

// Bookkeeping after the update: skipped += bad, or adam_step += 1 and the loss joins the window.
void fm_finish_step(TrainScalars* s, Stream stream);

// window_loss = 0, window_count = 0.
void fm_reset_window(TrainScalars* s, Stream stream);

// LikelihoodStep's RK4 loops on the device (src/train_ops.h, lik_*), one thread per element
// (lik_row_losses: per row).
void lik_stage_input(int64_t count, const double* y, const double* kprev, double c, float* xs,
                     Stream stream);
void lik_fill(int64_t count, double value, float* out, Stream stream);
void lik_store_stage(int64_t count, int64_t rows, const float* v, const float* div, double* k,
                     double* dk, Stream stream);
void lik_rk4_update(int64_t rows, int64_t nd, int64_t B, double h, const double* k,
                    const double* dk, double* y, double* integral, Stream stream);
void lik_row_losses(int64_t rows, int64_t nd, const double* y, const double* integral, double* out,
                    Stream stream);
void lik_gather(const double* data, const int64_t* order, const StepArgs* args, int64_t rows,
                int64_t nd, double* y, Stream stream);
void lik_batch_loss(int64_t rows, const double* terms, TrainScalars* s, Stream stream);
void lik_scale(int64_t count, double a, const double* x, double* out, Stream stream);
void lik_to_field(int64_t count, const double* src, float* dst, Stream stream);
void lik_accumulate(int64_t count, const float* gx1, const float* gx2, double c, double* yacc,
                    double* kprev, Stream stream);

}  // namespace eqflow::cuda
