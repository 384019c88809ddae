// Host implementations of the step operations of src/train_ops.h (T = double for the CPU
// reference, float for a float32 host backend), and the dispatch between them and the device
// ones of kernels/train_step.cu. The arithmetic is the one the kernels run, expression for
// expression, with the shared pieces in src/common/train_math.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/optim.h"
#include "train_ops.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/train_step.cuh"
#endif

namespace eqflow::train_ops {

namespace {
template <class T>
constexpr bool kIsFloat = std::is_same_v<T, float>;

// The device kernels are float32: a double step on the device is a caller's mistake.
template <class T>
void require_device_float(const char* what) {
    EQFLOW_CHECK(kIsFloat<T>, what << ": the device step computes in float32");
#if !defined(EQFLOW_HAVE_CUDA)
    EQFLOW_THROW(what << ": eqflow was built without CUDA");
#endif
}

// In the dispatch below, the device branch is compiled for float only.
#if defined(EQFLOW_HAVE_CUDA)
#define EQFLOW_DEVICE_CALL(T, call) \
    if constexpr (kIsFloat<T>) {    \
        cuda::call;                 \
    }
#else
#define EQFLOW_DEVICE_CALL(T, call) (void)stream;
#endif
}  // namespace

void set_step_args(Device device, StepArgs* dst, const StepArgs& args, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("set_step_args");
        EQFLOW_DEVICE_CALL(float, fm_set_step_args(dst, args, stream))
        return;
    }
    *dst = args;
}

template <class T>
void prepare_batch(Device device, const T* data, const int64_t* order, const StepArgs* args,
                   int64_t B, int n, int d, uint64_t seed, double time_power, double* x0,
                   double* x1, double* t, double* eps, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("prepare_batch");
        EQFLOW_DEVICE_CALL(T, fm_prepare_batch(data, order, args, B, n, d, seed, time_power, x0, x1,
                                               t, eps, stream))
        return;
    }
    const int64_t nd = static_cast<int64_t>(n) * d;
    for (int64_t b = 0; b < B; ++b) {
        const T* src = data + order[args->first + b] * nd;
        for (int64_t k = 0; k < nd; ++k) x1[b * nd + k] = static_cast<double>(src[k]);
        train_math::draw_row(seed, args->first_stream + static_cast<uint64_t>(b), n, d, x0 + b * nd,
                             t + b, eps + b * nd, time_power);
    }
}

template <class T>
void interpolate(Device device, int64_t B, int64_t nd, const double* x0, const double* x1,
                 const double* t, const double* eps, double sigma, T* xt, T* tf, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("interpolate");
        EQFLOW_DEVICE_CALL(T, fm_interpolate(B, nd, x0, x1, t, eps, sigma, xt, tf, stream))
        return;
    }
    for (int64_t b = 0; b < B; ++b) {
        tf[b] = static_cast<T>(t[b]);
        for (int64_t k = 0; k < nd; ++k) {
            const int64_t i = b * nd + k;
            xt[i] = static_cast<T>((1.0 - t[b]) * x0[i] + t[b] * x1[i] + sigma * eps[i]);
        }
    }
}

template <class T>
void loss(Device device, int64_t B, int64_t nd, const T* v, const double* x0, const double* x1,
          T* dL_dv, TrainScalars* s, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("loss");
        EQFLOW_DEVICE_CALL(T, fm_loss(B, nd, v, x0, x1, dL_dv, s, stream))
        return;
    }
    const double scale = 1.0 / static_cast<double>(B * nd);
    double sum = 0.0;
    for (int64_t i = 0; i < B * nd; ++i) {
        const double r = static_cast<double>(v[i]) - (x1[i] - x0[i]);
        sum += r * r;
        dL_dv[i] = static_cast<T>(2.0 * r * scale);
    }
    s->loss = sum * scale;
    s->bad = std::isfinite(s->loss) ? 0 : 1;
}

template <class T>
void loss_gradient_rows(int64_t B, int64_t nd, int64_t b0, int64_t rows, const T* v,
                        const double* x0, const double* x1, T* dL_dv) {
    const double scale = 1.0 / static_cast<double>(B * nd);
    for (int64_t i = b0 * nd; i < (b0 + rows) * nd; ++i) {
        const double r = static_cast<double>(v[i]) - (x1[i] - x0[i]);
        dL_dv[i] = static_cast<T>(2.0 * r * scale);
    }
}

template <class T>
void check_finite(Device device, const T* grad, int64_t count, TrainScalars* s, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("check_finite");
        EQFLOW_DEVICE_CALL(T, fm_check_finite(grad, count, s, stream))
        return;
    }
    for (int64_t i = 0; i < count; ++i)
        if (!std::isfinite(grad[i])) {
            s->bad = 1;
            return;
        }
}

template <class T>
void adam_update(Device device, int64_t count, T* params, const T* grad, T* m, T* v, double* ema,
                 double ema_decay, double lr, const StepArgs* args, double beta1, double beta2,
                 double eps, const TrainScalars* s, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("adam_update");
        EQFLOW_DEVICE_CALL(T, fm_adam_update(count, params, grad, m, v, ema, ema_decay, lr, args,
                                             beta1, beta2, eps, s, 0, stream))
        return;
    }
    if (s->bad) return;
    if (args != nullptr) lr = args->lr;
    // The bias corrections of update k = adam_step + 1, as adam_update of eqflow/optim.h.
    const double k = static_cast<double>(s->adam_step + 1);
    const double c1 = 1.0 - std::pow(beta1, k);
    const double c2 = 1.0 - std::pow(beta2, k);
    for (int64_t i = 0; i < count; ++i) {
        if constexpr (kIsFloat<T>)
            train_math::adam_element_f32(beta1, beta2, eps, lr, c1, c2, grad[i], m[i], v[i],
                                         params[i]);
        else
            train_math::adam_element(beta1, beta2, eps, lr, c1, c2, grad[i], m[i], v[i], params[i]);
    }
    if (ema != nullptr)
        for (int64_t i = 0; i < count; ++i)
            ema[i] = ema_decay * ema[i] + (1.0 - ema_decay) * static_cast<double>(params[i]);
}

void finish_step(Device device, TrainScalars* s, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("finish_step");
        EQFLOW_DEVICE_CALL(float, fm_finish_step(s, stream))
        return;
    }
    train_math::finish_step(*s);
}

void reset_window(Device device, TrainScalars* s, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("reset_window");
        EQFLOW_DEVICE_CALL(float, fm_reset_window(s, stream))
        return;
    }
    s->window_loss = 0.0;
    s->window_count = 0;
}

template <class T>
void lik_stage_input(Device device, int64_t count, const double* y, const double* kprev, double c,
                     T* xs, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("lik_stage_input");
        EQFLOW_DEVICE_CALL(T, lik_stage_input(count, y, kprev, c, xs, stream))
        return;
    }
    for (int64_t i = 0; i < count; ++i) {
        double value = y[i];
        if (kprev) value = y[i] + c * kprev[i];
        xs[i] = static_cast<T>(value);
    }
}

template <class T>
void lik_fill(Device device, int64_t count, double value, T* out, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("lik_fill");
        EQFLOW_DEVICE_CALL(T, lik_fill(count, value, out, stream))
        return;
    }
    std::fill(out, out + count, static_cast<T>(value));
}

template <class T>
void lik_store_stage(Device device, int64_t count, int64_t rows, const T* v, const T* div,
                     double* k, double* dk, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("lik_store_stage");
        EQFLOW_DEVICE_CALL(T, lik_store_stage(count, rows, v, div, k, dk, stream))
        return;
    }
    for (int64_t i = 0; i < count; ++i) k[i] = static_cast<double>(v[i]);
    for (int64_t b = 0; b < rows; ++b) dk[b] = static_cast<double>(div[b]);
}

void lik_rk4_update(Device device, int64_t rows, int64_t nd, int64_t B, double h, const double* k,
                    const double* dk, double* y, double* integral, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("lik_rk4_update");
        EQFLOW_DEVICE_CALL(float, lik_rk4_update(rows, nd, B, h, k, dk, y, integral, stream))
        return;
    }
    const double* k1 = k;
    const double* k2 = k + B * nd;
    const double* k3 = k + 2 * B * nd;
    const double* k4 = k + 3 * B * nd;
    for (int64_t i = 0; i < rows * nd; ++i)
        y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    for (int64_t b = 0; b < rows; ++b)
        integral[b] += h / 6.0 * (dk[b] + 2.0 * dk[B + b] + 2.0 * dk[2 * B + b] + dk[3 * B + b]);
}

void lik_row_losses(Device device, int64_t rows, int64_t nd, const double* y,
                    const double* integral, double* out, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("lik_row_losses");
        EQFLOW_DEVICE_CALL(float, lik_row_losses(rows, nd, y, integral, out, stream))
        return;
    }
    for (int64_t b = 0; b < rows; ++b) {
        double sq = 0.0;
        for (int64_t i = 0; i < nd; ++i) sq += y[b * nd + i] * y[b * nd + i];
        out[b] = 0.5 * sq - integral[b];
    }
}

void lik_gather(Device device, const double* data, const int64_t* order, const StepArgs* args,
                int64_t rows, int64_t nd, double* y, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("lik_gather");
        EQFLOW_DEVICE_CALL(float, lik_gather(data, order, args, rows, nd, y, stream))
        return;
    }
    for (int64_t b = 0; b < rows; ++b) {
        const double* src = data + order[args->first + b] * nd;
        std::copy(src, src + nd, y + b * nd);
    }
}

void lik_batch_loss(Device device, int64_t rows, const double* terms, TrainScalars* s,
                    Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("lik_batch_loss");
        EQFLOW_DEVICE_CALL(float, lik_batch_loss(rows, terms, s, stream))
        return;
    }
    double sum = 0.0;
    for (int64_t b = 0; b < rows; ++b) sum += terms[b];
    s->loss = sum / static_cast<double>(rows);
    s->bad = std::isfinite(s->loss) ? 0 : 1;
}

void lik_scale(Device device, int64_t count, double a, const double* x, double* out,
               Stream stream) {
    if (device == Device::cuda) {
        require_device_float<float>("lik_scale");
        EQFLOW_DEVICE_CALL(float, lik_scale(count, a, x, out, stream))
        return;
    }
    for (int64_t i = 0; i < count; ++i) out[i] = a * x[i];
}

template <class T>
void lik_to_field(Device device, int64_t count, const double* src, T* dst, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("lik_to_field");
        EQFLOW_DEVICE_CALL(T, lik_to_field(count, src, dst, stream))
        return;
    }
    for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<T>(src[i]);
}

template <class T>
void lik_accumulate(Device device, int64_t count, const T* gx1, const T* gx2, double c,
                    double* yacc, double* kprev, Stream stream) {
    if (device == Device::cuda) {
        require_device_float<T>("lik_accumulate");
        EQFLOW_DEVICE_CALL(T, lik_accumulate(count, gx1, gx2, c, yacc, kprev, stream))
        return;
    }
    for (int64_t i = 0; i < count; ++i) {
        const double xbar = static_cast<double>(gx1[i]) + static_cast<double>(gx2[i]);
        yacc[i] += xbar;
        if (kprev) kprev[i] += c * xbar;
    }
}

#define EQFLOW_INSTANTIATE(T)                                                                      \
    template void prepare_batch<T>(Device, const T*, const int64_t*, const StepArgs*, int64_t,     \
                                   int, int, uint64_t, double, double*, double*, double*, double*, \
                                   Stream);                                                        \
    template void interpolate<T>(Device, int64_t, int64_t, const double*, const double*,           \
                                 const double*, const double*, double, T*, T*, Stream);            \
    template void loss<T>(Device, int64_t, int64_t, const T*, const double*, const double*, T*,    \
                          TrainScalars*, Stream);                                                  \
    template void loss_gradient_rows<T>(int64_t, int64_t, int64_t, int64_t, const T*,              \
                                        const double*, const double*, T*);                         \
    template void check_finite<T>(Device, const T*, int64_t, TrainScalars*, Stream);               \
    template void adam_update<T>(Device, int64_t, T*, const T*, T*, T*, double*, double, double,   \
                                 const StepArgs*, double, double, double, const TrainScalars*,     \
                                 Stream);                                                          \
    template void lik_stage_input<T>(Device, int64_t, const double*, const double*, double, T*,    \
                                     Stream);                                                      \
    template void lik_fill<T>(Device, int64_t, double, T*, Stream);                                \
    template void lik_store_stage<T>(Device, int64_t, int64_t, const T*, const T*, double*,        \
                                     double*, Stream);                                             \
    template void lik_to_field<T>(Device, int64_t, const double*, T*, Stream);                     \
    template void lik_accumulate<T>(Device, int64_t, const T*, const T*, double, double*, double*, \
                                    Stream);
EQFLOW_INSTANTIATE(float)
EQFLOW_INSTANTIATE(double)
#undef EQFLOW_INSTANTIATE

void check_order(const std::vector<int64_t>& order, int64_t count, const char* what) {
    EQFLOW_CHECK(
        static_cast<int64_t>(order.size()) == count,
        what << ": the order has " << order.size() << " entries, the training set " << count);
    for (int64_t r : order)
        EQFLOW_CHECK(r >= 0 && r < count, what << ": order entry " << r << " out of range");
}

void check_state(int64_t P, const std::vector<double>& params, const AdamState& adam,
                 const std::vector<double>& ema, int64_t skipped, const char* what) {
    const auto p = static_cast<size_t>(P);
    EQFLOW_CHECK(params.size() == p,
                 what << ": " << params.size() << " parameters, the model has " << P);
    EQFLOW_CHECK(adam.m.size() == adam.v.size() && (adam.m.empty() || adam.m.size() == p),
                 what << ": Adam moments do not match the " << P << " parameters");
    EQFLOW_CHECK(ema.empty() || ema.size() == p, what << ": the EMA does not match the model");
    EQFLOW_CHECK(adam.step >= 0 && skipped >= 0, what << ": negative step counters");
}

}  // namespace eqflow::train_ops
