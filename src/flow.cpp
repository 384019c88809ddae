// The prior, sampling with the exact log-density and likelihoods by backward integration: see
// eqflow/flow.h.
#include "eqflow/flow.h"

#include <algorithm>
#include <cmath>

#include "eqflow/error.h"
#include "eqflow/philox.h"

namespace eqflow {

namespace {
constexpr double kLog2Pi = 1.8378770664093454836;  // log(2 pi)
}

double prior_log_normalizer(int n, int d) {
    return 0.5 * static_cast<double>((n - 1) * d) * kLog2Pi;
}

void remove_mean(int64_t B, int n, int d, double* x) {
    for (int64_t b = 0; b < B; ++b) {
        double* xb = x + b * n * d;
        for (int a = 0; a < d; ++a) {
            double mean = 0.0;
            for (int i = 0; i < n; ++i) mean += xb[i * d + a];
            mean /= n;
            for (int i = 0; i < n; ++i) xb[i * d + a] -= mean;
        }
    }
}

void sample_prior(int64_t count, int n, int d, uint64_t seed, uint64_t first_stream, double* x) {
    EQFLOW_CHECK(count >= 0 && n >= 2 && d >= 1,
                 "sample_prior: bad sizes " << count << " x " << n << " x " << d);
    for (int64_t i = 0; i < count; ++i) {
        Philox rng(seed, first_stream + static_cast<uint64_t>(i));
        for (int k = 0; k < n * d; ++k) x[i * n * d + k] = rng.normal();
    }
    remove_mean(count, n, d, x);
}

void prior_log_density(int64_t B, int n, int d, const double* x, double* log_p) {
    const double c = prior_log_normalizer(n, d);
    for (int64_t b = 0; b < B; ++b) {
        double s = 0.0;
        for (int k = 0; k < n * d; ++k) s += x[b * n * d + k] * x[b * n * d + k];
        log_p[b] = -0.5 * s - c;
    }
}

namespace {
// x [count][n*d] integrated in place from t0 to t1 in batches of `batch` rows; div_integral and
// path_length [count]; progress after each batch.
void integrate_batches(const FlowIntegrator& integrate, int64_t D, int64_t count, int64_t batch,
                       double* x, double t0, double t1, double* div_integral, double* path_length,
                       OdeStats* stats, const FlowOptions& options) {
    EQFLOW_CHECK(count >= 0, "flow: negative sample count " << count);
    EQFLOW_CHECK(batch > 0, "flow: batch must be positive, got " << batch);
    for (int64_t start = 0; start < count; start += batch) {
        const int64_t B = std::min(batch, count - start);
        integrate(B, x + start * D, t0, t1, div_integral + start, path_length + start, stats);
        if (options.progress) options.progress(start + B, count);
    }
}
}  // namespace

FlowSamples flow_sample(const FlowIntegrator& integrate, int n, int d, int64_t count, uint64_t seed,
                        int64_t batch, const FlowOptions& options) {
    EQFLOW_CHECK(count >= 0, "flow_sample: negative sample count");
    const int64_t D = static_cast<int64_t>(n) * d;
    FlowSamples out;
    out.n = n;
    out.d = d;
    out.count = count;
    out.x0.resize(static_cast<size_t>(count * D));
    out.path_length.resize(static_cast<size_t>(count));
    sample_prior(count, n, d, seed, 0, out.x0.data());
    out.x = out.x0;
    std::vector<double> div_int(static_cast<size_t>(count)), log_p0(static_cast<size_t>(count));
    prior_log_density(count, n, d, out.x0.data(), log_p0.data());
    integrate_batches(integrate, D, count, batch, out.x.data(), 0.0, 1.0, div_int.data(),
                      out.path_length.data(), &out.ode, options);
    // log q(x1) = log p0(x0) - int_0^1 div dt.
    out.log_q.resize(static_cast<size_t>(count));
    for (size_t b = 0; b < out.log_q.size(); ++b) out.log_q[b] = log_p0[b] - div_int[b];
    out.failed = out.ode.failed;
    return out;
}

FlowLikelihood flow_log_likelihood(const FlowIntegrator& integrate, int n, int d, const double* x,
                                   int64_t count, int64_t batch, const FlowOptions& options) {
    EQFLOW_CHECK(count >= 0, "flow_log_likelihood: negative count");
    const int64_t D = static_cast<int64_t>(n) * d;
    FlowLikelihood out;
    out.x0.assign(x, x + count * D);
    out.path_length.resize(static_cast<size_t>(count));
    std::vector<double> div_int(static_cast<size_t>(count)), log_p0(static_cast<size_t>(count));
    // Backwards from t = 1 to 0: I = int_1^0 div dt = -int_0^1 div dt, so
    // log q(x1) = log p0(x0) - int_0^1 div dt = log p0(x0) + I.
    integrate_batches(integrate, D, count, batch, out.x0.data(), 1.0, 0.0, div_int.data(),
                      out.path_length.data(), &out.ode, options);
    prior_log_density(count, n, d, out.x0.data(), log_p0.data());
    out.log_q.resize(static_cast<size_t>(count));
    for (size_t b = 0; b < out.log_q.size(); ++b) out.log_q[b] = log_p0[b] + div_int[b];
    out.failed = out.ode.failed;
    return out;
}

namespace {
FlowIntegrator host_integrator(const FlowField& field, int64_t D, const OdeOptions& ode) {
    return [field, D, ode](int64_t B, double* x, double t0, double t1, double* div_integral,
                           double* path_length, OdeStats* stats) {
        ode_integrate(field, B, D, x, t0, t1, ode, div_integral, path_length, stats, true);
    };
}
}  // namespace

FlowSamples flow_sample(const FlowField& field, int n, int d, int64_t count, uint64_t seed,
                        const FlowOptions& options) {
    return flow_sample(host_integrator(field, static_cast<int64_t>(n) * d, options.ode), n, d,
                       count, seed, options.batch, options);
}

FlowLikelihood flow_log_likelihood(const FlowField& field, int n, int d, const double* x,
                                   int64_t count, const FlowOptions& options) {
    return flow_log_likelihood(host_integrator(field, static_cast<int64_t>(n) * d, options.ode), n,
                               d, x, count, options.batch, options);
}

}  // namespace eqflow
