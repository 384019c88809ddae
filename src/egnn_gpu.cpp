// EgnnGpu: argument checks and the device copy of the parameters; the math is in kernels/egnn.cu.
#include "eqflow/egnn_gpu.h"

#include <algorithm>
#include <string>

#include "eqflow/device.h"
#include "eqflow/error.h"
#include "eqflow/philox.h"

#if defined(EQFLOW_HAVE_CUDA)
#include "kernels/egnn.cuh"
#include "kernels/egnn_net.h"
#endif

namespace eqflow {

struct EgnnGpu::Impl {
    EgnnConfig config;
    std::vector<ParamEntry> layout;
#if defined(EQFLOW_HAVE_CUDA)
    Buffer<float> params;
    Buffer<int> types;
    Buffer<unsigned char> workspace;
    cuda::EgnnNet net;
    // flow_matching_loss_gpu's device buffers: grow-only, sized by the largest batch so far.
    Buffer<float> fm_x, fm_t, fm_v, fm_g, fm_gp;
#endif
};

namespace {
#if defined(EQFLOW_HAVE_CUDA)
// The tensors of the flat parameter buffer on the device, wired into the kernels' EgnnNet.
cuda::EgnnNet make_net(const EgnnConfig& c, const std::vector<ParamEntry>& layout,
                       const float* base, const int* types) {
    cuda::EgnnNet net = cuda::make_egnn_net(c, layout, base, types);
    cuda::egnn_check_supported(net);
    return net;
}
#endif

void check_batch(const EgnnConfig& c, const TensorView<const float>& x,
                 const TensorView<const float>& t, const char* what) {
    EQFLOW_CHECK(x.device == Device::cuda && t.device == Device::cuda,
                 what << ": inputs must be in device memory");
    EQFLOW_CHECK(x.rank() == 3 && x.size(1) == c.n_particles && x.size(2) == c.dim,
                 what << ": x has shape " << shape_string(x.shape) << ", expected [B, "
                      << c.n_particles << ", " << c.dim << "]");
    check_shape(t, Shape{x.size(0)}, "t");
}
}  // namespace

EgnnGpu::EgnnGpu(const EgnnModel& model) : impl_(std::make_unique<Impl>()) {
    EQFLOW_CHECK(cuda_available(), "the GPU EGNN needs a GPU, but " << cuda_status());
    impl_->config = model.config;
    impl_->layout = egnn_parameter_layout(model.config);
#if defined(EQFLOW_HAVE_CUDA)
    const Impl& im = *impl_;
    if (!im.config.atom_types.empty()) {
        impl_->types = Buffer<int>(im.config.atom_types.size(), Device::cuda);
        impl_->types.copy_from_host(im.config.atom_types.data(), im.config.atom_types.size());
    }
    set_parameters(model.params);
#endif
}

EgnnGpu::~EgnnGpu() = default;
EgnnGpu::EgnnGpu(EgnnGpu&&) noexcept = default;
EgnnGpu& EgnnGpu::operator=(EgnnGpu&&) noexcept = default;

const EgnnConfig& EgnnGpu::config() const {
    return impl_->config;
}

void EgnnGpu::set_parameters(const std::vector<double>& params) {
    const int64_t count = egnn_parameter_count(impl_->config);
    EQFLOW_CHECK(
        static_cast<int64_t>(params.size()) == count,
        "EGNN parameters: " << params.size() << " values, the configuration has " << count);
#if defined(EQFLOW_HAVE_CUDA)
    std::vector<float> f(params.begin(), params.end());
    if (impl_->params.size() != f.size()) impl_->params = Buffer<float>(f.size(), Device::cuda);
    impl_->params.copy_from_host(f.data(), f.size());
    impl_->net = make_net(impl_->config, impl_->layout, impl_->params.data(),
                          impl_->config.atom_types.empty() ? nullptr : impl_->types.data());
#endif
}

void EgnnGpu::forward(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                      Stream stream) {
    const EgnnConfig& c = impl_->config;
    check_batch(c, x, t, "EGNN forward");
    check_shape(v, x.shape, "v");
    EQFLOW_CHECK(v.device == Device::cuda, "EGNN forward: v must be in device memory");
#if defined(EQFLOW_HAVE_CUDA)
    cuda::egnn_forward(impl_->net, x.size(0), x.data, t.data, v.data, stream);
#else
    (void)stream;
#endif
}

void EgnnGpu::divergence(TensorView<const float> x, TensorView<const float> t, TensorView<float> v,
                         TensorView<float> div, Stream stream) {
    const EgnnConfig& c = impl_->config;
    check_batch(c, x, t, "EGNN divergence");
    check_shape(div, Shape{x.size(0)}, "div");
    EQFLOW_CHECK(div.device == Device::cuda, "EGNN divergence: div must be in device memory");
    if (v.defined()) {
        check_shape(v, x.shape, "v");
        EQFLOW_CHECK(v.device == Device::cuda, "EGNN divergence: v must be in device memory");
    }
#if defined(EQFLOW_HAVE_CUDA)
    const int64_t B = x.size(0);
    const size_t need = cuda::egnn_divergence_workspace_bytes(impl_->net, B);
    if (impl_->workspace.size() < need)
        impl_->workspace = Buffer<unsigned char>(need, Device::cuda);
    cuda::egnn_divergence(impl_->net, B, x.data, t.data, v.defined() ? v.data : nullptr, div.data,
                          impl_->workspace.data(), impl_->workspace.size(), stream);
#else
    (void)stream;
#endif
}

void EgnnGpu::jvp_trace(TensorView<const float> x, TensorView<const float> t,
                        TensorView<const float> dirs, TensorView<float> v, TensorView<float> div,
                        Stream stream) {
    const EgnnConfig& c = impl_->config;
    check_batch(c, x, t, "EGNN jvp_trace");
    check_shape(div, Shape{x.size(0)}, "div");
    EQFLOW_CHECK(div.device == Device::cuda, "EGNN jvp_trace: div must be in device memory");
    EQFLOW_CHECK(dirs.device == Device::cuda, "EGNN jvp_trace: dirs must be in device memory");
    EQFLOW_CHECK(dirs.shape.size() == 4 && dirs.size(0) == x.size(0) && dirs.size(1) >= 1 &&
                     dirs.size(2) == c.n_particles && dirs.size(3) == c.dim,
                 "EGNN jvp_trace: dirs must be [B][K][n][d] with K >= 1");
    EQFLOW_CHECK(dirs.size(1) <= 1 << 20, "EGNN jvp_trace: too many directions per sample");
    if (v.defined()) {
        check_shape(v, x.shape, "v");
        EQFLOW_CHECK(v.device == Device::cuda, "EGNN jvp_trace: v must be in device memory");
    }
#if defined(EQFLOW_HAVE_CUDA)
    const int64_t B = x.size(0);
    const int K = static_cast<int>(dirs.size(1));
    const size_t need = cuda::egnn_jvp_trace_workspace_bytes(impl_->net, B, K);
    if (impl_->workspace.size() < need)
        impl_->workspace = Buffer<unsigned char>(need, Device::cuda);
    cuda::egnn_jvp_trace(impl_->net, B, K, dirs.data, x.data, t.data,
                         v.defined() ? v.data : nullptr, div.data, impl_->workspace.data(),
                         impl_->workspace.size(), stream);
#else
    (void)stream;
#endif
}

void EgnnGpu::backward(TensorView<const float> x, TensorView<const float> t,
                       TensorView<const float> dL_dv, TensorView<float> dL_dparams,
                       TensorView<float> dL_dx, Stream stream) {
    const EgnnConfig& c = impl_->config;
    check_batch(c, x, t, "EGNN backward");
    check_shape(dL_dv, x.shape, "dL_dv");
    const int64_t count = egnn_parameter_count(c);
    check_shape(dL_dparams, Shape{count}, "dL_dparams");
    EQFLOW_CHECK(dL_dv.device == Device::cuda && dL_dparams.device == Device::cuda,
                 "EGNN backward: gradients must be in device memory");
    if (dL_dx.defined()) {
        check_shape(dL_dx, x.shape, "dL_dx");
        EQFLOW_CHECK(dL_dx.device == Device::cuda, "EGNN backward: dL_dx must be in device memory");
    }
#if defined(EQFLOW_HAVE_CUDA)
    const int64_t B = x.size(0);
    const size_t need = cuda::egnn_backward_workspace_bytes(impl_->net, B, count);
    if (impl_->workspace.size() < need)
        impl_->workspace = Buffer<unsigned char>(need, Device::cuda);
    cuda::egnn_backward(impl_->net, impl_->params.data(), count, B, x.data, t.data, dL_dv.data,
                        dL_dparams.data, dL_dx.defined() ? dL_dx.data : nullptr,
                        impl_->workspace.data(), impl_->workspace.size(), stream);
#else
    (void)stream;
#endif
}

void EgnnGpu::reserve_workspace(int64_t B) {
    EQFLOW_CHECK(B >= 0, "EGNN reserve_workspace: negative batch " << B);
#if defined(EQFLOW_HAVE_CUDA)
    const int64_t count = egnn_parameter_count(impl_->config);
    const size_t need = std::max(cuda::egnn_divergence_workspace_bytes(impl_->net, B),
                                 cuda::egnn_backward_workspace_bytes(impl_->net, B, count));
    if (impl_->workspace.size() < need)
        impl_->workspace = Buffer<unsigned char>(need, Device::cuda);
#endif
}

TensorView<float> EgnnGpu::parameters() {
#if defined(EQFLOW_HAVE_CUDA)
    return TensorView<float>(impl_->params.data(), Shape{egnn_parameter_count(impl_->config)},
                             Device::cuda);
#else
    return {};
#endif
}

double flow_matching_loss_gpu(EgnnGpu& gpu, int64_t B, const double* x0, const double* x1,
                              const double* t, const double* eps, double sigma, double* grad) {
    const EgnnConfig& c = gpu.config();
    const int n = c.n_particles, d = c.dim;
    const int64_t nd = static_cast<int64_t>(n) * d, count = egnn_parameter_count(c);
    EQFLOW_CHECK(B > 0, "flow-matching loss of an empty batch");
    std::vector<float> xt(static_cast<size_t>(B * nd)), tf(static_cast<size_t>(B));
    std::vector<double> u(static_cast<size_t>(B * nd));
    for (int64_t b = 0; b < B; ++b) {
        tf[b] = static_cast<float>(t[b]);
        for (int64_t k = 0; k < nd; ++k) {
            const int64_t idx = b * nd + k;
            xt[idx] =
                static_cast<float>((1.0 - t[b]) * x0[idx] + t[b] * x1[idx] + sigma * eps[idx]);
            u[idx] = x1[idx] - x0[idx];
        }
    }
#if defined(EQFLOW_HAVE_CUDA)
    EgnnGpu::Impl& im = *gpu.impl_;
    auto grow = [](Buffer<float>& buf, int64_t need) {
        if (static_cast<int64_t>(buf.size()) < need)
            buf = Buffer<float>(static_cast<size_t>(need), Device::cuda);
    };
    grow(im.fm_x, B * nd);
    grow(im.fm_v, B * nd);
    grow(im.fm_t, B);
    if (grad != nullptr) {
        grow(im.fm_g, B * nd);
        grow(im.fm_gp, count);
    }
    const Shape xs{B, n, d};
    TensorView<float> xd(im.fm_x.data(), xs, Device::cuda), vd(im.fm_v.data(), xs, Device::cuda);
    TensorView<float> td(im.fm_t.data(), Shape{B}, Device::cuda);
    im.fm_x.copy_from_host(xt.data(), xt.size());
    im.fm_t.copy_from_host(tf.data(), tf.size());
    gpu.forward(xd, td, vd);
    std::vector<float> v(static_cast<size_t>(B * nd));
    im.fm_v.copy_to_host(v.data(), v.size());
#else
    (void)count;
    (void)grad;
    std::vector<float> v(static_cast<size_t>(B * nd));
    EQFLOW_THROW("flow_matching_loss_gpu: eqflow was built without CUDA");
#endif
    const double scale = 1.0 / static_cast<double>(B * nd);
    double loss = 0.0;
    std::vector<float> g(v.size());
    for (size_t k = 0; k < v.size(); ++k) {
        const double r = static_cast<double>(v[k]) - u[k];
        loss += r * r * scale;
        g[k] = static_cast<float>(2.0 * r * scale);
    }
#if defined(EQFLOW_HAVE_CUDA)
    if (grad != nullptr) {
        TensorView<float> gd(im.fm_g.data(), xs, Device::cuda);
        TensorView<float> gp(im.fm_gp.data(), Shape{count}, Device::cuda);
        im.fm_g.copy_from_host(g.data(), g.size());
        im.fm_gp.zero();
        gpu.backward(xd, td, gd, gp, {});
        std::vector<float> gh(static_cast<size_t>(count));
        im.fm_gp.copy_to_host(gh.data(), gh.size());
        for (int64_t k = 0; k < count; ++k) grad[k] = gh[k];
    }
#endif
    return loss;
}

OdeField egnn_gpu_field(std::shared_ptr<EgnnGpu> gpu) {
    return egnn_gpu_field(std::move(gpu), 0, 0);
}

OdeField egnn_gpu_field(std::shared_ptr<EgnnGpu> gpu, int probes, uint64_t seed) {
    EQFLOW_CHECK(gpu != nullptr, "egnn_gpu_field: no model");
    EQFLOW_CHECK(probes >= 0, "egnn_gpu_field: negative probe count " << probes);
    struct State {
        std::shared_ptr<EgnnGpu> gpu;
        Tensor<float> x, t, v, div, dirs;
        std::vector<float> host;
    };
    auto st = std::make_shared<State>();
    st->gpu = std::move(gpu);
    return [st, probes, seed](int64_t B, const double* x, const double* t, double* v, double* div) {
        const EgnnConfig& c = st->gpu->config();
        const int64_t nd = static_cast<int64_t>(c.n_particles) * c.dim;
        if (B == 0) return;
        if (st->x.numel() < B * nd) {  // grow the device buffers; never shrink
            st->x = Tensor<float>(Shape{B, c.n_particles, c.dim}, Device::cuda);
            st->v = Tensor<float>(Shape{B, c.n_particles, c.dim}, Device::cuda);
            st->t = Tensor<float>(Shape{B}, Device::cuda);
            st->div = Tensor<float>(Shape{B}, Device::cuda);
            if (probes > 0)
                st->dirs = Tensor<float>(Shape{B, probes, c.n_particles, c.dim}, Device::cuda);
        }
        const Shape xs{B, c.n_particles, c.dim};
        TensorView<float> xv(st->x.data(), xs, Device::cuda), vv(st->v.data(), xs, Device::cuda);
        TensorView<float> tv(st->t.data(), Shape{B}, Device::cuda),
            dv(st->div.data(), Shape{B}, Device::cuda);
        st->host.assign(x, x + B * nd);
        detail::copy_bytes(xv.data, Device::cuda, st->host.data(), Device::cpu,
                           B * nd * sizeof(float));
        st->host.assign(t, t + B);
        detail::copy_bytes(tv.data, Device::cuda, st->host.data(), Device::cpu, B * sizeof(float));
        if (div != nullptr && probes > 0) {
            // Row r's vectors: Philox(seed + r, 0), bit 0 of consecutive words, probe-major (the
            // stream egnn_divergence_hutchinson draws for a one-row call with seed + r).
            const int64_t per_row = static_cast<int64_t>(probes) * nd;
            st->host.resize(static_cast<size_t>(B * per_row));
            for (int64_t r = 0; r < B; ++r) {
                Philox rng(seed + static_cast<uint64_t>(r), 0);
                for (int64_t k = 0; k < per_row; ++k)
                    st->host[r * per_row + k] = (rng.next_u32() & 1u) ? 1.0f : -1.0f;
            }
            TensorView<float> dirs(st->dirs.data(), Shape{B, probes, c.n_particles, c.dim},
                                   Device::cuda);
            detail::copy_bytes(dirs.data, Device::cuda, st->host.data(), Device::cpu,
                               B * per_row * sizeof(float));
            st->gpu->jvp_trace(xv, tv, dirs, vv, dv);
        } else if (div != nullptr) {
            st->gpu->divergence(xv, tv, vv, dv);
        } else {
            st->gpu->forward(xv, tv, vv);
        }
        st->host.resize(static_cast<size_t>(B * nd));
        detail::copy_bytes(st->host.data(), Device::cpu, vv.data, Device::cuda,
                           B * nd * sizeof(float));
        for (int64_t k = 0; k < B * nd; ++k) v[k] = st->host[k];
        if (div != nullptr) {
            detail::copy_bytes(st->host.data(), Device::cpu, dv.data, Device::cuda,
                               B * sizeof(float));
            for (int64_t k = 0; k < B; ++k) div[k] = st->host[k];
        }
    };
}

}  // namespace eqflow
