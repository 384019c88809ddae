// kernels/train_step.cu: the glue kernels of the device-resident flow-matching step (contract in
// kernels/train_step.cuh). All O(B n d) or O(P) and memory bound; the step's time is the
// network's backward and, for ot / eqot, the coupling.
//
//   prepare_batch_kernel   one thread per batch row: walks that row's Philox stream exactly as
//                          the CPU trainer does (train_math::draw_row) and gathers its data row.
//                          B threads, 2 n d normals each: microseconds at B = 256.
//   interpolate_kernel     one thread per coordinate.
//   loss_kernel            ONE block of kLossThreads: each thread strides over the B n d
//                          residuals in a fixed order, then a fixed shared-memory tree; so the
//                          loss is bit-identical run to run. Shared memory: kLossThreads doubles.
//   finite_kernel          one thread per parameter; any non-finite entry stores bad = 1 (all
//                          writers store the same value, so the race is benign).
//   adam_kernel            one thread per parameter (train_math::adam_element_f32).
//   finish_kernel          one thread: the step's bookkeeping in TrainScalars.
//   lik_*_kernel           LikelihoodStep's RK4 loops with its state on the device (the host
//                          loops' arithmetic), one thread per element or per row.
#include <cmath>

#include "common/train_math.h"
#include "kernels/cuda_check.cuh"
#include "kernels/device_compat.cuh"
#include "kernels/train_step.cuh"

namespace eqflow::cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kLossThreads = 512;

unsigned blocks_for(int64_t count) {
    return static_cast<unsigned>((count + kThreads - 1) / kThreads);
}

__global__ void set_step_args_kernel(StepArgs* dst, StepArgs args) {
    *dst = args;
}

__global__ void __launch_bounds__(kThreads)
    prepare_batch_kernel(const float* __restrict__ data, const int64_t* __restrict__ order,
                         const StepArgs* __restrict__ args, int64_t B, int n, int d, uint64_t seed,
                         double time_power, double* __restrict__ x0, double* __restrict__ x1,
                         double* __restrict__ t, double* __restrict__ eps) {
    const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const int64_t nd = static_cast<int64_t>(n) * d;
    const int64_t src = order[args->first + b];
    for (int64_t k = 0; k < nd; ++k) x1[b * nd + k] = static_cast<double>(data[src * nd + k]);
    train_math::draw_row(seed, args->first_stream + static_cast<uint64_t>(b), n, d, x0 + b * nd,
                         t + b, eps + b * nd, time_power);
}

__global__ void __launch_bounds__(kThreads)
    interpolate_kernel(int64_t B, int64_t nd, const double* __restrict__ x0,
                       const double* __restrict__ x1, const double* __restrict__ t,
                       const double* __restrict__ eps, double sigma, float* __restrict__ xt,
                       float* __restrict__ tf) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= B * nd) return;
    const int64_t b = i / nd;
    const double tb = t[b];
    xt[i] = static_cast<float>((1.0 - tb) * x0[i] + tb * x1[i] + sigma * eps[i]);
    if (i % nd == 0) tf[b] = static_cast<float>(tb);
}

__global__ void __launch_bounds__(kLossThreads)
    loss_kernel(int64_t count, double scale, const float* __restrict__ v,
                const double* __restrict__ x0, const double* __restrict__ x1,
                float* __restrict__ dL_dv, TrainScalars* __restrict__ s) {
    __shared__ double part[kLossThreads];
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < count; i += kLossThreads) {
        const double r = static_cast<double>(v[i]) - (x1[i] - x0[i]);
        acc += r * r;
        dL_dv[i] = static_cast<float>(2.0 * r * scale);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int w = kLossThreads / 2; w > 0; w >>= 1) {
        if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const double loss = part[0] * scale;
        s->loss = loss;
        s->bad = isfinite(loss) ? 0 : 1;
    }
}

__global__ void __launch_bounds__(kThreads)
    finite_kernel(const float* __restrict__ grad, int64_t count, TrainScalars* __restrict__ s) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    if (!isfinite(grad[i])) s->bad = 1;
}

__global__ void __launch_bounds__(kThreads)
    adam_kernel(int64_t count, float* __restrict__ params, const float* __restrict__ grad,
                float* __restrict__ m, float* __restrict__ v, double* __restrict__ ema,
                double ema_decay, double lr, const StepArgs* __restrict__ args, double beta1,
                double beta2, double eps, const TrainScalars* __restrict__ s, int64_t host_step) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    if (args != nullptr) lr = args->lr;
    int64_t step = host_step;
    if (s != nullptr) {
        if (s->bad) return;  // a skipped step changes nothing
        step = s->adam_step;
    }
    const double k = static_cast<double>(step + 1);
    const double c1 = 1.0 - pow(beta1, k);
    const double c2 = 1.0 - pow(beta2, k);
    float p = params[i], mi = m[i], vi = v[i];
    train_math::adam_element_f32(beta1, beta2, eps, lr, c1, c2, grad[i], mi, vi, p);
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (ema != nullptr) ema[i] = ema_decay * ema[i] + (1.0 - ema_decay) * static_cast<double>(p);
}

__global__ void finish_kernel(TrainScalars* s) {
    train_math::finish_step(*s);
}

__global__ void reset_window_kernel(TrainScalars* s) {
    s->window_loss = 0.0;
    s->window_count = 0;
}
}  // namespace

void fm_set_step_args(StepArgs* dst, const StepArgs& args, Stream stream) {
    EQFLOW_LAUNCH(set_step_args_kernel, 1, 1, 0, EQFLOW_STREAM(stream), dst, args);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_prepare_batch(const float* data, const int64_t* order, const StepArgs* args, int64_t B,
                      int n, int d, uint64_t seed, double time_power, double* x0, double* x1,
                      double* t, double* eps, Stream stream) {
    if (B == 0) return;
    EQFLOW_LAUNCH(prepare_batch_kernel, blocks_for(B), kThreads, 0, EQFLOW_STREAM(stream), data,
                  order, args, B, n, d, seed, time_power, x0, x1, t, eps);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_interpolate(int64_t B, int64_t nd, const double* x0, const double* x1, const double* t,
                    const double* eps, double sigma, float* xt, float* tf, Stream stream) {
    if (B * nd == 0) return;
    EQFLOW_LAUNCH(interpolate_kernel, blocks_for(B * nd), kThreads, 0, EQFLOW_STREAM(stream), B, nd,
                  x0, x1, t, eps, sigma, xt, tf);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_loss(int64_t B, int64_t nd, const float* v, const double* x0, const double* x1,
             float* dL_dv, TrainScalars* s, Stream stream) {
    if (B * nd == 0) return;
    const double scale = 1.0 / static_cast<double>(B * nd);
    EQFLOW_LAUNCH(loss_kernel, 1, kLossThreads, 0, EQFLOW_STREAM(stream), B * nd, scale, v, x0, x1,
                  dL_dv, s);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_check_finite(const float* grad, int64_t count, TrainScalars* s, Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(finite_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream), grad, count,
                  s);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_adam_update(int64_t count, float* params, const float* grad, float* m, float* v,
                    double* ema, double ema_decay, double lr, const StepArgs* args, double beta1,
                    double beta2, double eps, const TrainScalars* s, int64_t host_step,
                    Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(adam_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream), count, params,
                  grad, m, v, ema, ema_decay, lr, args, beta1, beta2, eps, s, host_step);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_finish_step(TrainScalars* s, Stream stream) {
    EQFLOW_LAUNCH(finish_kernel, 1, 1, 0, EQFLOW_STREAM(stream), s);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void fm_reset_window(TrainScalars* s, Stream stream) {
    EQFLOW_LAUNCH(reset_window_kernel, 1, 1, 0, EQFLOW_STREAM(stream), s);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

// ---- LikelihoodStep's RK4 loops (src/train_ops.h, lik_*): the host loops' operations (which
// nvcc may contract into fused multiply-adds), one thread per element (lik_row_losses: one
// thread per row, summing the row in order; lik_batch_loss: one thread).
namespace {
__device__ inline int64_t element() {
    return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__global__ void __launch_bounds__(kThreads)
    lik_stage_input_kernel(int64_t count, const double* __restrict__ y,
                           const double* __restrict__ kprev, double c, float* __restrict__ xs) {
    const int64_t i = element();
    if (i >= count) return;
    double value = y[i];
    if (kprev) value = y[i] + c * kprev[i];
    xs[i] = static_cast<float>(value);
}

__global__ void __launch_bounds__(kThreads)
    lik_fill_kernel(int64_t count, double value, float* __restrict__ out) {
    const int64_t i = element();
    if (i < count) out[i] = static_cast<float>(value);
}

__global__ void __launch_bounds__(kThreads)
    lik_store_stage_kernel(int64_t count, int64_t rows, const float* __restrict__ v,
                           const float* __restrict__ div, double* __restrict__ k,
                           double* __restrict__ dk) {
    const int64_t i = element();
    if (i < count) k[i] = static_cast<double>(v[i]);
    if (i < rows) dk[i] = static_cast<double>(div[i]);
}

__global__ void __launch_bounds__(kThreads)
    lik_rk4_update_kernel(int64_t rows, int64_t nd, int64_t B, double h,
                          const double* __restrict__ k, const double* __restrict__ dk,
                          double* __restrict__ y, double* __restrict__ integral) {
    const int64_t i = element();
    const int64_t s = B * nd;
    if (i < rows * nd)
        y[i] += h / 6.0 * (k[i] + 2.0 * k[s + i] + 2.0 * k[2 * s + i] + k[3 * s + i]);
    if (i < rows)
        integral[i] += h / 6.0 * (dk[i] + 2.0 * dk[B + i] + 2.0 * dk[2 * B + i] + dk[3 * B + i]);
}

__global__ void __launch_bounds__(kThreads)
    lik_row_losses_kernel(int64_t rows, int64_t nd, const double* __restrict__ y,
                          const double* __restrict__ integral, double* __restrict__ out) {
    const int64_t b = element();
    if (b >= rows) return;
    double sq = 0.0;
    for (int64_t i = 0; i < nd; ++i) sq += y[b * nd + i] * y[b * nd + i];
    out[b] = 0.5 * sq - integral[b];
}

__global__ void __launch_bounds__(kThreads)
    lik_gather_kernel(const double* __restrict__ data, const int64_t* __restrict__ order,
                      const StepArgs* __restrict__ args, int64_t rows, int64_t nd,
                      double* __restrict__ y) {
    const int64_t i = element();
    if (i >= rows * nd) return;
    const int64_t b = i / nd;
    y[i] = data[order[args->first + b] * nd + (i - b * nd)];
}

// One thread: the rows' losses summed in order, as the host loop (the same double additions).
__global__ void lik_batch_loss_kernel(int64_t rows, const double* __restrict__ terms,
                                      TrainScalars* s) {
    double sum = 0.0;
    for (int64_t b = 0; b < rows; ++b) sum += terms[b];
    s->loss = sum / static_cast<double>(rows);
    s->bad = isfinite(s->loss) ? 0 : 1;
}

__global__ void __launch_bounds__(kThreads)
    lik_scale_kernel(int64_t count, double a, const double* __restrict__ x,
                     double* __restrict__ out) {
    const int64_t i = element();
    if (i < count) out[i] = a * x[i];
}

__global__ void __launch_bounds__(kThreads)
    lik_to_field_kernel(int64_t count, const double* __restrict__ src, float* __restrict__ dst) {
    const int64_t i = element();
    if (i < count) dst[i] = static_cast<float>(src[i]);
}

__global__ void __launch_bounds__(kThreads)
    lik_accumulate_kernel(int64_t count, const float* __restrict__ gx1,
                          const float* __restrict__ gx2, double c, double* __restrict__ yacc,
                          double* __restrict__ kprev) {
    const int64_t i = element();
    if (i >= count) return;
    const double xbar = static_cast<double>(gx1[i]) + static_cast<double>(gx2[i]);
    yacc[i] += xbar;
    if (kprev) kprev[i] += c * xbar;
}
}  // namespace

void lik_stage_input(int64_t count, const double* y, const double* kprev, double c, float* xs,
                     Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(lik_stage_input_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream),
                  count, y, kprev, c, xs);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_fill(int64_t count, double value, float* out, Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(lik_fill_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream), count,
                  value, out);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_store_stage(int64_t count, int64_t rows, const float* v, const float* div, double* k,
                     double* dk, Stream stream) {
    const int64_t n = count > rows ? count : rows;
    if (n == 0) return;
    EQFLOW_LAUNCH(lik_store_stage_kernel, blocks_for(n), kThreads, 0, EQFLOW_STREAM(stream), count,
                  rows, v, div, k, dk);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_rk4_update(int64_t rows, int64_t nd, int64_t B, double h, const double* k,
                    const double* dk, double* y, double* integral, Stream stream) {
    const int64_t n = rows * nd > rows ? rows * nd : rows;
    if (n == 0) return;
    EQFLOW_LAUNCH(lik_rk4_update_kernel, blocks_for(n), kThreads, 0, EQFLOW_STREAM(stream), rows,
                  nd, B, h, k, dk, y, integral);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_row_losses(int64_t rows, int64_t nd, const double* y, const double* integral, double* out,
                    Stream stream) {
    if (rows == 0) return;
    EQFLOW_LAUNCH(lik_row_losses_kernel, blocks_for(rows), kThreads, 0, EQFLOW_STREAM(stream), rows,
                  nd, y, integral, out);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_gather(const double* data, const int64_t* order, const StepArgs* args, int64_t rows,
                int64_t nd, double* y, Stream stream) {
    if (rows * nd == 0) return;
    EQFLOW_LAUNCH(lik_gather_kernel, blocks_for(rows * nd), kThreads, 0, EQFLOW_STREAM(stream),
                  data, order, args, rows, nd, y);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_batch_loss(int64_t rows, const double* terms, TrainScalars* s, Stream stream) {
    if (rows == 0) return;
    EQFLOW_LAUNCH(lik_batch_loss_kernel, 1, 1, 0, EQFLOW_STREAM(stream), rows, terms, s);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_scale(int64_t count, double a, const double* x, double* out, Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(lik_scale_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream), count, a,
                  x, out);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_to_field(int64_t count, const double* src, float* dst, Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(lik_to_field_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream), count,
                  src, dst);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

void lik_accumulate(int64_t count, const float* gx1, const float* gx2, double c, double* yacc,
                    double* kprev, Stream stream) {
    if (count == 0) return;
    EQFLOW_LAUNCH(lik_accumulate_kernel, blocks_for(count), kThreads, 0, EQFLOW_STREAM(stream),
                  count, gx1, gx2, c, yacc, kprev);
    EQFLOW_CUDA_CHECK_LAUNCH();
}

}  // namespace eqflow::cuda
