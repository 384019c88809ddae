// The EGNN vector field on the CPU reference path: parameter layout and initialisation,
// gradients against central finite differences, the exact divergence against the
// finite-difference Jacobian, Hutchinson's estimate, and the symmetries (rotations,
// reflections, permutations within types, translations, mean-free output).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "test_util.h"

namespace eqflow {
namespace {

// Fourth-order central differences (five-point stencil) in double with step kFdStep:
// truncation ~ kFdStep^4 |f^(5)| / 30 and rounding ~ 1e-16 |f| / kFdStep ~ 1e-11. The fields
// below are strongly nonlinear on purpose (weights of order one, coords_range up to 7.5), with
// third derivatives up to ~1e6, which is why plain second-order differences (error kFdStep^2
// |f'''| / 6) are not accurate enough to test 1e-6.
constexpr double kFdStep = 1e-4;
constexpr double kGradRtol = 1e-6;
// Absolute floor for derivatives that are (nearly) zero, where a relative error means nothing:
// well above the finite-difference noise estimated above.
constexpr double kGradAtol = 1e-8;
// Symmetry checks compare two evaluations of the same O(1) function on transformed inputs:
// only rounding differs (~1e-15 per operation, a few thousand operations deep).
constexpr double kSymmetryAtol = 1e-11;
// The mean of v is removed explicitly: what remains is rounding of O(1) numbers.
constexpr double kMeanFreeAtol = 1e-13;
// Forward mode vs reverse mode vs the dense Jacobian: the same derivative computed along
// different paths, again rounding only.
constexpr double kModeAtol = 1e-11;
constexpr double kModeRtol = 1e-10;

struct Case {
    const char* label;
    int n, d, hidden, layers;
    bool attention, tanh;
    std::vector<int> types;
};

std::vector<Case> small_cases() {
    return {
        {"n3_d2_att_tanh", 3, 2, 4, 2, true, true, {}},
        {"n4_d3_plain", 4, 3, 5, 2, false, false, {}},
        {"n5_d3_att_typed", 5, 3, 4, 3, true, false, {0, 1, 1, 0, 2}},
        {"n6_d2_tanh_typed", 6, 2, 3, 2, false, true, {0, 0, 1, 1, 0, 1}},
    };
}

EgnnConfig make_config(const Case& c) {
    EgnnConfig cfg;
    cfg.system = c.label;
    cfg.n_particles = c.n;
    cfg.dim = c.d;
    cfg.hidden = c.hidden;
    cfg.layers = c.layers;
    cfg.attention = c.attention;
    cfg.tanh = c.tanh;
    cfg.atom_types = c.types;
    return cfg;
}

// Random parameters N(0, 0.3^2): PyTorch's initialisation (gain 0.001 on the last coordinate
// layer) leaves the coordinate update nearly linear, which would let errors in its derivative
// hide; here every weight matters. Much larger weights (0.5) occasionally drive two particles
// onto each other in a middle layer, where sqrt(r + 1e-8) makes the field so stiff that no
// finite difference resolves it (measured over 120 random draws per case: worst error / tolerance
// 0.07 at 0.3, 1.4 at 0.5).
std::vector<double> random_params(const EgnnConfig& cfg, std::mt19937_64& gen, double scale = 0.3) {
    return test::random_normal(static_cast<size_t>(egnn_parameter_count(cfg)), gen, scale);
}

std::vector<double> random_positions(const EgnnConfig& cfg, int64_t B, std::mt19937_64& gen) {
    return test::random_configurations(B, cfg.n_particles, cfg.dim, 1.0, 0.4, gen);
}

std::vector<double> random_times(int64_t B, std::mt19937_64& gen) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::vector<double> t(B);
    for (double& s : t) s = u(gen);
    return t;
}

std::vector<double> forward(const EgnnConfig& cfg, const std::vector<double>& p,
                            const std::vector<double>& x, const std::vector<double>& t) {
    std::vector<double> v(x.size());
    egnn_forward(cfg, p.data(), static_cast<int64_t>(t.size()), x.data(), t.data(), v.data());
    return v;
}

// d/ds f(value + s) at s = 0 by the five-point stencil; `set` moves the variable by s.
template <class Eval, class Set>
double five_point(Eval eval, Set set) {
    set(2.0 * kFdStep);
    const double f2 = eval();
    set(kFdStep);
    const double f1 = eval();
    set(-kFdStep);
    const double m1 = eval();
    set(-2.0 * kFdStep);
    const double m2 = eval();
    set(0.0);
    return (8.0 * (f1 - m1) - (f2 - m2)) / (12.0 * kFdStep);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
    return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Layout and initialisation
// ---------------------------------------------------------------------------------------------

TEST(EgnnLayout, Lj13HasThePublishedParameterCount) {
    const EgnnConfig cfg = default_egnn_config("lj13", 13, 3);
    EXPECT_EQ(cfg.hidden, 32);
    EXPECT_EQ(cfg.layers, 3);
    EXPECT_TRUE(cfg.attention);
    EXPECT_TRUE(cfg.tanh);
    EXPECT_EQ(cfg.in_features(), 1);
    EXPECT_DOUBLE_EQ(cfg.effective_coords_range(), 5.0);
    EXPECT_EQ(egnn_parameter_count(cfg), 22468);
}

TEST(EgnnLayout, DefaultsAndStateDictOrder) {
    const EgnnConfig lj55 = default_egnn_config("lj55", 55, 3);
    EXPECT_EQ(lj55.hidden, 64);
    EXPECT_EQ(lj55.layers, 7);
    const EgnnConfig dw4 = default_egnn_config("dw4", 4, 2);
    EXPECT_EQ(dw4.hidden, 32);
    EXPECT_EQ(dw4.layers, 3);

    EgnnConfig cfg = make_config(small_cases()[2]);  // H = 4, typed with 3 types
    const std::vector<ParamEntry> layout = egnn_parameter_layout(cfg);
    const std::vector<std::string> first = {
        "embedding.weight",         "embedding.bias",          "embedding_out.weight",
        "embedding_out.bias",       "gcl_0.edge_mlp.0.weight", "gcl_0.edge_mlp.0.bias",
        "gcl_0.edge_mlp.2.weight",  "gcl_0.edge_mlp.2.bias",   "gcl_0.node_mlp.0.weight",
        "gcl_0.node_mlp.0.bias",    "gcl_0.node_mlp.2.weight", "gcl_0.node_mlp.2.bias",
        "gcl_0.coord_mlp.0.weight", "gcl_0.coord_mlp.0.bias",  "gcl_0.coord_mlp.2.weight",
        "gcl_0.att_mlp.0.weight",   "gcl_0.att_mlp.0.bias",    "gcl_1.edge_mlp.0.weight"};
    ASSERT_GE(layout.size(), first.size());
    for (size_t k = 0; k < first.size(); ++k) EXPECT_EQ(layout[k].name, first[k]);
    EXPECT_EQ(layout[0].shape, (Shape{4, 4}));   // [H, F], F = 3 types + t
    EXPECT_EQ(layout[2].shape, (Shape{4, 4}));   // [F, H]
    EXPECT_EQ(layout[4].shape, (Shape{4, 10}));  // [H, 2H+2]
    EXPECT_EQ(layout[8].shape, (Shape{4, 8}));   // [H, 2H]
    EXPECT_EQ(layout[14].shape, (Shape{1, 4}));  // coord_mlp.2: no bias
    EXPECT_EQ(layout[15].shape, (Shape{1, 4}));
    EXPECT_EQ(layout[16].shape, (Shape{1}));
    EXPECT_EQ(layout.size(), 4u + 3u * 13u);
    int64_t offset = 0;
    for (const ParamEntry& e : layout) {
        EXPECT_EQ(e.offset, offset) << e.name;
        offset += shape_numel(e.shape);
    }
    EXPECT_EQ(offset, egnn_parameter_count(cfg));

    cfg.attention = false;
    for (const ParamEntry& e : egnn_parameter_layout(cfg))
        EXPECT_EQ(e.name.find("att_mlp"), std::string::npos);
}

TEST(EgnnLayout, InvalidConfigurationsThrow) {
    EgnnConfig cfg = make_config(small_cases()[0]);
    cfg.n_particles = 1;
    EXPECT_THROW(egnn_parameter_count(cfg), Error);
    cfg = make_config(small_cases()[2]);
    cfg.atom_types.pop_back();
    EXPECT_THROW(egnn_parameter_count(cfg), Error);
    cfg = make_config(small_cases()[0]);
    cfg.layers = 0;
    EXPECT_THROW(egnn_parameter_count(cfg), Error);
}

TEST(EgnnInit, PyTorchDefaultsDeterministicPerSeed) {
    const EgnnConfig cfg = default_egnn_config("lj13", 13, 3);
    const std::vector<double> a = egnn_init_parameters(cfg, 7), b = egnn_init_parameters(cfg, 7),
                              c = egnn_init_parameters(cfg, 8);
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    for (const ParamEntry& e : egnn_parameter_layout(cfg)) {
        const bool xavier = e.name.find("coord_mlp.2.weight") != std::string::npos;
        // nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight [out, in] and its bias.
        const int64_t fan_in = e.name == "embedding.weight" || e.name == "embedding.bias" ? 1
                               : e.name.find("embedding_out") != std::string::npos        ? 32
                               : e.name.find("edge_mlp.0") != std::string::npos           ? 66
                               : e.name.find("node_mlp.0") != std::string::npos           ? 64
                                                                                          : 32;
        const double bound =
            xavier ? 0.001 * std::sqrt(6.0 / 33.0) : 1.0 / std::sqrt(static_cast<double>(fan_in));
        const int64_t count = shape_numel(e.shape);
        double max_abs = 0.0, sum_sq = 0.0;
        for (int64_t k = 0; k < count; ++k) {
            max_abs = std::max(max_abs, std::fabs(a[e.offset + k]));
            sum_sq += a[e.offset + k] * a[e.offset + k];
        }
        EXPECT_LE(max_abs, bound) << e.name;
        if (count >= 1000) {
            // Uniform on (-b, b): variance b^2 / 3; with >= 1000 draws the sample value is within
            // 10 % (the standard error of the mean square is 0.9 b^2/3 / sqrt(count) < 3 %).
            EXPECT_NEAR(sum_sq / count, bound * bound / 3.0, 0.1 * bound * bound / 3.0) << e.name;
            EXPECT_GT(max_abs, 0.99 * bound) << e.name;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward: batch, sizes
// ---------------------------------------------------------------------------------------------

TEST(EgnnForward, BatchEqualsSingleSamplesAndEdgeSizes) {
    auto gen = test::rng(1);
    for (const Case& c : small_cases()) {
        const EgnnConfig cfg = make_config(c);
        const std::vector<double> p = random_params(cfg, gen);
        const std::vector<double> x = random_positions(cfg, 3, gen), t = random_times(3, gen);
        const std::vector<double> v = forward(cfg, p, x, t);
        EXPECT_TRUE(test::not_all_zero(v)) << c.label;
        const size_t nd = static_cast<size_t>(c.n * c.d);
        for (size_t b = 0; b < 3; ++b) {
            const std::vector<double> xb(x.begin() + b * nd, x.begin() + (b + 1) * nd);
            const std::vector<double> vb = forward(cfg, p, xb, {t[b]});
            EXPECT_EQ(vb, std::vector<double>(v.begin() + b * nd, v.begin() + (b + 1) * nd))
                << c.label;
        }
    }
    // n = 2, and an empty batch.
    EgnnConfig cfg = make_config(small_cases()[0]);
    cfg.n_particles = 2;
    const std::vector<double> p = random_params(cfg, gen);
    const std::vector<double> v = forward(cfg, p, {0.5, -0.25, -0.5, 0.25}, {0.3});
    EXPECT_TRUE(test::not_all_zero(v));
    EXPECT_NEAR(v[0] + v[2], 0.0, kMeanFreeAtol);
    egnn_forward(cfg, p.data(), 0, nullptr, nullptr, nullptr);
    double div = 0.0;
    egnn_divergence(cfg, p.data(), 0, nullptr, nullptr, nullptr, &div);
}

// ---------------------------------------------------------------------------------------------
// Backward against central finite differences
// ---------------------------------------------------------------------------------------------

TEST(EgnnBackward, ParameterAndInputGradientsMatchFiniteDifferences) {
    auto gen = test::rng(2);
    for (const Case& c : small_cases()) {
        SCOPED_TRACE(c.label);
        const EgnnConfig cfg = make_config(c);
        const int64_t B = 2, P = egnn_parameter_count(cfg);
        std::vector<double> p = random_params(cfg, gen);
        std::vector<double> x = random_positions(cfg, B, gen);
        const std::vector<double> t = random_times(B, gen);
        const std::vector<double> w = test::random_normal(x.size(), gen);  // L = sum w . v
        auto loss = [&]() { return dot(w, forward(cfg, p, x, t)); };

        // Parameter gradients accumulate onto what is there; input gradients overwrite.
        const std::vector<double> g0 = test::random_normal(static_cast<size_t>(P), gen);
        std::vector<double> g = g0, gx(x.size(), 12345.0);
        egnn_backward(cfg, p.data(), B, x.data(), t.data(), w.data(), g.data(), gx.data());
        for (int64_t k = 0; k < P; ++k) g[k] -= g0[k];

        std::vector<double> fd(static_cast<size_t>(P));
        for (int64_t k = 0; k < P; ++k) {
            const double saved = p[k];
            fd[k] = five_point(loss, [&](double s) { p[k] = saved + s; });
        }
        for (const ParamEntry& e : egnn_parameter_layout(cfg)) {
            const std::vector<double> ge(g.begin() + e.offset,
                                         g.begin() + e.offset + shape_numel(e.shape));
            const std::vector<double> fe(fd.begin() + e.offset,
                                         fd.begin() + e.offset + shape_numel(e.shape));
            EXPECT_ALL_CLOSE(ge, fe, kGradAtol, kGradRtol) << e.name;
            // Unused by the field: the output embedding and the last layer's node MLP.
            const bool unused =
                e.name.rfind("embedding_out", 0) == 0 ||
                e.name.rfind("gcl_" + std::to_string(c.layers - 1) + ".node_mlp", 0) == 0;
            if (unused) {
                EXPECT_FALSE(test::not_all_zero(ge)) << e.name;
            } else {
                EXPECT_TRUE(test::not_all_zero(ge)) << e.name;
            }
        }

        std::vector<double> fdx(x.size());
        for (size_t k = 0; k < x.size(); ++k) {
            const double saved = x[k];
            fdx[k] = five_point(loss, [&](double s) { x[k] = saved + s; });
        }
        EXPECT_TRUE(test::not_all_zero(gx));
        EXPECT_ALL_CLOSE(gx, fdx, kGradAtol, kGradRtol);

        // dL_dx is optional.
        std::vector<double> g2(static_cast<size_t>(P), 0.0);
        egnn_backward(cfg, p.data(), B, x.data(), t.data(), w.data(), g2.data(), nullptr);
        EXPECT_ALL_CLOSE(g2, g, kModeAtol, kModeRtol);
    }
}

// ---------------------------------------------------------------------------------------------
// Divergence, Jacobian, Hutchinson
// ---------------------------------------------------------------------------------------------

// fd_jac [p][q] = d v_p / d x_q by the five-point stencil (one sample).
std::vector<double> fd_jacobian(const EgnnConfig& cfg, const std::vector<double>& p,
                                std::vector<double> x, double t) {
    const size_t nd = x.size();
    std::vector<double> jac(nd * nd);
    for (size_t q = 0; q < nd; ++q) {
        const double saved = x[q];
        auto at = [&](double s) {
            x[q] = saved + s;
            return forward(cfg, p, x, {t});
        };
        const std::vector<double> f2 = at(2.0 * kFdStep), f1 = at(kFdStep), m1 = at(-kFdStep),
                                  m2 = at(-2.0 * kFdStep);
        x[q] = saved;
        for (size_t r = 0; r < nd; ++r)
            jac[r * nd + q] = (8.0 * (f1[r] - m1[r]) - (f2[r] - m2[r])) / (12.0 * kFdStep);
    }
    return jac;
}

TEST(EgnnDivergence, ExactEqualsTraceOfFiniteDifferenceJacobian) {
    auto gen = test::rng(3);
    for (const Case& c : small_cases()) {
        SCOPED_TRACE(c.label);
        const EgnnConfig cfg = make_config(c);
        const int64_t B = 2;
        const size_t nd = static_cast<size_t>(c.n * c.d);
        const std::vector<double> p = random_params(cfg, gen);
        const std::vector<double> x = random_positions(cfg, B, gen), t = random_times(B, gen);
        std::vector<double> v(B * nd), div(B), jac(B * nd * nd);
        egnn_divergence(cfg, p.data(), B, x.data(), t.data(), v.data(), div.data());
        egnn_jacobian(cfg, p.data(), B, x.data(), t.data(), jac.data());
        EXPECT_EQ(v, forward(cfg, p, x, t));  // the shared primal pass is the forward pass
        for (int64_t b = 0; b < B; ++b) {
            const std::vector<double> xb(x.begin() + b * nd, x.begin() + (b + 1) * nd);
            const std::vector<double> fd = fd_jacobian(cfg, p, xb, t[b]);
            const std::vector<double> jb(jac.begin() + b * nd * nd,
                                         jac.begin() + (b + 1) * nd * nd);
            EXPECT_ALL_CLOSE(jb, fd, kGradAtol, kGradRtol);
            double trace = 0.0;
            for (size_t q = 0; q < nd; ++q) trace += fd[q * nd + q];
            EXPECT_NEAR(div[b], trace, kGradAtol + kGradRtol * std::fabs(trace));
            EXPECT_GT(std::fabs(div[b]), 1e-3);  // a non-trivial divergence
            // Reverse mode agrees with forward mode: w^T J = backward(w).
            const std::vector<double> w = test::random_normal(nd, gen);
            std::vector<double> wJ(nd, 0.0), gx(nd),
                gp(static_cast<size_t>(egnn_parameter_count(cfg)), 0.0);
            for (size_t r = 0; r < nd; ++r)
                for (size_t q = 0; q < nd; ++q) wJ[q] += w[r] * jb[r * nd + q];
            egnn_backward(cfg, p.data(), 1, xb.data(), &t[b], w.data(), gp.data(), gx.data());
            EXPECT_ALL_CLOSE(gx, wJ, kModeAtol, kModeRtol);
        }
        // Translation invariance: every column sum over particles of the Jacobian vanishes, so the
        // trace of the mean-removed field equals that of the raw field (docs/design.md section 4).
        for (size_t r = 0; r < nd; ++r) {
            for (int a = 0; a < c.d; ++a) {
                double sum = 0.0;
                for (int k = 0; k < c.n; ++k) sum += jac[r * nd + k * c.d + a];
                EXPECT_NEAR(sum, 0.0, kModeAtol);
            }
        }
    }
}

TEST(EgnnDivergence, JvpMatchesJacobianTimesTangent) {
    auto gen = test::rng(4);
    const EgnnConfig cfg = make_config(small_cases()[2]);
    const size_t nd = static_cast<size_t>(cfg.n_particles * cfg.dim);
    const int K = 3;
    const std::vector<double> p = random_params(cfg, gen);
    const std::vector<double> x = random_positions(cfg, 1, gen), t = random_times(1, gen);
    const std::vector<double> xdot = test::random_normal(K * nd, gen);
    std::vector<double> vdot(K * nd), jac(nd * nd), v(nd);
    egnn_jvp(cfg, p.data(), 1, x.data(), t.data(), K, xdot.data(), v.data(), vdot.data());
    egnn_jacobian(cfg, p.data(), 1, x.data(), t.data(), jac.data());
    EXPECT_EQ(v, forward(cfg, p, x, t));
    std::vector<double> expected(K * nd, 0.0);
    for (int k = 0; k < K; ++k)
        for (size_t r = 0; r < nd; ++r)
            for (size_t q = 0; q < nd; ++q)
                expected[k * nd + r] += jac[r * nd + q] * xdot[k * nd + q];
    EXPECT_ALL_CLOSE(vdot, expected, kModeAtol, kModeRtol);
}

TEST(EgnnDivergence, HutchinsonConvergesToExact) {
    auto gen = test::rng(5);
    const EgnnConfig cfg = make_config(small_cases()[1]);
    const size_t nd = static_cast<size_t>(cfg.n_particles * cfg.dim);
    const std::vector<double> p = random_params(cfg, gen);
    const std::vector<double> x = random_positions(cfg, 2, gen), t = random_times(2, gen);
    std::vector<double> exact(2), jac(2 * nd * nd);
    egnn_divergence(cfg, p.data(), 2, x.data(), t.data(), nullptr, exact.data());
    egnn_jacobian(cfg, p.data(), 2, x.data(), t.data(), jac.data());
    const int probes = 4000;
    std::vector<double> est(2), v(2 * nd);
    egnn_divergence_hutchinson(cfg, p.data(), 2, x.data(), t.data(), probes, 99, v.data(),
                               est.data());
    EXPECT_EQ(v, forward(cfg, p, x, t));
    for (int b = 0; b < 2; ++b) {
        // For Rademacher probes Var(eps^T A eps) = 1/2 sum_{p != q} (A_pq + A_qp)^2.
        const double* A = &jac[b * nd * nd];
        double var = 0.0;
        for (size_t r = 0; r < nd; ++r)
            for (size_t q = 0; q < nd; ++q)
                if (r != q)
                    var += 0.5 * (A[r * nd + q] + A[q * nd + r]) * (A[r * nd + q] + A[q * nd + r]);
        const double stderr_ = std::sqrt(var / probes);
        ASSERT_GT(var, 0.0);
        // Five standard errors: a false failure has probability < 1e-6 (the seed is fixed anyway).
        EXPECT_NEAR(est[b], exact[b], 5.0 * stderr_) << "stderr " << stderr_;
        // ... and it is an estimate, not the exact value in disguise.
        EXPECT_NE(est[b], exact[b]);
    }
    // One probe: exactly eps^T J eps for the probe drawn, so seeds matter and estimates differ.
    std::vector<double> one_a(2), one_b(2);
    egnn_divergence_hutchinson(cfg, p.data(), 2, x.data(), t.data(), 1, 1, nullptr, one_a.data());
    egnn_divergence_hutchinson(cfg, p.data(), 2, x.data(), t.data(), 1, 2, nullptr, one_b.data());
    EXPECT_NE(one_a, one_b);
}

// ---------------------------------------------------------------------------------------------
// Symmetries
// ---------------------------------------------------------------------------------------------

TEST(EgnnSymmetry, RotationsReflectionsPermutationsTranslations) {
    auto gen = test::rng(6);
    for (const Case& c : small_cases()) {
        SCOPED_TRACE(c.label);
        const EgnnConfig cfg = make_config(c);
        const int n = c.n, d = c.d;
        const int64_t B = 2;
        const std::vector<double> p = random_params(cfg, gen);
        const std::vector<double> x = random_positions(cfg, B, gen), t = random_times(B, gen);
        std::vector<double> v(x.size()), div(B);
        egnn_divergence(cfg, p.data(), B, x.data(), t.data(), v.data(), div.data());
        EXPECT_TRUE(test::not_all_zero(v));

        // Mean-free output.
        for (int64_t b = 0; b < B; ++b) {
            for (int a = 0; a < d; ++a) {
                double sum = 0.0;
                for (int i = 0; i < n; ++i) sum += v[(b * n + i) * d + a];
                EXPECT_NEAR(sum, 0.0, kMeanFreeAtol);
            }
        }
        // Rotations and reflections: v(x R^T) = v(x) R^T; the divergence is invariant.
        for (bool reflection : {false, true}) {
            const std::vector<double> R = test::random_orthogonal(d, reflection, gen);
            const std::vector<double> xr = test::rotate(x, R, d);
            std::vector<double> vr(x.size()), divr(B);
            egnn_divergence(cfg, p.data(), B, xr.data(), t.data(), vr.data(), divr.data());
            EXPECT_ALL_CLOSE(vr, test::rotate(v, R, d), kSymmetryAtol, 0.0)
                << "reflection " << reflection;
            EXPECT_ALL_CLOSE(divr, div, kSymmetryAtol, kSymmetryAtol);
        }
        // Translations: v(x + c) = v(x).
        {
            std::vector<double> xt = x;
            const std::vector<double> shift = test::random_normal(static_cast<size_t>(d), gen, 3.0);
            for (size_t k = 0; k < xt.size(); ++k) xt[k] += shift[k % d];
            EXPECT_ALL_CLOSE(forward(cfg, p, xt, t), v, kSymmetryAtol, 0.0);
        }
        // Permutations within types: v(P x) = P v(x). A random permutation of each type's members.
        std::vector<int> perm(n);
        std::iota(perm.begin(), perm.end(), 0);
        if (c.types.empty()) {
            std::shuffle(perm.begin(), perm.end(), gen);
        } else {
            for (int type = 0; type < cfg.num_types(); ++type) {
                std::vector<int> members;
                for (int i = 0; i < n; ++i)
                    if (c.types[i] == type) members.push_back(i);
                std::vector<int> shuffled = members;
                std::shuffle(shuffled.begin(), shuffled.end(), gen);
                for (size_t k = 0; k < members.size(); ++k) perm[members[k]] = shuffled[k];
            }
        }
        auto permute = [&](const std::vector<double>& y, const std::vector<int>& pi) {
            std::vector<double> z(y.size());
            for (int64_t b = 0; b < B; ++b)
                for (int i = 0; i < n; ++i)
                    for (int a = 0; a < d; ++a) z[(b * n + i) * d + a] = y[(b * n + pi[i]) * d + a];
            return z;
        };
        EXPECT_ALL_CLOSE(forward(cfg, p, permute(x, perm), t), permute(v, perm), kSymmetryAtol,
                         0.0);
        if (!c.types.empty()) {
            // Swapping two particles of different types is not a symmetry: the types matter.
            std::vector<int> swap(n);
            std::iota(swap.begin(), swap.end(), 0);
            const int other =
                static_cast<int>(std::find_if(c.types.begin(), c.types.end(),
                                              [&](int ty) { return ty != c.types[0]; }) -
                                 c.types.begin());
            std::swap(swap[0], swap[other]);
            EXPECT_FALSE(
                test::all_close(forward(cfg, p, permute(x, swap), t), permute(v, swap), 1e-6, 0.0));
        }
    }
}

}  // namespace
}  // namespace eqflow
