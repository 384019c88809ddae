// Philox-4x32-10: known answers, determinism, distributions, and the deterministic math.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "eqflow/philox.h"
#include "eqflow/random.h"
#include "test_util.h"

namespace eqflow {
namespace {

// The known-answer vectors published with Random123 (kat_vectors): counter, key -> output.
TEST(Philox, KnownAnswers) {
    struct Kat {
        PhiloxBlock ctr;
        uint32_t k0, k1;
        PhiloxBlock want;
    };
    const Kat kats[] = {
        {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
        {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
         0xffffffff,
         0xffffffff,
         {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
        {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}},
         0xa4093822,
         0x299f31d0,
         {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
    };
    for (const Kat& k : kats) {
        const PhiloxBlock got = philox4x32_10(k.ctr, k.k0, k.k1);
        for (int i = 0; i < 4; ++i) EXPECT_EQ(got.v[i], k.want.v[i]) << "word " << i;
    }
}

TEST(Philox, StreamsAndCountersAreIndependentPureFunctions) {
    Philox a(42, 7), b(42, 7), c(42, 8), d(43, 7);
    for (int i = 0; i < 100; ++i) {
        const uint32_t x = a.next_u32();
        EXPECT_EQ(x, b.next_u32());
        (void)c;
    }
    // Different stream or seed: different words.
    int same_c = 0, same_d = 0;
    Philox a2(42, 7);
    for (int i = 0; i < 64; ++i) {
        const uint32_t x = a2.next_u32();
        same_c += (x == c.next_u32());
        same_d += (x == d.next_u32());
    }
    EXPECT_LT(same_c, 2);
    EXPECT_LT(same_d, 2);
    // Starting at a counter skips ahead exactly.
    Philox e(42, 7), f(42, 7, 3);
    for (int i = 0; i < 12; ++i) e.next_u32();
    for (int i = 0; i < 8; ++i) EXPECT_EQ(e.next_u32(), f.next_u32());
}

TEST(Philox, DeterministicLogAndSinCosAreAccurate) {
    auto gen = test::rng(1);
    std::uniform_real_distribution<double> unif(0.0, 1.0);
    double worst_log = 0.0, worst_trig = 0.0;
    for (int i = 0; i < 200000; ++i) {
        const double u = i < 100 ? std::ldexp(1.0, -i / 2) * 0.999 : unif(gen);
        if (u <= 0.0) continue;
        worst_log = std::max(worst_log, std::fabs(det_log(u) - std::log(u)) /
                                            std::max(1e-300, std::fabs(std::log(u))));
        double s, c;
        det_sincos_2pi(u, &s, &c);
        const double ang = 2.0 * M_PI * u;
        worst_trig =
            std::max({worst_trig, std::fabs(s - std::sin(ang)), std::fabs(c - std::cos(ang))});
    }
    // A few ulp: log relative 1e-15; trig absolute 1e-15 (the reference itself rounds 2*pi*u).
    EXPECT_LT(worst_log, 1e-15);
    EXPECT_LT(worst_trig, 1e-15);
    EXPECT_EQ(det_log(1.0), 0.0);
}

TEST(Philox, UniformAndNormalMoments) {
    constexpr int kN = 400000;
    Philox g(test::seed(), 0);
    double su = 0, suu = 0, sn = 0, snn = 0, sn4 = 0;
    double umin = 1, umax = 0;
    for (int i = 0; i < kN; ++i) {
        const double u = g.uniform();
        su += u;
        suu += u * u;
        umin = std::min(umin, u);
        umax = std::max(umax, u);
        const double z = g.normal();
        sn += z;
        snn += z * z;
        sn4 += z * z * z * z;
    }
    EXPECT_GT(umin, 0.0);
    EXPECT_LT(umax, 1.0);
    // Standard errors: mean of U(0,1) 0.289/sqrt(N) = 4.6e-4; normal mean 1/sqrt(N) = 1.6e-3,
    // variance sqrt(2/N) = 2.2e-3, fourth moment sqrt(96/N) = 0.015. Bounds are 5 sigma.
    EXPECT_NEAR(su / kN, 0.5, 5 * 4.6e-4);
    EXPECT_NEAR(suu / kN - 0.25, 1.0 / 12.0, 5 * 3e-4);
    EXPECT_NEAR(sn / kN, 0.0, 5 * 1.6e-3);
    EXPECT_NEAR(snn / kN, 1.0, 5 * 2.2e-3);
    EXPECT_NEAR(sn4 / kN, 3.0, 5 * 0.015);
}

TEST(Philox, FillMatchesSequentialStreams) {
    std::vector<double> out(6 * 5);
    fill_normal(TensorView<double>(out.data(), Shape{6, 5}), 5, 99, 1000);
    for (int r = 0; r < 6; ++r) {
        Philox g(99, 1000 + r);
        for (int k = 0; k < 5; ++k) EXPECT_EQ(out[r * 5 + k], g.normal());
    }
    EXPECT_THROW(fill_normal(TensorView<double>(out.data(), Shape{30}), 7, 1, 0), Error);
}

}  // namespace
}  // namespace eqflow
