// FlowMatchingStep: one flow-matching step over the field interface (see eqflow/train_step.h).
// Buffers and the order of operations; the operations are src/train_ops.h (host or device), the
// coupling eqflow/coupling.h and the network the field.
#include "eqflow/train_step.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "cuda_graph.h"
#include "eqflow/buffer.h"
#include "eqflow/error.h"
#include "train_ops.h"

namespace eqflow {

template <class T>
struct FlowMatchingStep<T>::Impl {
    Field<T>& field;
    FlowMatchingStepOptions opt;
    Device dev;
    int n = 0, d = 0;
    int64_t nd = 0, B = 0, count = 0, val_count = 0, P = 0;
    detail::StepGraph graph;  // the step's stream and graph (src/cuda_graph.h)
    Stream stream = nullptr;  // every operation below is ordered on it (graph's, or the capture's)
    CouplingOptions coupling;
    Buffer<T> data, val;                       // [count][nd], [val_count][nd]
    Buffer<int64_t> order, val_order;          // [count], [val_count] (identity)
    Buffer<double> x0, x1, x1p, t, eps;        // [B][nd], [B]
    Buffer<T> xt, tf, v, dL_dv;                // [B][nd], [B]
    Buffer<T> grad, m, vmom;                   // [P]
    Buffer<double> ema;                        // [P] when EMA is on
    Buffer<unsigned char> coupling_ws;         // ot / eqot on the device
    FieldWorkspace field_ws;                   // forward_backward and forward, sized for B
    Buffer<train_math::TrainScalars> scalars;  // [1]
    Buffer<train_math::StepArgs> args;         // [1]: this step's first row, draws and lr
    bool have_order = false, have_step = false;

    Impl(Field<T>& f, const FlowMatchingStepOptions& o) : field(f), opt(o), dev(f.device()) {}
    // The members are destroyed after this body, the buffers before the stream: a replay still
    // running must end first (cudaFree is not promised to wait for it).
    ~Impl() { graph.wait(); }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    bool coupled(int64_t rows) const { return opt.objective != CouplingKind::fm && rows > 1; }
    double* paired(int64_t rows) { return coupled(rows) ? x1p.data() : x1.data(); }

    train_math::TrainScalars read_scalars() {
        train_math::TrainScalars s;
        scalars.copy_to_host(&s, 1, stream);  // synchronises
        return s;
    }

    // Steps 1-3 of a step on `rows` rows (args: where they start): draws, coupling, x_t,
    // forward, loss and dL/dv.
    void forward_loss(const T* rows_data, const int64_t* rows_order, int64_t rows, uint64_t seed) {
        prepare(rows_data, rows_order, rows, seed);
        const Shape xs{rows, n, d};
        field.forward(x_view(rows), t_view(rows), TensorView<T>(v.data(), xs, dev),
                      field_ws.get(field, FieldOp::forward, rows), stream);
        train_ops::loss<T>(dev, rows, nd, v.data(), x0.data(), paired(rows), dL_dv.data(),
                           scalars.data(), stream);
    }
    // Steps 1-4 on the B rows of a training step: the field's forward_backward, with dL/dv of
    // each row as soon as its v is there (so a host field runs each row's backward while its
    // activations are in cache), then the batch loss; grad += dL/dparams.
    void forward_loss_backward() {
        prepare(data.data(), order.data(), B, opt.draw_seed);
        const Shape xs{B, n, d};
        const double* x1_paired = paired(B);
        bool whole = false;  // the field asked for all rows at once: loss() ran inside
        const OutputGradient output_gradient = [&](int64_t b0, int64_t rows) {
            if (b0 == 0 && rows == B) {
                whole = true;
                train_ops::loss<T>(dev, B, nd, v.data(), x0.data(), x1_paired, dL_dv.data(),
                                   scalars.data(), stream);
            } else {  // row ranges come only from host fields, from their worker threads
                train_ops::loss_gradient_rows<T>(B, nd, b0, rows, v.data(), x0.data(), x1_paired,
                                                 dL_dv.data());
            }
        };
        field.forward_backward(x_view(B), t_view(B), TensorView<T>(v.data(), xs, dev),
                               output_gradient, TensorView<T>(dL_dv.data(), xs, dev),
                               TensorView<T>(grad.data(), Shape{P}, dev), {},
                               field_ws.get(field, FieldOp::forward_backward, B), stream);
        // The batch loss (and the same dL/dv again) in one pass over the rows, in order.
        if (!whole)
            train_ops::loss<T>(dev, B, nd, v.data(), x0.data(), x1_paired, dL_dv.data(),
                               scalars.data(), stream);
    }
    // Steps 1-2 and x_t: draws, coupling, interpolation.
    void prepare(const T* rows_data, const int64_t* rows_order, int64_t rows, uint64_t seed) {
        train_ops::prepare_batch<T>(dev, rows_data, rows_order, args.data(), rows, n, d, seed,
                                    opt.time_power, x0.data(), x1.data(), t.data(), eps.data(),
                                    stream);
        if (coupled(rows)) {
            const Shape s{rows, n, d};
            couple(coupling, TensorView<const double>(x0.data(), s, dev),
                   TensorView<const double>(x1.data(), s, dev),
                   TensorView<double>(x1p.data(), s, dev), {}, {}, coupling_ws.data(),
                   coupling_ws.size(), stream);
        }
        train_ops::interpolate<T>(dev, rows, nd, x0.data(), paired(rows), t.data(), eps.data(),
                                  opt.sigma, xt.data(), tf.data(), stream);
    }
    // A training step's work after its StepArgs are written: the same launches with the same
    // arguments every step (so that the GPU step can be one captured graph).
    void step_work() {
        grad.zero(stream);
        forward_loss_backward();
        train_ops::check_finite<T>(dev, grad.data(), P, scalars.data(), stream);
        const AdamOptions ao;
        train_ops::adam_update<T>(dev, P, field.parameters().data, grad.data(), m.data(),
                                  vmom.data(), opt.ema_decay > 0 ? ema.data() : nullptr,
                                  opt.ema_decay, 0.0, args.data(), ao.beta1, ao.beta2, ao.eps,
                                  scalars.data(), stream);
        train_ops::finish_step(dev, scalars.data(), stream);
    }
    TensorView<const T> x_view(int64_t rows) const {
        return TensorView<const T>(xt.data(), Shape{rows, n, d}, dev);
    }
    TensorView<const T> t_view(int64_t rows) const {
        return TensorView<const T>(tf.data(), Shape{rows}, dev);
    }
};

template <class T>
FlowMatchingStep<T>::FlowMatchingStep(Field<T>& field, const FlowMatchingStepOptions& o,
                                      const double* train, int64_t count, const double* validation,
                                      int64_t val_count) {
    EQFLOW_CHECK(count >= 1 && train != nullptr, "training step: no training data");
    EQFLOW_CHECK(o.batch >= 1 && o.batch <= count,
                 "training step: batch " << o.batch << " must be in 1.." << count);
    EQFLOW_CHECK(val_count >= 0 && (val_count == 0 || validation != nullptr),
                 "training step: no validation data");
    // sigma = inf is allowed: every step is then non-finite and skipped.
    EQFLOW_CHECK(o.sigma >= 0, "training step: sigma must be non-negative, got " << o.sigma);
    EQFLOW_CHECK(o.time_power > 0 && std::isfinite(o.time_power),
                 "training step: time_power must be positive and finite, got " << o.time_power);
    EQFLOW_CHECK(o.ema_decay >= 0 && o.ema_decay < 1,
                 "training step: EMA decay must be in [0, 1), got " << o.ema_decay);
    impl_ = std::make_unique<Impl>(field, o);
    Impl& im = *impl_;
    const Device dev = im.dev;
    // The GPU step is captured as a graph at its second step and replayed from then on
    // (src/cuda_graph.h). eqot with atom types is captured too: its coupling writes the types
    // with a kernel that takes them as an argument, not by a copy from host memory.
    im.graph = detail::StepGraph(dev, o.cuda_graph, "FlowMatchingStepOptions::cuda_graph");
    im.stream = im.graph.stream();
    im.n = field.n_particles();
    im.d = field.dim();
    im.nd = static_cast<int64_t>(im.n) * im.d;
    im.B = o.batch;
    im.count = count;
    im.val_count = val_count;
    im.P = field.parameter_count();
    im.coupling.kind = o.objective;
    im.coupling.allow_reflection = o.reflections;
    im.coupling.max_starts = o.eqot_starts;
    im.coupling.atom_types = o.atom_types;
    im.coupling.threads = o.threads;
    // On CUDA the coupling only queues its kernels: no host round trip inside a step (a failed
    // batch assignment poisons the batch, which the finite check then skips).
    im.coupling.synchronize = false;
    const int64_t B = im.B, nd = im.nd, P = im.P;
    auto upload = [&](Buffer<T>& dst, const double* src, int64_t rows) {
        const std::vector<T> f(src, src + rows * nd);
        dst = Buffer<T>(f.size(), dev);
        dst.copy_from_host(f.data(), f.size());
    };
    upload(im.data, train, count);
    upload(im.val, validation, val_count);
    im.order = Buffer<int64_t>(static_cast<size_t>(count), dev);
    std::vector<int64_t> identity(static_cast<size_t>(val_count));
    std::iota(identity.begin(), identity.end(), int64_t{0});
    im.val_order = Buffer<int64_t>(identity.size(), dev);
    im.val_order.copy_from_host(identity.data(), identity.size());
    for (Buffer<double>* b : {&im.x0, &im.x1, &im.x1p, &im.eps})
        *b = Buffer<double>(static_cast<size_t>(B * nd), dev);
    im.t = Buffer<double>(static_cast<size_t>(B), dev);
    for (Buffer<T>* b : {&im.xt, &im.v, &im.dL_dv})
        *b = Buffer<T>(static_cast<size_t>(B * nd), dev);
    im.tf = Buffer<T>(static_cast<size_t>(B), dev);
    for (Buffer<T>* b : {&im.grad, &im.m, &im.vmom}) *b = Buffer<T>(static_cast<size_t>(P), dev);
    if (o.ema_decay > 0) im.ema = Buffer<double>(static_cast<size_t>(P), dev);
    if (o.objective != CouplingKind::fm) {
        const size_t bytes = coupling_workspace_bytes(dev, im.coupling, B, im.n, im.d);
        im.coupling_ws = Buffer<unsigned char>(bytes, dev);
    }
    im.scalars = Buffer<train_math::TrainScalars>(1, dev);
    im.args = Buffer<train_math::StepArgs>(1, dev);
    // One workspace for the step's forward_backward and validation's forward, sized now.
    im.field_ws.get_bytes(std::max(field.workspace_bytes(FieldOp::forward, B),
                                   field.workspace_bytes(FieldOp::forward_backward, B)),
                          dev);
    upload_state(field.parameters_to_host(), AdamState{}, {}, 0);
}

template <class T>
FlowMatchingStep<T>::~FlowMatchingStep() = default;
template <class T>
FlowMatchingStep<T>::FlowMatchingStep(FlowMatchingStep&&) noexcept = default;
template <class T>
FlowMatchingStep<T>& FlowMatchingStep<T>::operator=(FlowMatchingStep&&) noexcept = default;

template <class T>
void FlowMatchingStep<T>::set_order(const std::vector<int64_t>& order) {
    Impl& im = *impl_;
    train_ops::check_order(order, im.count, "training step");
    im.order.copy_from_host(order.data(), order.size(), im.stream);
    im.have_order = true;
}

template <class T>
void FlowMatchingStep<T>::step(int64_t step, int64_t j, double lr) {
    Impl& im = *impl_;
    EQFLOW_CHECK(step >= 0, "training step: negative step " << step);
    EQFLOW_CHECK(j >= 0 && (j + 1) * im.B <= im.count,
                 "training step: batch " << j << " of " << im.B << " rows is past the " << im.count
                                         << " training rows");
    EQFLOW_CHECK(lr > 0 && std::isfinite(lr), "training step: bad learning rate " << lr);
    EQFLOW_CHECK(im.have_order, "training step: set_order before the first step");
    train_math::StepArgs a;
    a.first = j * im.B;
    a.first_stream = static_cast<uint64_t>(step * im.B);
    a.lr = lr;
    train_ops::set_step_args(im.dev, im.args.data(), a, im.stream);
    im.graph.run(im.stream, [&] { im.step_work(); });
    im.have_step = true;
}

template <class T>
double FlowMatchingStep<T>::validation_loss(uint64_t seed, int64_t rows) {
    Impl& im = *impl_;
    EQFLOW_CHECK(rows >= 0 && rows <= im.val_count,
                 "validation loss: " << rows << " rows of " << im.val_count);
    if (rows == 0) return std::numeric_limits<double>::quiet_NaN();
    // The scalars carry the training loop's counters: keep them, restore after.
    const train_math::TrainScalars saved = im.read_scalars();
    double sum = 0.0;
    for (int64_t s0 = 0; s0 < rows; s0 += im.B) {
        const int64_t m = std::min(im.B, rows - s0);
        train_math::StepArgs a;
        a.first = s0;
        a.first_stream = static_cast<uint64_t>(s0);
        train_ops::set_step_args(im.dev, im.args.data(), a, im.stream);
        im.forward_loss(im.val.data(), im.val_order.data(), m, seed);
        sum += im.read_scalars().loss * static_cast<double>(m);
    }
    im.scalars.copy_from_host(&saved, 1, im.stream);
    return sum / static_cast<double>(rows);
}

template <class T>
std::string FlowMatchingStep<T>::cuda_graph_status() const {
    return impl_->graph.status();
}

template <class T>
double FlowMatchingStep<T>::last_loss() {
    EQFLOW_CHECK(impl_->have_step, "training step: no step yet");
    return impl_->read_scalars().loss;
}

template <class T>
typename FlowMatchingStep<T>::Counters FlowMatchingStep<T>::counters() {
    const train_math::TrainScalars s = impl_->read_scalars();
    Counters c;
    c.adam_step = s.adam_step;
    c.skipped = s.skipped;
    c.window_loss = s.window_loss;
    c.window_count = s.window_count;
    return c;
}

template <class T>
void FlowMatchingStep<T>::reset_window() {
    train_ops::reset_window(impl_->dev, impl_->scalars.data(), impl_->stream);
}

namespace {
template <class T>
std::vector<double> download_widened(const Buffer<T>& src, int64_t count, Stream stream) {
    std::vector<T> f(static_cast<size_t>(count));
    src.copy_to_host(f.data(), f.size(), stream);
    return std::vector<double>(f.begin(), f.end());
}
template <class T>
void upload_rounded(Buffer<T>& dst, const std::vector<double>& values, Stream stream) {
    const std::vector<T> f(values.begin(), values.end());
    dst.copy_from_host(f.data(), f.size(), stream);
}
}  // namespace

template <class T>
void FlowMatchingStep<T>::download_state(std::vector<double>& params, AdamState& adam,
                                         std::vector<double>* ema, int64_t* skipped) {
    Impl& im = *impl_;
    params = im.field.parameters_to_host();
    adam.m = download_widened(im.m, im.P, im.stream);
    adam.v = download_widened(im.vmom, im.P, im.stream);
    const train_math::TrainScalars sc = im.read_scalars();
    adam.step = sc.adam_step;
    if (skipped != nullptr) *skipped = sc.skipped;
    if (ema != nullptr && im.opt.ema_decay > 0) {
        ema->resize(static_cast<size_t>(im.P));
        im.ema.copy_to_host(ema->data(), ema->size(), im.stream);
    }
}

template <class T>
void FlowMatchingStep<T>::upload_state(const std::vector<double>& params, const AdamState& adam,
                                       const std::vector<double>& ema, int64_t skipped) {
    Impl& im = *impl_;
    train_ops::check_state(im.P, params, adam, ema, skipped, "training step");
    const auto P = static_cast<size_t>(im.P);
    im.field.set_parameters(params);
    if (adam.m.empty()) {
        im.m.zero(im.stream);
        im.vmom.zero(im.stream);
    } else {
        upload_rounded(im.m, adam.m, im.stream);
        upload_rounded(im.vmom, adam.v, im.stream);
    }
    if (im.opt.ema_decay > 0)
        im.ema.copy_from_host(ema.empty() ? params.data() : ema.data(), P, im.stream);
    train_math::TrainScalars sc;
    sc.adam_step = adam.step;
    sc.skipped = skipped;
    im.scalars.copy_from_host(&sc, 1, im.stream);
}

template <class T>
typename FlowMatchingStep<T>::Snapshot FlowMatchingStep<T>::snapshot() {
    Impl& im = *impl_;
    Snapshot out;
    const size_t rows = static_cast<size_t>(im.B * im.nd);
    auto get = [&](const double* src, size_t count) {
        std::vector<double> h(count);
        detail::copy_bytes(h.data(), Device::cpu, src, im.dev, count * sizeof(double), im.stream);
        return h;
    };
    out.x0 = get(im.x0.data(), rows);
    out.x1 = get(im.x1.data(), rows);
    out.x1_paired = get(im.paired(im.B), rows);
    out.t = get(im.t.data(), static_cast<size_t>(im.B));
    out.eps = get(im.eps.data(), rows);
    out.grad = download_widened(im.grad, im.P, im.stream);
    out.loss = last_loss();
    return out;
}

template class FlowMatchingStep<double>;
template class FlowMatchingStep<float>;

}  // namespace eqflow
