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
#include <string>
#include <type_traits>
#include <utility>

#include "common/train_math.h"
#include "cuda_graph.h"
#include "eqflow/buffer.h"
#include "eqflow/error.h"
#include "train_ops.h"

namespace eqflow {

template <class T>
struct LikelihoodStep<T>::Impl {
    Field<T>& field;
    LikelihoodStepOptions opt;
    // Declared first so that it is destroyed last: the buffers go before the stream, and a
    // replay still running ends first (~Impl waits for it).
    detail::StepGraph graph;  // the step's stream and graph (src/cuda_graph.h)
    Stream stream = nullptr;  // every operation below is ordered on it (graph's, or the capture's)
    int n = 0, d = 0, N = 0;
    int64_t nd = 0, B = 0, count = 0, val_count = 0, P = 0;
    std::vector<double> val;  // [val_count][nd] (host)
    // Everything below lives where the field computes (dev: host memory for a CPU field, device
    // memory for a CUDA one), so that a CUDA step reads nothing from the host: it is the same
    // launches every step, captured once as a CUDA graph and replayed.
    Device dev = Device::cpu;
    Buffer<double> data;                       // [count][nd]: the training rows
    Buffer<int64_t> order;                     // [count]: the epoch's permutation
    Buffer<train_math::StepArgs> args;         // [1]: this step's first row and learning rate
    Buffer<train_math::TrainScalars> scalars;  // [1]: loss, skip flag, counters
    Buffer<T> stage_x;                         // [N][4][B][nd]: every stage input the field saw
    Buffer<double> y, k;                       // [B][nd], [4][B][nd]
    Buffer<double> dk;                         // [4][B]: the stages' divergences
    Buffer<double> integral, terms;            // [B], [B]: the rows' losses
    Buffer<T> tf, vf, divf;                    // [B], [B][nd], [B]: one field call
    Buffer<T> kbar, dbar, gx1, gx2;            // [B][nd], [B], [B][nd], [B][nd]
    Buffer<double> ybar, yacc, kacc;           // [B][nd], [B][nd], [4][B][nd]
    Buffer<T> grad, m, vmom;                   // [P], beside the parameters
    Buffer<double> ema;                        // [P] when EMA is on
    std::vector<double> row_losses;            // [B] (host)
    std::vector<T> host_grad;  // [P] (host): evaluate's and the state's staging copies
    std::vector<T> host_m, host_vmom;
    std::vector<double> host_ema;
    FieldWorkspace ws;
    bool have_order = false, have_step = false;

    Impl(Field<T>& f, const LikelihoodStepOptions& o) : field(f), opt(o), dev(f.device()) {}
    ~Impl() { graph.wait(); }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    Shape xshape(int64_t rows) const { return Shape{rows, n, d}; }
    bool on_device() const { return dev != Device::cpu; }
    size_t at(int64_t stage) const { return static_cast<size_t>(stage * B * nd); }

    train_math::TrainScalars read_scalars() const {
        train_math::TrainScalars s;
        scalars.copy_to_host(&s, 1, stream);  // synchronises on the GPU
        return s;
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

    // The forward solve of the `rows` rows in y: every stage input kept, the rows' losses in
    // terms.
    void solve(int64_t rows) {
        using namespace train_ops;
        const double h = -1.0 / N;
        const int64_t rn = rows * nd;
        integral.zero(stream);
        for (int step = 0; step < N; ++step) {
            double times[4];
            stage_times(step, times);
            for (int s = 0; s < 4; ++s) {
                T* xs = stage_x.data() + (static_cast<size_t>(step) * 4 + s) * B * nd;
                const double c = s == 3 ? h : 0.5 * h;
                lik_stage_input<T>(dev, rn, y.data(), s > 0 ? k.data() + at(s - 1) : nullptr, c, xs,
                                   stream);
                lik_fill<T>(dev, rows, times[s], tf.data(), stream);
                field.divergence(TensorView<const T>(xs, xshape(rows), dev),
                                 TensorView<const T>(tf.data(), Shape{rows}, dev),
                                 TensorView<T>(vf.data(), xshape(rows), dev),
                                 TensorView<T>(divf.data(), Shape{rows}, dev),
                                 ws.get(field, FieldOp::divergence, rows), stream);
                lik_store_stage<T>(dev, rn, rows, vf.data(), divf.data(), k.data() + at(s),
                                   dk.data() + s * B, stream);
            }
            lik_rk4_update(dev, rows, nd, B, h, k.data(), dk.data(), y.data(), integral.data(),
                           stream);
        }
        lik_row_losses(dev, rows, nd, y.data(), integral.data(), terms.data(), stream);
    }

    // The reverse sweep through solve's steps: grad += d(mean loss over the rows)/d(params)
    // (y holds the solve's end point).
    void reverse(int64_t rows) {
        using namespace train_ops;
        const double h = -1.0 / N;
        const int64_t rn = rows * nd;
        const double inv = 1.0 / static_cast<double>(rows);
        lik_scale(dev, rn, inv, y.data(), ybar.data(), stream);  // d(1/2 |x0|^2 / B) / dx0
        const double Ibar = -inv;
        const double w[4] = {1.0, 2.0, 2.0, 1.0};
        const TensorView<T> gv(grad.data(), Shape{P}, dev);
        for (int step = N - 1; step >= 0; --step) {
            double times[4];
            stage_times(step, times);
            // kacc [4][B][nd]: the stages' cotangents, completed from stage 4 down.
            for (int s = 0; s < 4; ++s)
                lik_scale(dev, rn, w[s] * h / 6.0, ybar.data(), kacc.data() + at(s), stream);
            detail::copy_bytes(yacc.data(), dev, ybar.data(), dev,
                               static_cast<size_t>(rn) * sizeof(double), stream);
            for (int s = 3; s >= 0; --s) {
                const T* xs = stage_x.data() + (static_cast<size_t>(step) * 4 + s) * B * nd;
                const TensorView<const T> xv(xs, xshape(rows), dev);
                const TensorView<const T> tv(tf.data(), Shape{rows}, dev);
                lik_fill<T>(dev, rows, times[s], tf.data(), stream);
                lik_to_field<T>(dev, rn, kacc.data() + at(s), kbar.data(), stream);
                lik_fill<T>(dev, rows, w[s] * h / 6.0 * Ibar, dbar.data(), stream);
                field.backward(xv, tv, TensorView<const T>(kbar.data(), xshape(rows), dev), gv,
                               TensorView<T>(gx1.data(), xshape(rows), dev),
                               ws.get(field, FieldOp::backward, rows), stream);
                field.divergence_backward(
                    xv, tv, TensorView<const T>(dbar.data(), Shape{rows}, dev), gv,
                    TensorView<T>(gx2.data(), xshape(rows), dev),
                    ws.get(field, FieldOp::divergence_backward, rows), stream);
                // Xbar_s = gx1 + gx2 flows into y directly and into the previous stage's k.
                lik_accumulate<T>(dev, rn, gx1.data(), gx2.data(), s == 3 ? h : 0.5 * h,
                                  yacc.data(), s > 0 ? kacc.data() + at(s - 1) : nullptr, stream);
            }
            detail::copy_bytes(ybar.data(), dev, yacc.data(), dev,
                               static_cast<size_t>(rn) * sizeof(double), stream);
        }
    }

    // Loss of the batch x1 [rows][nd] (host); with `with_grad`, grad = its exact gradient.
    double loss(const double* x1_rows, int64_t rows, bool with_grad) {
        detail::copy_bytes(y.data(), dev, x1_rows, Device::cpu,
                           static_cast<size_t>(rows * nd) * sizeof(double), stream);
        solve(rows);
        detail::copy_bytes(row_losses.data(), Device::cpu, terms.data(), dev,
                           static_cast<size_t>(rows) * sizeof(double), stream);
        train_math::TrainScalars batch;  // the step's batch loss, here on the host copy
        train_ops::lik_batch_loss(Device::cpu, rows, row_losses.data(), &batch, nullptr);
        const double loss = batch.loss;
        if (!with_grad) return loss;
        grad.zero(stream);
        if (std::isfinite(loss)) reverse(rows);  // else the step is skipped: no gradient needed
        return loss;
    }

    // A training step's work after its StepArgs are written: the same launches with the same
    // arguments every step, so that the GPU step can be one captured graph. The batch is
    // gathered where the solver runs and its loss stays there (train_ops::lik_batch_loss sums the
    // row losses as loss() does). A non-finite loss skips the step: on the host the reverse
    // sweep is then left out; on the device it runs (deciding would need the host) and its
    // gradient is discarded by the same skip.
    void step_work() {
        using namespace train_ops;
        lik_gather(dev, data.data(), order.data(), args.data(), B, nd, y.data(), stream);
        solve(B);
        lik_batch_loss(dev, B, terms.data(), scalars.data(), stream);
        grad.zero(stream);
        if (on_device() || std::isfinite(scalars.data()->loss)) reverse(B);
        const AdamOptions ao;
        const bool with_ema = opt.ema_decay > 0;
        check_finite<T>(dev, grad.data(), P, scalars.data(), stream);
        adam_update<T>(dev, P, field.parameters().data, grad.data(), m.data(), vmom.data(),
                       with_ema ? ema.data() : nullptr, opt.ema_decay, 0.0, args.data(), ao.beta1,
                       ao.beta2, ao.eps, scalars.data(), stream);
        finish_step(dev, scalars.data(), stream);
    }
};

template <class T>
LikelihoodStep<T>::LikelihoodStep(Field<T>& field, const LikelihoodStepOptions& o,
                                  const double* train, int64_t count, const double* validation,
                                  int64_t val_count) {
    EQFLOW_CHECK(field.supports_divergence_backward(),
                 "likelihood training needs the reverse mode of the divergence, which this field "
                 "does not have (the CPU fields of both field types and the CUDA kernel field "
                 "have it; the CUDA EGNN does not)");
    constexpr bool kFloat = std::is_same_v<T, float>;
    EQFLOW_CHECK(field.device() == Device::cpu || kFloat,
                 "likelihood step: a device field computes in float32");
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
    const Device dev = im.dev;
    // As FlowMatchingStep: the GPU step is captured at its second step and replayed from then
    // on (src/cuda_graph.h).
    im.graph = detail::StepGraph(dev, o.cuda_graph, "LikelihoodStepOptions::cuda_graph");
    im.stream = im.graph.stream();
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
    if (val_count > 0) im.val.assign(validation, validation + val_count * im.nd);
    im.data = Buffer<double>(static_cast<size_t>(count) * nd, dev);
    im.data.copy_from_host(train, static_cast<size_t>(count) * nd, im.stream);
    im.order = Buffer<int64_t>(static_cast<size_t>(count), dev);
    im.args = Buffer<train_math::StepArgs>(1, dev);
    im.scalars = Buffer<train_math::TrainScalars>(1, dev);
    im.stage_x = Buffer<T>(static_cast<size_t>(im.N) * 4 * B * nd, dev);
    for (Buffer<double>* b : {&im.y, &im.ybar, &im.yacc}) *b = Buffer<double>(B * nd, dev);
    for (Buffer<double>* b : {&im.k, &im.kacc}) *b = Buffer<double>(4 * B * nd, dev);
    for (Buffer<double>* b : {&im.integral, &im.terms}) *b = Buffer<double>(B, dev);
    im.dk = Buffer<double>(4 * B, dev);
    for (Buffer<T>* b : {&im.vf, &im.kbar, &im.gx1, &im.gx2}) *b = Buffer<T>(B * nd, dev);
    for (Buffer<T>* b : {&im.tf, &im.divf, &im.dbar}) *b = Buffer<T>(B, dev);
    for (Buffer<T>* b : {&im.grad, &im.m, &im.vmom}) *b = Buffer<T>(P, dev);
    im.grad.zero(im.stream);
    if (o.ema_decay > 0) im.ema = Buffer<double>(P, dev);
    im.row_losses.resize(B);
    for (std::vector<T>* v : {&im.host_grad, &im.host_m, &im.host_vmom}) v->resize(P);
    if (o.ema_decay > 0) im.host_ema.resize(P);
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
    im.order.copy_from_host(order.data(), order.size(), im.stream);
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
    train_math::StepArgs a;
    a.first = j * im.B;
    a.first_stream = static_cast<uint64_t>(step * im.B);  // unused: nothing is drawn
    a.lr = lr;
    train_ops::set_step_args(im.dev, im.args.data(), a, im.stream);
    im.graph.run(im.stream, [&] { im.step_work(); });
    im.have_step = true;
}

template <class T>
std::string LikelihoodStep<T>::cuda_graph_status() const {
    return impl_->graph.status();
}

template <class T>
double LikelihoodStep<T>::evaluate(const double* x1, int64_t rows, double* grad) {
    Impl& im = *impl_;
    EQFLOW_CHECK(rows >= 1 && rows <= im.B && x1 != nullptr,
                 "likelihood step: evaluate takes 1.." << im.B << " rows, got " << rows);
    const double loss = im.loss(x1, rows, grad != nullptr);
    if (grad) {
        im.grad.copy_to_host(im.host_grad.data(), im.host_grad.size(), im.stream);
        std::copy(im.host_grad.begin(), im.host_grad.end(), grad);
    }
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
    return impl_->read_scalars().loss;
}

template <class T>
typename LikelihoodStep<T>::Counters LikelihoodStep<T>::counters() {
    const train_math::TrainScalars s = impl_->read_scalars();
    Counters c;
    c.adam_step = s.adam_step;
    c.skipped = s.skipped;
    c.window_loss = s.window_loss;
    c.window_count = s.window_count;
    return c;
}

template <class T>
void LikelihoodStep<T>::reset_window() {
    train_ops::reset_window(impl_->dev, impl_->scalars.data(), impl_->stream);
}

template <class T>
void LikelihoodStep<T>::download_state(std::vector<double>& params, AdamState& adam,
                                       std::vector<double>* ema, int64_t* skipped) {
    Impl& im = *impl_;
    const train_math::TrainScalars s = im.read_scalars();  // after the step's work
    params = im.field.parameters_to_host();
    im.m.copy_to_host(im.host_m.data(), im.host_m.size(), im.stream);
    im.vmom.copy_to_host(im.host_vmom.data(), im.host_vmom.size(), im.stream);
    adam.m.assign(im.host_m.begin(), im.host_m.end());
    adam.v.assign(im.host_vmom.begin(), im.host_vmom.end());
    adam.step = s.adam_step;
    if (skipped != nullptr) *skipped = s.skipped;
    if (ema != nullptr && im.opt.ema_decay > 0) {
        im.ema.copy_to_host(im.host_ema.data(), im.host_ema.size(), im.stream);
        *ema = im.host_ema;
    }
}

template <class T>
void LikelihoodStep<T>::upload_state(const std::vector<double>& params, const AdamState& adam,
                                     const std::vector<double>& ema, int64_t skipped) {
    Impl& im = *impl_;
    train_ops::check_state(im.P, params, adam, ema, skipped, "likelihood step");
    im.graph.wait();  // no step of the old state still running
    im.field.set_parameters(params);
    if (adam.m.empty()) {
        std::fill(im.host_m.begin(), im.host_m.end(), T(0));
        std::fill(im.host_vmom.begin(), im.host_vmom.end(), T(0));
    } else {
        std::transform(adam.m.begin(), adam.m.end(), im.host_m.begin(),
                       [](double x) { return static_cast<T>(x); });
        std::transform(adam.v.begin(), adam.v.end(), im.host_vmom.begin(),
                       [](double x) { return static_cast<T>(x); });
    }
    im.m.copy_from_host(im.host_m.data(), im.host_m.size(), im.stream);
    im.vmom.copy_from_host(im.host_vmom.data(), im.host_vmom.size(), im.stream);
    if (im.opt.ema_decay > 0) {
        im.host_ema = ema.empty() ? params : ema;
        im.ema.copy_from_host(im.host_ema.data(), im.host_ema.size(), im.stream);
    }
    train_math::TrainScalars sc;
    sc.adam_step = adam.step;
    sc.skipped = skipped;
    im.scalars.copy_from_host(&sc, 1, im.stream);
}

// double: the CPU references (EGNN and kernel field); float: the fast CPU fields (EGNN and
// kernel field) and the CUDA kernel field, the float backends with divergence_backward (the
// CUDA EGNN has none; the constructor says so). In float the stage inputs, the field's outputs and
// the parameter gradient are float, everything the solver accumulates (y, the stages' k, the
// divergence integral, the cotangents) is double.
template class LikelihoodStep<double>;
template class LikelihoodStep<float>;

}  // namespace eqflow
