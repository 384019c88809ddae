// GpuFlowMatching: the device-resident flow-matching step (see eqflow/train_gpu.h). Argument
// checks, buffers and the order of launches; the kernels are kernels/train_step.cu (glue, Adam),
// kernels/egnn.cu (network) and kernels/coupling.cu (couplings).
#include "eqflow/train_gpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "eqflow/buffer.h"
#include "eqflow/error.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/coupling.cuh"
#include "kernels/train_step.cuh"
#endif

namespace eqflow {

struct GpuFlowMatching::Impl {
    GpuFlowMatchingOptions opt;
    EgnnGpu net;
    int n = 0, d = 0;
    int64_t nd = 0, B = 0, count = 0, P = 0;
    Stream stream = nullptr;  // the default stream: every launch below is ordered on it
#if defined(EQFLOW_HAVE_CUDA)
    CouplingOptions coupling;
    Buffer<float> data;                  // [count][nd]
    Buffer<int64_t> order;               // [count]
    Buffer<double> x0, x1, x1p, t, eps;  // [B][nd], [B]
    Buffer<float> xt, tf, v, dL_dv;      // [B][nd], [B]
    Buffer<float> grad, m, vmom;         // [P]
    Buffer<double> ema;                  // [P] when EMA is on
    Buffer<unsigned char> coupling_ws;   // ot / eqot
    Buffer<cuda::TrainScalars> scalars;  // [1]
    bool have_order = false;
    bool have_step = false;
#endif

    Impl(const EgnnModel& model, const GpuFlowMatchingOptions& o) : opt(o), net(model) {}

    const double* paired() const {
#if defined(EQFLOW_HAVE_CUDA)
        return opt.objective == CouplingKind::fm ? x1.data() : x1p.data();
#else
        return nullptr;
#endif
    }
};

GpuFlowMatching::GpuFlowMatching(const EgnnModel& model, const GpuFlowMatchingOptions& o,
                                 const double* train, int64_t count) {
    EQFLOW_CHECK(cuda_available(), "GPU training needs a GPU, but " << cuda_status());
    const EgnnConfig& c = model.config;
    EQFLOW_CHECK(count >= 1 && train != nullptr, "GPU training: no training data");
    EQFLOW_CHECK(o.batch >= 1 && o.batch <= count,
                 "GPU training: batch " << o.batch << " must be in 1.." << count);
    EQFLOW_CHECK(o.objective == CouplingKind::fm || o.batch <= 1024,
                 "GPU training: the " << coupling_name(o.objective) << " coupling on the GPU takes "
                                      << "at most 1024 rows a batch, got " << o.batch);
    // sigma = inf is allowed (as on the CPU path): every step is then non-finite and skipped.
    EQFLOW_CHECK(o.sigma >= 0, "GPU training: sigma must be non-negative, got " << o.sigma);
    EQFLOW_CHECK(o.ema_decay >= 0 && o.ema_decay < 1,
                 "GPU training: EMA decay must be in [0, 1), got " << o.ema_decay);
    impl_ = std::make_unique<Impl>(model, o);
    Impl& im = *impl_;
    im.n = c.n_particles;
    im.d = c.dim;
    im.nd = static_cast<int64_t>(im.n) * im.d;
    im.B = o.batch;
    im.count = count;
    im.P = egnn_parameter_count(c);
#if defined(EQFLOW_HAVE_CUDA)
    im.coupling.kind = o.objective;
    im.coupling.allow_reflection = o.reflections;
    im.coupling.atom_types = o.atom_types;
    const int64_t B = im.B, nd = im.nd, P = im.P;
    {
        const std::vector<float> f(train, train + count * nd);
        im.data = Buffer<float>(f.size(), Device::cuda);
        im.data.copy_from_host(f.data(), f.size());
    }
    im.order = Buffer<int64_t>(static_cast<size_t>(count), Device::cuda);
    for (Buffer<double>* b : {&im.x0, &im.x1, &im.x1p, &im.eps})
        *b = Buffer<double>(static_cast<size_t>(B * nd), Device::cuda);
    im.t = Buffer<double>(static_cast<size_t>(B), Device::cuda);
    for (Buffer<float>* b : {&im.xt, &im.v, &im.dL_dv})
        *b = Buffer<float>(static_cast<size_t>(B * nd), Device::cuda);
    im.tf = Buffer<float>(static_cast<size_t>(B), Device::cuda);
    for (Buffer<float>* b : {&im.grad, &im.m, &im.vmom})
        *b = Buffer<float>(static_cast<size_t>(P), Device::cuda);
    if (o.ema_decay > 0) im.ema = Buffer<double>(static_cast<size_t>(P), Device::cuda);
    if (o.objective != CouplingKind::fm) {
        const size_t bytes = coupling_workspace_bytes(Device::cuda, im.coupling, B, im.n, im.d);
        im.coupling_ws = Buffer<unsigned char>(bytes, Device::cuda);
    }
    im.scalars = Buffer<cuda::TrainScalars>(1, Device::cuda);
    im.net.reserve_workspace(B);
    upload_state(model.params, AdamState{}, {}, 0);
#else
    (void)train;
    EQFLOW_THROW("GPU training: eqflow was built without CUDA");
#endif
}

GpuFlowMatching::~GpuFlowMatching() = default;
GpuFlowMatching::GpuFlowMatching(GpuFlowMatching&&) noexcept = default;
GpuFlowMatching& GpuFlowMatching::operator=(GpuFlowMatching&&) noexcept = default;

EgnnGpu& GpuFlowMatching::network() {
    return impl_->net;
}

void GpuFlowMatching::set_order(const std::vector<int64_t>& order) {
    Impl& im = *impl_;
    EQFLOW_CHECK(static_cast<int64_t>(order.size()) == im.count,
                 "GPU training: the order has " << order.size() << " entries, the training set "
                                                << im.count);
    for (int64_t r : order)
        EQFLOW_CHECK(r >= 0 && r < im.count, "GPU training: order entry " << r << " out of range");
#if defined(EQFLOW_HAVE_CUDA)
    im.order.copy_from_host(order.data(), order.size(), im.stream);
    im.have_order = true;
#endif
}

void GpuFlowMatching::step(int64_t step, int64_t j, double lr) {
    Impl& im = *impl_;
    EQFLOW_CHECK(step >= 0, "GPU training: negative step " << step);
    EQFLOW_CHECK(j >= 0 && (j + 1) * im.B <= im.count,
                 "GPU training: batch " << j << " of " << im.B << " rows is past the " << im.count
                                        << " training rows");
    EQFLOW_CHECK(lr > 0 && std::isfinite(lr), "GPU training: bad learning rate " << lr);
#if defined(EQFLOW_HAVE_CUDA)
    EQFLOW_CHECK(im.have_order, "GPU training: set_order before the first step");
    const int64_t B = im.B, nd = im.nd, P = im.P;
    const Stream s = im.stream;
    cuda::fm_prepare_batch(im.data.data(), im.order.data(), j * B, B, im.n, im.d, im.opt.draw_seed,
                           static_cast<uint64_t>(step * B), im.x0.data(), im.x1.data(), im.t.data(),
                           im.eps.data(), s);
    if (im.opt.objective != CouplingKind::fm && B > 1)
        cuda::couple<double>(im.coupling, im.x0.data(), im.x1.data(), B, im.n, im.d, im.x1p.data(),
                             nullptr, nullptr, im.coupling_ws.data(), im.coupling_ws.size(), s);
    // B == 1: the couplings leave the pair as drawn (the CPU trainer's couple_batch too).
    if (im.opt.objective != CouplingKind::fm && B <= 1)
        detail::copy_bytes(im.x1p.data(), Device::cuda, im.x1.data(), Device::cuda,
                           static_cast<size_t>(B * nd) * sizeof(double), s);
    cuda::fm_interpolate(B, nd, im.x0.data(), im.paired(), im.t.data(), im.eps.data(), im.opt.sigma,
                         im.xt.data(), im.tf.data(), s);
    const Shape xs{B, im.n, im.d};
    const TensorView<const float> xv(im.xt.data(), xs, Device::cuda),
        tv(im.tf.data(), Shape{B}, Device::cuda);
    im.net.forward(xv, tv, TensorView<float>(im.v.data(), xs, Device::cuda), s);
    cuda::fm_loss(B, nd, im.v.data(), im.x0.data(), im.paired(), im.dL_dv.data(), im.scalars.data(),
                  s);
    im.grad.zero(s);
    im.net.backward(xv, tv, TensorView<const float>(im.dL_dv.data(), xs, Device::cuda),
                    TensorView<float>(im.grad.data(), Shape{P}, Device::cuda), {}, s);
    cuda::fm_check_finite(im.grad.data(), P, im.scalars.data(), s);
    const AdamOptions ao;
    cuda::fm_adam_update(P, im.net.parameters().data, im.grad.data(), im.m.data(), im.vmom.data(),
                         im.opt.ema_decay > 0 ? im.ema.data() : nullptr, im.opt.ema_decay, lr,
                         ao.beta1, ao.beta2, ao.eps, im.scalars.data(), 0, s);
    cuda::fm_finish_step(im.scalars.data(), s);
    im.have_step = true;
#else
    (void)j;
#endif
}

double GpuFlowMatching::last_loss() {
#if defined(EQFLOW_HAVE_CUDA)
    Impl& im = *impl_;
    EQFLOW_CHECK(im.have_step, "GPU training: no step yet");
    cuda::TrainScalars s;
    im.scalars.copy_to_host(&s, 1, im.stream);  // synchronises
    return s.loss;
#else
    return std::numeric_limits<double>::quiet_NaN();
#endif
}

GpuFlowMatching::Counters GpuFlowMatching::counters() {
    Counters c;
#if defined(EQFLOW_HAVE_CUDA)
    cuda::TrainScalars s;
    impl_->scalars.copy_to_host(&s, 1, impl_->stream);
    c.adam_step = s.adam_step;
    c.skipped = s.skipped;
    c.window_loss = s.window_loss;
    c.window_count = s.window_count;
#endif
    return c;
}

void GpuFlowMatching::reset_window() {
#if defined(EQFLOW_HAVE_CUDA)
    cuda::fm_reset_window(impl_->scalars.data(), impl_->stream);
#endif
}

namespace {
#if defined(EQFLOW_HAVE_CUDA)
std::vector<double> download_f32(const float* src, int64_t count, Stream stream) {
    std::vector<float> f(static_cast<size_t>(count));
    detail::copy_bytes(f.data(), Device::cpu, src, Device::cuda, f.size() * sizeof(float), stream);
    return std::vector<double>(f.begin(), f.end());
}
void upload_f32(float* dst, const std::vector<double>& values, Stream stream) {
    const std::vector<float> f(values.begin(), values.end());
    detail::copy_bytes(dst, Device::cuda, f.data(), Device::cpu, f.size() * sizeof(float), stream);
}
#endif
}  // namespace

void GpuFlowMatching::download_state(std::vector<double>& params, AdamState& adam,
                                     std::vector<double>* ema, int64_t* skipped) {
#if defined(EQFLOW_HAVE_CUDA)
    Impl& im = *impl_;
    const Stream s = im.stream;
    params = download_f32(im.net.parameters().data, im.P, s);
    adam.m = download_f32(im.m.data(), im.P, s);
    adam.v = download_f32(im.vmom.data(), im.P, s);
    cuda::TrainScalars sc;
    im.scalars.copy_to_host(&sc, 1, s);
    adam.step = sc.adam_step;
    if (skipped != nullptr) *skipped = sc.skipped;
    if (ema != nullptr && im.opt.ema_decay > 0) {
        ema->resize(static_cast<size_t>(im.P));
        im.ema.copy_to_host(ema->data(), ema->size(), s);
    }
#else
    (void)params;
    (void)adam;
    (void)ema;
    (void)skipped;
#endif
}

void GpuFlowMatching::upload_state(const std::vector<double>& params, const AdamState& adam,
                                   const std::vector<double>& ema, int64_t skipped) {
    Impl& im = *impl_;
    const auto P = static_cast<size_t>(im.P);
    EQFLOW_CHECK(params.size() == P, "GPU training: " << params.size() << " parameters, the model "
                                                      << "has " << P);
    EQFLOW_CHECK(adam.m.size() == adam.v.size() && (adam.m.empty() || adam.m.size() == P),
                 "GPU training: Adam moments do not match the " << P << " parameters");
    EQFLOW_CHECK(ema.empty() || ema.size() == P, "GPU training: the EMA does not match the model");
    EQFLOW_CHECK(adam.step >= 0 && skipped >= 0, "GPU training: negative step counters");
#if defined(EQFLOW_HAVE_CUDA)
    const Stream s = im.stream;
    im.net.set_parameters(params);  // same size: converts into the existing buffer
    if (adam.m.empty()) {
        im.m.zero(s);
        im.vmom.zero(s);
    } else {
        upload_f32(im.m.data(), adam.m, s);
        upload_f32(im.vmom.data(), adam.v, s);
    }
    if (im.opt.ema_decay > 0) im.ema.copy_from_host(ema.empty() ? params.data() : ema.data(), P, s);
    cuda::TrainScalars sc;
    sc.adam_step = adam.step;
    sc.skipped = skipped;
    im.scalars.copy_from_host(&sc, 1, s);
#endif
}

GpuFlowMatching::Snapshot GpuFlowMatching::snapshot() {
    Snapshot out;
#if defined(EQFLOW_HAVE_CUDA)
    Impl& im = *impl_;
    const Stream s = im.stream;
    const size_t rows = static_cast<size_t>(im.B * im.nd);
    auto get = [&](const double* src, size_t count) {
        std::vector<double> h(count);
        detail::copy_bytes(h.data(), Device::cpu, src, Device::cuda, count * sizeof(double), s);
        return h;
    };
    out.x0 = get(im.x0.data(), rows);
    out.x1 = get(im.x1.data(), rows);
    out.x1_paired = get(im.paired(), rows);
    out.t = get(im.t.data(), static_cast<size_t>(im.B));
    out.eps = get(im.eps.data(), rows);
    out.grad = download_f32(im.grad.data(), im.P, s);
    out.loss = last_loss();
#endif
    return out;
}

void adam_update_gpu(const AdamOptions& options, double lr, int64_t step, TensorView<float> params,
                     TensorView<const float> grad, TensorView<float> m, TensorView<float> v,
                     Stream stream) {
    EQFLOW_CHECK(params.rank() == 1, "adam_update_gpu: params must be one-dimensional");
    const int64_t P = params.size(0);
    check_shape(grad, Shape{P}, "adam_update_gpu grad");
    check_shape(m, Shape{P}, "adam_update_gpu m");
    check_shape(v, Shape{P}, "adam_update_gpu v");
    EQFLOW_CHECK(params.device == Device::cuda && grad.device == Device::cuda &&
                     m.device == Device::cuda && v.device == Device::cuda,
                 "adam_update_gpu: all arrays must be in device memory");
    EQFLOW_CHECK(step >= 0, "adam_update_gpu: negative step " << step);
#if defined(EQFLOW_HAVE_CUDA)
    cuda::fm_adam_update(P, params.data, grad.data, m.data, v.data, nullptr, 0.0, lr, options.beta1,
                         options.beta2, options.eps, nullptr, step, stream);
#else
    (void)options;
    (void)lr;
    (void)stream;
    EQFLOW_THROW("adam_update_gpu: eqflow was built without CUDA");
#endif
}

}  // namespace eqflow
