// ODE solvers (eqflow/ode.h) on linear fields with closed-form solutions and log-determinants:
// forwards and backwards, all three solvers at their expected orders of accuracy.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/ode.h"
#include "linear_ode.h"
#include "test_util.h"

namespace eqflow {
namespace {

// The linear ODE of linear_ode.h in double; |v| = sqrt((alpha + beta t)^2 + omega^2) |x(t)|.
struct LinearField : test::LinearOde {
    void operator()(int64_t B, const double* x, const double* t, double* v, double* div) const {
        for (int64_t b = 0; b < B; ++b) {
            const double s = alpha + beta * t[b];
            for (int64_t i = 0; i < D; i += 2) {
                const double x0 = x[b * D + i], x1 = x[b * D + i + 1];
                v[b * D + i] = s * x0 - omega * x1;
                v[b * D + i + 1] = s * x1 + omega * x0;
            }
            if (div) div[b] = static_cast<double>(D) * s;
        }
    }
    // Path length of one sample with |x(t0)| = r0, by composite Simpson on a fine grid.
    double path_length(double r0, double t0, double t1) const {
        const int m = 20000;
        const double a = std::min(t0, t1), b = std::max(t0, t1), h = (b - a) / m;
        auto f = [&](double t) {
            const double s = alpha + beta * t;
            return std::sqrt(s * s + omega * omega) * r0 * std::exp(log_scale(t) - log_scale(t0));
        };
        double sum = f(a) + f(b);
        for (int k = 1; k < m; ++k) sum += f(a + k * h) * (k % 2 ? 4.0 : 2.0);
        return sum * h / 3.0;
    }
};

OdeField as_field(const LinearField& f) {
    return [f](int64_t B, const double* x, const double* t, double* v, double* div) {
        f(B, x, t, v, div);
    };
}

struct OdeRun {
    std::vector<double> x, I, L;
    OdeStats stats;
};

OdeRun integrate(const LinearField& f, const std::vector<double>& x0, int64_t B, double t0,
                 double t1, const OdeOptions& opt) {
    OdeRun r{x0,
             std::vector<double>(static_cast<size_t>(B)),
             std::vector<double>(static_cast<size_t>(B)),
             {}};
    ode_integrate(as_field(f), B, f.D, r.x.data(), t0, t1, opt, r.I.data(), r.L.data(), &r.stats);
    return r;
}

// Largest error over x(t1) and I of sample 0 against the closed form.
double max_error(const LinearField& f, const std::vector<double>& x0, double t0, double t1,
                 const OdeOptions& opt) {
    const OdeRun r = integrate(f, x0, 1, t0, t1, opt);
    const std::vector<double> exact = f.solve(x0, t0, t1);
    double e = std::fabs(r.I[0] - f.div_integral(t0, t1));
    for (size_t k = 0; k < exact.size(); ++k) e = std::max(e, std::fabs(r.x[k] - exact[k]));
    return e;
}

std::vector<double> start_point(const LinearField& f, int64_t B, uint64_t salt) {
    auto gen = test::rng(salt);
    return test::random_normal(static_cast<size_t>(B * f.D), gen);
}

TEST(Ode, Dopri5MatchesClosedFormForwardsAndBackwards) {
    const LinearField f;
    const int64_t B = 5;
    const std::vector<double> x0 = start_point(f, B, 1);
    OdeOptions opt;
    opt.atol = opt.rtol = 1e-10;
    // Global error of an adaptive method is a modest multiple of the local tolerance on this
    // smooth, mildly expanding field.
    constexpr double kTol = 1e-8;
    for (const auto& [t0, t1] : {std::pair{0.0, 1.0}, std::pair{1.0, 0.0}, std::pair{0.25, 0.9}}) {
        const OdeRun r = integrate(f, x0, B, t0, t1, opt);
        EXPECT_EQ(r.stats.failed, 0);
        for (int64_t b = 0; b < B; ++b) {
            const std::vector<double> xb(x0.begin() + b * f.D, x0.begin() + (b + 1) * f.D);
            const std::vector<double> got(r.x.begin() + b * f.D, r.x.begin() + (b + 1) * f.D);
            EXPECT_ALL_CLOSE(got, f.solve(xb, t0, t1), kTol, kTol) << t0 << " -> " << t1;
            EXPECT_NEAR(r.I[static_cast<size_t>(b)], f.div_integral(t0, t1), kTol)
                << t0 << " -> " << t1;
            double r0 = 0;
            for (double v : xb) r0 += v * v;
            // The path length is a quadrature riding on the controlled steps, not in the norm.
            constexpr double kPathTol = 1e-7;
            EXPECT_NEAR(r.L[static_cast<size_t>(b)], f.path_length(std::sqrt(r0), t0, t1),
                        kPathTol);
        }
    }
}

TEST(Ode, Dopri5ErrorFollowsTolerance) {
    const LinearField f;
    const std::vector<double> x0 = start_point(f, 1, 2);
    OdeOptions opt;
    double prev = 1.0;
    int64_t prev_steps = 0;
    for (double tol : {1e-4, 1e-7, 1e-10}) {
        opt.atol = opt.rtol = tol;
        const double e = max_error(f, x0, 0.0, 1.0, opt);
        std::printf("dopri5 tol %.0e: max error %.3e\n", tol, e);
        // The global error stays within a small multiple of the tolerance...
        constexpr double kGlobalFactor = 50.0;
        EXPECT_LT(e, kGlobalFactor * tol);
        // ... and shrinks by orders of magnitude as the tolerance does.
        EXPECT_LT(e, prev);
        prev = e;
        const OdeRun r = integrate(f, x0, 1, 0.0, 1.0, opt);
        // A 5th-order local error means steps grow like tol^(-1/5): a factor 1000 in tolerance
        // costs about 10^(3/5) = 4x the steps. Allow 2.5x..7x (step clipping and rounding of
        // the first step blur small counts).
        if (prev_steps > 0) {
            const double ratio =
                static_cast<double>(r.stats.accepted) / static_cast<double>(prev_steps);
            std::printf("  accepted steps %lld (ratio %.2f)\n",
                        static_cast<long long>(r.stats.accepted), ratio);
            EXPECT_GT(ratio, 2.5);
            EXPECT_LT(ratio, 7.0);
        }
        prev_steps = r.stats.accepted;
    }
}

// Fixed-step methods: halving the step divides the error by 2^order.
void expect_order(OdeMethod method, double order, double t0, double t1) {
    const LinearField f;
    const std::vector<double> x0 = start_point(f, 1, 3);
    OdeOptions opt;
    opt.method = method;
    opt.steps = 40;
    const double e1 = max_error(f, x0, t0, t1, opt);
    opt.steps = 80;
    const double e2 = max_error(f, x0, t0, t1, opt);
    const double observed = std::log2(e1 / e2);
    std::printf("%s %g -> %g: errors %.3e, %.3e, observed order %.3f\n", ode_method_name(method),
                t0, t1, e1, e2, observed);
    // Asymptotic regime: the observed order is within 0.15 of the theoretical one.
    constexpr double kOrderTol = 0.15;
    EXPECT_NEAR(observed, order, kOrderTol);
}

TEST(Ode, Rk4IsFourthOrder) {
    expect_order(OdeMethod::rk4, 4.0, 0.0, 1.0);
    expect_order(OdeMethod::rk4, 4.0, 1.0, 0.0);
}

TEST(Ode, EulerIsFirstOrder) {
    expect_order(OdeMethod::euler, 1.0, 0.0, 1.0);
    expect_order(OdeMethod::euler, 1.0, 1.0, 0.0);
}

TEST(Ode, ForwardThenBackwardReturns) {
    const LinearField f;
    const int64_t B = 3;
    const std::vector<double> x0 = start_point(f, B, 4);
    for (OdeMethod m : {OdeMethod::dopri5, OdeMethod::rk4}) {
        OdeOptions opt;
        opt.method = m;
        opt.atol = opt.rtol = 1e-9;
        opt.steps = 400;
        const OdeRun fwd = integrate(f, x0, B, 0.0, 1.0, opt);
        const OdeRun bwd = integrate(f, fwd.x, B, 1.0, 0.0, opt);
        // Round trip of two solves at tight tolerance / fine steps.
        constexpr double kRoundTrip = 1e-7;
        EXPECT_ALL_CLOSE(bwd.x, x0, kRoundTrip, kRoundTrip) << ode_method_name(m);
        for (int64_t b = 0; b < B; ++b) {
            EXPECT_NEAR(fwd.I[static_cast<size_t>(b)] + bwd.I[static_cast<size_t>(b)], 0.0,
                        kRoundTrip);
            EXPECT_NEAR(fwd.L[static_cast<size_t>(b)], bwd.L[static_cast<size_t>(b)], kRoundTrip);
            EXPECT_GT(bwd.L[static_cast<size_t>(b)], 0.0);
        }
    }
}

TEST(Ode, SampleDoesNotDependOnItsBatch) {
    const LinearField f;
    const int64_t B = 4;
    const std::vector<double> x0 = start_point(f, B, 5);
    OdeOptions opt;
    const OdeRun all = integrate(f, x0, B, 0.0, 1.0, opt);
    for (int64_t b = 0; b < B; ++b) {
        const std::vector<double> xb(x0.begin() + b * f.D, x0.begin() + (b + 1) * f.D);
        const OdeRun one = integrate(f, xb, 1, 0.0, 1.0, opt);
        for (int64_t k = 0; k < f.D; ++k)
            EXPECT_EQ(one.x[static_cast<size_t>(k)], all.x[static_cast<size_t>(b * f.D + k)]);
        EXPECT_EQ(one.I[0], all.I[static_cast<size_t>(b)]);
    }
}

TEST(Ode, NonFiniteSampleFailsAloneAndIsCounted) {
    const LinearField f;
    const int64_t B = 3;
    std::vector<double> x = start_point(f, B, 6);
    // Row 1 carries a marker the field turns into NaN once t > 0.5.
    x[static_cast<size_t>(1 * f.D)] = 1000.0;
    OdeField field = [&](int64_t rows, const double* xx, const double* t, double* v, double* div) {
        f(rows, xx, t, v, div);
        for (int64_t r = 0; r < rows; ++r)
            if (std::fabs(xx[r * f.D]) > 100.0 && t[r] > 0.5)
                v[r * f.D] = std::numeric_limits<double>::quiet_NaN();
    };
    for (OdeMethod m : {OdeMethod::dopri5, OdeMethod::rk4, OdeMethod::euler}) {
        std::vector<double> y = x, I(B), L(B);
        OdeOptions opt;
        opt.method = m;
        OdeStats stats;
        ode_integrate(field, B, f.D, y.data(), 0.0, 1.0, opt, I.data(), L.data(), &stats);
        EXPECT_EQ(stats.failed, 1) << ode_method_name(m);
        EXPECT_TRUE(std::isnan(I[1]));
        EXPECT_TRUE(std::isfinite(I[0]) && std::isfinite(I[2]));
        // The healthy rows are exactly what they are without the failing one beside them.
        std::vector<double> clean(x.begin(), x.begin() + f.D), Ic(1), Lc(1);
        ode_integrate(field, 1, f.D, clean.data(), 0.0, 1.0, opt, Ic.data(), Lc.data());
        EXPECT_EQ(I[0], Ic[0]) << ode_method_name(m);
        EXPECT_EQ(y[0], clean[0]) << ode_method_name(m);
    }
}

TEST(Ode, BadArgumentsThrow) {
    EXPECT_THROW(parse_ode_method("rk45"), Error);
    EXPECT_EQ(parse_ode_method("euler"), OdeMethod::euler);
    const LinearField f;
    std::vector<double> x(static_cast<size_t>(f.D), 1.0);
    OdeOptions opt;
    opt.method = OdeMethod::rk4;
    opt.steps = 0;
    EXPECT_THROW(ode_integrate(as_field(f), 1, f.D, x.data(), 0.0, 1.0, opt, nullptr, nullptr),
                 Error);
    // Empty batch and zero-length interval are no-ops.
    opt.steps = 10;
    ode_integrate(as_field(f), 0, f.D, x.data(), 0.0, 1.0, opt, nullptr, nullptr);
    ode_integrate(as_field(f), 1, f.D, x.data(), 0.5, 0.5, opt, nullptr, nullptr);
    EXPECT_EQ(x[0], 1.0);
}

}  // namespace
}  // namespace eqflow
