// Importance weights, ESS, energy histograms and the metrics JSON: see eqflow/flow.h.
#include <algorithm>
#include <cmath>
#include <limits>

#include "eqflow/error.h"
#include "eqflow/metrics.h"
#include "eqflow/prior.h"

namespace eqflow {

namespace {
// The largest finite log w (-inf when there is none): the shift that makes the largest weight 1.
double max_finite(const double* log_w, int64_t N) {
    double max_lw = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < N; ++i)
        if (std::isfinite(log_w[i])) max_lw = std::max(max_lw, log_w[i]);
    return max_lw;
}
}  // namespace

double effective_sample_size(const double* log_w, int64_t N) {
    if (N <= 0) return 0.0;
    const double max_lw = max_finite(log_w, N);
    if (!std::isfinite(max_lw)) return 0.0;
    // Shift by the largest log weight so the largest w is 1: no overflow, and ESS is scale-free.
    double s1 = 0.0, s2 = 0.0;
    for (int64_t i = 0; i < N; ++i) {
        if (!std::isfinite(log_w[i])) continue;
        const double w = std::exp(log_w[i] - max_lw);
        s1 += w;
        s2 += w * w;
    }
    return s1 * s1 / s2 / static_cast<double>(N);
}

double effective_sample_size_stderr(const double* log_w, int64_t N) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (N < 2) return nan;
    const double max_lw = max_finite(log_w, N);
    if (!std::isfinite(max_lw)) return nan;
    // a = mean w, b = mean w^2 (over all N, zeros included), ESS = a^2 / b; its gradient
    // g = (2a / b, -a^2 / b^2) against the sample covariance of (w, w^2) over N.
    const auto weight = [&](int64_t i) {
        return std::isfinite(log_w[i]) ? std::exp(log_w[i] - max_lw) : 0.0;
    };
    double a = 0.0, b = 0.0;
    for (int64_t i = 0; i < N; ++i) {
        const double w = weight(i);
        a += w;
        b += w * w;
    }
    a /= static_cast<double>(N);
    b /= static_cast<double>(N);
    double c11 = 0.0, c12 = 0.0, c22 = 0.0;
    for (int64_t i = 0; i < N; ++i) {
        const double w = weight(i), e1 = w - a, e2 = w * w - b;
        c11 += e1 * e1;
        c12 += e1 * e2;
        c22 += e2 * e2;
    }
    const double norm = 1.0 / static_cast<double>(N - 1);
    c11 *= norm;
    c12 *= norm;
    c22 *= norm;
    const double g1 = 2.0 * a / b, g2 = -a * a / (b * b);
    const double var =
        (g1 * g1 * c11 + 2.0 * g1 * g2 * c12 + g2 * g2 * c22) / static_cast<double>(N);
    return std::sqrt(std::max(var, 0.0));
}

Reweighting importance_weights(const double* u, const double* log_q, int64_t N) {
    Reweighting r;
    r.log_w.resize(static_cast<size_t>(std::max<int64_t>(N, 0)));
    double max_lw = -std::numeric_limits<double>::infinity();
    double sum_u = 0.0;
    int64_t finite_u = 0;
    for (int64_t i = 0; i < N; ++i) {
        const bool ok = std::isfinite(u[i]) && std::isfinite(log_q[i]);
        r.log_w[static_cast<size_t>(i)] =
            ok ? -u[i] - log_q[i] : -std::numeric_limits<double>::infinity();
        if (!ok) ++r.invalid;
        if (ok) max_lw = std::max(max_lw, r.log_w[static_cast<size_t>(i)]);
        if (std::isfinite(u[i])) {
            sum_u += u[i];
            ++finite_u;
        }
    }
    r.energy_mean = finite_u > 0 ? sum_u / static_cast<double>(finite_u)
                                 : std::numeric_limits<double>::quiet_NaN();
    r.ess = effective_sample_size(r.log_w.data(), N);
    r.ess_stderr = effective_sample_size_stderr(r.log_w.data(), N);
    double sw = 0.0, swu = 0.0;
    for (int64_t i = 0; i < N && std::isfinite(max_lw); ++i) {
        const double lw = r.log_w[static_cast<size_t>(i)];
        if (!std::isfinite(lw)) continue;
        const double w = std::exp(lw - max_lw);
        sw += w;
        swu += w * u[i];
    }
    r.energy_mean_reweighted = sw > 0 ? swu / sw : std::numeric_limits<double>::quiet_NaN();
    return r;
}

std::vector<double> reduced_energies(const System& system, const double* x, int64_t N) {
    const int64_t D = static_cast<int64_t>(system.n) * system.d;
    std::vector<double> u(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
        bool finite = true;
        for (int64_t k = 0; k < D; ++k) finite = finite && std::isfinite(x[i * D + k]);
        double e = finite ? energy_reference(system, x + i * D) / system.kT
                          : std::numeric_limits<double>::infinity();
        if (!std::isfinite(e)) e = std::numeric_limits<double>::infinity();
        u[static_cast<size_t>(i)] = e;
    }
    return u;
}

namespace {

double quantile(std::vector<double> v, double q) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const double pos = q * static_cast<double>(v.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

// Histogram as a density over [edges.front(), edges.back()]; values outside are left out, but
// the normalisation counts every finite value (so a figure shows how much falls outside).
std::vector<double> histogram(const std::vector<double>& values, const std::vector<double>* weights,
                              const std::vector<double>& edges) {
    const size_t bins = edges.size() - 1;
    std::vector<double> h(bins, 0.0);
    const double lo = edges.front(), hi = edges.back(),
                 width = (hi - lo) / static_cast<double>(bins);
    double total = 0.0;
    for (size_t i = 0; i < values.size(); ++i) {
        const double w = weights ? (*weights)[i] : 1.0;
        if (!std::isfinite(values[i]) || !(w > 0)) continue;
        total += w;
        if (values[i] < lo || values[i] > hi) continue;
        size_t k = static_cast<size_t>((values[i] - lo) / width);
        if (k >= bins) k = bins - 1;
        h[k] += w;
    }
    if (total > 0)
        for (double& x : h) x /= total * width;
    return h;
}

}  // namespace

EnergyHistogram energy_histogram(const std::vector<double>& u_data,
                                 const std::vector<double>& u_samples,
                                 const std::vector<double>& log_w, int bins) {
    EQFLOW_CHECK(bins > 0, "energy_histogram: bins must be positive");
    EQFLOW_CHECK(
        log_w.size() == u_samples.size(),
        "energy_histogram: " << log_w.size() << " weights for " << u_samples.size() << " samples");
    std::vector<double> data, samples;
    for (double u : u_data)
        if (std::isfinite(u)) data.push_back(u);
    for (double u : u_samples)
        if (std::isfinite(u)) samples.push_back(u);
    // The data set the scale: a poor model's high-energy tail must not squeeze the data's
    // histogram into a few bins. Samples beyond the range still count in the normalisation.
    const std::vector<double>& ref = data.empty() ? samples : data;
    const double d_lo = quantile(ref, 0.005), d_hi = quantile(ref, 0.995);
    double lo = samples.empty() ? d_lo : std::min(d_lo, quantile(samples, 0.005));
    double hi = d_hi + 0.5 * (d_hi - d_lo);
    if (!(hi > lo)) {
        lo -= 0.5;
        hi += 0.5;
    }
    EnergyHistogram h;
    h.edges.resize(static_cast<size_t>(bins) + 1);
    for (int k = 0; k <= bins; ++k) h.edges[static_cast<size_t>(k)] = lo + (hi - lo) * k / bins;
    std::vector<double> w(log_w.size(), 0.0);
    double max_lw = -std::numeric_limits<double>::infinity();
    for (double lw : log_w)
        if (std::isfinite(lw)) max_lw = std::max(max_lw, lw);
    for (size_t i = 0; i < log_w.size(); ++i)
        w[i] = std::isfinite(log_w[i]) ? std::exp(log_w[i] - max_lw) : 0.0;
    h.data = histogram(u_data, nullptr, h.edges);
    h.samples = histogram(u_samples, nullptr, h.edges);
    h.reweighted = histogram(u_samples, &w, h.edges);
    return h;
}

Json EnergyHistogram::to_json() const {
    Json j = Json::object();
    Json e = Json::array(), a = Json::array(), s = Json::array(), r = Json::array();
    for (double x : edges) e.push_back(x);
    for (double x : data) a.push_back(x);
    for (double x : samples) s.push_back(x);
    for (double x : reweighted) r.push_back(x);
    j["bin_edges"] = e;
    j["data"] = a;
    j["samples"] = s;
    j["reweighted"] = r;
    return j;
}

namespace {
// Mean of the finite values (NaN when there is none); `count` (nullable) receives how many.
double mean_of_finite(const std::vector<double>& values, int64_t* count = nullptr) {
    double sum = 0.0;
    int64_t k = 0;
    for (double v : values)
        if (std::isfinite(v)) {
            sum += v;
            ++k;
        }
    if (count) *count = k;
    return k > 0 ? sum / static_cast<double>(k) : std::numeric_limits<double>::quiet_NaN();
}

// Standard error of mean_of_finite: sd / sqrt(k) over the finite values (NaN when k < 2: not
// measurable, and a 0 would read as exact).
double stderr_of_finite(const std::vector<double>& values) {
    int64_t k = 0;
    const double m = mean_of_finite(values, &k);
    if (k < 2) return std::numeric_limits<double>::quiet_NaN();
    double ss = 0.0;
    for (double v : values)
        if (std::isfinite(v)) ss += (v - m) * (v - m);
    return std::sqrt(ss / static_cast<double>(k - 1) / static_cast<double>(k));
}
}  // namespace

FlowMetrics flow_metrics(int n, int d, const std::vector<double>& test_log_q,
                         const std::vector<double>& test_u, const std::vector<double>& sample_log_q,
                         const std::vector<double>& sample_u,
                         const std::vector<double>& sample_path_length) {
    EQFLOW_CHECK(
        sample_log_q.size() == sample_u.size() && sample_u.size() == sample_path_length.size(),
        "flow_metrics: sample arrays differ in length");
    FlowMetrics m;
    m.n_samples = static_cast<int64_t>(sample_u.size());
    m.n_test = static_cast<int64_t>(test_log_q.size());
    int64_t finite_test = 0;
    m.nll_normalized = -mean_of_finite(test_log_q, &finite_test);
    m.failed_test = m.n_test - finite_test;
    m.nll = m.nll_normalized - prior_log_normalizer(n, d);
    const Reweighting rw = importance_weights(sample_u.data(), sample_log_q.data(), m.n_samples);
    m.ess = rw.ess;
    m.ess_stderr = rw.ess_stderr;
    m.nll_stderr = stderr_of_finite(test_log_q);
    m.path_length_stderr = stderr_of_finite(sample_path_length);
    // log Z = log mean(w) over all N (failures weigh 0), shifted by the largest log w.
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double max_lw = max_finite(rw.log_w.data(), m.n_samples);
    double sum_w = 0.0;
    if (std::isfinite(max_lw))
        for (double lw : rw.log_w)
            if (std::isfinite(lw)) sum_w += std::exp(lw - max_lw);
    m.log_z =
        std::isfinite(max_lw) ? max_lw + std::log(sum_w / static_cast<double>(m.n_samples)) : nan;
    // -u - log q and u at the test points where both are finite (one set for both estimates).
    std::vector<double> data_log_w, data_u;
    for (size_t i = 0; i < test_log_q.size() && i < test_u.size(); ++i)
        if (std::isfinite(test_log_q[i]) && std::isfinite(test_u[i])) {
            data_log_w.push_back(-test_u[i] - test_log_q[i]);
            data_u.push_back(test_u[i]);
        }
    if (std::isfinite(m.log_z) && !data_log_w.empty()) {
        m.kl_test = mean_of_finite(data_log_w) - m.log_z;
        const double se_data = stderr_of_finite(data_log_w);
        const double var_log_z = (1.0 / rw.ess - 1.0) / static_cast<double>(m.n_samples);
        m.kl_test_stderr = std::sqrt(se_data * se_data + std::max(var_log_z, 0.0));
        m.entropy_test = mean_of_finite(data_u) + m.log_z - prior_log_normalizer(n, d);
    } else {
        m.kl_test = m.kl_test_stderr = m.entropy_test = nan;
    }
    m.failed_samples = rw.invalid;
    m.energy_mean_samples = rw.energy_mean;
    m.energy_mean_reweighted = rw.energy_mean_reweighted;
    m.path_length = mean_of_finite(sample_path_length);
    m.energy_mean_test = mean_of_finite(test_u);
    m.histogram = energy_histogram(test_u, sample_u, rw.log_w);
    return m;
}

Json FlowMetrics::to_json() const {
    Json j = Json::object();
    j["nll"] = nll;
    j["nll_normalized"] = nll_normalized;
    j["ess"] = ess;
    j["path_length"] = path_length;
    j["nll_stderr"] = nll_stderr;
    j["ess_stderr"] = ess_stderr;
    j["path_length_stderr"] = path_length_stderr;
    j["log_z"] = log_z;
    j["kl_test"] = kl_test;
    j["kl_test_stderr"] = kl_test_stderr;
    j["entropy_test"] = entropy_test;
    j["n_samples"] = n_samples;
    j["n_test"] = n_test;
    j["energy_mean_samples"] = energy_mean_samples;
    j["energy_mean_reweighted"] = energy_mean_reweighted;
    j["energy_mean_test"] = energy_mean_test;
    j["failed_samples"] = failed_samples;
    j["failed_test"] = failed_test;
    j["approximate"] = approximate;
    j["length_scale"] = length_scale;
    if (chirality_folded) {
        j["chirality_folded"] = true;
        j["mirrored_samples"] = mirrored_samples;
        j["mirrored_fraction"] =
            n_samples > 0 ? static_cast<double>(mirrored_samples) / static_cast<double>(n_samples)
                          : 0.0;
    }
    j["energy_histogram"] = histogram.to_json();
    return j;
}

}  // namespace eqflow
