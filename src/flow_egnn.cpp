// The EGNN model as a flow field (exact or Hutchinson divergence), rows split over threads.
#include <algorithm>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "eqflow/egnn_gpu.h"
#include "eqflow/error.h"
#include "eqflow/flow.h"
#include "eqflow/molecule.h"
#include "eqflow/ode_gpu.h"

namespace eqflow {

FlowField egnn_flow_field(const EgnnModel& model, const FlowOptions& options) {
    if (options.device == Device::cuda) {
        if (!options.hutchinson) return egnn_gpu_field(std::make_shared<EgnnGpu>(model));
        EQFLOW_CHECK(options.hutchinson_probes > 0,
                     "Hutchinson divergence needs at least one probe");
        return egnn_gpu_field(std::make_shared<EgnnGpu>(model), options.hutchinson_probes,
                              options.hutchinson_seed);
    }
    auto shared = std::make_shared<EgnnModel>(model);
    const int threads = options.threads > 0
                            ? options.threads
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    const bool hutchinson = options.hutchinson;
    const int probes = options.hutchinson_probes;
    const uint64_t hseed = options.hutchinson_seed;
    EQFLOW_CHECK(!hutchinson || probes > 0, "Hutchinson divergence needs at least one probe");
    return [shared, threads, hutchinson, probes, hseed](int64_t B, const double* x, const double* t,
                                                        double* v, double* div) {
        const EgnnConfig& c = shared->config;
        const int64_t D = static_cast<int64_t>(c.n_particles) * c.dim;
        auto run = [&](int64_t begin, int64_t end) {
            const int64_t m = end - begin;
            if (m <= 0) return;
            if (div == nullptr) {
                egnn_forward(c, shared->params.data(), m, x + begin * D, t + begin, v + begin * D);
            } else if (hutchinson) {
                // The probe stream of a row is Philox(seed, row) inside the call: offsetting the
                // seed by the row index keeps rows independent of how they are split.
                for (int64_t r = begin; r < end; ++r)
                    egnn_divergence_hutchinson(c, shared->params.data(), 1, x + r * D, t + r,
                                               probes, hseed + static_cast<uint64_t>(r), v + r * D,
                                               div + r);
            } else {
                egnn_divergence(c, shared->params.data(), m, x + begin * D, t + begin,
                                v + begin * D, div + begin);
            }
        };
        const int64_t workers = std::min<int64_t>(threads, B);
        if (workers <= 1) {
            run(0, B);
            return;
        }
        std::vector<std::thread> pool;
        const int64_t per = (B + workers - 1) / workers;
        for (int64_t w = 1; w < workers; ++w)
            pool.emplace_back(run, w * per, std::min(B, (w + 1) * per));
        run(0, std::min(B, per));
        for (auto& th : pool) th.join();
    };
}

namespace {
// The GPU path: the whole ODE on the device (eqflow/ode_gpu.h), exact divergence only. With
// Hutchinson on the GPU, the solver runs on the host and the field (egnn_gpu_field) on the GPU.
bool on_device(const FlowOptions& options) {
    return options.device == Device::cuda && !options.hutchinson;
}

// (n-1) d log s: log q in model units minus this is log q in the system's units.
double log_volume_factor(const EgnnConfig& c) {
    return static_cast<double>((c.n_particles - 1) * c.dim) * std::log(c.length_scale);
}
}  // namespace

FlowSamples sample_model(const EgnnModel& model, int64_t count, uint64_t seed,
                         const FlowOptions& options) {
    const EgnnConfig& c = model.config;
    FlowSamples s;
    if (on_device(options)) {
        EgnnGpu gpu(model);
        s = flow_sample_gpu(gpu, c.n_particles, c.dim, count, seed, options);
    } else {
        s = flow_sample(egnn_flow_field(model, options), c.n_particles, c.dim, count, seed,
                        options);
    }
    if (c.length_scale != 1.0) {
        const double scale = c.length_scale, shift = log_volume_factor(c);
        for (double& v : s.x) v *= scale;
        for (double& l : s.log_q) l -= shift;
        for (double& l : s.path_length) l *= scale;
    }
    return s;
}

FlowLikelihood model_log_likelihood(const EgnnModel& model, const double* x, int64_t count,
                                    const FlowOptions& options) {
    const EgnnConfig& c = model.config;
    const int64_t D = static_cast<int64_t>(c.n_particles) * c.dim;
    std::vector<double> y(x, x + count * D);
    for (double& v : y) v /= c.length_scale;
    FlowLikelihood l;
    if (on_device(options)) {
        EgnnGpu gpu(model);
        l = flow_log_likelihood_gpu(gpu, c.n_particles, c.dim, y.data(), count, options);
    } else {
        l = flow_log_likelihood(egnn_flow_field(model, options), c.n_particles, c.dim, y.data(),
                                count, options);
    }
    if (c.length_scale == 1.0) return l;
    const double shift = log_volume_factor(c);
    for (double& v : l.log_q) v -= shift;
    for (double& v : l.path_length) v *= c.length_scale;
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

FlowMetrics evaluate_flow(const EgnnModel& model, const System& system, const double* test_x,
                          int64_t n_test, int64_t n_samples, uint64_t seed,
                          const FlowOptions& options, FlowSamples* samples, Reweighting* weights) {
    EQFLOW_CHECK(model.config.n_particles == system.n && model.config.dim == system.d,
                 "the model is for " << model.config.n_particles << " particles in "
                                     << model.config.dim << " dimensions, the system "
                                     << system.name << " has " << system.n << " in " << system.d);
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
    m.length_scale = model.config.length_scale;
    if (weights) *weights = importance_weights(u.data(), s.log_q.data(), s.count);
    if (samples) *samples = std::move(s);
    return m;
}

}  // namespace eqflow
