// Flows over the field interface: any Field<T> as an ODE callback, a model's integrator on the
// CPU or the GPU (either field type: eqflow/flow_model.h), and the model-level sampling and
// likelihood in the system's units.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/field.h"
#include "eqflow/flow.h"
#include "eqflow/flow_model.h"
#include "eqflow/molecule.h"
#include "eqflow/ode_gpu.h"
#include "eqflow/philox.h"

namespace eqflow {

template <class T>
FlowField field_ode(std::shared_ptr<Field<T>> field, int probes, uint64_t seed) {
    EQFLOW_CHECK(field != nullptr, "field_ode: no field");
    EQFLOW_CHECK(probes >= 0, "field_ode: negative probe count " << probes);
    // Buffers in the field's memory, grown to the largest call; never shrunk.
    struct State {
        std::shared_ptr<Field<T>> field;
        Tensor<T> x, t, v, div, dirs;
        FieldWorkspace workspace;
        std::vector<T> host;
    };
    auto st = std::make_shared<State>();
    st->field = std::move(field);
    return [st, probes, seed](int64_t B, const double* x, const double* t, double* v, double* div) {
        Field<T>& f = *st->field;
        const int n = f.n_particles(), d = f.dim();
        const int64_t nd = static_cast<int64_t>(n) * d;
        const Device dev = f.device();
        if (B == 0) return;
        if (st->x.numel() < B * nd) {
            st->x = Tensor<T>(Shape{B, n, d}, dev);
            st->v = Tensor<T>(Shape{B, n, d}, dev);
            st->t = Tensor<T>(Shape{B}, dev);
            st->div = Tensor<T>(Shape{B}, dev);
            if (probes > 0) st->dirs = Tensor<T>(Shape{B, probes, n, d}, dev);
        }
        const Shape xs{B, n, d};
        TensorView<T> xv(st->x.data(), xs, dev), vv(st->v.data(), xs, dev);
        TensorView<T> tv(st->t.data(), Shape{B}, dev), dv(st->div.data(), Shape{B}, dev);
        auto upload = [&](T* dst, const double* src, int64_t count) {
            st->host.assign(src, src + count);
            detail::copy_bytes(dst, dev, st->host.data(), Device::cpu,
                               static_cast<size_t>(count) * sizeof(T));
        };
        auto download = [&](double* dst, const T* src, int64_t count) {
            st->host.resize(static_cast<size_t>(count));
            detail::copy_bytes(st->host.data(), Device::cpu, src, dev,
                               static_cast<size_t>(count) * sizeof(T));
            for (int64_t k = 0; k < count; ++k) dst[k] = st->host[static_cast<size_t>(k)];
        };
        upload(xv.data, x, B * nd);
        upload(tv.data, t, B);
        if (div != nullptr && probes > 0) {
            const int64_t per_row = static_cast<int64_t>(probes) * nd;
            st->host.resize(static_cast<size_t>(B * per_row));
            for (int64_t r = 0; r < B; ++r) {
                Philox rng(seed + static_cast<uint64_t>(r), 0);
                for (int64_t k = 0; k < per_row; ++k)
                    st->host[static_cast<size_t>(r * per_row + k)] =
                        (rng.next_u32() & 1u) ? T(1) : T(-1);
            }
            TensorView<T> dirs(st->dirs.data(), Shape{B, probes, n, d}, dev);
            detail::copy_bytes(dirs.data, dev, st->host.data(), Device::cpu,
                               static_cast<size_t>(B * per_row) * sizeof(T));
            f.jvp_trace(xv, tv, dirs, vv, dv, st->workspace.get(f, FieldOp::jvp_trace, B, probes));
        } else if (div != nullptr) {
            f.divergence(xv, tv, vv, dv, st->workspace.get(f, FieldOp::divergence, B));
        } else {
            f.forward(xv, tv, vv, st->workspace.get(f, FieldOp::forward, B));
        }
        download(v, vv.data, B * nd);
        if (div != nullptr) download(div, dv.data, B);
    };
}

template EQFLOW_API FlowField field_ode<double>(std::shared_ptr<Field<double>>, int, uint64_t);
template EQFLOW_API FlowField field_ode<float>(std::shared_ptr<Field<float>>, int, uint64_t);

FlowField model_flow_field(const FlowModel& model, const FlowOptions& options) {
    EQFLOW_CHECK(!options.hutchinson || options.hutchinson_probes > 0,
                 "Hutchinson divergence needs at least one probe");
    const int probes = options.hutchinson ? options.hutchinson_probes : 0;
    if (options.device == Device::cuda)
        return field_ode<float>(make_cuda_field(model), probes, options.hutchinson_seed);
    if (options.reference)
        return field_ode<double>(make_reference_field(model, options.threads), probes,
                                 options.hutchinson_seed);
    return field_ode<float>(make_fast_field(model, options.threads), probes,
                            options.hutchinson_seed);
}

FlowField egnn_flow_field(const EgnnModel& model, const FlowOptions& options) {
    return model_flow_field(FlowModel(model), options);
}

FlowIntegrator model_integrator(const FlowModel& model, const FlowOptions& options,
                                int64_t* batch) {
    const int64_t D = static_cast<int64_t>(model.n_particles()) * model.dim();
    if (options.device == Device::cuda && !options.hutchinson) {
        // The whole ODE on the device, exact divergence; it chunks by itself.
        std::shared_ptr<Field<float>> field = make_cuda_field(model);
        if (batch) *batch = ode_gpu_default_chunk(D, options.ode.method);
        const OdeOptions ode = options.ode;
        return [field, ode](int64_t B, double* x, double t0, double t1, double* div_integral,
                            double* path_length, OdeStats* stats) {
            ode_integrate_gpu(*field, B, x, t0, t1, ode, div_integral, path_length, stats);
        };
    }
    EQFLOW_CHECK(options.batch > 0, "flow batch must be positive");
    if (batch) *batch = options.batch;
    const FlowField field = model_flow_field(model, options);
    const OdeOptions ode = options.ode;
    return [field, D, ode](int64_t B, double* x, double t0, double t1, double* div_integral,
                           double* path_length, OdeStats* stats) {
        ode_integrate(field, B, D, x, t0, t1, ode, div_integral, path_length, stats, true);
    };
}

namespace {
// (n-1) d log s: log q in model units minus this is log q in the system's units.
double log_volume_factor(const FlowModel& m) {
    return static_cast<double>((m.n_particles() - 1) * m.dim()) * std::log(m.length_scale());
}
}  // namespace

FlowSamples sample_model(const FlowModel& model, int64_t count, uint64_t seed,
                         const FlowOptions& options) {
    int64_t batch = 0;
    const FlowIntegrator integrate = model_integrator(model, options, &batch);
    FlowSamples s =
        flow_sample(integrate, model.n_particles(), model.dim(), count, seed, batch, options);
    if (model.length_scale() != 1.0) {
        const double scale = model.length_scale(), shift = log_volume_factor(model);
        for (double& v : s.x) v *= scale;
        for (double& l : s.log_q) l -= shift;
        for (double& l : s.path_length) l *= scale;
    }
    return s;
}

FlowLikelihood model_log_likelihood(const FlowModel& model, const double* x, int64_t count,
                                    const FlowOptions& options) {
    const int64_t D = static_cast<int64_t>(model.n_particles()) * model.dim();
    const double scale = model.length_scale();
    std::vector<double> y(x, x + count * D);
    for (double& v : y) v /= scale;
    int64_t batch = 0;
    const FlowIntegrator integrate = model_integrator(model, options, &batch);
    FlowLikelihood l = flow_log_likelihood(integrate, model.n_particles(), model.dim(), y.data(),
                                           count, batch, options);
    if (scale == 1.0) return l;
    const double shift = log_volume_factor(model);
    for (double& v : l.log_q) v -= shift;
    for (double& v : l.path_length) v *= scale;
    return l;
}

bool folds_chirality(const System& system) {
    return system.name == "aldp";
}

int64_t fold_chirality(const System& system, FlowSamples& s) {
    if (!folds_chirality(system)) return 0;
    EQFLOW_CHECK(s.n == kAldpAtoms && s.d == 3,
                 "chirality folding: expected " << kAldpAtoms << " atoms in 3 dimensions");
    int64_t mirrored = 0;
    for (int64_t i = 0; i < s.count; ++i) {
        double* xi = s.x.data() + i * kAldpAtoms * 3;
        if (!std::isfinite(s.log_q[static_cast<size_t>(i)])) continue;  // failed: NaN anyway
        if (!aldp_is_l(xi)) {
            mirror(xi, kAldpAtoms);
            ++mirrored;
        }
    }
    for (double& l : s.log_q) l += std::log(2.0);
    return mirrored;
}

FlowMetrics evaluate_flow(const FlowModel& model, const System& system, const double* test_x,
                          int64_t n_test, int64_t n_samples, uint64_t seed,
                          const FlowOptions& options, FlowSamples* samples, Reweighting* weights) {
    EQFLOW_CHECK(model.n_particles() == system.n && model.dim() == system.d,
                 "the model is for " << model.n_particles() << " particles in " << model.dim()
                                     << " dimensions, the system " << system.name << " has "
                                     << system.n << " in " << system.d);
    FlowSamples s = sample_model(model, n_samples, seed, options);
    const int64_t mirrored = fold_chirality(system, s);
    const std::vector<double> u = reduced_energies(system, s.x.data(), s.count);
    FlowLikelihood l = model_log_likelihood(model, test_x, n_test, options);
    if (folds_chirality(system))
        for (double& v : l.log_q) v += std::log(2.0);  // the folded density of the test points
    const std::vector<double> u_test = reduced_energies(system, test_x, n_test);
    FlowMetrics m = flow_metrics(system.n, system.d, l.log_q, u_test, s.log_q, u, s.path_length);
    m.approximate = options.hutchinson;
    m.chirality_folded = folds_chirality(system);
    m.mirrored_samples = mirrored;
    m.length_scale = model.length_scale();
    if (weights) *weights = importance_weights(u.data(), s.log_q.data(), s.count);
    if (samples) *samples = std::move(s);
    return m;
}

}  // namespace eqflow
