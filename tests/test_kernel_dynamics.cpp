// The kernel-dynamics field (eqflow/kernel_dynamics.h): configuration and layout; the double
// reference against a brute-force sum and against finite differences of its pair potential;
// E(n) and permutation equivariance and the mean-free property; every reverse and forward mode
// (backward, divergence, jvp_trace, divergence_backward) against finite differences and against
// each other; the float32 backend against the reference; thread-count independence; edge cases;
// model files and checkpoints; a short flow-matching run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "cli_test_util.h"  // TempDirTest
#include "eqflow/field.h"
#include "eqflow/flow.h"
#include "eqflow/flow_model.h"
#include "eqflow/kernel_dynamics.h"
#include "eqflow/model_io.h"
#include "eqflow/trainer.h"
#include "kernel_test_util.h"
#include "test_util.h"
#include "train_test_util.h"

namespace eqflow {
namespace {

using test::all_close;

// ---- tolerances -------------------------------------------------------------------------------
// Same arithmetic in another order (brute force over ordered pairs, rotated or permuted inputs,
// the trace from unit directions): double rounding over sums of O(n K) terms of size O(|v|).
constexpr double kExactRtol = 1e-11;
// Central differences with step kFdStep on smooth O(1) functions: truncation h^2 f''' ~ 1e-10
// plus rounding eps |f| / h ~ 1e-11 per term, relative to the output's scale (the divergence
// sums n d of them). Observed up to 4e-9; a wrong term (e.g. a 0.1% error in r f') is 1e-3.
constexpr double kFdStep = 1e-5;
constexpr double kFdRtol = 1e-7;
// v (and its divergence) is linear in the parameters, so a central difference in a parameter has
// no truncation error, only rounding eps |L| / h with h = 1e-3 and L a sum of O(100) terms.
// Observed up to 4e-13 relative to the gradient's scale.
constexpr double kParamFdStep = 1e-3;
constexpr double kParamFdRtol = 1e-10;
// The float32 backend against the double one: test::kKernelFloatRtol (kernel_test_util.h).

// ---- helpers ------------------------------------------------------------------------------------

// The default bases of the system with parameters N(0, 0.3): f and v are O(1) (the trained-model
// scale), far from the tiny initialisation, so no error hides below a tolerance.
KernelModel random_kernel_model(const std::string& system, int n, int d, uint64_t salt) {
    KernelModel m;
    m.config = default_kernel_config(system, n, d);
    auto gen = test::rng(salt);
    m.params = test::random_normal(static_cast<size_t>(kernel_parameter_count(m.config)), gen, 0.3);
    return m;
}

struct Case {
    const char* system;
    int n, d;
};
const Case kCases[] = {{"dw4", 4, 2}, {"lj13", 13, 3}, {"small", 5, 3}, {"pair", 2, 1}};

using Inputs = test::KernelInputs;
using test::cast;
using test::expect_float_close;
using test::max_abs;
using test::widen;
Inputs random_inputs(int B, int n, int d, uint64_t salt) {
    return test::random_kernel_inputs(B, n, d, salt);
}

// Thin host wrappers around the interface (each call gets a fresh workspace of the right size).
template <class T>
struct Host {
    Field<T>& f;
    FieldWorkspace ws;
    int n, d;
    explicit Host(Field<T>& field) : f(field), n(field.n_particles()), d(field.dim()) {}

    Shape xs(int64_t B) const { return Shape{B, n, d}; }
    TensorView<const T> in(const std::vector<T>& a, Shape s) const {
        return TensorView<const T>(a.data(), std::move(s));
    }
    std::vector<T> forward(const std::vector<T>& x, const std::vector<T>& t) {
        const int64_t B = static_cast<int64_t>(t.size());
        std::vector<T> v(x.size());
        f.forward(in(x, xs(B)), in(t, Shape{B}), TensorView<T>(v.data(), xs(B)),
                  ws.get(f, FieldOp::forward, B));
        return v;
    }
    std::vector<T> divergence(const std::vector<T>& x, const std::vector<T>& t,
                              std::vector<T>* v = nullptr) {
        const int64_t B = static_cast<int64_t>(t.size());
        std::vector<T> div(static_cast<size_t>(B));
        if (v) v->assign(x.size(), T(0));
        f.divergence(in(x, xs(B)), in(t, Shape{B}),
                     v ? TensorView<T>(v->data(), xs(B)) : TensorView<T>(),
                     TensorView<T>(div.data(), Shape{B}), ws.get(f, FieldOp::divergence, B));
        return div;
    }
    std::vector<T> jvp_trace(const std::vector<T>& x, const std::vector<T>& t,
                             const std::vector<T>& dirs, int K, std::vector<T>* v = nullptr) {
        const int64_t B = static_cast<int64_t>(t.size());
        std::vector<T> trace(static_cast<size_t>(B));
        if (v) v->assign(x.size(), T(0));
        f.jvp_trace(in(x, xs(B)), in(t, Shape{B}), in(dirs, Shape{B, K, n, d}),
                    v ? TensorView<T>(v->data(), xs(B)) : TensorView<T>(),
                    TensorView<T>(trace.data(), Shape{B}), ws.get(f, FieldOp::jvp_trace, B, K));
        return trace;
    }
    // dL_dparams += ..., dL_dx = ... (when given).
    void backward(const std::vector<T>& x, const std::vector<T>& t, const std::vector<T>& dL_dv,
                  std::vector<T>& dL_dparams, std::vector<T>* dL_dx) {
        const int64_t B = static_cast<int64_t>(t.size());
        f.backward(in(x, xs(B)), in(t, Shape{B}), in(dL_dv, xs(B)),
                   TensorView<T>(dL_dparams.data(), Shape{f.parameter_count()}),
                   dL_dx ? TensorView<T>(dL_dx->data(), xs(B)) : TensorView<T>(),
                   ws.get(f, FieldOp::backward, B));
    }
    void divergence_backward(const std::vector<T>& x, const std::vector<T>& t,
                             const std::vector<T>& dL_ddiv, std::vector<T>& dL_dparams,
                             std::vector<T>* dL_dx) {
        const int64_t B = static_cast<int64_t>(t.size());
        f.divergence_backward(in(x, xs(B)), in(t, Shape{B}), in(dL_ddiv, Shape{B}),
                              TensorView<T>(dL_dparams.data(), Shape{f.parameter_count()}),
                              dL_dx ? TensorView<T>(dL_dx->data(), xs(B)) : TensorView<T>(),
                              ws.get(f, FieldOp::divergence_backward, B));
    }
};

// alpha_k(t) = b_k + sum_m W_km phi_m(t), straight from the configuration.
std::vector<double> alpha_of(const KernelModel& m, double t) {
    const KernelConfig& c = m.config;
    const int K = c.radial_count(), M = c.time_count();
    std::vector<double> a(static_cast<size_t>(K));
    for (int k = 0; k < K; ++k) {
        a[k] = m.params[static_cast<size_t>(K * M + k)];
        for (int mm = 0; mm < M; ++mm)
            a[k] += m.params[static_cast<size_t>(k * M + mm)] *
                    std::exp(-c.time_width * (t - c.time_centres[mm]) * (t - c.time_centres[mm]));
    }
    return a;
}

double radial_f(const KernelModel& m, const std::vector<double>& alpha, double r) {
    double f = 0.0;
    for (int k = 0; k < m.config.radial_count(); ++k) {
        const double z = r - m.config.radial_centres[k];
        f += alpha[k] * std::exp(-m.config.radial_widths[k] * z * z);
    }
    return f;
}

// v by the definition: every ordered pair on its own.
std::vector<double> brute_force_v(const KernelModel& m, const std::vector<double>& x, double t) {
    const int n = m.config.n_particles, d = m.config.dim;
    const std::vector<double> alpha = alpha_of(m, t);
    std::vector<double> v(static_cast<size_t>(n * d), 0.0);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
            if (i == j) continue;
            double r2 = 0.0;
            for (int a = 0; a < d; ++a)
                r2 += (x[i * d + a] - x[j * d + a]) * (x[i * d + a] - x[j * d + a]);
            const double f = radial_f(m, alpha, std::sqrt(r2));
            for (int a = 0; a < d; ++a) v[i * d + a] += (x[i * d + a] - x[j * d + a]) * f;
        }
    return v;
}

// The pair potential U(x) = sum_{i<j} Phi(r_ij) with Phi(r) = int_0^r s f(s) ds, in closed form:
// int_0^r s exp(-g (s - mu)^2) ds = (exp(-g mu^2) - exp(-g (r - mu)^2)) / (2 g)
//                                 + mu sqrt(pi / g) / 2 (erf(sqrt(g) (r - mu)) + erf(sqrt(g) mu)).
// v = grad U, so this checks the forward without sharing a line with it.
double pair_potential(const KernelModel& m, const std::vector<double>& x, double t) {
    const int n = m.config.n_particles, d = m.config.dim;
    const std::vector<double> alpha = alpha_of(m, t);
    double U = 0.0;
    for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j) {
            double r2 = 0.0;
            for (int a = 0; a < d; ++a)
                r2 += (x[i * d + a] - x[j * d + a]) * (x[i * d + a] - x[j * d + a]);
            const double r = std::sqrt(r2);
            for (int k = 0; k < m.config.radial_count(); ++k) {
                const double g = m.config.radial_widths[k], mu = m.config.radial_centres[k];
                const double sg = std::sqrt(g);
                U += alpha[k] *
                     ((std::exp(-g * mu * mu) - std::exp(-g * (r - mu) * (r - mu))) / (2 * g) +
                      mu * std::sqrt(M_PI / g) / 2 * (std::erf(sg * (r - mu)) + std::erf(sg * mu)));
            }
        }
    return U;
}

// ---- configuration ------------------------------------------------------------------------------

TEST(KernelConfigTest, DefaultsLayoutAndInitialisation) {
    const KernelConfig dw4 = default_kernel_config("dw4", 4, 2);
    EXPECT_EQ(dw4.radial_count(), 32);
    EXPECT_EQ(dw4.time_count(), 16);
    EXPECT_DOUBLE_EQ(dw4.radial_centres.front(), 0.0);
    EXPECT_DOUBLE_EQ(dw4.radial_centres.back(), 8.0);
    EXPECT_DOUBLE_EQ(dw4.time_centres.back(), 1.0);
    // One spacing is one standard deviation: gamma h^2 = 1/2.
    const double h = dw4.radial_centres[1] - dw4.radial_centres[0];
    EXPECT_NEAR(dw4.radial_widths[7] * h * h, 0.5, 1e-12);
    EXPECT_EQ(kernel_parameter_count(dw4), 32 * 16 + 32);
    EXPECT_EQ(kernel_parameter_count(default_kernel_config("lj13", 13, 3)), 850);
    EXPECT_GE(default_kernel_config("lj55", 55, 3).radial_centres.back(), 6.0);

    const std::vector<ParamEntry> layout = kernel_parameter_layout(dw4);
    ASSERT_EQ(layout.size(), 2u);
    EXPECT_EQ(layout[0].name, "time_map.weight");
    EXPECT_EQ(layout[0].shape, (Shape{32, 16}));
    EXPECT_EQ(layout[1].name, "time_map.bias");
    EXPECT_EQ(layout[1].shape, (Shape{32}));
    EXPECT_EQ(layout[1].offset, 32 * 16);

    const std::vector<double> p = kernel_init_parameters(dw4, 7);
    ASSERT_EQ(static_cast<int64_t>(p.size()), kernel_parameter_count(dw4));
    EXPECT_EQ(p, kernel_init_parameters(dw4, 7));
    EXPECT_NE(p, kernel_init_parameters(dw4, 8));
    const double bound = 0.001 / 4.0;  // 0.001 / sqrt(M)
    for (int k = 0; k < 32 * 16; ++k) EXPECT_LE(std::fabs(p[k]), bound);
    for (int k = 32 * 16; k < 32 * 17; ++k) EXPECT_EQ(p[k], 0.0);
    EXPECT_TRUE(test::not_all_zero(p));

    auto rejects = [](KernelConfig c, const char* needle) {
        try {
            validate_kernel_config(c);
            ADD_FAILURE() << "accepted; expected an error with '" << needle << "'";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    KernelConfig c = dw4;
    c.n_particles = 1;
    rejects(c, "at least 2 particles");
    c = dw4;
    c.dim = kKernelMaxDim + 1;
    rejects(c, "dimension");
    c = dw4;
    c.radial_widths.pop_back();
    rejects(c, "radial widths");
    c = dw4;
    c.radial_widths[3] = -1.0;
    rejects(c, "radial width 3");
    c = dw4;
    c.radial_centres[2] = std::nan("");
    rejects(c, "radial centre 2");
    c = dw4;
    c.time_width = 0.0;
    rejects(c, "time width");
    c = dw4;
    c.time_centres.clear();
    rejects(c, "time centres");
    EXPECT_THROW(make_reference_field(KernelModel{dw4, std::vector<double>(5)}), Error);
}

// ---- the reference against the definition ----------------------------------------------------

TEST(KernelField, ForwardIsTheBruteForceSumAndTheGradientOfThePairPotential) {
    for (const Case& cs : kCases) {
        SCOPED_TRACE(cs.system);
        const KernelModel m = random_kernel_model(cs.system, cs.n, cs.d, 1);
        const int B = 5;
        const Inputs in = random_inputs(B, cs.n, cs.d, 2);
        auto field = make_reference_field(m, 1);
        Host<double> h(*field);
        const std::vector<double> v = h.forward(in.x, in.t);
        EXPECT_TRUE(test::not_all_zero(v));
        const int nd = cs.n * cs.d;
        for (int b = 0; b < B; ++b) {
            const std::vector<double> xb(in.x.begin() + b * nd, in.x.begin() + (b + 1) * nd);
            const std::vector<double> vb(v.begin() + b * nd, v.begin() + (b + 1) * nd);
            const std::vector<double> brute = brute_force_v(m, xb, in.t[b]);
            const double scale = max_abs(brute);
            EXPECT_TRUE(all_close(vb, brute, kExactRtol * scale, kExactRtol)) << "row " << b;
            std::vector<double> grad(static_cast<size_t>(nd));
            for (int p = 0; p < nd; ++p) {
                std::vector<double> xp = xb, xm = xb;
                xp[p] += kFdStep;
                xm[p] -= kFdStep;
                grad[p] = (pair_potential(m, xp, in.t[b]) - pair_potential(m, xm, in.t[b])) /
                          (2 * kFdStep);
            }
            EXPECT_TRUE(all_close(vb, grad, kFdRtol * scale, kFdRtol)) << "row " << b;
        }
    }
}

TEST(KernelField, EquivariantUnderRotationsReflectionsTranslationsAndPermutationsAndMeanFree) {
    for (const Case& cs : kCases) {
        if (cs.d < 2) continue;
        SCOPED_TRACE(cs.system);
        const KernelModel m = random_kernel_model(cs.system, cs.n, cs.d, 3);
        const int B = 4, n = cs.n, d = cs.d, nd = n * d;
        const Inputs in = random_inputs(B, n, d, 4);
        auto field = make_reference_field(m, 1);
        Host<double> h(*field);
        std::vector<double> v;
        const std::vector<double> div = h.divergence(in.x, in.t, &v);
        const double scale = max_abs(v);
        auto gen = test::rng(5);
        for (bool reflection : {false, true}) {
            const test::TransformedRows tr =
                test::transform_rows(in.x, v, B, n, d, reflection, gen);
            std::vector<double> vy;
            const std::vector<double> div_y = h.divergence(tr.y, in.t, &vy);
            EXPECT_TRUE(all_close(vy, tr.expected, kExactRtol * scale, kExactRtol));
            EXPECT_TRUE(all_close(div_y, div, kExactRtol * max_abs(div), kExactRtol));
        }
        // Mean-free: the antisymmetric pair sum cancels in every dimension.
        for (int b = 0; b < B; ++b)
            for (int a = 0; a < d; ++a) {
                double sum = 0.0;
                for (int i = 0; i < n; ++i) sum += v[b * nd + i * d + a];
                EXPECT_LE(std::fabs(sum), kExactRtol * scale * n) << "row " << b << " dim " << a;
            }
    }
}

// ---- reverse mode -----------------------------------------------------------------------------

TEST(KernelField, BackwardMatchesFiniteDifferencesAccumulatesAndOverwrites) {
    for (const Case& cs : kCases) {
        SCOPED_TRACE(cs.system);
        KernelModel m = random_kernel_model(cs.system, cs.n, cs.d, 6);
        const int B = 3, nd = cs.n * cs.d;
        const Inputs in = random_inputs(B, cs.n, cs.d, 7);
        auto gen = test::rng(8);
        const std::vector<double> w = test::random_normal(in.x.size(), gen);
        auto loss = [&](const KernelModel& model, const std::vector<double>& x) {
            auto f = make_reference_field(model, 1);
            Host<double> h(*f);
            const std::vector<double> v = h.forward(x, in.t);
            double L = 0.0;
            for (size_t k = 0; k < v.size(); ++k) L += w[k] * v[k];
            return L;
        };
        auto field = make_reference_field(m, 1);
        Host<double> h(*field);
        const int64_t P = field->parameter_count();
        std::vector<double> gp(static_cast<size_t>(P), 0.0);
        std::vector<double> gx(in.x.size(), std::nan(""));  // overwritten
        h.backward(in.x, in.t, w, gp, &gx);

        std::vector<double> fd_p(static_cast<size_t>(P));
        for (int64_t k = 0; k < P; ++k) {
            KernelModel mp = m, mm = m;
            mp.params[k] += kParamFdStep;
            mm.params[k] -= kParamFdStep;
            fd_p[k] = (loss(mp, in.x) - loss(mm, in.x)) / (2 * kParamFdStep);
        }
        EXPECT_TRUE(test::not_all_zero(gp));
        EXPECT_TRUE(all_close(gp, fd_p, kParamFdRtol * max_abs(fd_p), kParamFdRtol));
        std::vector<double> fd_x(in.x.size());
        for (size_t p = 0; p < in.x.size(); ++p) {
            std::vector<double> xp = in.x, xm = in.x;
            xp[p] += kFdStep;
            xm[p] -= kFdStep;
            fd_x[p] = (loss(m, xp) - loss(m, xm)) / (2 * kFdStep);
        }
        EXPECT_TRUE(all_close(gx, fd_x, kFdRtol * max_abs(fd_x), kFdRtol));

        // Parameter gradients accumulate onto what is there; input gradients overwrite; an
        // undefined dL_dx is skipped.
        std::vector<double> acc(static_cast<size_t>(P), 1.5);
        h.backward(in.x, in.t, w, acc, nullptr);
        for (int64_t k = 0; k < P; ++k)
            EXPECT_NEAR(acc[k] - 1.5, gp[k], 1e-12 * (1 + std::fabs(gp[k])));
        std::vector<double> gx2(in.x.size(), 123.0);
        std::vector<double> gp2(static_cast<size_t>(P), 0.0);
        h.backward(in.x, in.t, w, gp2, &gx2);
        EXPECT_EQ(gx2, gx);
        EXPECT_EQ(gp2, gp);
        (void)nd;
    }
}

// ---- the divergence and forward mode ---------------------------------------------------------

TEST(KernelField, ClosedFormDivergenceIsTheJacobianTrace) {
    for (const Case& cs : kCases) {
        SCOPED_TRACE(cs.system);
        const KernelModel m = random_kernel_model(cs.system, cs.n, cs.d, 9);
        const int B = 4, nd = cs.n * cs.d;
        const Inputs in = random_inputs(B, cs.n, cs.d, 10);
        auto field = make_reference_field(m, 1);
        Host<double> h(*field);
        const std::vector<double> v = h.forward(in.x, in.t);
        std::vector<double> v_div;
        const std::vector<double> div = h.divergence(in.x, in.t, &v_div);
        EXPECT_EQ(v_div, v);
        EXPECT_TRUE(test::not_all_zero(div));

        // (a) jvp_trace along all n*d unit directions: trace = div / (n d).
        std::vector<double> eye(static_cast<size_t>(B) * nd * nd, 0.0);
        for (int b = 0; b < B; ++b)
            for (int p = 0; p < nd; ++p) eye[(static_cast<size_t>(b) * nd + p) * nd + p] = 1.0;
        std::vector<double> v_jvp;
        std::vector<double> trace = h.jvp_trace(in.x, in.t, eye, nd, &v_jvp);
        EXPECT_EQ(v_jvp, v);
        for (double& tr : trace) tr *= nd;
        EXPECT_TRUE(all_close(div, trace, kExactRtol * max_abs(div), kExactRtol));

        // (b) central differences of v along every coordinate.
        std::vector<double> fd(static_cast<size_t>(B), 0.0);
        for (int p = 0; p < nd; ++p) {
            std::vector<double> xp = in.x, xm = in.x;
            for (int b = 0; b < B; ++b) {
                xp[b * nd + p] += kFdStep;
                xm[b * nd + p] -= kFdStep;
            }
            const std::vector<double> vp = h.forward(xp, in.t), vm = h.forward(xm, in.t);
            for (int b = 0; b < B; ++b) fd[b] += (vp[b * nd + p] - vm[b * nd + p]) / (2 * kFdStep);
        }
        EXPECT_TRUE(all_close(div, fd, kFdRtol * max_abs(div) * nd, kFdRtol));

        // (c) jvp_trace along random directions against e . (v(x + h e) - v(x - h e)) / 2h.
        const int K = 3;
        auto gen = test::rng(11);
        const std::vector<double> dirs = test::random_normal(static_cast<size_t>(B) * K * nd, gen);
        const std::vector<double> tr = h.jvp_trace(in.x, in.t, dirs, K);
        std::vector<double> fd_tr(static_cast<size_t>(B), 0.0);
        for (int k = 0; k < K; ++k) {
            std::vector<double> xp = in.x, xm = in.x;
            for (int b = 0; b < B; ++b)
                for (int p = 0; p < nd; ++p) {
                    const double e = dirs[(static_cast<size_t>(b) * K + k) * nd + p];
                    xp[b * nd + p] += kFdStep * e;
                    xm[b * nd + p] -= kFdStep * e;
                }
            const std::vector<double> vp = h.forward(xp, in.t), vm = h.forward(xm, in.t);
            for (int b = 0; b < B; ++b)
                for (int p = 0; p < nd; ++p)
                    fd_tr[b] += dirs[(static_cast<size_t>(b) * K + k) * nd + p] *
                                (vp[b * nd + p] - vm[b * nd + p]) / (2 * kFdStep) / K;
        }
        EXPECT_TRUE(all_close(tr, fd_tr, kFdRtol * max_abs(fd_tr) * nd, kFdRtol));
    }
}

TEST(KernelField, DivergenceBackwardMatchesFiniteDifferences) {
    for (const Case& cs : kCases) {
        SCOPED_TRACE(cs.system);
        const KernelModel m = random_kernel_model(cs.system, cs.n, cs.d, 12);
        const int B = 3;
        const Inputs in = random_inputs(B, cs.n, cs.d, 13);
        auto gen = test::rng(14);
        const std::vector<double> g = test::random_normal(static_cast<size_t>(B), gen);
        auto loss = [&](const KernelModel& model, const std::vector<double>& x) {
            auto f = make_reference_field(model, 1);
            Host<double> h(*f);
            const std::vector<double> div = h.divergence(x, in.t);
            double L = 0.0;
            for (int b = 0; b < B; ++b) L += g[b] * div[b];
            return L;
        };
        auto field = make_reference_field(m, 1);
        ASSERT_TRUE(field->supports_divergence_backward());
        Host<double> h(*field);
        const int64_t P = field->parameter_count();
        std::vector<double> gp(static_cast<size_t>(P), 0.0);
        std::vector<double> gx(in.x.size(), std::nan(""));
        h.divergence_backward(in.x, in.t, g, gp, &gx);

        std::vector<double> fd_p(static_cast<size_t>(P));
        for (int64_t k = 0; k < P; ++k) {
            KernelModel mp = m, mm = m;
            mp.params[k] += kParamFdStep;
            mm.params[k] -= kParamFdStep;
            fd_p[k] = (loss(mp, in.x) - loss(mm, in.x)) / (2 * kParamFdStep);
        }
        EXPECT_TRUE(test::not_all_zero(gp));
        EXPECT_TRUE(all_close(gp, fd_p, kParamFdRtol * max_abs(fd_p), kParamFdRtol));
        std::vector<double> fd_x(in.x.size());
        for (size_t p = 0; p < in.x.size(); ++p) {
            std::vector<double> xp = in.x, xm = in.x;
            xp[p] += kFdStep;
            xm[p] -= kFdStep;
            fd_x[p] = (loss(m, xp) - loss(m, xm)) / (2 * kFdStep);
        }
        EXPECT_TRUE(test::not_all_zero(gx));
        EXPECT_TRUE(all_close(gx, fd_x, kFdRtol * max_abs(fd_x), kFdRtol));

        std::vector<double> acc(static_cast<size_t>(P), -2.0);
        h.divergence_backward(in.x, in.t, g, acc, nullptr);
        for (int64_t k = 0; k < P; ++k)
            EXPECT_NEAR(acc[k] + 2.0, gp[k], 1e-12 * (1 + std::fabs(gp[k])));
    }
}

// ---- the float32 backend ------------------------------------------------------------------------

TEST(KernelField, FastFloatBackendMatchesTheReference) {
    const Case cases[] = {{"dw4", 4, 2}, {"lj13", 13, 3}, {"lj55", 55, 3}};
    for (const Case& cs : cases) {
        SCOPED_TRACE(cs.system);
        const KernelModel m = random_kernel_model(cs.system, cs.n, cs.d, 15);
        const int B = 20, K = 2, nd = cs.n * cs.d;
        // LJ-like spacing for the clusters, so pair distances cover the radial basis.
        const Inputs in = random_inputs(B, cs.n, cs.d, 16);
        auto gen = test::rng(17);
        const std::vector<double> w = test::random_normal(in.x.size(), gen);
        const std::vector<double> g = test::random_normal(static_cast<size_t>(B), gen);
        const std::vector<double> dirs = test::random_normal(static_cast<size_t>(B) * K * nd, gen);
        auto ref = make_reference_field(m, 2);
        auto fast = make_fast_field(m, 2);
        ASSERT_TRUE(fast->supports_divergence_backward());
        Host<double> hr(*ref);
        Host<float> hf(*fast);
        const std::vector<float> xf = cast<float>(in.x), tf = cast<float>(in.t);

        expect_float_close(widen(hf.forward(xf, tf)), hr.forward(in.x, in.t), "forward");
        expect_float_close(widen(hf.divergence(xf, tf)), hr.divergence(in.x, in.t), "divergence");
        expect_float_close(widen(hf.jvp_trace(xf, tf, cast<float>(dirs), K)),
                           hr.jvp_trace(in.x, in.t, dirs, K), "jvp_trace");

        const int64_t P = ref->parameter_count();
        std::vector<double> gp(static_cast<size_t>(P), 0.0), gx(in.x.size());
        std::vector<float> gpf(static_cast<size_t>(P), 0.0f), gxf(in.x.size());
        hr.backward(in.x, in.t, w, gp, &gx);
        hf.backward(xf, tf, cast<float>(w), gpf, &gxf);
        expect_float_close(widen(gpf), gp, "backward dL_dparams");
        expect_float_close(widen(gxf), gx, "backward dL_dx");

        std::fill(gp.begin(), gp.end(), 0.0);
        std::fill(gpf.begin(), gpf.end(), 0.0f);
        hr.divergence_backward(in.x, in.t, g, gp, &gx);
        hf.divergence_backward(xf, tf, cast<float>(g), gpf, &gxf);
        expect_float_close(widen(gpf), gp, "divergence_backward dL_dparams");
        expect_float_close(widen(gxf), gx, "divergence_backward dL_dx");

        // Parameters round-trip through the backend's precision.
        EXPECT_EQ(fast->parameters_to_host(), widen(cast<float>(m.params)));
        EXPECT_EQ(ref->parameters_to_host(), m.params);
    }
}

TEST(KernelField, ResultsDoNotDependOnTheThreadCount) {
    const KernelModel m = random_kernel_model("lj13", 13, 3, 18);
    const int B = 40;  // three chunks of 16 rows
    const Inputs in = random_inputs(B, 13, 3, 19);
    auto gen = test::rng(20);
    const std::vector<double> w = test::random_normal(in.x.size(), gen);
    const std::vector<double> g = test::random_normal(static_cast<size_t>(B), gen);
    auto run = [&](int threads) {
        auto f = make_fast_field(m, threads);
        Host<float> h(*f);
        const std::vector<float> xf = cast<float>(in.x), tf = cast<float>(in.t);
        std::vector<float> gp(static_cast<size_t>(f->parameter_count()), 0.0f), gx(in.x.size());
        h.backward(xf, tf, cast<float>(w), gp, &gx);
        h.divergence_backward(xf, tf, cast<float>(g), gp, &gx);
        std::vector<float> out = h.forward(xf, tf);
        const std::vector<float> div = h.divergence(xf, tf);
        out.insert(out.end(), div.begin(), div.end());
        out.insert(out.end(), gp.begin(), gp.end());
        out.insert(out.end(), gx.begin(), gx.end());
        return out;
    };
    EXPECT_EQ(run(1), run(3));
}

// ---- edge cases -------------------------------------------------------------------------------

TEST(KernelField, EmptyBatchAndCoincidentParticles) {
    const KernelModel m = random_kernel_model("dw4", 4, 2, 21);
    auto field = make_reference_field(m, 1);
    Host<double> h(*field);
    // An empty batch is a no-op for every operation.
    const std::vector<double> none;
    EXPECT_TRUE(h.forward(none, none).empty());
    EXPECT_TRUE(h.divergence(none, none).empty());
    std::vector<double> gp(static_cast<size_t>(field->parameter_count()), 0.25);
    h.backward(none, none, none, gp, nullptr);
    h.divergence_backward(none, none, none, gp, nullptr);
    for (double p : gp) EXPECT_EQ(p, 0.25);

    // Particles 0 and 1 on top of each other: the pair adds nothing to v (delta = 0) and
    // d f(0, t) twice to the divergence; every output stays finite.
    const std::vector<double> x = {0.5, -0.3, 0.5, -0.3, 2.0, 1.0, -1.5, 0.7};
    const std::vector<double> t = {0.6};
    std::vector<double> v;
    const std::vector<double> div = h.divergence(x, t, &v);
    EXPECT_TRUE(all_close(v, brute_force_v(m, x, 0.6), 1e-12 * max_abs(v), 1e-12));
    // The same configuration without the coincident pair's contribution: particle 1 moved far
    // away changes only terms of pairs with particle 1, so compare the pair sum directly.
    const std::vector<double> alpha = alpha_of(m, 0.6);
    double expected = 0.0;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            if (i == j) continue;
            const double dx = x[2 * i] - x[2 * j], dy = x[2 * i + 1] - x[2 * j + 1];
            const double r = std::sqrt(dx * dx + dy * dy);
            double fp = 0.0;
            for (int k = 0; k < m.config.radial_count(); ++k) {
                const double z = r - m.config.radial_centres[k];
                fp += alpha[k] * std::exp(-m.config.radial_widths[k] * z * z) *
                      (-2 * m.config.radial_widths[k] * z);
            }
            expected += 2 * radial_f(m, alpha, r) + r * fp;
        }
    EXPECT_NEAR(div[0], expected, 1e-12 * std::fabs(expected));
    std::vector<double> gx(x.size());
    std::fill(gp.begin(), gp.end(), 0.0);
    h.backward(x, t, {1, 2, 3, 4, 5, 6, 7, 8}, gp, &gx);
    h.divergence_backward(x, t, {1.0}, gp, &gx);
    for (double value : gx) EXPECT_TRUE(std::isfinite(value));
    for (double value : gp) EXPECT_TRUE(std::isfinite(value));
    const std::vector<double> dirs = {1, 0, 0, 1, 0, 0, 0, 0};
    EXPECT_TRUE(std::isfinite(h.jvp_trace(x, t, dirs, 1)[0]));
}

// ---- model files --------------------------------------------------------------------------------

class KernelModelFile : public test::TempDirTest {};

TEST_F(KernelModelFile, RoundTripDispatchAndErrors) {
    KernelModel m = random_kernel_model("lj13", 13, 3, 22);
    m.config.length_scale = 0.37;
    save_model(file("kernel.safetensors"), FlowModel(m));
    const FlowModel back = load_flow_model(file("kernel.safetensors"));
    ASSERT_EQ(back.kind, FieldKind::kernel);
    EXPECT_EQ(back.params, m.params);
    EXPECT_EQ(back.kernel_config.radial_centres, m.config.radial_centres);
    EXPECT_EQ(back.kernel_config.radial_widths, m.config.radial_widths);
    EXPECT_EQ(back.kernel_config.time_centres, m.config.time_centres);
    EXPECT_EQ(back.kernel_config.time_width, m.config.time_width);
    EXPECT_EQ(back.kernel_config.length_scale, 0.37);
    EXPECT_EQ(back.system(), "lj13");
    EXPECT_EQ(back.n_particles(), 13);
    const SafetensorsFile raw = read_safetensors(file("kernel.safetensors"));
    EXPECT_EQ(raw.meta("eqflow.format"), "kernel-dynamics-v1");
    EXPECT_NE(raw.find("time_map.weight"), nullptr);

    // F32 on disk: the values to float precision.
    save_model(file("kernel32.safetensors"), FlowModel(m), SafetensorsDtype::f32);
    const FlowModel back32 = load_flow_model(file("kernel32.safetensors"));
    EXPECT_EQ(back32.params, widen(cast<float>(m.params)));

    // An EGNN file still loads through the same reader, and the EGNN reader names a kernel file.
    EgnnModel egnn;
    egnn.config = default_egnn_config("dw4", 4, 2);
    egnn.config.hidden = 8;
    egnn.config.layers = 1;
    egnn.params = egnn_init_parameters(egnn.config, 1);
    save_model(file("egnn.safetensors"), egnn);
    const FlowModel e = load_flow_model(file("egnn.safetensors"));
    ASSERT_EQ(e.kind, FieldKind::egnn);
    EXPECT_EQ(e.params, egnn.params);
    EXPECT_EQ(e.egnn_config.hidden, 8);
    try {
        load_model(file("kernel.safetensors"));
        ADD_FAILURE() << "the EGNN reader accepted a kernel model";
    } catch (const Error& err) {
        EXPECT_NE(std::string(err.what()).find("kernel-dynamics"), std::string::npos) << err.what();
    }
    // A file without eqflow.format (another writer's) is an EGNN.
    SafetensorsFile legacy = egnn_model_to_safetensors(egnn);
    legacy.metadata.erase(
        std::remove_if(legacy.metadata.begin(), legacy.metadata.end(),
                       [](const auto& kv) { return kv.first == "eqflow.format"; }),
        legacy.metadata.end());
    EXPECT_EQ(flow_model_from_safetensors(legacy, "legacy").kind, FieldKind::egnn);

    auto refused = [&](SafetensorsFile f, const char* needle) {
        try {
            flow_model_from_safetensors(f, "bad");
            ADD_FAILURE() << "accepted; expected '" << needle << "'";
        } catch (const Error& err) {
            EXPECT_NE(std::string(err.what()).find(needle), std::string::npos) << err.what();
        }
    };
    SafetensorsFile f = kernel_model_to_safetensors(m);
    f.set_meta("eqflow.format", "kernel-v9");
    refused(f, "unknown model format");
    f = kernel_model_to_safetensors(m);
    f.set_meta("eqflow.kernel.radial_widths", "1,2,3");
    refused(f, "radial widths");
    f = kernel_model_to_safetensors(m);
    f.set_meta("eqflow.kernel.time_centres", "0,0.5,x");
    refused(f, "not a finite number");
    f = kernel_model_to_safetensors(m);
    f.set_meta("eqflow.kernel.time_centres", "0,0.5,1");  // 3 centres: the weight is [K, 16]
    refused(f, "time_map.weight");
    f = kernel_model_to_safetensors(m);
    f.tensors[1].values[0] = std::numeric_limits<double>::infinity();
    refused(f, "non-finite");
    f = kernel_model_to_safetensors(m);
    f.metadata.erase(
        std::remove_if(f.metadata.begin(), f.metadata.end(),
                       [](const auto& kv) { return kv.first == "eqflow.kernel.time_width"; }),
        f.metadata.end());
    refused(f, "eqflow.kernel.time_width");
}

TEST_F(KernelModelFile, CheckpointRoundTrip) {
    const KernelModel m = random_kernel_model("dw4", 4, 2, 23);
    TrainingCheckpoint ck;
    ck.model = m;
    ck.step = 5;
    ck.total_steps = 10;
    ck.adam_step = 5;
    ck.adam_m.assign(m.params.size(), 0.1);
    ck.adam_v.assign(m.params.size(), 0.2);
    ck.fingerprint = {{"eqflow.system", "dw4"}};
    save_checkpoint(file("ck.safetensors"), ck);
    const TrainingCheckpoint back = load_checkpoint(file("ck.safetensors"), ck.fingerprint, false);
    EXPECT_EQ(back.model.kind, FieldKind::kernel);
    EXPECT_EQ(back.model.params, m.params);
    EXPECT_EQ(back.step, 5);
    EXPECT_EQ(back.adam_v, ck.adam_v);
}

// ---- training ---------------------------------------------------------------------------------

TEST(KernelTraining, FlowMatchingLowersTheLossResumesExactlyAndSamples) {
    const std::vector<double> data = test::dw4_data(200, 3);
    TrainOptions o;
    o.field = FieldKind::kernel;
    o.objective = CouplingKind::ot;
    o.epochs = 6;
    o.batch = 30;
    o.lr = 0.01;  // v is linear in the weights: a larger step than the EGNN's is stable
    o.seed = 4;
    o.threads = 1;
    std::vector<double> val_losses;
    o.on_epoch = [&](int64_t, double vl) { val_losses.push_back(vl); };
    std::vector<double> step_losses;
    o.progress = [&](int64_t, int64_t, double loss, double) { step_losses.push_back(loss); };
    const TrainResult r = train_flow_matching(o, data, 200, 4, 2);
    ASSERT_EQ(r.model.kind, FieldKind::kernel);
    ASSERT_EQ(val_losses.size(), 6u);
    EXPECT_EQ(r.skipped, 0);
    // From the near-identity start (the first step's loss, about E|x1 - x0|^2 / (n d) of OT
    // pairs: measured 2.2) to a field that moves the prior towards the data (the least-squares
    // problem converges within the first epoch: validation losses measured 0.74 .. 0.72).
    ASSERT_EQ(step_losses.size(), 36u);
    EXPECT_LT(val_losses.back(), 0.6 * step_losses.front());

    // Stopped and resumed through a run directory: the same weights bit for bit.
    const std::string dir = test::temp_path("kernel_resume");
    TrainOptions a = o;
    a.on_epoch = nullptr;
    a.out_dir = dir;
    a.overwrite = true;
    a.stop_after_steps = 17;
    const TrainResult first = train_flow_matching(a, data, 200, 4, 2);
    EXPECT_TRUE(first.interrupted);
    a.stop_after_steps = 0;
    a.resume = true;
    a.overwrite = false;
    const TrainResult rest = train_flow_matching(a, data, 200, 4, 2);
    EXPECT_EQ(rest.model.params, r.model.params);
    const FlowModel saved = load_flow_model(dir + "/model.safetensors");
    EXPECT_EQ(saved.params, r.model.params);
    std::system(("rm -rf " + dir).c_str());

    // The trained field samples: finite log-densities, and a better NLL than the untrained one.
    FlowOptions fo;
    fo.threads = 1;
    fo.batch = 64;
    const System system = make_system("dw4");
    const std::vector<double> test_x = test::dw4_data(50, 9);
    const FlowMetrics trained = evaluate_flow(r.model, system, test_x.data(), 50, 50, 1, fo);
    FlowModel untrained = r.model;
    untrained.params = kernel_init_parameters(untrained.kernel_config, o.seed);
    const FlowMetrics before = evaluate_flow(untrained, system, test_x.data(), 50, 50, 1, fo);
    EXPECT_EQ(trained.failed_samples, 0);
    EXPECT_TRUE(std::isfinite(trained.nll));
    EXPECT_LT(trained.nll, before.nll - 1.0)
        << "trained " << trained.nll << ", untrained " << before.nll;

    // A run that must throw, with `expected` in its message.
    const auto expect_refused = [&](const TrainOptions& opts, const char* expected,
                                    const char* what) {
        try {
            train_flow_matching(opts, data, 200, 4, 2);
            ADD_FAILURE() << what;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
        }
    };
    // Flow matching on CUDA is tests/test_kernel_field_gpu.cpp's; without a usable GPU it is a
    // clear error, never a silent fallback to the CPU.
    o.device = Device::cuda;
    if (!cuda_available()) expect_refused(o, "GPU", "a kernel field trained on CUDA without a GPU");
    // Likelihood training on CUDA: the kernel field's runs there (tests/test_kernel_field_gpu.cpp)
    // and, without a usable GPU, fails saying so; the EGNN's is refused whether or not a GPU is
    // present (its CUDA backend has no reverse mode of the divergence).
    {
        TrainOptions lo = o;
        lo.likelihood = true;
        lo.epochs = 1;
        if (!cuda_available())
            expect_refused(lo, "GPU", "kernel likelihood training ran on CUDA without a GPU");
        lo.field = FieldKind::egnn;
        expect_refused(lo, "EGNN likelihood training on CUDA is not built",
                       "EGNN likelihood training ran on CUDA");
    }
    // Nor atom types.
    o.device = Device::cpu;
    o.atom_types = {0, 1, 0, 1};
    EXPECT_THROW(train_flow_matching(o, data, 200, 4, 2), Error);
}

}  // namespace
}  // namespace eqflow
