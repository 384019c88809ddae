// LikelihoodStep: maximum-likelihood training through a fixed-step RK4 solve, with the exact
// gradient of the discrete loss by reverse mode through the solver (see eqflow/likelihood.h).
//
// Forward, per row, from y = x1 at t = 1 to t = 0 in N steps of h = -1/N (ode_integrate's
// fixed-step arithmetic, src/common/ode_step.h):
//     X_s = y, y + h/2 k_1, y + h/2 k_2, y + h k_3       (stage inputs, s = 1..4)
//     k_s = v(X_s, t_s),  d_s = div v(X_s, t_s)
//     y  += h/6 (k_1 + 2 k_2 + 2 k_3 + k_4),   I += h/6 (d_1 + 2 d_2 + 2 d_3 + d_4)
// loss = mean_b [ 1/2 |y_N|^2 - I_N ]  (I_N = int_1^0 div dt = -int_0^1 div dt).
//
// Reverse sweep, per step from the last: with ybar the cotangent of the step's output and
// Ibar = -1/B (constant: I only accumulates), kbar_s = w_s h/6 ybar and dbar_s = w_s h/6 Ibar
// (w = 1, 2, 2, 1); stages from 4 down to 1: Xbar_s = J_s^T kbar_s + dbar_s grad div_s (the
// field's backward and divergence_backward, which also accumulate the parameter gradient), then
// the stage input's dependence on the previous stage: kbar_3 += h Xbar_4, kbar_2 += h/2 Xbar_3,
// kbar_1 += h/2 Xbar_2; and ybar (of the step's input) = ybar + sum_s Xbar_s.
#include "eqflow/likelihood.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "common/train_math.h"
#include "eqflow/buffer.h"
#include "eqflow/error.h"
#include "train_ops.h"

namespace eqflow {

template <class T>
struct LikelihoodStep<T>::Impl {
    Field<T>& field;
    LikelihoodStepOptions opt;
    int n = 0, d = 0, N = 0;
    int64_t nd = 0, B = 0, count = 0, val_count = 0, P = 0;
    std::vector<double> data, val;         // [count][nd], [val_count][nd]
    std::vector<int64_t> order;            // [count]
    std::vector<double> x1;                // [B][nd]: the gathered batch
    std::vector<T> stage_x;                // [N][4][B][nd]: every stage input the field saw
    std::vector<double> y, k;              // [B][nd], [4][B][nd]
    std::vector<double> dk;                // [4][B]: the stages' divergences
    std::vector<double> integral;          // [B]
    std::vector<T> tf, vf, divf;           // [B], [B][nd], [B]: one field call
    std::vector<T> kbar, dbar, gx1, gx2;   // [B][nd], [B], [B][nd], [B][nd]
    std::vector<double> ybar, yacc, kacc;  // [B][nd], [B][nd], [4][B][nd]
    std::vector<T> grad, m, vmom;          // [P]
    std::vector<double> ema;               // [P] when EMA is on
    FieldWorkspace ws;
    train_math::TrainScalars scalars;  // the truth; on CUDA copied to and from dev_scalars
    bool have_order = false, have_step = false;
    // A CUDA field: the solver and its state stay on the host (the vectors above); each field
    // call copies its inputs into these device buffers and its outputs back. The parameter
    // gradient, Adam's moments and the EMA live on the device beside the parameters.
    Device dev = Device::cpu;
    Buffer<T> dev_x, dev_t, dev_v, dev_div, dev_kbar, dev_dbar, dev_gx1, dev_gx2;  // one call
    Buffer<T> dev_grad, dev_m, dev_vmom;                                           // [P]
    Buffer<double> dev_ema;                                                        // [P]
    Buffer<train_math::TrainScalars> dev_scalars;                                  // [1]

    Impl(Field<T>& f, const LikelihoodStepOptions& o) : field(f), opt(o), dev(f.device()) {}

    Shape xshape(int64_t rows) const { return Shape{rows, n, d}; }
    bool on_device() const { return dev != Device::cpu; }
    // Where the field accumulates the parameter gradient.
    T* grad_target() { return on_device() ? dev_grad.data() : grad.data(); }

    // k = v(xs, tf), div = div v(xs, tf) into vf, divf (host), for `rows` rows.
    void field_divergence(const T* xs, int64_t rows) {
        const size_t rn = static_cast<size_t>(rows * nd), r = static_cast<size_t>(rows);
        if (!on_device()) {
            field.divergence(TensorView<const T>(xs, xshape(rows), dev),
                             TensorView<const T>(tf.data(), Shape{rows}, dev),
                             TensorView<T>(vf.data(), xshape(rows), dev),
                             TensorView<T>(divf.data(), Shape{rows}, dev),
                             ws.get(field, FieldOp::divergence, rows));
            return;
        }
        dev_x.copy_from_host(xs, rn);
        dev_t.copy_from_host(tf.data(), r);
        field.divergence(TensorView<const T>(dev_x.data(), xshape(rows), dev),
                         TensorView<const T>(dev_t.data(), Shape{rows}, dev),
                         TensorView<T>(dev_v.data(), xshape(rows), dev),
                         TensorView<T>(dev_div.data(), Shape{rows}, dev),
                         ws.get(field, FieldOp::divergence, rows));
        dev_v.copy_to_host(vf.data(), rn);
        dev_div.copy_to_host(divf.data(), r);
    }

    // The stage's reverse step: gx1 = J^T kbar, gx2 = dbar grad div (host), both adding their
    // parameter gradients to grad_target().
    void field_backward(const T* xs, int64_t rows) {
        const size_t rn = static_cast<size_t>(rows * nd), r = static_cast<size_t>(rows);
        const TensorView<T> gv(grad_target(), Shape{P}, dev);
        const T* x = xs;
        const T *t = tf.data(), *kb = kbar.data(), *db = dbar.data();
        T *g1 = gx1.data(), *g2 = gx2.data();
        if (on_device()) {
            dev_x.copy_from_host(xs, rn);
            dev_t.copy_from_host(tf.data(), r);
            dev_kbar.copy_from_host(kbar.data(), rn);
            dev_dbar.copy_from_host(dbar.data(), r);
            x = dev_x.data();
            t = dev_t.data();
            kb = dev_kbar.data();
            db = dev_dbar.data();
            g1 = dev_gx1.data();
            g2 = dev_gx2.data();
        }
        const TensorView<const T> xv(x, xshape(rows), dev), tv(t, Shape{rows}, dev);
        field.backward(xv, tv, TensorView<const T>(kb, xshape(rows), dev), gv,
                       TensorView<T>(g1, xshape(rows), dev),
                       ws.get(field, FieldOp::backward, rows));
        field.divergence_backward(xv, tv, TensorView<const T>(db, Shape{rows}, dev), gv,
                                  TensorView<T>(g2, xshape(rows), dev),
                                  ws.get(field, FieldOp::divergence_backward, rows));
        if (on_device()) {
            dev_gx1.copy_to_host(gx1.data(), rn);
            dev_gx2.copy_to_host(gx2.data(), rn);
        }
    }

    // Stage times of step `step` (from t = 1 to 0): ode_host's fixed(), from the step index.
    void stage_times(int step, double times[4]) const {
        const double t0 = 1.0, t1 = 0.0, h = (t1 - t0) / N;
        const double t = t0 + (t1 - t0) * step / N;
        const double t_end = t0 + (t1 - t0) * (step + 1) / N;
        times[0] = t;
        times[1] = t + 0.5 * h;
        times[2] = t + 0.5 * h;
        times[3] = t_end;
    }

    // Loss of the batch x1 [rows][nd]; with `with_grad`, grad = its exact gradient.
    double loss(const double* x1_rows, int64_t rows, bool with_grad) {
        const double h = -1.0 / N;
        const size_t rn = static_cast<size_t>(rows * nd);
        std::copy(x1_rows, x1_rows + rn, y.begin());
        std::fill(integral.begin(), integral.begin() + rows, 0.0);
        for (int step = 0; step < N; ++step) {
            double times[4];
            stage_times(step, times);
            for (int s = 0; s < 4; ++s) {
                T* xs = &stage_x[(static_cast<size_t>(step) * 4 + s) * B * nd];
                const double* kp = s > 0 ? &k[static_cast<size_t>(s - 1) * B * nd] : nullptr;
                for (size_t i = 0; i < rn; ++i) {
                    double value = y[i];
                    if (s == 1 || s == 2) value = y[i] + 0.5 * h * kp[i];
                    if (s == 3) value = y[i] + h * kp[i];
                    xs[i] = static_cast<T>(value);
                }
                std::fill(tf.begin(), tf.begin() + rows, static_cast<T>(times[s]));
                field_divergence(xs, rows);
                double* ks = &k[static_cast<size_t>(s) * B * nd];
                for (size_t i = 0; i < rn; ++i) ks[i] = static_cast<double>(vf[i]);
                for (int64_t b = 0; b < rows; ++b)
                    dk[static_cast<size_t>(s) * B + b] = static_cast<double>(divf[b]);
            }
            const double* k1 = &k[0];
            const double* k2 = &k[static_cast<size_t>(B * nd)];
            const double* k3 = &k[static_cast<size_t>(2 * B * nd)];
            const double* k4 = &k[static_cast<size_t>(3 * B * nd)];
            for (size_t i = 0; i < rn; ++i)
                y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
            for (int64_t b = 0; b < rows; ++b)
                integral[b] +=
                    h / 6.0 * (dk[b] + 2.0 * dk[B + b] + 2.0 * dk[2 * B + b] + dk[3 * B + b]);
        }
        double sum = 0.0;
        for (int64_t b = 0; b < rows; ++b) {
            double sq = 0.0;
            for (int64_t i = 0; i < nd; ++i) sq += y[b * nd + i] * y[b * nd + i];
            sum += 0.5 * sq - integral[b];
        }
        const double loss = sum / static_cast<double>(rows);
        if (!with_grad) return loss;

        std::fill(grad.begin(), grad.end(), T(0));
        if (on_device()) dev_grad.zero();
        if (!std::isfinite(loss)) return loss;  // the step is skipped: no gradient needed
        const double inv = 1.0 / static_cast<double>(rows);
        for (size_t i = 0; i < rn; ++i) ybar[i] = y[i] * inv;  // d(1/2 |x0|^2 / B) / dx0
        const double Ibar = -inv;
        const double w[4] = {1.0, 2.0, 2.0, 1.0};
        for (int step = N - 1; step >= 0; --step) {
            double times[4];
            stage_times(step, times);
            // kacc [4][B][nd]: the stages' cotangents, completed from stage 4 down.
            for (int s = 0; s < 4; ++s)
                for (size_t i = 0; i < rn; ++i)
                    kacc[static_cast<size_t>(s) * B * nd + i] = w[s] * h / 6.0 * ybar[i];
            std::copy(ybar.begin(), ybar.begin() + rn, yacc.begin());
            for (int s = 3; s >= 0; --s) {
                const T* xs = &stage_x[(static_cast<size_t>(step) * 4 + s) * B * nd];
                std::fill(tf.begin(), tf.begin() + rows, static_cast<T>(times[s]));
                const double* ks = &kacc[static_cast<size_t>(s) * B * nd];
                for (size_t i = 0; i < rn; ++i) kbar[i] = static_cast<T>(ks[i]);
                std::fill(dbar.begin(), dbar.begin() + rows, static_cast<T>(w[s] * h / 6.0 * Ibar));
                field_backward(xs, rows);
                // Xbar_s = gx1 + gx2 flows into y directly and into the previous stage's k.
                const double c = s == 3 ? h : 0.5 * h;
                double* kprev = s > 0 ? &kacc[static_cast<size_t>(s - 1) * B * nd] : nullptr;
                for (size_t i = 0; i < rn; ++i) {
                    const double xbar = static_cast<double>(gx1[i]) + static_cast<double>(gx2[i]);
                    yacc[i] += xbar;
                    if (kprev) kprev[i] += c * xbar;
                }
            }
            std::copy(yacc.begin(), yacc.begin() + rn, ybar.begin());
        }
        return loss;
    }
};

template <class T>
LikelihoodStep<T>::LikelihoodStep(Field<T>& field, const LikelihoodStepOptions& o,
                                  const double* train, int64_t count, const double* validation,
                                  int64_t val_count) {
    EQFLOW_CHECK(field.supports_divergence_backward(),
                 "likelihood training needs the reverse mode of the divergence, which this field "
                 "does not have (the double CPU references and the fast and CUDA kernel fields "
                 "have it; the fast and CUDA EGNN do not)");
    EQFLOW_CHECK(count >= 1 && train != nullptr, "likelihood step: no training data");
    EQFLOW_CHECK(o.batch >= 1 && o.batch <= count,
                 "likelihood step: batch " << o.batch << " must be in 1.." << count);
    EQFLOW_CHECK(o.ode_steps >= 1 && o.ode_steps <= 100000,
                 "likelihood step: ODE steps must be in 1..100000, got " << o.ode_steps);
    EQFLOW_CHECK(val_count >= 0 && (val_count == 0 || validation != nullptr),
                 "likelihood step: no validation data");
    EQFLOW_CHECK(o.ema_decay >= 0 && o.ema_decay < 1,
                 "likelihood step: EMA decay must be in [0, 1), got " << o.ema_decay);
    impl_ = std::make_unique<Impl>(field, o);
    Impl& im = *impl_;
    im.n = field.n_particles();
    im.d = field.dim();
    im.N = o.ode_steps;
    im.nd = static_cast<int64_t>(im.n) * im.d;
    im.B = o.batch;
    im.count = count;
    im.val_count = val_count;
    im.P = field.parameter_count();
    const auto B = static_cast<size_t>(im.B), nd = static_cast<size_t>(im.nd),
               P = static_cast<size_t>(im.P);
    im.data.assign(train, train + count * im.nd);
    if (val_count > 0) im.val.assign(validation, validation + val_count * im.nd);
    im.order.resize(static_cast<size_t>(count));
    im.x1.resize(B * nd);
    im.stage_x.resize(static_cast<size_t>(im.N) * 4 * B * nd);
    for (auto* v : {&im.y, &im.ybar, &im.yacc}) v->resize(B * nd);
    im.k.resize(4 * B * nd);
    im.kacc.resize(4 * B * nd);
    im.integral.resize(B);
    im.dk.resize(4 * B);
    for (auto* v : {&im.vf, &im.kbar, &im.gx1, &im.gx2}) v->resize(B * nd);
    for (auto* v : {&im.tf, &im.divf, &im.dbar}) v->resize(B);
    for (auto* v : {&im.grad, &im.m, &im.vmom}) v->assign(P, T(0));
    if (o.ema_decay > 0) im.ema.resize(P);
    if (im.on_device()) {
        for (Buffer<T>* b : {&im.dev_x, &im.dev_v, &im.dev_kbar, &im.dev_gx1, &im.dev_gx2})
            *b = Buffer<T>(B * nd, im.dev);
        for (Buffer<T>* b : {&im.dev_t, &im.dev_div, &im.dev_dbar}) *b = Buffer<T>(B, im.dev);
        for (Buffer<T>* b : {&im.dev_grad, &im.dev_m, &im.dev_vmom}) *b = Buffer<T>(P, im.dev);
        if (o.ema_decay > 0) im.dev_ema = Buffer<double>(P, im.dev);
        im.dev_scalars = Buffer<train_math::TrainScalars>(1, im.dev);
    }
    // One workspace for the three field operations, sized for the batch now.
    im.ws.get_bytes(std::max({field.workspace_bytes(FieldOp::divergence, im.B),
                              field.workspace_bytes(FieldOp::backward, im.B),
                              field.workspace_bytes(FieldOp::divergence_backward, im.B)}),
                    im.dev);
    upload_state(field.parameters_to_host(), AdamState{}, {}, 0);
}

template <class T>
LikelihoodStep<T>::~LikelihoodStep() = default;
template <class T>
LikelihoodStep<T>::LikelihoodStep(LikelihoodStep&&) noexcept = default;
template <class T>
LikelihoodStep<T>& LikelihoodStep<T>::operator=(LikelihoodStep&&) noexcept = default;

template <class T>
void LikelihoodStep<T>::set_order(const std::vector<int64_t>& order) {
    Impl& im = *impl_;
    train_ops::check_order(order, im.count, "likelihood step");
    im.order = order;
    im.have_order = true;
}

template <class T>
void LikelihoodStep<T>::step(int64_t step, int64_t j, double lr) {
    Impl& im = *impl_;
    EQFLOW_CHECK(step >= 0, "likelihood step: negative step " << step);
    EQFLOW_CHECK(j >= 0 && (j + 1) * im.B <= im.count,
                 "likelihood step: batch " << j << " of " << im.B << " rows is past the "
                                           << im.count << " training rows");
    EQFLOW_CHECK(lr > 0 && std::isfinite(lr), "likelihood step: bad learning rate " << lr);
    EQFLOW_CHECK(im.have_order, "likelihood step: set_order before the first step");
    for (int64_t b = 0; b < im.B; ++b) {
        const double* src = &im.data[static_cast<size_t>(im.order[j * im.B + b] * im.nd)];
        std::copy(src, src + im.nd, &im.x1[static_cast<size_t>(b * im.nd)]);
    }
    const double loss = im.loss(im.x1.data(), im.B, true);
    im.scalars.loss = loss;
    im.scalars.bad = std::isfinite(loss) ? 0 : 1;
    const AdamOptions ao;
    const bool ema = im.opt.ema_decay > 0;
    if (im.on_device()) {
        // The same operations on the device, where the parameters and the gradient are; the
        // host's scalars go there and come back (the step waits for the host anyway).
        im.dev_scalars.copy_from_host(&im.scalars, 1);
        train_ops::check_finite<T>(im.dev, im.dev_grad.data(), im.P, im.dev_scalars.data(),
                                   nullptr);
        train_ops::adam_update<T>(im.dev, im.P, im.field.parameters().data, im.dev_grad.data(),
                                  im.dev_m.data(), im.dev_vmom.data(),
                                  ema ? im.dev_ema.data() : nullptr, im.opt.ema_decay, lr, nullptr,
                                  ao.beta1, ao.beta2, ao.eps, im.dev_scalars.data(), nullptr);
        train_ops::finish_step(im.dev, im.dev_scalars.data(), nullptr);
        im.dev_scalars.copy_to_host(&im.scalars, 1);
    } else {
        const Device cpu = Device::cpu;
        train_ops::check_finite<T>(cpu, im.grad.data(), im.P, &im.scalars, nullptr);
        train_ops::adam_update<T>(cpu, im.P, im.field.parameters().data, im.grad.data(),
                                  im.m.data(), im.vmom.data(), ema ? im.ema.data() : nullptr,
                                  im.opt.ema_decay, lr, nullptr, ao.beta1, ao.beta2, ao.eps,
                                  &im.scalars, nullptr);
        train_ops::finish_step(cpu, &im.scalars, nullptr);
    }
    im.have_step = true;
}

template <class T>
double LikelihoodStep<T>::evaluate(const double* x1, int64_t rows, double* grad) {
    Impl& im = *impl_;
    EQFLOW_CHECK(rows >= 1 && rows <= im.B && x1 != nullptr,
                 "likelihood step: evaluate takes 1.." << im.B << " rows, got " << rows);
    const double loss = im.loss(x1, rows, grad != nullptr);
    if (grad && im.on_device()) im.dev_grad.copy_to_host(im.grad.data(), im.grad.size());
    if (grad) std::copy(im.grad.begin(), im.grad.end(), grad);
    return loss;
}

template <class T>
double LikelihoodStep<T>::validation_loss(uint64_t, int64_t rows) {
    Impl& im = *impl_;
    EQFLOW_CHECK(rows >= 0 && rows <= im.val_count,
                 "validation loss: " << rows << " rows of " << im.val_count);
    if (rows == 0) return std::numeric_limits<double>::quiet_NaN();
    double sum = 0.0;
    for (int64_t s0 = 0; s0 < rows; s0 += im.B) {
        const int64_t m = std::min(im.B, rows - s0);
        sum += im.loss(&im.val[static_cast<size_t>(s0 * im.nd)], m, false) * static_cast<double>(m);
    }
    return sum / static_cast<double>(rows);
}

template <class T>
double LikelihoodStep<T>::last_loss() {
    EQFLOW_CHECK(impl_->have_step, "likelihood step: no step yet");
    return impl_->scalars.loss;
}

template <class T>
typename LikelihoodStep<T>::Counters LikelihoodStep<T>::counters() {
    const train_math::TrainScalars& s = impl_->scalars;
    Counters c;
    c.adam_step = s.adam_step;
    c.skipped = s.skipped;
    c.window_loss = s.window_loss;
    c.window_count = s.window_count;
    return c;
}

template <class T>
void LikelihoodStep<T>::reset_window() {
    train_ops::reset_window(Device::cpu, &impl_->scalars, nullptr);
}

template <class T>
void LikelihoodStep<T>::download_state(std::vector<double>& params, AdamState& adam,
                                       std::vector<double>* ema, int64_t* skipped) {
    Impl& im = *impl_;
    params = im.field.parameters_to_host();
    if (im.on_device()) {
        im.dev_m.copy_to_host(im.m.data(), im.m.size());
        im.dev_vmom.copy_to_host(im.vmom.data(), im.vmom.size());
        if (im.opt.ema_decay > 0) im.dev_ema.copy_to_host(im.ema.data(), im.ema.size());
    }
    adam.m.assign(im.m.begin(), im.m.end());
    adam.v.assign(im.vmom.begin(), im.vmom.end());
    adam.step = im.scalars.adam_step;
    if (skipped != nullptr) *skipped = im.scalars.skipped;
    if (ema != nullptr && im.opt.ema_decay > 0) *ema = im.ema;
}

template <class T>
void LikelihoodStep<T>::upload_state(const std::vector<double>& params, const AdamState& adam,
                                     const std::vector<double>& ema, int64_t skipped) {
    Impl& im = *impl_;
    train_ops::check_state(im.P, params, adam, ema, skipped, "likelihood step");
    im.field.set_parameters(params);
    if (adam.m.empty()) {
        std::fill(im.m.begin(), im.m.end(), T(0));
        std::fill(im.vmom.begin(), im.vmom.end(), T(0));
    } else {
        std::transform(adam.m.begin(), adam.m.end(), im.m.begin(),
                       [](double x) { return static_cast<T>(x); });
        std::transform(adam.v.begin(), adam.v.end(), im.vmom.begin(),
                       [](double x) { return static_cast<T>(x); });
    }
    if (im.opt.ema_decay > 0) im.ema = ema.empty() ? params : ema;
    if (im.on_device()) {
        im.dev_m.copy_from_host(im.m.data(), im.m.size());
        im.dev_vmom.copy_from_host(im.vmom.data(), im.vmom.size());
        if (im.opt.ema_decay > 0) im.dev_ema.copy_from_host(im.ema.data(), im.ema.size());
    }
    im.scalars = train_math::TrainScalars{};
    im.scalars.adam_step = adam.step;
    im.scalars.skipped = skipped;
}

// double: the CPU references (EGNN and kernel field); float: the fast and the CUDA kernel fields,
// the float backends with divergence_backward (the fast and CUDA EGNN have none; the constructor
// says so). In float
// the stage inputs, the field's outputs and the parameter gradient are float, everything the
// solver accumulates (y, the stages' k, the divergence integral, the cotangents) is double.
template class LikelihoodStep<double>;
template class LikelihoodStep<float>;

}  // namespace eqflow
