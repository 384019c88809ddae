// The flow (eqflow/flow.h): prior normalisation, exact log-densities of known flows,
// sample-then-backward consistency (analytic fields and the EGNN), ESS and reweighting, metrics
// conventions and the energy-histogram figure.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/figures.h"
#include "eqflow/flow.h"
#include "eqflow/json.h"
#include "eqflow/molecule.h"
#include "eqflow/systems.h"
#include "test_util.h"

namespace eqflow {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// An orthonormal basis of the mean-free subspace of R^{n d}: Gram-Schmidt on the centred unit
// vectors (particle i, axis a) for i < n - 1.
std::vector<std::vector<double>> mean_free_basis(int n, int d) {
    std::vector<std::vector<double>> basis;
    for (int i = 0; i + 1 < n; ++i)
        for (int a = 0; a < d; ++a) {
            std::vector<double> e(static_cast<size_t>(n * d), 0.0);
            e[static_cast<size_t>(i * d + a)] = 1.0;
            remove_mean(1, n, d, e.data());
            for (const auto& b : basis) {
                double dot = 0;
                for (size_t k = 0; k < e.size(); ++k) dot += e[k] * b[k];
                for (size_t k = 0; k < e.size(); ++k) e[k] -= dot * b[k];
            }
            double norm = 0;
            for (double v : e) norm += v * v;
            for (double& v : e) v /= std::sqrt(norm);
            basis.push_back(e);
        }
    return basis;
}

TEST(Prior, NormalisedOnTheMeanFreeSubspace) {
    // Midpoint rule on [-9, 9]^m: the Gaussian tails beyond 9 are < 1e-18, and the midpoint rule
    // is spectrally accurate for a Gaussian at this spacing.
    constexpr double kIntegralTol = 1e-9;
    for (const auto& [n, d] :
         {std::pair{2, 1}, std::pair{3, 1}, std::pair{2, 2}, std::pair{4, 1}, std::pair{2, 3}}) {
        const auto basis = mean_free_basis(n, d);
        const int m = static_cast<int>(basis.size());
        ASSERT_EQ(m, (n - 1) * d);
        const int per_axis = m == 1 ? 2000 : m == 2 ? 300 : 90;
        const double lo = -9.0, h = 18.0 / per_axis;
        int64_t total = 1;
        for (int k = 0; k < m; ++k) total *= per_axis;
        double integral = 0.0;
        std::vector<double> x(static_cast<size_t>(n * d));
        for (int64_t idx = 0; idx < total; ++idx) {
            std::fill(x.begin(), x.end(), 0.0);
            int64_t rest = idx;
            for (int k = 0; k < m; ++k) {
                const double c = lo + (static_cast<double>(rest % per_axis) + 0.5) * h;
                rest /= per_axis;
                for (size_t q = 0; q < x.size(); ++q) x[q] += c * basis[static_cast<size_t>(k)][q];
            }
            double lp;
            prior_log_density(1, n, d, x.data(), &lp);
            integral += std::exp(lp);
        }
        integral *= std::pow(h, m);
        std::printf("n = %d, d = %d: integral of p0 over the subspace = %.12f\n", n, d, integral);
        EXPECT_NEAR(integral, 1.0, kIntegralTol) << n << " x " << d;
    }
    EXPECT_NEAR(prior_log_normalizer(4, 2), 0.5 * 6 * std::log(2 * M_PI), 1e-12);
}

TEST(Prior, SamplesAreCentredStandardNormalOnTheSubspace) {
    const int n = 4, d = 2, m = (n - 1) * d;
    const int64_t N = 20000;
    std::vector<double> x(static_cast<size_t>(N * n * d));
    sample_prior(N, n, d, test::seed(), 0, x.data());
    double sum_sq = 0.0, sum_lp = 0.0;
    for (int64_t b = 0; b < N; ++b) {
        for (int a = 0; a < d; ++a) {
            double mean = 0;
            for (int i = 0; i < n; ++i) mean += x[static_cast<size_t>(b * n * d + i * d + a)];
            ASSERT_NEAR(mean, 0.0, 1e-12);
        }
        double s = 0;
        for (int k = 0; k < n * d; ++k)
            s += x[static_cast<size_t>(b * n * d + k)] * x[static_cast<size_t>(b * n * d + k)];
        sum_sq += s;
        double lp;
        prior_log_density(1, n, d, x.data() + b * n * d, &lp);
        sum_lp += lp;
    }
    // |x|^2 is chi-squared with m degrees of freedom: mean m, standard error sqrt(2m / N).
    const double kFiveSigma = 5.0 * std::sqrt(2.0 * m / N);
    EXPECT_NEAR(sum_sq / N, m, kFiveSigma);
    // So the mean log-density is -(m/2) - normaliser (the entropy of the prior, negated).
    EXPECT_NEAR(sum_lp / N, -0.5 * m - prior_log_normalizer(n, d), 0.5 * kFiveSigma);
    // A sample depends on its stream only: drawing from stream 7 on gives rows 7.. again.
    std::vector<double> tail(static_cast<size_t>(3 * n * d));
    sample_prior(3, n, d, test::seed(), 7, tail.data());
    for (size_t k = 0; k < tail.size(); ++k)
        EXPECT_EQ(tail[k], x[static_cast<size_t>(7 * n * d) + k]);
}

// v = P [ (alpha + beta t) x + gamma tanh(x) ], P the projection onto the mean-free subspace.
// div v = tr(P J) = (1 - 1/n) [ (alpha + beta t) n d + gamma sum_k sech^2(x_k) ].
FlowField analytic_field(int n, int d, double alpha, double beta, double gamma) {
    return [=](int64_t B, const double* x, const double* t, double* v, double* div) {
        const int D = n * d;
        for (int64_t b = 0; b < B; ++b) {
            const double s = alpha + beta * t[b];
            double sech2 = 0.0;
            for (int k = 0; k < D; ++k) {
                const double th = std::tanh(x[b * D + k]);
                v[b * D + k] = s * x[b * D + k] + gamma * th;
                sech2 += 1.0 - th * th;
            }
            remove_mean(1, n, d, v + b * D);
            if (div) div[b] = (1.0 - 1.0 / n) * (s * D + gamma * sech2);
        }
    };
}

TEST(Flow, LinearFlowHasTheClosedFormDensity) {
    // v = P (alpha + beta t) x maps the prior to N(0, g^2) on the subspace, g = exp(alpha +
    // beta/2): log q(x1) = -|x1|^2 / (2 g^2) - normaliser - m log g.
    const int n = 4, d = 2, m = (n - 1) * d;
    const double alpha = 0.4, beta = -0.3;
    FlowOptions opt;
    opt.batch = 7;  // several batches, the last one partial
    opt.ode.atol = opt.ode.rtol = 1e-9;
    const FlowSamples s =
        flow_sample(analytic_field(n, d, alpha, beta, 0.0), n, d, 20, test::seed(), opt);
    EXPECT_EQ(s.failed, 0);
    const double log_g = alpha + 0.5 * beta;
    // Tight ODE tolerance: the log-density is exact to ~1e-8.
    constexpr double kLogQTol = 1e-7;
    for (int64_t b = 0; b < s.count; ++b) {
        double r2 = 0, r02 = 0;
        for (int k = 0; k < n * d; ++k) {
            r2 += s.x[static_cast<size_t>(b * n * d + k)] * s.x[static_cast<size_t>(b * n * d + k)];
            r02 +=
                s.x0[static_cast<size_t>(b * n * d + k)] * s.x0[static_cast<size_t>(b * n * d + k)];
        }
        EXPECT_NEAR(std::sqrt(r2), std::exp(log_g) * std::sqrt(r02), kLogQTol);
        const double exact =
            -0.5 * r2 * std::exp(-2 * log_g) - prior_log_normalizer(n, d) - m * log_g;
        EXPECT_NEAR(s.log_q[static_cast<size_t>(b)], exact, kLogQTol);
        EXPECT_GT(s.path_length[static_cast<size_t>(b)], 0.0);
    }
}

void expect_round_trip(const FlowField& field, int n, int d, double tol, double round_trip_tol) {
    FlowOptions opt;
    opt.batch = 5;
    opt.ode.atol = opt.ode.rtol = tol;
    const int64_t N = 12;
    const FlowSamples s = flow_sample(field, n, d, N, test::seed() + 1, opt);
    ASSERT_EQ(s.failed, 0);
    const FlowLikelihood l = flow_log_likelihood(field, n, d, s.x.data(), N, opt);
    ASSERT_EQ(l.failed, 0);
    EXPECT_ALL_CLOSE(l.x0, s.x0, round_trip_tol, round_trip_tol);
    EXPECT_ALL_CLOSE(l.log_q, s.log_q, round_trip_tol, round_trip_tol);
    EXPECT_ALL_CLOSE(l.path_length, s.path_length, round_trip_tol, round_trip_tol);
}

TEST(Flow, SampleThenBackwardRecoversPriorPointAndDensity) {
    // Two solves at tolerance 1e-9 agree to ~1e-7; at the sampling default 1e-4 to ~1e-3.
    expect_round_trip(analytic_field(4, 2, 0.3, -0.6, 0.8), 4, 2, 1e-9, 1e-7);
    expect_round_trip(analytic_field(4, 2, 0.3, -0.6, 0.8), 4, 2, 1e-4, 2e-3);
}

// A small DW4 EGNN whose field really moves the samples: the initial coordinate layer (gain
// 0.001) makes an almost-zero field, so its weights are redrawn from U(-0.5, 0.5) (stream k).
EgnnModel moving_dw4_model(uint64_t k) {
    EgnnModel model;
    model.config = default_egnn_config("dw4", 4, 2);
    model.config.hidden = 8;
    model.config.layers = 2;
    model.params = egnn_init_parameters(model.config, test::seed());
    auto gen = test::rng(k);
    std::uniform_real_distribution<double> u(-0.5, 0.5);
    for (const ParamEntry& e : egnn_parameter_layout(model.config))
        if (e.name.find("coord_mlp.2.weight") != std::string::npos)
            for (int64_t i = 0; i < shape_numel(e.shape); ++i)
                model.params[static_cast<size_t>(e.offset + i)] = u(gen);
    return model;
}

TEST(Flow, EgnnSampleThenBackwardRecoversPriorPointAndDensity) {
    const EgnnModel model = moving_dw4_model(9);
    FlowOptions opt;
    opt.threads = 2;
    const FlowField field = egnn_flow_field(model, opt);
    expect_round_trip(field, 4, 2, 1e-9, 1e-6);
    // The thread count changes nothing.
    FlowOptions one = opt;
    one.threads = 1;
    const FlowSamples a = flow_sample(field, 4, 2, 6, 5, opt);
    const FlowSamples b = flow_sample(egnn_flow_field(model, one), 4, 2, 6, 5, one);
    for (size_t k = 0; k < a.x.size(); ++k) ASSERT_EQ(a.x[k], b.x[k]);
    for (size_t k = 0; k < a.log_q.size(); ++k) ASSERT_EQ(a.log_q[k], b.log_q[k]);
    double moved = 0;
    for (size_t k = 0; k < a.x.size(); ++k) moved = std::max(moved, std::fabs(a.x[k] - a.x0[k]));
    EXPECT_GT(moved, 1e-2) << "the test field should move the samples";
}

TEST(Ess, FormulaCases) {
    constexpr double kExact = 1e-12;  // closed-form cases: rounding only
    const std::vector<double> equal(50, -3.25);
    EXPECT_NEAR(effective_sample_size(equal.data(), 50), 1.0, kExact);
    std::vector<double> dominant(40, -1000.0);
    dominant[17] = 0.0;
    EXPECT_NEAR(effective_sample_size(dominant.data(), 40), 1.0 / 40, kExact);
    // w = (1, 3): (4)^2 / 10 / 2 = 0.8; shifting every log w by 800 (exp would overflow) changes
    // nothing.
    std::vector<double> two = {0.0, std::log(3.0)};
    EXPECT_NEAR(effective_sample_size(two.data(), 2), 0.8, kExact);
    for (double& v : two) v += 800.0;
    EXPECT_NEAR(effective_sample_size(two.data(), 2), 0.8, kExact);
    // Non-finite log w: zero weight, but still one of the N drawn.
    const std::vector<double> holes = {0.0, 0.0, -kInf, kNaN};
    EXPECT_NEAR(effective_sample_size(holes.data(), 4), 0.5, kExact);
    const std::vector<double> none = {-kInf, kNaN, kInf};
    EXPECT_EQ(effective_sample_size(none.data(), 3), 0.0);
    EXPECT_EQ(effective_sample_size(nullptr, 0), 0.0);
}

// The ESS's standard error: by hand on w = (1, 2, 3), then against the spread of the ESS itself
// over independent draws of log-normal weights (log w ~ N(0, s^2), ESS -> exp(-s^2)), N = 2000
// as in LJ13's evaluation, 300 repetitions. The delta method is exact in the limit and low for
// heavy tails; measured (numpy, 20,000 repetitions): s = 0.3 ratio 1.00, s = 0.7 0.91, s = 1.0
// 0.78.
TEST(Ess, StandardErrorFollowsTheSpreadOverDraws) {
    // w = (1, 2, 3): a = mean w = 2, b = mean w^2 = 14/3, ESS = a^2 / b = 6/7; gradient
    // g = (2a/b, -a^2/b^2) = (6/7, -9/49); sample covariances (N - 1): var w = 1,
    // cov(w, w^2) = 4, var w^2 = 49/3; g.C.g = 36/49 - 432/343 + 27/49 = 9/343, over N = 3.
    const std::vector<double> three = {0.0, std::log(2.0), std::log(3.0)};
    EXPECT_NEAR(effective_sample_size(three.data(), 3), 6.0 / 7.0, 1e-14);
    EXPECT_NEAR(effective_sample_size_stderr(three.data(), 3), std::sqrt(3.0 / 343.0), 1e-14);
    const std::vector<double> equal(50, -3.25);
    EXPECT_NEAR(effective_sample_size_stderr(equal.data(), 50), 0.0, 1e-12);
    EXPECT_TRUE(std::isnan(effective_sample_size_stderr(equal.data(), 1)));  // not measurable
    const std::vector<double> none = {-kInf, kNaN};
    EXPECT_TRUE(std::isnan(effective_sample_size_stderr(none.data(), 2)));

    auto gen = test::rng(41);
    for (double s : {0.3, 0.7}) {
        const int reps = 300, N = 2000;
        double sum = 0.0, sum2 = 0.0, se_mean = 0.0;
        for (int r = 0; r < reps; ++r) {
            std::vector<double> lw = test::random_normal(N, gen);
            for (double& v : lw) v *= s;
            const double e = effective_sample_size(lw.data(), N);
            sum += e;
            sum2 += e * e;
            se_mean += effective_sample_size_stderr(lw.data(), N) / reps;
        }
        const double mean = sum / reps,
                     spread = std::sqrt((sum2 / reps - mean * mean) * reps / (reps - 1));
        std::printf(
            "log-normal s %.1f: ESS %.4f, spread over draws %.4f, delta-method stderr %.4f\n", s,
            mean, spread, se_mean);
        // The ESS estimator's finite-N bias (~+0.001 at s = 0.7) on top of 4.5 standard errors.
        EXPECT_NEAR(mean, std::exp(-s * s), 4.5 * spread / std::sqrt(reps) + 0.002);
        // The spread's own sampling error over 300 repetitions is ~4-5%: the bounds leave the
        // delta method's bias (~9% low at s = 0.7) and 4.5 of those errors each way.
        EXPECT_GT(se_mean, 0.7 * spread) << s;
        EXPECT_LT(se_mean, 1.25 * spread) << s;
    }
}

// log Z, the KL estimate and the entropy on the test points, on a case with known answers: target
// p = N(0, 1) (u = x^2 / 2, Z = sqrt(2 pi)), model q = N(mu, 1), so KL(p || q) = mu^2 / 2. The
// sample arrays are q's draws, the test arrays p's.
TEST(Metrics, KlAndLogZAgainstGaussians) {
    auto gen = test::rng(43);
    const double mu = 0.5, log_2pi = std::log(2.0 * M_PI);
    const int N = 20000, M = 5000;
    std::vector<double> s_lq, s_u, s_pl(N, 1.0), t_lq, t_u;
    for (double z : test::random_normal(N, gen)) {
        const double x = mu + z;
        s_lq.push_back(-0.5 * z * z - 0.5 * log_2pi);
        s_u.push_back(0.5 * x * x);
    }
    for (double x : test::random_normal(M, gen)) {
        t_lq.push_back(-0.5 * (x - mu) * (x - mu) - 0.5 * log_2pi);
        t_u.push_back(0.5 * x * x);
    }
    const FlowMetrics m = flow_metrics(2, 1, t_lq, t_u, s_lq, s_u, s_pl);
    std::printf("log Z %.4f (exact %.4f), KL %.4f +- %.4f (exact %.4f), entropy %.4f\n", m.log_z,
                0.5 * log_2pi, m.kl_test, m.kl_test_stderr, 0.5 * mu * mu, m.entropy_test);
    EXPECT_NEAR(m.log_z, 0.5 * log_2pi, 0.02);  // its spread: sqrt((e^{mu^2} - 1) / N) ~ 0.004
    EXPECT_NEAR(m.kl_test, 0.5 * mu * mu, 4.5 * m.kl_test_stderr);
    // The stderr: the spread of -u - log q on the data is |mu| sd(x) = 0.5, and log Z's variance
    // is (e^{mu^2} - 1) / N: sqrt(0.25 / M + 0.284 / N) = 0.00801 (0.00707 without log Z's part).
    EXPECT_NEAR(m.kl_test_stderr, 0.00801, 0.08 * 0.00801);
    // The entropy on the test points: mean(u) + log Z minus the paper-convention constant
    // prior_log_normalizer(2, 1) = 1/2 log(2 pi); the entropy of N(0, 1) is 1/2 log(2 pi e), so
    // about 0.5 here.
    double mean_u = 0.0;
    for (double u : t_u) mean_u += u / M;
    EXPECT_NEAR(m.entropy_test, mean_u + m.log_z - 0.5 * log_2pi, 1e-12);
    EXPECT_NEAR(m.nll, m.entropy_test + m.kl_test, 1e-12);  // every test point is finite
    EXPECT_NEAR(m.entropy_test, 0.5, 4.5 * std::sqrt(0.5 / M) + 0.02);

    // The model is the target: every log w is log Z, so KL is 0 to rounding.
    std::vector<double> same_lq;
    for (double u : s_u) same_lq.push_back(-u - 0.5 * log_2pi);
    std::vector<double> same_t_lq;
    for (double u : t_u) same_t_lq.push_back(-u - 0.5 * log_2pi);
    const FlowMetrics e = flow_metrics(2, 1, same_t_lq, t_u, same_lq, s_u, s_pl);
    EXPECT_NEAR(e.kl_test, 0.0, 1e-12);
    EXPECT_NEAR(e.kl_test_stderr, 0.0, 1e-6);
    EXPECT_NEAR(e.log_z, 0.5 * log_2pi, 1e-12);
    // A failed sample weighs 0 but counts in N: log Z drops by log(N / (N - 1)); a test point
    // whose u is not finite leaves both the KL and the entropy (not the nll: its log q is finite).
    same_lq[7] = kNaN;
    std::vector<double> t_u_hole = t_u;
    t_u_hole[3] = kInf;
    const FlowMetrics h = flow_metrics(2, 1, same_t_lq, t_u_hole, same_lq, s_u, s_pl);
    EXPECT_NEAR(h.log_z, 0.5 * log_2pi + std::log((N - 1.0) / N), 1e-12);
    EXPECT_EQ(h.failed_samples, 1);
    EXPECT_NEAR(h.kl_test, -std::log((N - 1.0) / N), 1e-12);
    double mean_u_hole = 0.0;
    for (int i = 0; i < M; ++i)
        if (i != 3) mean_u_hole += t_u[i] / (M - 1);
    EXPECT_NEAR(h.entropy_test, mean_u_hole + h.log_z - 0.5 * log_2pi, 1e-12);

    // No finite weight: NaN, not a number that looks measured.
    const std::vector<double> bad(3, kNaN), one(3, 1.0);
    const FlowMetrics b = flow_metrics(2, 1, t_lq, t_u, bad, one, one);
    EXPECT_TRUE(std::isnan(b.log_z));
    EXPECT_TRUE(std::isnan(b.kl_test));
    EXPECT_TRUE(std::isnan(b.entropy_test));
}

TEST(Ess, ImportanceWeightsCountInvalidAndNeverNaN) {
    const std::vector<double> u = {1.0, 2.0, kInf, 3.0, kNaN};
    const std::vector<double> log_q = {-1.0, -2.0, -1.0, kNaN, -1.0};
    const Reweighting r = importance_weights(u.data(), log_q.data(), 5);
    EXPECT_EQ(r.invalid, 3);
    EXPECT_EQ(r.log_w[0], 0.0);
    EXPECT_EQ(r.log_w[1], 0.0);
    for (int i = 2; i < 5; ++i) EXPECT_EQ(r.log_w[static_cast<size_t>(i)], -kInf);
    EXPECT_NEAR(r.ess, 4.0 / 2.0 / 5.0, 1e-12);
    EXPECT_NEAR(r.energy_mean_reweighted, 1.5, 1e-12);
    EXPECT_NEAR(r.energy_mean, 2.0, 1e-12);  // the finite energies 1, 2, 3
    // Reweighting a sampler that IS the target (log q = -u - log Z) gives ESS 1 for any Z.
    std::vector<double> u2 = {0.3, 1.7, 2.2, 5.0}, lq2(4);
    for (size_t i = 0; i < 4; ++i) lq2[i] = -u2[i] + 12.5;
    EXPECT_NEAR(importance_weights(u2.data(), lq2.data(), 4).ess, 1.0, 1e-12);
}

// A model with length scale s is the same flow in units of s: samples scale by s, log q
// shifts by -(n-1) d log s, path lengths scale by s, and the likelihood of the scaled points is
// the model-unit likelihood shifted the same way.
TEST(Flow, LengthScaleConvertsSamplesDensitiesAndLikelihoods) {
    const EgnnModel unit = moving_dw4_model(12);
    EgnnModel scaled = unit;
    const double s = 0.37;
    scaled.config.length_scale = s;
    FlowOptions opt;
    opt.ode.atol = opt.ode.rtol = 1e-8;
    const FlowSamples a = sample_model(unit, 5, 3, opt);
    const FlowSamples b = sample_model(scaled, 5, 3, opt);
    const double shift = 3 * 2 * std::log(s);  // (n-1) d log s
    for (size_t k = 0; k < a.x.size(); ++k) EXPECT_NEAR(b.x[k], s * a.x[k], 1e-14);
    for (int64_t i = 0; i < 5; ++i) {
        EXPECT_NEAR(b.log_q[i], a.log_q[i] - shift, 1e-12) << i;
        EXPECT_NEAR(b.path_length[i], s * a.path_length[i], 1e-12) << i;
    }
    // Backwards from the scaled samples: the samples' own density and prior points.
    const FlowLikelihood l = model_log_likelihood(scaled, b.x.data(), 5, opt);
    for (int64_t i = 0; i < 5; ++i) EXPECT_NEAR(l.log_q[i], b.log_q[i], 1e-5) << i;
    for (size_t k = 0; k < a.x0.size(); ++k) EXPECT_NEAR(l.x0[k], a.x0[k], 1e-5);
}

// The chirality rule for aldp: wrong-handed samples are mirrored, every log q gains log 2, and
// systems without a handedness are left alone.
TEST(Flow, FoldChiralityMirrorsDAlanineAndAddsLog2) {
    const System aldp = make_system("aldp");
    ASSERT_TRUE(folds_chirality(aldp));
    EXPECT_FALSE(folds_chirality(make_system("lj13")));
    const std::vector<double> l_form = aldp_structure().positions;
    ASSERT_TRUE(aldp_is_l(l_form.data()));
    FlowSamples s;
    s.n = 22;
    s.d = 3;
    s.count = 4;
    for (int b = 0; b < 4; ++b) {
        std::vector<double> xb = l_form;
        if (b % 2 == 1) mirror(xb.data(), 22);  // rows 1 and 3 are D-alanine
        s.x.insert(s.x.end(), xb.begin(), xb.end());
    }
    s.log_q = {-1.0, -2.0, kNaN, -4.0};  // row 2 failed: stays NaN, is not inspected
    const std::vector<double> before = s.x;
    EXPECT_EQ(fold_chirality(aldp, s), 2);
    for (int b = 0; b < 4; ++b) EXPECT_TRUE(aldp_is_l(s.x.data() + 66 * b)) << b;
    for (int k = 0; k < 66; ++k) {
        EXPECT_EQ(s.x[66 + k], -before[66 + k]);
        EXPECT_EQ(s.x[k], before[k]);
    }
    EXPECT_DOUBLE_EQ(s.log_q[0], -1.0 + std::log(2.0));
    EXPECT_DOUBLE_EQ(s.log_q[1], -2.0 + std::log(2.0));
    EXPECT_TRUE(std::isnan(s.log_q[2]));
    EXPECT_DOUBLE_EQ(s.log_q[3], -4.0 + std::log(2.0));
    // Not a chiral system: nothing changes.
    FlowSamples lj;
    lj.n = 13;
    lj.d = 3;
    lj.count = 1;
    lj.x.assign(39, 0.5);
    lj.log_q = {-3.0};
    EXPECT_EQ(fold_chirality(make_system("lj13"), lj), 0);
    EXPECT_EQ(lj.log_q[0], -3.0);
}

TEST(Metrics, NllConventionsAndHistogramFigure) {
    const int n = 4, d = 2;
    const std::vector<double> test_lq = {-7.0, -8.0, kNaN};
    const std::vector<double> test_u = {-20.0, -18.0, -19.0};
    const std::vector<double> s_lq = {-7.5, -7.0, -9.0, kNaN};
    const std::vector<double> s_u = {-19.0, -21.0, kInf, -20.0};
    const std::vector<double> s_pl = {2.0, 4.0, 3.0, kNaN};
    const FlowMetrics m = flow_metrics(n, d, test_lq, test_u, s_lq, s_u, s_pl);
    EXPECT_NEAR(m.nll_normalized, 7.5, 1e-12);
    EXPECT_NEAR(m.nll_normalized - m.nll, prior_log_normalizer(n, d), 1e-12);
    EXPECT_EQ(m.failed_test, 1);
    EXPECT_EQ(m.failed_samples, 2);
    EXPECT_NEAR(m.path_length, 3.0, 1e-12);
    // Standard errors over the finite values: nll from (7, 8), path length from (2, 4, 3).
    EXPECT_NEAR(m.nll_stderr, std::sqrt(0.5 / 2.0), 1e-12);
    EXPECT_NEAR(m.path_length_stderr, std::sqrt(1.0 / 3.0), 1e-12);
    EXPECT_NEAR(m.energy_mean_test, -19.0, 1e-12);
    const Json j = Json::parse(m.to_json().dump());
    for (const char* key :
         {"nll", "nll_normalized", "ess", "path_length", "n_samples", "n_test",
          "energy_mean_samples", "energy_mean_reweighted", "energy_mean_test", "nll_stderr",
          "ess_stderr", "path_length_stderr", "log_z", "kl_test", "kl_test_stderr", "entropy_test"})
        EXPECT_TRUE(j.contains(key)) << key;
    EXPECT_EQ(j.at("n_samples").as_int(), 4);

    // Histogram densities integrate to one when everything falls inside the range.
    auto gen = test::rng(3);
    const std::vector<double> ud = test::random_normal(500, gen),
                              us = test::random_normal(400, gen);
    std::vector<double> lw(400, 0.0);
    const EnergyHistogram h = energy_histogram(ud, us, lw, 20);
    ASSERT_EQ(h.edges.size(), 21u);
    double area = 0.0, area_w = 0.0;
    for (size_t k = 0; k < 20; ++k) {
        area += h.samples[k] * (h.edges[k + 1] - h.edges[k]);
        area_w += h.reweighted[k] * (h.edges[k + 1] - h.edges[k]);
    }
    // The range cuts off about 0.5% of the values at the low end and almost none at the top.
    EXPECT_NEAR(area, 1.0, 0.03);
    EXPECT_NEAR(area_w, area, 1e-12);  // equal weights: the reweighted histogram is the plain one
    const std::string svg = test::temp_path("hist.svg");
    write_energy_histogram_svg(svg, h, "test <figure>");
    std::ifstream f(svg);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    EXPECT_EQ(text.rfind("<svg", 0), 0u);
    size_t polylines = 0;
    for (size_t p = text.find("<polyline"); p != std::string::npos;
         p = text.find("<polyline", p + 1))
        ++polylines;
    EXPECT_EQ(polylines, 3u);
    EXPECT_NE(text.find("test &lt;figure&gt;"), std::string::npos);
    std::remove(svg.c_str());
}

}  // namespace
}  // namespace eqflow
