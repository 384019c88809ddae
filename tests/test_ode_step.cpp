// The per-sample solver arithmetic of src/common/ode_step.h (what the device integrator runs, one
// thread per sample) driven on the host, label cpu: a host loop that repeats the device driver
// of src/ode_gpu.cpp step for step (compact active list, stage by stage, accept/reject) must
// reproduce ode_integrate bit for bit on a float32-rounded field, follow the closed form of a
// linear ODE, and show the Dormand-Prince error estimate's order.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "common/ode_step.h"
#include "eqflow/ode.h"
#include "eqflow/ode_gpu.h"
#include "linear_ode.h"
#include "ode_host.h"
#include "test_util.h"

namespace eqflow {
namespace {

// The linear ODE of linear_ode.h; like the GPU field, it sees float32 inputs and returns
// float32-rounded outputs.
struct FloatLinearField : test::LinearOde {
    bool poison = false;  // NaN field where the first coordinate pair has radius > 2 (failures)

    void operator()(int64_t B, const double* x, const double* t, double* v, double* div) const {
        for (int64_t b = 0; b < B; ++b) {
            const double s = alpha + beta * static_cast<double>(static_cast<float>(t[b]));
            const double p0 = static_cast<float>(x[b * D]), p1 = static_cast<float>(x[b * D + 1]);
            const double r2 = p0 * p0 + p1 * p1;
            const bool bad = poison && r2 > 4.0;  // the flow keeps this radius within 6%
            for (int64_t i = 0; i < D; i += 2) {
                const double x0 = static_cast<float>(x[b * D + i]);
                const double x1 = static_cast<float>(x[b * D + i + 1]);
                v[b * D + i] = bad ? NAN : static_cast<float>(s * x0 - omega * x1);
                v[b * D + i + 1] = static_cast<float>(s * x1 + omega * x0);
            }
            if (div) div[b] = static_cast<float>(static_cast<double>(D) * s);
        }
    }
};

struct Result {
    std::vector<double> x, I, L;
    OdeStats stats;
};

// The host driver of src/ode_host.h with float32 staging of the field's inputs and outputs:
// what the device integrator (src/ode_gpu.cpp, ChunkRun) computes, the same ode_step functions
// in the same order, with each `for` loop of the driver one kernel launch there.
class HostDriver {
  public:
    HostDriver(const FloatLinearField& f, int64_t B, const OdeOptions& o, double t0, double t1)
        : f_(f), B_(B), o_(o), t0_(t0), t1_(t1) {}

    Result run(const std::vector<double>& x0) {
        Result r{x0, std::vector<double>(B_), std::vector<double>(B_), {}};
        const OdeField field = f_;
        ode_host::Driver<float>(field, B_, f_.D, o_, t0_, t1_, true, &r.stats)
            .run(r.x.data(), r.I.data(), r.L.data());
        return r;
    }

  private:
    FloatLinearField f_;
    int64_t B_;
    OdeOptions o_;
    double t0_, t1_;
};

Result host_solver(const FloatLinearField& f, const std::vector<double>& x0, int64_t B, double t0,
                   double t1, const OdeOptions& o) {
    Result r{x0, std::vector<double>(B), std::vector<double>(B), {}};
    ode_integrate(f, B, f.D, r.x.data(), t0, t1, o, r.I.data(), r.L.data(), &r.stats);
    return r;
}

// NaN-aware bitwise equality of two result vectors.
void expect_identical(const std::vector<double>& a, const std::vector<double>& b,
                      const char* what) {
    ASSERT_EQ(a.size(), b.size()) << what;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i]) && std::isnan(b[i])) continue;
        ASSERT_EQ(a[i], b[i]) << what << " [" << i << "]";
    }
}

void expect_same_run(const Result& dev, const Result& host) {
    expect_identical(dev.x, host.x, "x");
    expect_identical(dev.I, host.I, "divergence integral");
    expect_identical(dev.L, host.L, "path length");
    EXPECT_EQ(dev.stats.function_evals, host.stats.function_evals);
    EXPECT_EQ(dev.stats.row_evals, host.stats.row_evals);
    EXPECT_EQ(dev.stats.accepted, host.stats.accepted);
    EXPECT_EQ(dev.stats.rejected, host.stats.rejected);
    EXPECT_EQ(dev.stats.failed, host.stats.failed);
}

struct Interval {
    double t0, t1;
};
constexpr Interval kIntervals[] = {{0.0, 1.0}, {1.0, 0.0}, {0.25, 0.9}};

// Samples of very different scales, so that their adaptive step sequences differ and the
// active list shrinks unevenly (the compaction path is exercised).
std::vector<double> start_points(const FloatLinearField& f, int64_t B, uint64_t salt) {
    auto gen = test::rng(salt);
    std::vector<double> x = test::random_normal(static_cast<size_t>(B * f.D), gen);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < f.D; ++i) x[b * f.D + i] *= std::pow(10.0, (b % 5) - 2);
    return x;
}

TEST(OdeStep, Dopri5DriverIsBitIdenticalToOdeIntegrate) {
    const FloatLinearField f;
    const int64_t B = 9;
    const std::vector<double> x0 = start_points(f, B, 1);
    for (double tol : {1e-3, 1e-6}) {
        for (const Interval& iv : kIntervals) {
            OdeOptions o;
            o.atol = o.rtol = tol;
            const Result host = host_solver(f, x0, B, iv.t0, iv.t1, o);
            const Result dev = HostDriver(f, B, o, iv.t0, iv.t1).run(x0);
            SCOPED_TRACE(testing::Message() << "tol " << tol << ", " << iv.t0 << " -> " << iv.t1);
            expect_same_run(dev, host);
            EXPECT_GT(host.stats.accepted, B);  // it did take steps
            o.first_step = 0.05;
            expect_same_run(HostDriver(f, B, o, iv.t0, iv.t1).run(x0),
                            host_solver(f, x0, B, iv.t0, iv.t1, o));
        }
    }
}

TEST(OdeStep, FixedStepDriversAreBitIdenticalToOdeIntegrate) {
    const FloatLinearField f;
    const int64_t B = 4;
    const std::vector<double> x0 = start_points(f, B, 2);
    for (OdeMethod m : {OdeMethod::rk4, OdeMethod::euler}) {
        for (const Interval& iv : kIntervals) {
            OdeOptions o;
            o.method = m;
            o.steps = 7;
            SCOPED_TRACE(testing::Message()
                         << ode_method_name(m) << " " << iv.t0 << " -> " << iv.t1);
            expect_same_run(HostDriver(f, B, o, iv.t0, iv.t1).run(x0),
                            host_solver(f, x0, B, iv.t0, iv.t1, o));
        }
    }
}

TEST(OdeStep, FailuresAreReportedAsOdeIntegrateReportsThem) {
    FloatLinearField f;
    const int64_t B = 6;
    const std::vector<double> x0 = start_points(f, B, 3);
    OdeOptions o;
    o.max_steps = 3;  // far too few for tol 1e-6: every sample fails
    o.atol = o.rtol = 1e-6;
    const Result capped = HostDriver(f, B, o, 0.0, 1.0).run(x0);
    expect_same_run(capped, host_solver(f, x0, B, 0.0, 1.0, o));
    EXPECT_EQ(capped.stats.failed, B);
    EXPECT_TRUE(std::isnan(capped.x[0]) && std::isnan(capped.I[0]) && std::isnan(capped.L[0]));

    // A field that turns NaN for some samples: those fail, the others finish.
    f.poison = true;
    std::vector<double> xp = x0;
    for (int64_t b = 0; b < B; ++b) {  // odd samples are poisoned
        xp[b * f.D] = b % 2 ? 5.0 : 0.5;
        xp[b * f.D + 1] = 0.0;
    }
    o = OdeOptions{};
    for (OdeMethod m : {OdeMethod::dopri5, OdeMethod::rk4}) {
        o.method = m;
        const Result dev = HostDriver(f, B, o, 0.0, 1.0).run(xp);
        expect_same_run(dev, host_solver(f, xp, B, 0.0, 1.0, o));
        EXPECT_EQ(dev.stats.failed, B / 2) << ode_method_name(m);
        EXPECT_TRUE(std::isfinite(dev.I[0]) && std::isnan(dev.I[1])) << ode_method_name(m);
    }
}

// float32 field inputs cap the accuracy at ~1e-7 relative per evaluation; at tol 1e-7 the
// global error of this mildly expanding flow (|x| grows by at most e^0.3) stays below 1e-5
// relative, which any wrong coefficient (an O(h^k) error with h ~ 0.1) exceeds by far.
constexpr double kClosedFormTol = 1e-5;

TEST(OdeStep, Dopri5FollowsTheClosedForm) {
    const FloatLinearField f;
    const int64_t B = 3;
    auto gen = test::rng(4);
    const std::vector<double> x0 = test::random_normal(static_cast<size_t>(B * f.D), gen);
    OdeOptions o;
    o.atol = o.rtol = 1e-7;
    for (const Interval& iv : kIntervals) {
        const Result r = HostDriver(f, B, o, iv.t0, iv.t1).run(x0);
        EXPECT_EQ(r.stats.failed, 0);
        for (int64_t b = 0; b < B; ++b) {
            const std::vector<double> xb(x0.begin() + b * f.D, x0.begin() + (b + 1) * f.D);
            const std::vector<double> got(r.x.begin() + b * f.D, r.x.begin() + (b + 1) * f.D);
            EXPECT_ALL_CLOSE(got, f.solve(xb, iv.t0, iv.t1), kClosedFormTol, kClosedFormTol);
            EXPECT_NEAR(r.I[b], f.div_integral(iv.t0, iv.t1), kClosedFormTol);
        }
    }
}

// One Dormand-Prince step from the same state with h and h/2: the embedded error estimate is
// O(h^5), so halving h divides it by ~2^5 = 32 (between 20 and 45 for these small h), and the
// 5th-order solution's local error is O(h^6). A wrong tableau entry breaks either order.
TEST(OdeStep, Dopri5StepHasTheExpectedOrders) {
    FloatLinearField f;
    const int64_t D = f.D, S = D + 2;
    const std::vector<double> x0 = {0.7, -0.2, 0.4, 1.1, -0.9, 0.3};
    auto one_step = [&](double h, double* err_norm, double* local_err) {
        std::vector<double> y(S), ynew(S), k(7 * S), t(1), hh(1);
        std::vector<int64_t> st(1), acc(1), rej(1);
        std::vector<int> flags(1);
        ode_step::Chunk c{1,         D,         y.data(),   ynew.data(), k.data(),    t.data(),
                          hh.data(), st.data(), acc.data(), rej.data(),  flags.data()};
        ode_step::Params p;
        p.atol = p.rtol = 1.0;  // unit scale: the norm is the RMS error itself, over |y|+1
        ode_step::init_sample(c, p, 0, x0.data());
        // The field in double here (no float rounding), so that the orders show down to h^6.
        auto eval = [&](int s, const std::vector<double>& xs, double ts) {
            std::vector<double> v(D), div(1), tt{ts};
            const double sc = f.alpha + f.beta * ts;
            for (int64_t i = 0; i < D; i += 2) {
                v[i] = sc * xs[i] - f.omega * xs[i + 1];
                v[i + 1] = sc * xs[i + 1] + f.omega * xs[i];
            }
            double n2 = 0;
            for (int64_t i = 0; i < D; ++i) n2 += v[i] * v[i];
            double* ks = c.stage(s, 0);
            for (int64_t i = 0; i < D; ++i) ks[i] = v[i];
            ks[D] = D * sc;
            ks[D + 1] = std::sqrt(n2);
        };
        eval(0, x0, 0.0);
        hh[0] = h;
        std::vector<float> xf(D);
        float tf;
        for (int s = 1; s < 7; ++s) {
            ode_step::dopri5_stage(c, p, 0, s, xf.data(), &tf);
            // The double stage state: y + h sum a k (ynew holds it for s = 6).
            std::vector<double> xs(D);
            for (int64_t i = 0; i < D; ++i) {
                double a = 0;
                for (int j = 0; j < s; ++j) a += ode_step::dopri5_a(s, j) * c.stage(j, 0)[i];
                xs[i] = y[i] + h * a;
            }
            eval(s, xs, ode_step::dopri5_c(s) * h);
        }
        *err_norm = ode_step::dopri5_error_norm(c, p, 0);
        const std::vector<double> exact = f.solve(x0, 0.0, h);
        double e = 0;
        for (int64_t i = 0; i < D; ++i) e = std::max(e, std::fabs(ynew[i] - exact[i]));
        *local_err = e;
    };
    double e1, l1, e2, l2;
    one_step(0.04, &e1, &l1);
    one_step(0.02, &e2, &l2);
    std::printf("dopri5 step: error estimate %.3e -> %.3e, local error %.3e -> %.3e\n", e1, e2, l1,
                l2);
    EXPECT_GT(e1 / e2, 20.0);
    EXPECT_LT(e1 / e2, 45.0);
    EXPECT_GT(l1 / l2, 40.0);  // ~2^6 = 64
    EXPECT_GT(e1, 0.0);
}

TEST(OdeStep, StepSizeControllerFactors) {
    // The accept/reject rule on a hand-made state: err = 0.5 accepts and grows h by
    // 0.9 * 0.5^-0.2 = 1.0338; err = 4 rejects and shrinks h by 0.9 * 4^-0.2 = 0.6839; growth
    // clips at 10 and shrinkage at 0.2.
    const int64_t D = 1, S = 3;
    auto decide = [&](double target_err, double* factor, bool* accepted) {
        std::vector<double> y(S, 0.0), ynew(S, 0.0), k(7 * S, 0.0), t{0.0}, h{0.1};
        std::vector<int64_t> st(1), acc(1), rej(1);
        std::vector<int> flags(1, 0);
        ode_step::Chunk c{1,        D,         y.data(),   ynew.data(), k.data(),    t.data(),
                          h.data(), st.data(), acc.data(), rej.data(),  flags.data()};
        ode_step::Params p;
        p.atol = 1.0;
        p.rtol = 0.0;
        // Only k7 is non-zero: err_i = h e_7 k7_i for i = 0 (x) and 1 (I); RMS over 2 components.
        const double k7 = target_err / (0.1 * std::fabs(ode_step::dopri5_e(6)));
        c.stage(6, 0)[0] = k7;
        c.stage(6, 0)[1] = k7;
        EXPECT_NEAR(ode_step::dopri5_error_norm(c, p, 0), target_err, 1e-12 * target_err);
        ode_step::dopri5_finish(c, p, 0);
        *factor = h[0] / 0.1;
        *accepted = acc[0] == 1;
        EXPECT_EQ(acc[0] + rej[0], 1);
    };
    double factor;
    bool accepted;
    decide(0.5, &factor, &accepted);
    EXPECT_TRUE(accepted);
    EXPECT_NEAR(factor, 0.9 * std::pow(0.5, -0.2), 1e-12);
    decide(4.0, &factor, &accepted);
    EXPECT_FALSE(accepted);
    EXPECT_NEAR(factor, 0.9 * std::pow(4.0, -0.2), 1e-12);
    decide(1e-9, &factor, &accepted);
    EXPECT_TRUE(accepted);
    EXPECT_DOUBLE_EQ(factor, ode_step::kMaxFactor);
    decide(1e6, &factor, &accepted);
    EXPECT_FALSE(accepted);
    EXPECT_DOUBLE_EQ(factor, ode_step::kMinFactor);
}

// The documented memory budget of the device integrator (eqflow/ode_gpu.h).
TEST(OdeGpuMemory, Lj55ChunkStaysWellUnder8GB) {
    const int64_t D = 55 * 3, S = D + 2;
    // 9 S doubles (y, ynew, k1..k7) + 48 bytes of per-sample scalars + 8 D + 8 float32 rows.
    EXPECT_EQ(ode_gpu_bytes_per_sample(D, OdeMethod::dopri5), 72 * S + 48 + 8 * D + 8);
    EXPECT_EQ(ode_gpu_bytes_per_sample(D, OdeMethod::dopri5), 13400u);
    EXPECT_EQ(ode_gpu_bytes_per_sample(D, OdeMethod::rk4), 40 * S + 48 + 8 * D + 8);
    EXPECT_EQ(ode_gpu_bytes_per_sample(D, OdeMethod::euler), 16 * S + 48 + 8 * D + 8);
    const int64_t chunk = ode_gpu_default_chunk(D, OdeMethod::dopri5);
    EXPECT_EQ(chunk, 65536);
    EXPECT_LT(static_cast<double>(chunk) * ode_gpu_bytes_per_sample(D, OdeMethod::dopri5), 1e9);
    // A huge state shrinks the default chunk to the 2 GiB budget.
    const int64_t big = ode_gpu_default_chunk(1000000, OdeMethod::dopri5);
    EXPECT_GE(big, 1);
    EXPECT_LE(static_cast<double>(big) * ode_gpu_bytes_per_sample(1000000, OdeMethod::dopri5),
              2.0 * (1 << 30));
}

}  // namespace
}  // namespace eqflow
