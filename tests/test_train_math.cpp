// The host/device math of flow-matching training (src/common/train_math.h), compiled as host code,
// label cpu: the row draws the CPU trainer and the GPU step share, and the float32-storage Adam
// element of the GPU optimiser against the double Adam of eqflow/optim.h. The device compiles
// the same functions (kernels/train_step.cu); tests/test_train_gpu.cpp checks them there.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "common/train_math.h"
#include "eqflow/flow.h"
#include "eqflow/optim.h"
#include "eqflow/philox.h"
#include "eqflow/trainer.h"
#include "test_util.h"
#include "train_test_util.h"

namespace eqflow {
namespace {

// The draw as the trainer has always made it, written out independently: n*d normals, one
// uniform, n*d normals from one Philox stream, then remove_mean (eqflow/flow.h).
void draw_row_by_hand(uint64_t seed, uint64_t stream, int n, int d, std::vector<double>& x0,
                      double& t, std::vector<double>& eps) {
    Philox rng(seed, stream);
    x0.resize(static_cast<size_t>(n * d));
    eps.resize(static_cast<size_t>(n * d));
    for (double& v : x0) v = rng.normal();
    t = rng.uniform();
    for (double& v : eps) v = rng.normal();
    remove_mean(1, n, d, x0.data());
    remove_mean(1, n, d, eps.data());
}

// Exact equality: the shared function must reproduce the trainer's draws bit for bit (n*d odd
// exercises the spare normal that carries over from x0 into eps).
TEST(TrainMath, DrawRowIsTheTrainersDrawBitForBit) {
    const struct { int n, d; } sizes[] = {{4, 2}, {13, 3}, {5, 3}, {3, 1}, {22, 3}};
    for (const auto& sz : sizes) {
        for (uint64_t stream : {0ull, 1ull, 255ull, 1000003ull}) {
            const uint64_t seed = test::seed() + 17;
            std::vector<double> x0_ref, eps_ref, x0(static_cast<size_t>(sz.n * sz.d)),
                eps(x0.size()), x0_api(x0.size()), eps_api(x0.size());
            double t_ref = 0, t = 0, t_api = 0;
            draw_row_by_hand(seed, stream, sz.n, sz.d, x0_ref, t_ref, eps_ref);
            train_math::draw_row(seed, stream, sz.n, sz.d, x0.data(), &t, eps.data());
            draw_training_row(seed, stream, sz.n, sz.d, x0_api.data(), &t_api, eps_api.data());
            EXPECT_EQ(x0, x0_ref) << sz.n << "x" << sz.d << " stream " << stream;
            EXPECT_EQ(eps, eps_ref) << sz.n << "x" << sz.d << " stream " << stream;
            EXPECT_EQ(t, t_ref);
            EXPECT_EQ(x0_api, x0_ref);
            EXPECT_EQ(eps_api, eps_ref);
            EXPECT_EQ(t_api, t_ref);
            EXPECT_GT(t, 0.0);
            EXPECT_LT(t, 1.0);
            for (int a = 0; a < sz.d; ++a) {  // centred per dimension
                double s = 0;
                for (int i = 0; i < sz.n; ++i) s += x0[static_cast<size_t>(i * sz.d + a)];
                EXPECT_NEAR(s, 0.0, 1e-13);
            }
            EXPECT_TRUE(test::not_all_zero(x0));
        }
    }
}

// --time-power A: the same stream, so x0 and eps are the default draws' bits and t is
// u^(1/A) of the default t; power 1 is u itself. Over many streams t has the mean of Beta(A, 1),
// A / (A + 1), and its CDF t^A (checked at t = 1/2 against the count, within 5 standard errors).
TEST(TrainMath, TimePowerTransformsOnlyTheTime) {
    const int n = 13, d = 3;
    const uint64_t seed = test::seed() + 23;
    std::vector<double> x0(n * d), eps(n * d), x0_p(n * d), eps_p(n * d);
    for (uint64_t stream : {0ull, 7ull, 1000003ull}) {
        double t = 0, t1 = 0, t2 = 0;
        draw_training_row(seed, stream, n, d, x0.data(), &t, eps.data());
        draw_training_row(seed, stream, n, d, x0_p.data(), &t1, eps_p.data(), 1.0);
        EXPECT_EQ(t1, t);
        draw_training_row(seed, stream, n, d, x0_p.data(), &t2, eps_p.data(), 2.5);
        EXPECT_EQ(x0_p, x0);
        EXPECT_EQ(eps_p, eps);
        EXPECT_EQ(t2, std::pow(t, 1.0 / 2.5));
        EXPECT_GT(t2, t);  // A > 1 moves every t towards 1
    }
    const int count = 20000;
    for (double A : {0.5, 1.0, 3.0}) {
        double sum = 0;
        int below_half = 0;
        for (int s = 0; s < count; ++s) {
            double t = 0;
            draw_training_row(seed, static_cast<uint64_t>(s), 1, 1, x0.data(), &t, eps.data(), A);
            ASSERT_GE(t, 0.0);
            ASSERT_LT(t, 1.0);
            sum += t;
            below_half += t < 0.5;
        }
        const double mean = A / (A + 1), var = A / ((A + 1) * (A + 1) * (A + 2));
        EXPECT_NEAR(sum / count, mean, 5 * std::sqrt(var / count)) << "A " << A;
        const double p = std::pow(0.5, A);
        EXPECT_NEAR(below_half / double(count), p, 5 * std::sqrt(p * (1 - p) / count)) << "A " << A;
    }
    for (double bad : {0.0, -1.0, std::numeric_limits<double>::infinity()})
        EXPECT_THROW(draw_training_row(seed, 0, n, d, x0.data(), nullptr, eps.data(), bad), Error);
}

// The float32-storage element against adam_update in double; the error budget and the inputs are
// test_train_gpu's too (train_test_util.h).
using test::kAdamAtolPerLr;
using test::kAdamRtol;
using test::kAdamSteps;
using test::kMomentAtol;

TEST(TrainMath, Float32AdamElementFollowsTheDoubleRule) {
    const int P = 257;
    const double lr = 1e-2;
    const test::AdamInputs in = test::random_adam_inputs(P, 71);
    std::vector<float> p = in.p, m(P, 0.0f), v(P, 0.0f);
    std::vector<double> pd(p.begin(), p.end());
    AdamState st;
    const AdamOptions o;
    for (int s = 0; s < kAdamSteps; ++s) {
        const std::vector<float>& g = in.g[s];
        const std::vector<double> gd(g.begin(), g.end());
        const double k = s + 1.0;
        const double c1 = 1.0 - std::pow(o.beta1, k), c2 = 1.0 - std::pow(o.beta2, k);
        for (int i = 0; i < P; ++i)
            train_math::adam_element_f32(o.beta1, o.beta2, o.eps, lr, c1, c2, g[i], m[i], v[i],
                                         p[i]);
        adam_update(o, lr, P, pd.data(), gd.data(), st);
    }
    EXPECT_ALL_CLOSE(p, pd, kAdamAtolPerLr * lr, kAdamRtol);
    EXPECT_ALL_CLOSE(m, st.m, kMomentAtol, kAdamRtol);
    EXPECT_ALL_CLOSE(v, st.v, 1e-12, kAdamRtol);
    // The double element is adam_update's own rule (optim.cpp calls it): bit-identical.
    std::vector<double> p2 = {0.3, -0.7}, m2 = {0, 0}, v2 = {0, 0};
    AdamState st2;
    std::vector<double> p3 = p2;
    const std::vector<double> g2 = {0.25, -1.5};
    adam_update(o, 1e-3, 2, p3.data(), g2.data(), st2);
    for (int i = 0; i < 2; ++i)
        train_math::adam_element(o.beta1, o.beta2, o.eps, 1e-3, 1.0 - o.beta1, 1.0 - o.beta2, g2[i],
                                 m2[i], v2[i], p2[i]);
    EXPECT_EQ(p2, p3);
    EXPECT_EQ(m2, st2.m);
    EXPECT_EQ(v2, st2.v);
}

}  // namespace
}  // namespace eqflow
